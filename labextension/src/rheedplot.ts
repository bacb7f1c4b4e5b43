/**
 * The small RHEED plot of the selected run: intensity against time (UTC) with the layers the
 * server's analysis found, zoomable with the mouse wheel (or the +/− buttons), pannable by
 * dragging, reset by double-click.
 *
 * The window arithmetic is pure (and unit-tested); `RheedPlot` draws an SVG for a window.
 */

/** A time window in milliseconds since the epoch. */
export interface IWindow {
  lo: number;
  hi: number;
}

/** GET `runs/{run_id}/rheed` (the fields the panel uses). */
export interface IRheed {
  run_id: string;
  onset?: string | null;
  windows: {
    window: number;
    status: string;
    shutters?: string;
    period_s?: number | null;
    period_err_s?: number | null;
    rate_ml_s?: number | null;
    rate_nm_s?: number | null;
    layers_observed?: number;
    drift?: boolean;
  }[];
  layers: { layer: number; start: string; end: string; period_s: number }[];
  trace: { time: string[]; value: (number | null)[] };
}

/** The smallest window the plot zooms to (ms), a few samples of a fast oscillation. */
export const MIN_SPAN_MS = 200;

/** Zoom `w` by `factor` (< 1 zooms in) around `centerFrac` (0..1 of the window), kept in `full`. */
export function zoomWindow(w: IWindow, factor: number, centerFrac: number, full: IWindow): IWindow {
  const span = w.hi - w.lo;
  const fullSpan = full.hi - full.lo;
  const next = Math.min(fullSpan, Math.max(MIN_SPAN_MS, span * factor));
  const c = w.lo + Math.min(1, Math.max(0, centerFrac)) * span;
  let lo = c - (c - w.lo) * (next / span);
  lo = Math.min(Math.max(lo, full.lo), full.hi - next);
  return { lo, hi: lo + next };
}

/** Move `w` by `deltaFrac` of its span (positive: later), kept in `full`. */
export function panWindow(w: IWindow, deltaFrac: number, full: IWindow): IWindow {
  const span = w.hi - w.lo;
  let lo = w.lo + deltaFrac * span;
  lo = Math.min(Math.max(lo, full.lo), full.hi - span);
  return { lo, hi: lo + span };
}

/** The SVG path of the points of (t, v) inside `w`, scaled to width × height (y: min–max). */
export function windowPath(
  t: number[],
  v: number[],
  w: IWindow,
  width: number,
  height: number,
): { d: string; points: number } {
  const idx: number[] = [];
  for (let i = 0; i < t.length; i++) {
    if (t[i] >= w.lo && t[i] <= w.hi && Number.isFinite(v[i])) {
      idx.push(i);
    }
  }
  if (idx.length < 2) {
    return { d: '', points: idx.length };
  }
  let ymin = Infinity;
  let ymax = -Infinity;
  for (const i of idx) {
    ymin = Math.min(ymin, v[i]);
    ymax = Math.max(ymax, v[i]);
  }
  const ys = ymax > ymin ? ymax - ymin : 1;
  const xs = w.hi - w.lo || 1;
  const parts = idx.map((i, k) => {
    const x = ((t[i] - w.lo) / xs) * width;
    const y = height - 2 - ((v[i] - ymin) / ys) * (height - 4);
    return `${k === 0 ? 'M' : 'L'}${x.toFixed(1)},${y.toFixed(1)}`;
  });
  return { d: parts.join(''), points: idx.length };
}

/** "12:04:31" in UTC. */
export function utcClock(ms: number): string {
  return new Date(ms).toISOString().slice(11, 19);
}

/** One line about the first analysed window: period, rate, drift. */
export function rheedSummary(doc: IRheed): string {
  const w = doc.windows.find((x) => x.status === 'ok');
  if (!w || w.period_s == null || w.rate_ml_s == null) {
    return doc.trace.time.length ? 'No RHEED oscillation found' : 'No RHEED trace in this run';
  }
  let s =
    `period ${w.period_s.toFixed(3)} ± ${(w.period_err_s ?? 0).toFixed(3)} s · ` +
    `${w.rate_ml_s.toFixed(3)} ML/s`;
  if (w.rate_nm_s != null) {
    s += ` · ${w.rate_nm_s.toFixed(4)} nm/s`;
  }
  s += ` · ${w.layers_observed ?? 0} layers`;
  if (w.drift) {
    s += ' · drift vs recipe';
  }
  return s;
}

const NS = 'http://www.w3.org/2000/svg';

/** The plot: an SVG redrawn for the current window. */
export class RheedPlot {
  readonly node: HTMLDivElement;
  readonly full: IWindow;
  private _t: number[];
  private _v: number[];
  private _layers: number[];
  private _window: IWindow;
  private _svg: SVGSVGElement;
  private _label: HTMLDivElement;
  private _w: number;
  private _h: number;

