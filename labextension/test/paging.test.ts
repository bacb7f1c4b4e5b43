import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { debounce, LatestOnly, PagingState } from '../src/paging';

describe('PagingState', () => {
  it('pages through a large total without fetching it', () => {
    const p = new PagingState(50);
    p.setTotal(100_000);
    expect(p.pageCount).toBe(2000);
    expect(p.canPrev).toBe(false);
    expect(p.rangeLabel()).toBe('1–50 of 100,000');
    expect(p.next()).toBe(true);
    expect(p.query()).toMatchObject({ page: 2, per_page: 50 });
    expect(p.rangeLabel()).toBe('51–100 of 100,000');
  });

  it('stops at both ends', () => {
    const p = new PagingState(10);
    p.setTotal(25);
    expect(p.prev()).toBe(false);
    expect(p.next()).toBe(true);
    expect(p.next()).toBe(true);
    expect(p.page).toBe(3);
    expect(p.next()).toBe(false);
    expect(p.rangeLabel()).toBe('21–25 of 25');
  });

  it('goes back to page 1 on a new search, not on the same one', () => {
    const p = new PagingState(10);
    p.setTotal(100);
    p.next();
    expect(p.setQuery('  gaas ')).toBe(true);
    expect(p.page).toBe(1);
    expect(p.query().q).toBe('gaas');
    p.next();
    expect(p.setQuery('gaas')).toBe(false);
    expect(p.page).toBe(2);
  });

  it('sends facet filters and goes back to page 1 when one changes', () => {
    const p = new PagingState(10);
    p.setTotal(100);
    p.next();
    expect(p.setFilter('instrument', 'MBE-1')).toBe(true);
    expect(p.page).toBe(1);
    expect(p.query().instrument).toBe('MBE-1');
    p.next();
    expect(p.setFilter('instrument', 'MBE-1')).toBe(false);
    expect(p.page).toBe(2);
    expect(p.setFilter('instrument', '')).toBe(true);
    expect('instrument' in p.query()).toBe(false);
  });

  it('states the sidebar purpose with a material-system filter, and only then', () => {
    const p = new PagingState(10);
    p.setFilter('instrument', 'MBE-1');
    expect('purpose' in p.query()).toBe(false);
    expect(p.setFilter('material_system', 'GaAs/GaAs(001)')).toBe(true);
    expect(p.query()).toMatchObject({
      instrument: 'MBE-1',
      material_system: 'GaAs/GaAs(001)',
      purpose: 'sidebar facet',
    });
    p.setFilter('material_system', '');
    expect('purpose' in p.query()).toBe(false);
    expect('material_system' in p.query()).toBe(false);
  });

  it('leaves q out of the query when empty', () => {
    expect(new PagingState().query().q).toBeUndefined();
  });

  it('pulls the page back when the total shrinks', () => {
    const p = new PagingState(10);
    p.setTotal(100);
    p.page = 10;
    p.setTotal(35);
    expect(p.page).toBe(4);
    p.setTotal(0);
    expect(p.page).toBe(1);
    expect(p.rangeLabel()).toBe('No runs');
    p.setQuery('x');
    expect(p.rangeLabel()).toBe('No runs match');
  });

  it('resets the page on a new sort and clamps the page size', () => {
    const p = new PagingState(9999, 'run_id', 'asc');
    expect(p.perPage).toBe(500);
    p.setTotal(2000);
    p.next();
    p.setSort('sample', 'desc');
    expect(p.query()).toMatchObject({ sort: 'sample', order: 'desc', page: 1 });
  });
});

describe('debounce', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('calls once with the last arguments after the quiet period', () => {
    const fn = vi.fn();
    const d = debounce(fn, 300);
    d('g');
    vi.advanceTimersByTime(200);
    d('ga');
    vi.advanceTimersByTime(200);
    d('gaa');
    expect(fn).not.toHaveBeenCalled();
    vi.advanceTimersByTime(300);
    expect(fn).toHaveBeenCalledTimes(1);
    expect(fn).toHaveBeenCalledWith('gaa');
  });

  it('flushes at once and cancels', () => {
    const fn = vi.fn();
    const d = debounce(fn, 300);
    d('a');
    d.flush();
    expect(fn).toHaveBeenCalledWith('a');
    d('b');
    d.cancel();
    vi.advanceTimersByTime(1000);
    expect(fn).toHaveBeenCalledTimes(1);
    d.flush();
    expect(fn).toHaveBeenCalledTimes(1);
  });
});

describe('LatestOnly', () => {
  it('aborts the older request and marks it stale', () => {
    const l = new LatestOnly();
    const a = l.start();
    const b = l.start();
    expect(a.signal.aborted).toBe(true);
    expect(l.isCurrent(a)).toBe(false);
    expect(l.isCurrent(b)).toBe(true);
    l.cancel();
    expect(b.signal.aborted).toBe(true);
    expect(l.isCurrent(b)).toBe(false);
  });
});
