"""The ingest engine: streams, batch acceptance through the WAL, flushing, recovery, run states.

No HTTP here: ``service.py`` is a thin Tornado layer over :class:`IngestCore`.

Exactly-once, across ``kill -9``:

- a batch is acknowledged after its WAL record is fsynced; its ``(stream, batch id)`` and body
  digest go into ``state.sqlite`` (a retried id is answered as a duplicate, a reused id with other
  content is refused);
- the flusher seals the WAL segments, records every batch id they hold (so an id is known even if
  the request thread died before recording it), then commits one store write per table, marking
  each ``(segments, table)`` as ``committing`` before and ``done`` after the write; the segments are
  deleted only when every table is done;
- on restart, intents left ``committing`` are in doubt: the rows of that table's part of the
  segments are looked up in the store, and the write is repeated only if they are not there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from atomscale_lab import schema
from atomscale_lab.errors import (
    AtomscaleError,
    NotFound,
    ValidationError,
)
from atomscale_lab.ingest import statedb
from atomscale_lab.ingest.flushing import WalFlusher, _iso, _now
from atomscale_lab.ingest.lease import Lease, NotLeaseHolder
from atomscale_lab.ingest.sealed import RegistrySeal
from atomscale_lab.ingest.wal import Wal, WalRecord, wal_key

log = logging.getLogger(__name__)

CATEGORY_TABLE = schema.CATEGORY_TABLES
STREAM_STATES = schema.RUN_STATUSES
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, run_id TEXT NOT NULL, tool TEXT NOT NULL,
    category TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL,
    last_batch REAL, rows INTEGER NOT NULL DEFAULT 0, batches INTEGER NOT NULL DEFAULT 0,
    flushed_rows INTEGER NOT NULL DEFAULT 0, min_time TEXT, max_time TEXT,
    opened_by TEXT NOT NULL, error TEXT, run_box TEXT, time_box TEXT);
CREATE INDEX IF NOT EXISTS streams_run ON streams (org, run_id, tool, category);
CREATE TABLE IF NOT EXISTS batches (
    stream_id TEXT NOT NULL, batch_id TEXT NOT NULL, rows INTEGER NOT NULL, digest TEXT NOT NULL,
    accepted TEXT NOT NULL, PRIMARY KEY (stream_id, batch_id));
CREATE TABLE IF NOT EXISTS flushes (
    org TEXT NOT NULL, segments TEXT NOT NULL, tbl TEXT NOT NULL, rows INTEGER NOT NULL,
    state TEXT NOT NULL, started TEXT NOT NULL, PRIMARY KEY (org, segments, tbl));
"""
_WAL_COLUMNS = (("batches", "wal"), ("flushes", "wal"))
"""Which replica's WAL holds a batch (``batches.wal``: the batch's claim) and a flush intent
(``flushes.wal``): several replicas share one state database at scale (``statedb.py``)."""
_SEALED_COLUMNS = ("run_box", "time_box")
"""Nothing identifying in ``streams`` at rest: ``run_id`` holds a keyed hash of the run id (for
lookups), ``run_box`` the sealed run id, ``time_box`` the sealed ``[min, max]`` row times
(``min_time``/``max_time`` stay empty; columns of files from before sealing)."""


class StreamClosed(AtomscaleError):
    """The stream was finalized (or failed) and takes no more batches (HTTP 409)."""

    http_status = 409


class BatchConflict(AtomscaleError):
    """A batch id was reused with different content (HTTP 409)."""

    http_status = 409


class BatchTooLarge(ValidationError):
    """A batch has more rows or bytes than the service accepts (HTTP 413)."""

    http_status = 413


class RunConflict(AtomscaleError):
    """The run exists and was not created by this key's streams (HTTP 409)."""

    http_status = 409


class TooManyStreams(AtomscaleError):
    """An API key already has as many open streams as allowed (HTTP 429)."""

    http_status = 429
    retry_after = 5


class NotYetStored(AtomscaleError):
    """Finalize found rows still waiting for the store (HTTP 503, retry)."""

    http_status = 503
    retry_after = 1


