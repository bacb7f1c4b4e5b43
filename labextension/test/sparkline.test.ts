import { describe, expect, it } from 'vitest';

import { extent, frameToSeries, sparklinePath } from '../src/sparkline';

/** The points of a path as [command, x, y]. */
function points(d: string): [string, number, number][] {
  return d.split(' ').map((p) => {
    const [x, y] = p.slice(1).split(',').map(Number);
    return [p[0], x, y];
  });
}

describe('sparklinePath', () => {
  it('spans the box and puts larger values higher', () => {
    const d = sparklinePath([0, 1, 2], [0, 10, 5], 100, 20, 0);
    expect(d).toBe('M0,20 L50,0 L100,10');
  });

  it('respects the padding', () => {
    const pts = points(sparklinePath([0, 10], [1, 2], 100, 20, 2));
    expect(pts[0]).toEqual(['M', 2, 18]);
    expect(pts[1]).toEqual(['L', 98, 2]);
  });

  it('scales x by time, not by index', () => {
    const pts = points(sparklinePath([0, 1, 10], [1, 2, 3], 100, 10, 0));
    expect(pts.map((p) => p[1])).toEqual([0, 10, 100]);
  });

  it('falls back to even spacing when times are equal', () => {
    const pts = points(sparklinePath([5, 5, 5], [1, 2, 3], 100, 10, 0));
    expect(pts.map((p) => p[1])).toEqual([0, 50, 100]);
  });

  it('draws a constant series flat through the middle', () => {
    const pts = points(sparklinePath([0, 1, 2], [7, 7, 7], 100, 20, 0));
    expect(pts.every((p) => p[2] === 10)).toBe(true);
  });

  it('breaks the line at missing values', () => {
    const d = sparklinePath([0, 1, 2, 3], [1, NaN, 2, 3], 30, 10, 0);
    expect(d.split(' ').map((p) => p[0])).toEqual(['M', 'M', 'L']);
  });

  it('draws nothing for no finite values', () => {
    expect(sparklinePath([], [], 100, 20)).toBe('');
    expect(sparklinePath([0, 1], [NaN, NaN], 100, 20)).toBe('');
  });

  it('makes a visible tick of a single point', () => {
    const pts = points(sparklinePath([0], [3], 100, 20, 0));
    expect(pts.length).toBe(2);
    expect(pts[0][0]).toBe('M');
    expect(pts[1][1]).toBeGreaterThan(pts[0][1]);
  });

  it('never leaves the box', () => {
    const t = Array.from({ length: 500 }, (_, i) => i * 1000);
    const v = t.map((x) => Math.sin(x / 7e3) * 1e6);
    for (const [, x, y] of points(sparklinePath(t, v, 240, 48, 2))) {
      expect(x).toBeGreaterThanOrEqual(2);
      expect(x).toBeLessThanOrEqual(238);
      expect(y).toBeGreaterThanOrEqual(2);
      expect(y).toBeLessThanOrEqual(46);
    }
  });
});

describe('frameToSeries', () => {
  const frame = {
    columns: ['run_id', 'time', 'channel', 'value', 'unit'],
    data: [
      ['r1', '2026-01-01T00:00:02+00:00', 'T', 3, 'K'],
      ['r1', '2026-01-01T00:00:00+00:00', 'T', 1, 'K'],
      ['r1', '2026-01-01T00:00:01+00:00', 'rate', 9, 'nm/s'],
      ['r1', '2026-01-01T00:00:01+00:00', 'T', null, 'K'],
    ],
  };

  it('takes one channel, sorted by time, with its unit', () => {
    const s = frameToSeries(frame, 'T');
    expect(s.unit).toBe('K');
    expect(s.t).toEqual([
      Date.parse('2026-01-01T00:00:00Z'),
      Date.parse('2026-01-01T00:00:01Z'),
      Date.parse('2026-01-01T00:00:02Z'),
    ]);
    expect(s.v[0]).toBe(1);
    expect(Number.isNaN(s.v[1])).toBe(true);
    expect(s.v[2]).toBe(3);
  });

  it('names a missing column', () => {
    expect(() => frameToSeries({ columns: ['time', 'value'], data: [] }, 'T')).toThrow(/channel/);
  });

  it('computes the extent of finite values', () => {
    expect(extent([3, NaN, -1, Infinity])).toEqual([-1, 3]);
    expect(extent([])).toBeNull();
  });
});
