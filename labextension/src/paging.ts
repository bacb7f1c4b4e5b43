/**
 * Paging and search state of the run list, kept apart from the DOM so it can be tested alone.
 *
 * The list never holds more than one page: every change of search, sort or page is one request
 * for one page, so the panel stays fast however many runs an org has.
 */

import { clampPerPage, CONTEXT_FACETS, IRunQuery, SIDEBAR_PURPOSE } from './client';

/** Sort keys the panel offers (all are columns of the runs table). */
export const SORT_KEYS = ['start', 'end', 'run_id', 'sample', 'instrument', 'status'] as const;

/** Search text, sort and page of the run list. */
export class PagingState {
  q = '';
  /** Facet filters (project, instrument, method, status, material_system): one value each. */
  filters: Record<string, string> = {};
  sort = 'start';
  order: 'asc' | 'desc' = 'desc';
  page = 1;
  total = 0;
  private _perPage = 50;

  constructor(perPage = 50, sort = 'start', order: 'asc' | 'desc' = 'desc') {
    this.perPage = perPage;
    this.sort = sort;
    this.order = order;
  }

  /** Rows per page, always within what the server accepts. */
  get perPage(): number {
    return this._perPage;
  }

  set perPage(n: number) {
    this._perPage = clampPerPage(n);
  }

  /** Number of pages (at least 1, so "page 1 of 1" reads right for an empty list). */
  get pageCount(): number {
    return Math.max(1, Math.ceil(this.total / this._perPage));
  }

  /** Whether a previous page exists. */
  get canPrev(): boolean {
    return this.page > 1;
  }

  /** Whether a next page exists. */
  get canNext(): boolean {
    return this.page < this.pageCount;
  }

  /** Go one page forward; returns false (and changes nothing) on the last page. */
  next(): boolean {
    if (!this.canNext) {
      return false;
    }
    this.page += 1;
    return true;
  }

  /** Go one page back; returns false on the first page. */
  prev(): boolean {
    if (!this.canPrev) {
      return false;
    }
    this.page -= 1;
    return true;
  }

  /** New search text: back to page 1. Returns whether anything changed. */
  setQuery(q: string): boolean {
    const text = q.trim();
    if (text === this.q) {
      return false;
    }
    this.q = text;
    this.page = 1;
    return true;
  }

  /** New sort key or order: back to page 1. */
  setSort(sort: string, order: 'asc' | 'desc' = this.order): void {
    this.sort = sort;
    this.order = order;
    this.page = 1;
  }

  /** Record the total the server reported, and pull the page back inside the new range. */
  setTotal(total: number): void {
    this.total = Math.max(0, Math.floor(total) || 0);
    if (this.page > this.pageCount) {
      this.page = this.pageCount;
    }
  }

  /** Set (or with `''` clear) one facet filter; back to page 1. Returns whether it changed. */
  setFilter(name: string, value: string): boolean {
    const before = this.filters[name] ?? '';
    if (before === value) {
      return false;
    }
    if (value) {
      this.filters[name] = value;
    } else {
      delete this.filters[name];
    }
    this.page = 1;
    return true;
  }

  /** The query for the current page; a context filter carries the sidebar's purpose. */
  query(): IRunQuery {
    const joins = CONTEXT_FACETS.some((name) => this.filters[name]);
    return {
      ...this.filters,
      ...(joins ? { purpose: SIDEBAR_PURPOSE } : {}),
      q: this.q || undefined,
      sort: this.sort,
      order: this.order,
      page: this.page,
      per_page: this._perPage,
    };
  }

  /** "101–150 of 100,000", or "No runs". */
  rangeLabel(): string {
    if (this.total === 0) {
      return this.q ? 'No runs match' : 'No runs';
    }
    const first = (this.page - 1) * this._perPage + 1;
    const last = Math.min(this.total, this.page * this._perPage);
    const fmt = (n: number) => n.toLocaleString('en-US');
    return `${fmt(first)}–${fmt(last)} of ${fmt(this.total)}`;
  }
}

/**
 * Delay calls of `fn` until `wait` ms have passed without a new call; only the last arguments
 * are used. `cancel()` drops a pending call, `flush()` runs it at once.
 */
export function debounce<A extends unknown[]>(
  fn: (...args: A) => void,
  wait: number,
): ((...args: A) => void) & { cancel(): void; flush(): void } {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let pending: A | undefined;
  const run = () => {
    timer = undefined;
    if (pending) {
      const args = pending;
      pending = undefined;
      fn(...args);
    }
  };
  const debounced = (...args: A) => {
    pending = args;
    if (timer !== undefined) {
      clearTimeout(timer);
    }
    timer = setTimeout(run, wait);
  };
  debounced.cancel = () => {
    if (timer !== undefined) {
      clearTimeout(timer);
    }
    timer = undefined;
    pending = undefined;
  };
  debounced.flush = () => {
    if (timer !== undefined) {
      clearTimeout(timer);
    }
    run();
  };
  return debounced;
}

/**
 * Keeps only the latest of overlapping requests: `start()` aborts the previous one and returns a
 * ticket; `isCurrent(ticket)` tells whether an answer is still wanted (a slow answer to an old
 * search must not overwrite the list of a newer one).
 */
export class LatestOnly {
  private _seq = 0;
  private _controller: AbortController | null = null;

  /** Begin a request, cancelling the one before it. */
  start(): { id: number; signal: AbortSignal } {
    this._controller?.abort();
    this._controller = new AbortController();
    this._seq += 1;
    return { id: this._seq, signal: this._controller.signal };
  }

  /** Whether the request with this ticket is still the latest. */
  isCurrent(ticket: { id: number }): boolean {
    return ticket.id === this._seq;
  }

  /** Cancel whatever is in flight. */
  cancel(): void {
    this._controller?.abort();
    this._controller = null;
    this._seq += 1;
  }
}