class Busy(AtomscaleError):
    """The same batch is being stored by another request right now (HTTP 503, retry)."""

    http_status = 503
    retry_after = 1


def check_id(value, field: str) -> str:
    """A run id, tool name or batch id: 1-128 characters of ``[A-Za-z0-9._:@+-]``."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValidationError(
            f"{field} must be 1-128 characters of letters, digits and ._:@+- (got {value!r})",
            field=field,
        )
    return value


def _digest(data) -> str:
    """A digest of a batch given as rows or an Arrow table (to tell a retry from a reused id)."""
    h = hashlib.sha256()
    if isinstance(data, list):
        h.update(json.dumps(data, sort_keys=True, default=str).encode())
    else:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, data.schema) as w:
            w.write_table(data)
        h.update(sink.getvalue())
    return h.hexdigest()


class IngestCore(WalFlusher):
    """Streams of every org on one deployment (a ``Vault``), with a WAL per org.

    ``flush_interval``: seconds between flushes of the WAL into the store; ``idle_timeout``: an
    active stream with no batch for that long becomes ``interrupted``; ``compact_interval``:
    seconds between compactions of the tables this service wrote to.
    """

    def __init__(
        self,
        vault,
        state_dir: Path | None = None,
        *,
        flush_interval: float = 0.5,
        idle_timeout: float = 120.0,
        compact_interval: float = 120.0,
        max_batch_rows: int = 500_000,
        max_wal_bytes: int = 2 << 30,
        max_open_streams: int = 64,
        lease: Lease | None = None,
        replica: str | None = None,
    ):
        self.vault = vault
        self.state_dir = Path(state_dir or Path(vault.settings.home) / "ingest")
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.flush_interval, self.idle_timeout = flush_interval, idle_timeout
        self.compact_interval, self.max_batch_rows = compact_interval, max_batch_rows
        self.max_wal_bytes = max_wal_bytes
        self.max_open_streams = max_open_streams
        self.replica = replica or statedb.replica_id(self.state_dir)
        self._database = statedb.open_state(vault.settings, self.state_dir, "state")
        if statedb.is_sqlite(self._database):
            self._init_sqlite()
        # in-process guard of the pending set and of select-then-insert (one owner per org
        # across processes is the lease's job)
        self._db_lock = self._database.lock or threading.RLock()
        self._owned: set[str] = set()
        self.lease = lease or statedb.make_lease(vault.settings, on_lost=self._lease_lost)
        self._flush_lock = threading.Lock()
        self._locks_lock = threading.Lock()
        self._org_locks: dict[str, threading.RLock] = {}
        self._wals: dict[str, Wal] = {}
        self._org_keys: dict[str, object] = {}
        self._stores: dict[str, object] = {}
        self._pending: set[tuple[str, str]] = set()
        self._dirty: dict[tuple[str, str], float] = {}
        self._last_compact = time.monotonic()
        self._last_adopt = time.monotonic()
        self.adopt_interval = 1.0
        """Seconds between looks for orgs whose owner died (shared state database only)."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.flush_errors = 0
        self.max_flush_failures = 5
        self._failures: dict[str, int] = {}
        self._seal = RegistrySeal(self._keys, "state")
        self.recover()

    def _init_sqlite(self) -> None:
        """The embedded state file: tables, and columns added since older files were made (at
        scale the same tables come from the database's numbered migrations)."""
        db = self._database.conn
        db.executescript(_SCHEMA)
        for table, cols in (("streams", _SEALED_COLUMNS), *((t, (c,)) for t, c in _WAL_COLUMNS)):
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            for col in cols:
                if col not in have:  # a state file from before sealing / before replicas
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {col} TEXT")
        # intents of a file from before replicas are this (the only) replica's
        db.execute("UPDATE flushes SET wal=? WHERE wal IS NULL", (self.replica,))
        with contextlib.suppress(OSError):
            os.chmod(self.state_dir / "state.sqlite", 0o600)

    # -- ownership ----------------------------------------------------------------------------
    def own(self, org: str) -> None:
        """Make sure this replica owns ``org`` before writing for it; raise ``NotLeaseHolder``
        (503) while another replica does. Taking an org over marks its live streams interrupted
        (their previous owner is gone; the next batch makes them active again)."""
        if org in self._owned and self.lease.holds(org):
            return
        with self._org_lock(org):
            if org in self._owned and self.lease.holds(org):
                return
            if not self.lease.acquire(org):
                raise NotLeaseHolder(
                    f"another ingest replica owns org {org!r} right now; retry shortly"
                )
            if getattr(self.lease, "shared", False):
                self._interrupt_live(org)
            self._owned.add(org)

    def _lease_lost(self, orgs: set[str]) -> None:
        self._owned -= set(orgs)
        log.error("ingest: lost the lease of %s org(s); refusing their writes", len(orgs))

    # -- plumbing -----------------------------------------------------------------------------
    def _sql(self, query: str, args=()) -> list:
        return self._database.sql(query, args)

    def _tx(self):
        """One transaction of the state database (autocommit otherwise)."""
        return self._database.tx()

    def _org_lock(self, org: str) -> threading.RLock:
        with self._locks_lock:
            return self._org_locks.setdefault(org, threading.RLock())

    def _keys(self, org: str):
        if org not in self._org_keys:
            self._org_keys[org] = self.vault.org_keys(org)
        return self._org_keys[org]

    def _store(self, org: str):
        if org not in self._stores:
            self._stores[org] = self.vault.store(org, actor="ingest")
        return self._stores[org]

    def _wal(self, org: str) -> Wal:
        with self._locks_lock:
            if org not in self._wals:
                self._wals[org] = Wal(
                    self.state_dir / "wal" / org,
                    org,
                    lambda v, org=org: wal_key(self._keys(org), v),
                )
            return self._wals[org]

    def _audit(self, org: str, actor: str, action: str, outcome: str = "allowed", **detail):
        try:
            self.vault.audit(org).record(actor, action, outcome, **detail)
        except AtomscaleError:
            log.exception("could not audit %s for org %s", action, org)

    # -- streams ------------------------------------------------------------------------------
    def open_stream(self, key, run_id: str, tool: str, category: str, **meta) -> dict:
        """Open (or resume) the stream of ``run_id``/``tool``/``category`` for the key's org.

        The run record in ``process/runs`` is created or updated with status ``active``.
        """
        check_id(run_id, "run_id")
        check_id(tool, "tool")
        if category not in CATEGORY_TABLE:
            raise ValidationError(
                f"category must be one of {', '.join(CATEGORY_TABLE)}", field="category"
            )
        key.require(f"ingest:{category}")
        meta = {k: v for k, v in meta.items() if v is not None}
        for k, v in meta.items():
            if k not in ("project", "sample", "method", "operator") or not isinstance(v, str):
                raise ValidationError(f"unknown or non-text stream field {k!r}", field=k)
        org = key.org
        self.own(org)
        now = _iso(_now())
        self._check_run_owner(key, run_id)
        run_tag = self._run_tag(org, run_id)
        with self._db_lock:
            row = self._sql(
                "SELECT id, status FROM streams WHERE org=? AND run_id=? AND tool=? AND "
                "category=? AND status NOT IN ('complete', 'error') ORDER BY created DESC "
                "LIMIT 1",
                (org, run_tag, tool, category),
            )
            if row:
                sid, created = row[0][0], False
                self._sql(
                    "UPDATE streams SET status='active', updated=?, last_batch=? WHERE id=?",
                    (now, time.time(), sid),
                )
            else:
                # Each open stream pins a run record and state: one key cannot open without end.
                n_open = self._sql(
                    "SELECT count(*) FROM streams WHERE org=? AND opened_by=? AND "
                    "status IN ('active', 'interrupted', 'finalizing')",
                    (org, key.actor),
                )[0][0]
                if n_open >= self.max_open_streams:
                    raise TooManyStreams(
                        f"API key {key.prefix} has {n_open} open streams (at "
                        f"most {self.max_open_streams}); finalize some first"
                    )
                sid, created = "st_" + secrets.token_hex(8), True
                self._sql(
                    "INSERT INTO streams (id, org, run_id, tool, category, status, "
                    "created, updated, last_batch, opened_by, run_box) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        sid,
                        org,
                        run_tag,
                        tool,
                        category,
                        "active",
                        now,
                        now,
                        time.time(),
                        key.actor,
                        self._seal.seal(org, run_id, f"{org}/{sid}/run"),
                    ),
                )
        self._update_run(org, run_id, "active", actor=key.actor, instrument=tool, **meta)
        self._audit(
            org,
            key.actor,
            "ingest.stream_open",
            stream=sid,
            run_id=run_id,
            tool=tool,
            category=category,
            resumed=not created,
        )
        return self.stream(key, sid)

    def _run_tag(self, org: str, run_id: str) -> str:
        """What ``streams.run_id`` holds for a run: its keyed hash (see ``sealed.py``)."""
        return self._seal.tag(org, "run", run_id)

    def _run_of(self, org: str, sid: str, box: str | None) -> str:
        return self._seal.unseal(org, box, f"{org}/{sid}/run")

    def _check_run_owner(self, key, run_id: str) -> None:
        """A stream may create its run, or resume a run its key's streams created; any other
        existing run (imported, another key's, another tool's) is refused with 409."""
        own = self._sql(
            "SELECT 1 FROM streams WHERE org=? AND run_id=? AND opened_by=? LIMIT 1",
            (key.org, self._run_tag(key.org, run_id), key.actor),
        )
        if own:
            return
        with self._org_lock(key.org):
            try:
                exists = run_id in self._store(key.org).table("process/runs").run_ids()
            except NotFound:
                exists = False
        if exists:
            self._audit(
                key.org,
                key.actor,
                "ingest.stream_open",
                "denied",
                run_id=run_id,
                reason="run exists and was not created by this key",
            )
            raise RunConflict(
                f"run {run_id!r} already exists and was not created by this API "
                "key's streams; stream into a new run id"
            )

    def stream(self, key, stream_id: str) -> dict:
        """The state of a stream of the key's org (``NotFound`` for another org's stream)."""
        rows = self._sql(
            "SELECT id, run_box, tool, category, status, created, updated, "
            "last_batch, rows, batches, flushed_rows, time_box, error "
            "FROM streams WHERE id=? AND org=?",
            (stream_id, key.org),
        )
        if not rows:
            raise NotFound(f"no stream {stream_id!r}")
        d = dict(
            zip(
                (
                    "id",
                    "run_id",
                    "tool",
                    "category",
                    "status",
                    "created",
                    "updated",
                    "last_batch",
                    "rows",
                    "batches",
                    "flushed_rows",
                    "time_box",
                    "error",
                ),
                rows[0],
                strict=True,
            )
        )
        d["run_id"] = self._run_of(key.org, stream_id, d["run_id"])
        d["min_time"], d["max_time"] = self._times(key.org, stream_id, d.pop("time_box"))
        d["last_batch"] = (
            _iso(datetime.fromtimestamp(d["last_batch"], UTC)) if d["last_batch"] else None
        )
        return d

    def _times(self, org: str, sid: str, box: str | None) -> tuple[str | None, str | None]:
        if box is None:
            return None, None
        lo, _, hi = self._seal.unseal(org, box, f"{org}/{sid}/times").partition("|")
        return lo, hi

    def conform(self, stream: dict, data) -> pa.Table:
        """Validate rows for a stream: fill ``run_id`` (and ``tool``), refuse other runs/tools."""
        spec = schema.spec(CATEGORY_TABLE[stream["category"]])
        fill = {"run_id": stream["run_id"]}
        if "tool" in spec.schema.names:
            fill["tool"] = stream["tool"]
        if isinstance(data, list):
            if not data:
                raise ValidationError("the batch has no rows", field="rows")
            for i, row in enumerate(data):
                if not isinstance(row, dict):
                    raise ValidationError(f"row {i} is not an object", row=i)
                for f, v in fill.items():
                    if row.get(f) is None:
                        row[f] = v
                    elif row[f] != v:
                        raise ValidationError(
                            f"field {f!r} in row {i} is {row[f]!r}, but this stream is for {v!r}",
                            field=f,
                            row=i,
                        )
        else:
            if data.num_rows == 0:
                raise ValidationError("the batch has no rows", field="rows")
            for f, v in fill.items():
                if f in data.column_names:
                    col = data.column(f)
                    bad = pc.invert(pc.fill_null(pc.equal(col.cast(pa.string()), v), False))
                    bad = pc.and_(bad, pc.is_valid(col))
                    if pc.any(bad).as_py():
                        i = pc.index(bad, True).as_py()
                        raise ValidationError(
                            f"field {f!r} in row {i} is {col[i].as_py()!r}, but this stream is "
                            f"for {v!r}",
                            field=f,
                            row=i,
                        )
                    data = data.set_column(
                        data.column_names.index(f), f, pc.fill_null(col.cast(pa.string()), v)
                    )
                else:
                    data = data.append_column(f, pa.array([v] * data.num_rows, pa.string()))
        if len(data) > self.max_batch_rows:
            raise BatchTooLarge(
                f"a batch may hold at most {self.max_batch_rows} rows (got {len(data)})",
                field="rows",
            )
        return schema.conform(spec, data)

    def add_batch(
        self, key, stream_id: str, batch_id: str, data, digest: str | None = None
    ) -> dict:
        """Accept one batch: validate, append to the WAL (fsynced), record the id.

        Returns ``{"batch_id", "rows", "duplicate"}``; a retried batch id is not stored again.
        """
        self.own(key.org)
        stream = self.stream(key, stream_id)
        key.require(f"ingest:{stream['category']}")
        check_id(batch_id, "batch_id")
        if stream["status"] in ("complete", "error", "finalizing"):
            raise StreamClosed(f"stream {stream_id} is {stream['status']}; open a new one")
        if digest is None:
            digest = _digest(data)
        ident = (stream_id, batch_id)
        if self._wal(key.org).pending_bytes > self.max_wal_bytes:
            # The store is not keeping up: push back rather than let the WAL fill the disk.
            raise Busy("ingest is behind; retry this batch shortly")
        with self._db_lock:
            old = self._sql(
                "SELECT digest, rows FROM batches WHERE stream_id=? AND batch_id=?", ident
            )
            if not old and ident in self._pending:
                raise Busy(f"batch {batch_id!r} is being stored; retry")
            if not old:
                self._pending.add(ident)
        if old:
            if old[0][0] != digest:
                raise BatchConflict(f"batch id {batch_id!r} was already used for other rows")
            return {"batch_id": batch_id, "rows": old[0][1], "duplicate": True}
        try:
            table = self.conform(stream, data)
            times = table.column(schema.spec(CATEGORY_TABLE[stream["category"]]).time_column)
            tmin, tmax = pc.min(times).as_py(), pc.max(times).as_py()
            self._wal(key.org).append(
                [WalRecord(stream_id, batch_id, CATEGORY_TABLE[stream["category"]], table, digest)]
            )
            now = time.time()
            with self._tx() as db:
                # the claim: this replica's WAL holds the batch (see flushing.py)
                new = db.execute(
                    "INSERT INTO batches (stream_id, batch_id, rows, digest, accepted, wal) "
                    "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (stream_id, batch_id, table.num_rows, digest, _iso(_now()), self.replica),
                ).rowcount
                n = table.num_rows if new else 0  # else the flusher has counted it already
                # the time range is sealed: widened here, inside the transaction
                # read-modify-write: on PostgreSQL (read committed) lock the row first
                lock = "" if statedb.is_sqlite(self._database) else " FOR UPDATE"
                (box,) = db.execute(
                    "SELECT time_box FROM streams WHERE id=?" + lock,  # noqa: S608 - no input
                    (stream_id,),
                ).fetchone()
                lo, hi = self._times(key.org, stream_id, box)
                lo = min(x for x in (lo, _iso(tmin)) if x is not None)
                hi = max(x for x in (hi, _iso(tmax)) if x is not None)
                db.execute(
                    "UPDATE streams SET rows=rows+?, batches=batches+?, last_batch=?, updated=?, "
                    "status=CASE WHEN status='interrupted' THEN 'active' ELSE status END, "
                    "time_box=? WHERE id=?",
                    (
                        n,
                        1 if new else 0,
                        now,
                        _iso(_now()),
                        self._seal.seal(key.org, f"{lo}|{hi}", f"{key.org}/{stream_id}/times"),
                        stream_id,
                    ),
                )
        finally:
            with self._db_lock:
                self._pending.discard(ident)
        if stream["status"] == "interrupted":
            self._update_run(key.org, stream["run_id"], "active", actor=key.actor)
        return {"batch_id": batch_id, "rows": table.num_rows, "duplicate": False}

    def finalize(self, key, stream_id: str) -> dict:
        """Flush the stream's rows, mark it complete and close its run when no stream is left."""
        self.own(key.org)
        stream = self.stream(key, stream_id)
        key.require(f"ingest:{stream['category']}")
        if stream["status"] == "complete":
            return stream
        if stream["status"] == "error":
            raise StreamClosed(f"stream {stream_id} failed: {stream['error']}")
        self._set_status(stream_id, "finalizing")
        try:
            self._update_run(key.org, stream["run_id"], "finalizing", actor=key.actor)
            self.flush()
        except Exception:
            self._set_status(stream_id, "interrupted")
            raise
        stream = self.stream(key, stream_id)
        if stream["flushed_rows"] < stream["rows"]:
            self._set_status(stream_id, "interrupted")
            raise NotYetStored(
                f"stream {stream_id}: not every row is stored yet; retry the finalize"
            )
        self._set_status(stream_id, "complete")
        others = self._sql(
            "SELECT count(*) FROM streams WHERE org=? AND run_id=? AND id<>? AND "
            "status IN ('active', 'interrupted', 'finalizing')",
            (key.org, self._run_tag(key.org, stream["run_id"]), stream_id),
        )[0][0]
        end = datetime.fromisoformat(stream["max_time"]) if stream["max_time"] else _now()
        self._update_run(
            key.org, stream["run_id"], "active" if others else "complete", actor=key.actor, end=end
        )
        self._audit(
            key.org,
            key.actor,
            "ingest.finalize",
            stream=stream_id,
            run_id=stream["run_id"],
            rows=stream["rows"],
            batches=stream["batches"],
        )
        return self.stream(key, stream_id)

    def _set_status(self, stream_id: str, status: str, error: str | None = None) -> None:
        self._sql(
            "UPDATE streams SET status=?, updated=?, error=coalesce(?, error) WHERE id=?",
            (status, _iso(_now()), error, stream_id),
        )

    def _update_run(self, org: str, run_id: str, status: str, *, actor: str, **fields) -> None:
        """Write a new version of the run record (latest ``updated_at`` wins on read)."""
        with self._org_lock(org):
            table = self._store(org).table("process/runs")
            try:
                cur = table.read(run_ids=[run_id]).to_pylist()
            except NotFound:
                cur = []
            now = _now()
            rec = dict(cur[-1]) if cur else {"run_id": run_id, "start": now}
            prev = rec.get("updated_at")
            if prev is not None and prev >= now:
                now = prev + timedelta(microseconds=1)
            for k, v in fields.items():
                if v is not None and (k != "instrument" or not rec.get("instrument")):
                    rec[k] = v
            rec["status"], rec["updated_at"] = status, now
            table.write([rec], actor=actor)

    def close(self) -> None:
        """Stop the flusher, flush what is left, close the WALs and the state database."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.flush()
        except Exception:  # noqa: S110 - logged by _flush_failed; the WAL keeps the rows
            pass
        finally:
            for wal in self._wals.values():
                wal.close()
            self.lease.close()
            with self._db_lock:
                self._database.close()
