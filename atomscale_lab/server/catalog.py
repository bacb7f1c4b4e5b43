"""Run catalogue and frame helpers behind the REST API: filtering, sorting, paging, downsampling.

Pure logic on Arrow tables and numpy arrays; no HTTP and no storage access. The server keeps one
:class:`RunCatalog` in memory per org (rebuilt by :class:`Refreshing` when the runs table's commit
log changes), so a page over 100k runs is a few boolean masks and a slice of a cached sort order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atomscale_lab.errors import ValidationError
from atomscale_lab.schema import RUN_COLUMNS
from atomscale_lab.server.params import parse_int, parse_list, parse_time

SORTABLE = RUN_COLUMNS
MAX_PER_PAGE = 500
DEFAULT_PER_PAGE = 50
_MULTI = ("project", "sample", "instrument", "method", "operator", "status")
_SEARCHED = ("run_id", "project", "sample", "instrument", "method", "operator")


@dataclass(frozen=True)
class RunQuery:
    """One request for a page of runs."""

    project: tuple[str, ...] = ()
    sample: tuple[str, ...] = ()
    instrument: tuple[str, ...] = ()
    method: tuple[str, ...] = ()
    operator: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    q: str = ""
    sort: str = "start"
    order: str = "desc"
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> RunQuery:
        """Build from query parameters; unknown sort columns, bad times and sizes raise
        ``ValidationError`` with a message naming the parameter."""
        known = set(_MULTI) | {"start", "end", "q", "sort", "order", "page", "per_page", "format"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValidationError(
                f"unknown parameter {unknown[0]!r}; expected one of {', '.join(sorted(known))}",
                field=unknown[0],
            )
        sort = params.get("sort") or "start"
        if sort not in SORTABLE:
            raise ValidationError(
                f"cannot sort by {sort!r}; choose one of {', '.join(SORTABLE)}", field="sort"
            )
        order = (params.get("order") or "desc").lower()
        if order not in ("asc", "desc"):
            raise ValidationError("order must be 'asc' or 'desc'", field="order")
        start = parse_time(params.get("start"), "start")
        end = parse_time(params.get("end"), "end")
        if start and end and end < start:
            raise ValidationError("end is before start", field="end")
        return cls(
            **{k: parse_list(params.get(k)) for k in _MULTI},
            start=start,
            end=end,
            q=(params.get("q") or "").strip(),
            sort=sort,
            order=order,
            page=parse_int(params.get("page"), "page", 1),
            per_page=parse_int(
                params.get("per_page"), "per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE
            ),
        )


# --- the run catalogue ------------------------------------------------------------------------


@dataclass
class RunCatalog:
    """All runs of an org in memory, with cached sort orders.

    Built from the runs table (one row per run, the latest version); immutable afterwards, so it is
    safe to share between threads and is replaced as a whole when the table changes.
    """

    table: pa.Table
    _orders: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _nulls: dict[str, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        cols = [c for c in RUN_COLUMNS if c in self.table.column_names]
        t = self.table.select(cols)
        for c in RUN_COLUMNS:  # tolerate a table written before a column existed
            if c not in t.column_names:
                t = t.append_column(c, pa.nulls(t.num_rows, pa.string()))
        self.table = t.combine_chunks()
        self.n = t.num_rows
        self._index = {rid: i for i, rid in enumerate(t.column("run_id").to_pylist())}
        # dictionary-encode categorical columns once: equality filters compare small int codes
        self._codes: dict[str, tuple[np.ndarray, dict[str, int]]] = {}
        for c in _MULTI:
            enc = pc.dictionary_encode(t.column(c)).combine_chunks()
            codes = enc.indices.to_numpy(zero_copy_only=False)
            codes = np.where(enc.indices.is_null().to_numpy(zero_copy_only=False), -1, codes)
            self._codes[c] = (
                codes.astype(np.int64),
                {v: i for i, v in enumerate(enc.dictionary.to_pylist())},
            )
        self._start = _epoch_us(t.column("start"))
        self._end = _epoch_us(t.column("end"))
        parts = [pc.fill_null(t.column(c).cast(pa.string()), "") for c in _SEARCHED]
        self._haystack = pc.utf8_lower(pc.binary_join_element_wise(*parts, "\x1f"))

    def __len__(self) -> int:
        return self.n

    def get(self, run_id: str) -> dict | None:
        """One run record (JSON-ready), or None."""
        i = self._index.get(run_id)
        if i is None:
            return None
        return rows_to_records(self.table.slice(i, 1))[0]

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._index

    def values(self, column: str) -> list[str]:
        """The distinct non-null values of a categorical column (for filter pickers), sorted."""
        if column not in self._codes:
            raise ValidationError(f"no distinct values for {column!r}", field="column")
        return sorted(self._codes[column][1])

    def run_ids(self) -> list[str]:
        """Every run id of the catalogue (for a context join over the whole org)."""
        return list(self._index)

    def mask(self, q: RunQuery, among: Collection[str] | None = None) -> np.ndarray:
        """Boolean mask of the runs matching the query's filters (and, if given, in ``among``)."""
        m = np.ones(self.n, dtype=bool)
        if among is not None:
            keep = np.zeros(self.n, dtype=bool)
            rows = [i for i in map(self._index.get, among) if i is not None]
            keep[np.asarray(rows, dtype=np.int64)] = True
            m &= keep
        for c in _MULTI:
            wanted = getattr(q, c)
            if wanted:
                codes, lookup = self._codes[c]
                ids = [lookup[v] for v in wanted if v in lookup]
                m &= np.isin(codes, ids) if ids else False
        # a run matches a window [start, end) when its span [start, end or now] overlaps it
        if q.end is not None:
            m &= self._start < _us(q.end)
        if q.start is not None:
            end = np.where(self._end == _NULL, np.iinfo(np.int64).max, self._end)
            m &= end >= _us(q.start)
        if q.q:
            hit = pc.match_substring(self._haystack, q.q.lower())
            m &= hit.to_numpy(zero_copy_only=False)
        return m

    def order(self, column: str, descending: bool) -> np.ndarray:
        """Row indices sorted by ``column`` (ties by run id; nulls last in both directions).

        Ascending orders are computed once per column (on first use, or all at once by
        :meth:`warm`); the descending one is the reversed non-null part followed by the nulls.
        """
        with self._lock:
            asc = self._orders.get(column)
        if asc is None:
            if column not in SORTABLE:
                raise ValidationError(f"cannot sort by {column!r}", field="sort")
            asc = pc.sort_indices(
                self.table,
                sort_keys=[(column, "ascending", "at_end"), ("run_id", "ascending", "at_end")],
            ).to_numpy()
            nulls = int(self.table.column(column).null_count)
            with self._lock:
                self._orders[column] = asc
                self._nulls[column] = nulls
        if not descending:
            return asc
        key = column + ":desc"
        with self._lock:
            desc = self._orders.get(key)
        if desc is None:
            k = self.n - self._nulls[column]
            desc = np.concatenate([asc[:k][::-1], asc[k:]])
            with self._lock:
                self._orders[key] = desc
        return desc

    def warm(self) -> RunCatalog:
        """Compute every sort order now (so that no request pays for one)."""
        for c in SORTABLE:
            self.order(c, False)
            self.order(c, True)
        return self

    def page_table(self, q: RunQuery, among: Collection[str] | None = None) -> tuple[int, pa.Table]:
        """``(total matches, the page's rows as an Arrow table)``; ``among`` limits the run ids."""
        m = self.mask(q, among)
        order = self.order(q.sort, q.order == "desc")
        hits = order[m[order]]
        lo = (q.page - 1) * q.per_page
        page = hits[lo : lo + q.per_page]
        return int(len(hits)), self.table.take(pa.array(page, pa.int64()))

    def query(self, q: RunQuery) -> dict:
        """A page of runs: ``{total, page, per_page, runs}`` (JSON-ready)."""
        total, rows = self.page_table(q)
        return {
            "total": total,
            "page": q.page,
            "per_page": q.per_page,
            "runs": rows_to_records(rows) if rows.num_rows else [],
        }


