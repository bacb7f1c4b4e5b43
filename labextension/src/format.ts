/**
 * Formatting of values shown in the panel.
 */

/** "2026-03-04 12:30 UTC" for an ISO time; the input unchanged when it is not a time; "—" for none. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) {
    return '—';
  }
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) {
    return iso;
  }
  return new Date(ms).toISOString().slice(0, 16).replace('T', ' ') + ' UTC';
}

/** A count with thousands separators. */
export function formatCount(n: number | null | undefined): string {
  return typeof n === 'number' && Number.isFinite(n) ? n.toLocaleString('en-US') : '—';
}

/** A short number for axis labels: 3 significant digits, no exponent for ordinary magnitudes. */
export function formatValue(v: number): string {
  if (!Number.isFinite(v)) {
    return '—';
  }
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) {
    return v.toExponential(2);
  }
  return Number(v.toPrecision(3)).toString();
}