  constructor(doc: IRheed, width = 240, height = 70) {
    this._w = width;
    this._h = height;
    this._t = doc.trace.time.map((s) => Date.parse(s));
    this._v = doc.trace.value.map((x) => (x == null ? NaN : x));
    this._layers = doc.layers.map((l) => Date.parse(l.end));
    const lo = this._t.length ? this._t[0] : 0;
    const hi = this._t.length ? this._t[this._t.length - 1] : 1;
    this.full = { lo, hi: hi > lo ? hi : lo + 1 };
    this._window = { ...this.full };
    this.node = document.createElement('div');
    this.node.className = 'jp-AtomscalePanel-rheed';
    this._svg = document.createElementNS(NS, 'svg');
    this._svg.setAttribute('class', 'jp-AtomscalePanel-rheedPlot');
    this._svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    this._svg.setAttribute('preserveAspectRatio', 'none');
    this._svg.setAttribute('role', 'img');
    this._svg.setAttribute('aria-label', 'RHEED specular intensity; wheel to zoom, drag to pan');
    this._label = document.createElement('div');
    this._label.className = 'jp-AtomscalePanel-rheedWindow';
    const controls = document.createElement('div');
    controls.className = 'jp-AtomscalePanel-rheedControls';
    for (const [text, title, fn] of [
      ['+', 'Zoom in', () => this.zoom(0.5, 0.5)],
      ['−', 'Zoom out', () => this.zoom(2, 0.5)],
      ['⟲', 'Whole trace', () => this.reset()],
    ] as [string, string, () => void][]) {
      const b = document.createElement('button');
      b.className = 'jp-Button jp-mod-minimal jp-AtomscalePanel-rheedButton';
      b.textContent = text;
      b.title = title;
      b.setAttribute('aria-label', title);
      b.addEventListener('click', fn);
      controls.appendChild(b);
    }
    this._svg.addEventListener('wheel', (ev) => {
      ev.preventDefault();
      const r = this._svg.getBoundingClientRect();
      this.zoom(ev.deltaY < 0 ? 0.8 : 1.25, r.width ? (ev.clientX - r.left) / r.width : 0.5);
    });
    let dragX: number | null = null;
    this._svg.addEventListener('pointerdown', (ev) => {
      dragX = ev.clientX;
    });
    this._svg.addEventListener('pointerup', (ev) => {
      const r = this._svg.getBoundingClientRect();
      if (dragX !== null && r.width && Math.abs(ev.clientX - dragX) > 2) {
        this.pan(-(ev.clientX - dragX) / r.width);
      }
      dragX = null;
    });
    this._svg.addEventListener('dblclick', () => this.reset());
    this.node.append(this._svg, this._label, controls);
    this._draw();
  }

  /** The visible window (ms since the epoch). */
  get window(): IWindow {
    return { ...this._window };
  }

  /** Zoom by `factor` (< 1: in) around `centerFrac` of the visible window. */
  zoom(factor: number, centerFrac: number): void {
    this._window = zoomWindow(this._window, factor, centerFrac, this.full);
    this._draw();
  }

  /** Move the window by a fraction of its span. */
  pan(deltaFrac: number): void {
    this._window = panWindow(this._window, deltaFrac, this.full);
    this._draw();
  }

  /** Show the whole trace again. */
  reset(): void {
    this._window = { ...this.full };
    this._draw();
  }

  private _draw(): void {
    const w = this._window;
    const { d, points } = windowPath(this._t, this._v, w, this._w, this._h);
    this._svg.replaceChildren();
    const span = w.hi - w.lo || 1;
    for (const end of this._layers) {
      if (end >= w.lo && end <= w.hi) {
        const x = ((end - w.lo) / span) * this._w;
        const tick = document.createElementNS(NS, 'line');
        tick.setAttribute('class', 'jp-AtomscalePanel-rheedLayer');
        tick.setAttribute('x1', x.toFixed(1));
        tick.setAttribute('x2', x.toFixed(1));
        tick.setAttribute('y1', '0');
        tick.setAttribute('y2', String(this._h));
        tick.setAttribute('vector-effect', 'non-scaling-stroke');
        this._svg.appendChild(tick);
      }
    }
    if (d) {
      const p = document.createElementNS(NS, 'path');
      p.setAttribute('d', d);
      p.setAttribute('vector-effect', 'non-scaling-stroke');
      this._svg.appendChild(p);
    }
    const shown = this._layers.filter((x) => x >= w.lo && x <= w.hi).length;
    this._label.textContent = `${utcClock(w.lo)}–${utcClock(w.hi)} UTC · ${((w.hi - w.lo) / 1000).toFixed(1)} s`;
    this.node.dataset.lo = String(Math.round(w.lo));
    this.node.dataset.hi = String(Math.round(w.hi));
    this.node.dataset.points = String(points);
    this.node.dataset.layers = String(shown);
  }
}