_NULL = np.iinfo(np.int64).min


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


def _epoch_us(col) -> np.ndarray:
    arr = col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return pc.fill_null(arr, _NULL).to_numpy()


# --- frames ----------------------------------------------------------------------------------


def iso_strings(table: pa.Table) -> pa.Table:
    """Timestamp columns as ISO 8601 strings in UTC (``2024-05-01T12:00:00.000000Z``)."""
    cols = []
    for f, col in zip(table.schema, table.columns, strict=True):
        if pa.types.is_timestamp(f.type):
            # Formatted as naive UTC values: a zone-aware cast to string looks the zone up per
            # value (~10x slower; most of a JSON frame's encoding time).
            utc = col.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).cast(pa.timestamp("us"))
            s = pc.replace_substring(utc.cast(pa.string()), " ", "T", max_replacements=1)
            col = pc.binary_join_element_wise(s, "Z", "")
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def rows_to_records(table: pa.Table) -> list[dict]:
    """Rows as JSON-ready dicts (times as ISO strings, NaN as None)."""
    recs = iso_strings(table).to_pylist()
    for r in recs:
        for k, v in r.items():
            if isinstance(v, float) and v != v:
                r[k] = None
    return recs


def frame_json(table: pa.Table) -> dict:
    """A frame as ``{"columns": [...], "data": [[...], ...]}`` (times as ISO strings)."""
    t = iso_strings(table)
    cols = [c.to_pylist() for c in t.columns]
    data = [list(row) for row in zip(*cols, strict=True)] if cols else []
    for row in data:
        for i, v in enumerate(row):
            if isinstance(v, float) and v != v:
                row[i] = None
    return {"columns": t.column_names, "data": data}


