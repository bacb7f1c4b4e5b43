import { describe, expect, it } from 'vitest';

import { formatCount, formatTime, formatValue } from '../src/format';
import { pyString, runSnippet } from '../src/snippet';

describe('runSnippet', () => {
  it('plots the run and its RHEED analysis with the Workspace client', () => {
    const code = runSnippet('acme-0007');
    expect(code.split('\n').slice(0, 6)).toEqual([
      'from atomscale_lab import Workspace',
      'from atomscale_lab.client.widgets import plot_rheed, plot_run',
      '',
      'ws = Workspace()',
      'run_id = "acme-0007"',
      'display(plot_run(ws, run_id))',
    ]);
    expect(code).toContain('ws.rheed(run_id)');
    expect(code.trim().endsWith('plot_rheed(ws, run_id)')).toBe(true);
  });

  it('keeps a hostile run id inside the string literal', () => {
    const lit = pyString('x")\nimport os  # "\\');
    expect(lit.startsWith('"')).toBe(true);
    expect(lit.endsWith('"')).toBe(true);
    expect(lit).not.toContain('\n');
    expect(JSON.parse(lit)).toBe('x")\nimport os  # "\\');
  });
});

describe('formatting', () => {
  it('formats times in UTC', () => {
    expect(formatTime('2026-03-04T12:30:59+02:00')).toBe('2026-03-04 10:30 UTC');
    expect(formatTime(null)).toBe('—');
    expect(formatTime('soon')).toBe('soon');
  });

  it('formats counts and values', () => {
    expect(formatCount(1234567)).toBe('1,234,567');
    expect(formatCount(undefined)).toBe('—');
    expect(formatValue(1234.5678)).toBe('1230');
    expect(formatValue(0.000012)).toBe('1.20e-5');
    expect(formatValue(0)).toBe('0');
  });
});
