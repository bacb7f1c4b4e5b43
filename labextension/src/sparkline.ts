/**
 * A sparkline as an SVG path: no plotting library, just the few numbers the server sent
 * (it downsamples with `max_points`, so a path has at most a few hundred points).
 */

import { IFrame } from './client';

/** One channel's points: times (ms since epoch, or an index) and values, plus the unit. */
export interface ISeries {
  t: number[];
  v: number[];
  unit: string;
}

/**
 * Pull one channel out of a long frame (`run_id, time, channel, value, unit`), sorted by time.
 *
 * Rows of other channels are ignored; a missing column raises an error naming it, since that
 * means the server and the panel disagree on the format.
 */
export function frameToSeries(frame: IFrame, channel: string): ISeries {
  const col = (name: string) => {
    const i = frame.columns.indexOf(name);
    if (i < 0) {
      throw new Error(`the process frame has no "${name}" column`);
    }
    return i;
  };
  const ti = col('time');
  const ci = col('channel');
  const vi = col('value');
  const ui = frame.columns.indexOf('unit');
  const rows: [number, number][] = [];
  let unit = '';
  for (const row of frame.data) {
    if (row[ci] !== channel) {
      continue;
    }
    const t = typeof row[ti] === 'number' ? (row[ti] as number) : Date.parse(String(row[ti]));
    const raw = row[vi];
    const v = raw === null || raw === undefined ? NaN : Number(raw);
    rows.push([t, v]);
    if (!unit && ui >= 0 && typeof row[ui] === 'string') {
      unit = row[ui] as string;
    }
  }
  rows.sort((a, b) => a[0] - b[0]);
  return { t: rows.map((r) => r[0]), v: rows.map((r) => r[1]), unit };
}

/** Smallest and largest finite value, or null when there is none. */
export function extent(values: number[]): [number, number] | null {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (Number.isFinite(v)) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  return lo <= hi ? [lo, hi] : null;
}

const fmt = (n: number) => (Math.round(n * 100) / 100).toString();

/**
 * The `d` attribute of a path drawing `v` against `t` inside a `width` × `height` box with
 * `pad` pixels of margin (SVG y grows downwards, so larger values are drawn higher).
 *
 * Non-finite values break the line (a new `M`) rather than dropping to zero; a constant series
 * is drawn flat through the middle; times that are all equal (or invalid) fall back to
 * spacing the points evenly. Returns `''` when nothing can be drawn.
 */
export function sparklinePath(
  t: number[],
  v: number[],
  width: number,
  height: number,
  pad = 2,
): string {
  const n = Math.min(t.length, v.length);
  const ys = extent(v.slice(0, n));
  if (n === 0 || ys === null) {
    return '';
  }
  const tx = extent(t.slice(0, n));
  const useIndex = tx === null || tx[0] === tx[1];
  const [x0, x1] = useIndex ? [0, Math.max(1, n - 1)] : tx;
  const [y0, y1] = ys;
  const w = Math.max(0, width - 2 * pad);
  const h = Math.max(0, height - 2 * pad);
  const xOf = (i: number) => {
    const x = useIndex || !Number.isFinite(t[i]) ? i : t[i];
    return pad + (n === 1 ? w / 2 : ((x - x0) / (x1 - x0)) * w);
  };
  const yOf = (value: number) =>
    y0 === y1 ? pad + h / 2 : pad + h - ((value - y0) / (y1 - y0)) * h;
  const parts: string[] = [];
  let penDown = false;
  for (let i = 0; i < n; i++) {
    if (!Number.isFinite(v[i])) {
      penDown = false;
      continue;
    }
    parts.push(`${penDown ? 'L' : 'M'}${fmt(xOf(i))},${fmt(yOf(v[i]))}`);
    penDown = true;
  }
  if (n === 1 || parts.length === 1) {
    // A lone point: a short horizontal tick so something is visible.
    const m = /^M([\d.-]+),([\d.-]+)$/.exec(parts[0]);
    if (m) {
      const x = Number(m[1]);
      parts.push(`L${fmt(Math.min(width - pad, x + 1))},${m[2]}`);
    }
  }
  return parts.join(' ');
}