def sorted_by_channel_time(table: pa.Table) -> bool:
    """True when rows are already ordered by ``channel`` then ``time`` (checking is ~10x cheaper
    than sorting; the store writes each run's rows in this order)."""
    n = table.num_rows
    if n < 2:
        return True
    ch, tm = table.column("channel"), table.column("time")
    later = pc.greater(ch.slice(1), ch.slice(0, n - 1))
    same = pc.equal(ch.slice(1), ch.slice(0, n - 1))
    if not pc.all(pc.or_(later, same)).as_py():
        return False
    return bool(pc.all(pc.or_(later, pc.greater_equal(tm.slice(1), tm.slice(0, n - 1)))).as_py())


def downsample(
    table: pa.Table, max_points: int, *, group: str = "channel", x: str = "time", y: str = "value"
) -> pa.Table:
    """At most ~``max_points`` rows per ``group``, keeping each bucket's minimum and maximum ``y``.

    Min/max decimation keeps spikes and steps visible in a plot (a stride would drop them). Rows
    come back sorted by group and ``x``.
    """
    if max_points < 2:
        raise ValidationError("max_points must be at least 2", field="max_points")
    if table.num_rows == 0:
        return table
    table = table.sort_by([(group, "ascending"), (x, "ascending")])
    groups = table.column(group).to_numpy(zero_copy_only=False)
    yv = table.column(y).to_numpy(zero_copy_only=False).astype(float)
    bounds = np.flatnonzero(groups[1:] != groups[:-1]) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(groups)]])
    keep = []
    for lo, hi in zip(starts, stops, strict=True):
        n = hi - lo
        if n <= max_points:
            keep.append(np.arange(lo, hi))
            continue
        nb = max_points // 2
        bucket = (np.arange(n) * nb) // n
        vals = np.where(np.isnan(yv[lo:hi]), np.inf, yv[lo:hi])
        o = np.lexsort((vals, bucket))  # per bucket ascending by value
        first = np.flatnonzero(np.r_[True, bucket[o][1:] != bucket[o][:-1]])
        last = np.r_[first[1:] - 1, n - 1]
        picked = np.unique(np.concatenate([o[first], o[last], [0, n - 1]]))
        keep.append(lo + picked)
    idx = np.concatenate(keep)
    return table.take(pa.array(idx, pa.int64()))


def page_of(table: pa.Table, page: int, per_page: int) -> pa.Table:
    """Rows of one page (1-based)."""
    return table.slice((page - 1) * per_page, per_page)


# --- refreshing caches ------------------------------------------------------------------------

T = TypeVar("T")


class Refreshing(Generic[T]):
    """A value rebuilt by ``build()`` whenever ``version()`` changes (checked at most every
    ``min_interval`` seconds).

    Once a value exists, a change is rebuilt on a background thread while callers keep getting
    the previous value (a large catalogue takes a second to rebuild; no request should wait for
    it), unless they ask to ``wait``. Concurrent callers share one rebuild.
    """

    def __init__(
        self,
        build: Callable[[], T],
        version: Callable[[], Hashable],
        min_interval: float = 1.0,
        background: bool = True,
    ):
        self._build, self._version, self.min_interval = build, version, min_interval
        self.background = background
        self._value: T | None = None
        self._seen: Hashable = object()
        self._checked = 0.0
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._rebuilding: threading.Thread | None = None
        self.builds = 0
        self.error: BaseException | None = None

    def _rebuild(self, v: Hashable) -> T:
        with self._build_lock:
            with self._lock:
                if self._value is not None and self._seen == v:
                    return self._value  # another caller built this version meanwhile
            value = self._build()
            with self._lock:
                self._value, self._seen = value, v
                self.builds += 1
            return value

    def _background(self, v: Hashable) -> None:
        try:
            self._rebuild(v)
            self.error = None
        except Exception as e:  # noqa: BLE001 - kept for the next get to raise
            self.error = e

    def get(self, wait: bool = False) -> T:
        """The current value; a changed source is rebuilt (in the background unless ``wait``
        or nothing was built yet)."""
        if self.error is not None:
            wait = True  # the last background rebuild failed: let this caller see why
        now = time.monotonic()
        if self._value is not None and not wait and now - self._checked < self.min_interval:
            return self._value
        with self._lock:
            v = self._version()
            self._checked = time.monotonic()
            if self._value is not None and v == self._seen:
                return self._value
            running = (
                self._rebuilding
                if (self._rebuilding is not None and self._rebuilding.is_alive())
                else None
            )
            if self._value is not None and self.background and not wait:
                if running is None:
                    self._rebuilding = threading.Thread(
                        target=self._background, args=(v,), name="atomscale-catalogue", daemon=True
                    )
                    self._rebuilding.start()
                return self._value
        if running is not None:
            running.join()
        value = self._rebuild(v)
        self.error = None
        return value

    def invalidate(self) -> None:
        """Force a rebuild on the next ``get``."""
        with self._lock:
            self._seen = object()
            self._checked = 0.0
