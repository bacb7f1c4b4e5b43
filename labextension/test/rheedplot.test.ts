import { describe, expect, it } from 'vitest';

import {
  IRheed,
  MIN_SPAN_MS,
  panWindow,
  rheedSummary,
  utcClock,
  windowPath,
  zoomWindow,
} from '../src/rheedplot';

const full = { lo: 1000, hi: 61000 };

describe('zoomWindow', () => {
  it('zooms in around the pointer and keeps that point still', () => {
    const w = zoomWindow(full, 0.5, 0.25, full);
    expect(w.hi - w.lo).toBe(30000);
    // the point a quarter in (16000) stays a quarter in
    expect((16000 - w.lo) / (w.hi - w.lo)).toBeCloseTo(0.25);
  });

  it('never leaves the trace and never zooms past the whole trace or the minimum span', () => {
    expect(zoomWindow(full, 4, 0.5, full)).toEqual(full);
    const tiny = zoomWindow({ lo: 1000, hi: 1300 }, 0.01, 0, full);
    expect(tiny.hi - tiny.lo).toBe(MIN_SPAN_MS);
    expect(tiny.lo).toBeGreaterThanOrEqual(full.lo);
    const edge = zoomWindow({ lo: 50000, hi: 61000 }, 0.5, 1, full);
    expect(edge.hi).toBeLessThanOrEqual(full.hi);
  });
});

describe('panWindow', () => {
  it('moves by a fraction of the span, clamped to the trace', () => {
    expect(panWindow({ lo: 11000, hi: 21000 }, 0.5, full)).toEqual({ lo: 16000, hi: 26000 });
    expect(panWindow({ lo: 11000, hi: 21000 }, -5, full)).toEqual({ lo: 1000, hi: 11000 });
    expect(panWindow({ lo: 11000, hi: 21000 }, 9, full)).toEqual({ lo: 51000, hi: 61000 });
  });
});

describe('windowPath', () => {
  const t = [0, 1, 2, 3, 4, 5].map((x) => x * 1000);
  const v = [1, 0, 1, 0, 1, NaN];

  it('draws only the points inside the window, scaled to the box', () => {
    const { d, points } = windowPath(t, v, { lo: 1000, hi: 3000 }, 100, 20);
    expect(points).toBe(3);
    expect(d).toBe('M0.0,18.0L50.0,2.0L100.0,18.0');
  });

  it('needs two finite points', () => {
    expect(windowPath(t, v, { lo: 4500, hi: 6000 }, 100, 20)).toEqual({ d: '', points: 0 });
  });
});

describe('rheedSummary', () => {
  const doc: IRheed = {
    run_id: 'R',
    windows: [
      {
        window: 1,
        status: 'ok',
        period_s: 1.2126,
        period_err_s: 0.0041,
        rate_ml_s: 0.8247,
        rate_nm_s: 0.2331,
        layers_observed: 38,
        drift: true,
      },
    ],
    layers: [],
    trace: { time: ['2026-01-01T00:00:00Z'], value: [1] },
  };

  it('states period, rate, layers and drift', () => {
    expect(rheedSummary(doc)).toBe(
      'period 1.213 ± 0.004 s · 0.825 ML/s · 0.2331 nm/s · 38 layers · drift vs recipe',
    );
    expect(rheedSummary({ ...doc, windows: [{ window: 0, status: 'no RHEED' }] })).toBe(
      'No RHEED oscillation found',
    );
    expect(utcClock(Date.parse('2026-01-01T12:04:31.5Z'))).toBe('12:04:31');
  });
});
