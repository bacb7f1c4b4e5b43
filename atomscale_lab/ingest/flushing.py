"""Flushing the ingest WAL into the org stores, compaction, and restart: the background half of
:class:`~atomscale_lab.ingest.core.IngestCore` (a base of it, which sets the state, the WALs and
the locks these methods use)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from atomscale_lab.errors import (
    AtomscaleError,
    IntegrityError,
    NotFound,
    UnknownOrg,
)
from atomscale_lab.ingest import statedb
from atomscale_lab.ingest.wal import Wal, WalRecord

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat(timespec="microseconds")


def _row_keys(table: pa.Table):
    for row in table.to_pylist():
        yield tuple(tuple(v) if isinstance(v, list) else v for v in row.values())


class WalFlusher:
    """Moves committed WAL segments into the stores, compacts them, recovers after a crash."""

    # -- flushing -----------------------------------------------------------------------------
    def flush(self) -> int:
        """Commit every sealed WAL segment of every org into the store; returns rows committed."""
        with self._flush_lock:
            total, errors = 0, []
            for org in self._wal_orgs():
                try:
                    self._check_org(org)
                    wal = self._wal(org)
                    segs = wal.rotate()
                    if segs:
                        total += self._flush_segments(org, wal, segs)
                    self._failures.pop(org, None)
                except Exception as e:  # one org's trouble must not stop the others
                    errors.append(e)
                    self._flush_failed(org, e)
            if errors:
                raise errors[0]
            return total

    def _check_org(self, org: str) -> None:
        """Raise ``UnknownOrg`` for a deleted org, after dropping its keys, store and WAL.

        The org's keys were destroyed (crypto-shred), so its WAL could not be decrypted by a
        later process anyway: it goes with the org, and its live streams end in ``error``.
        """
        try:
            self.vault.org_region(org)
        except UnknownOrg as e:
            self._org_keys.pop(org, None)
            self._stores.pop(org, None)
            with self._locks_lock:
                wal = self._wals.pop(org, None)
            if wal is not None:
                wal.close()
            shutil.rmtree(self.state_dir / "wal" / org, ignore_errors=True)
            for (sid,) in self._sql(
                "SELECT id FROM streams WHERE org=? AND status IN "
                "('active', 'interrupted', 'finalizing')",
                (org,),
            ):
                self._set_status(sid, "error", "the org was deleted")
            self._sql("DELETE FROM flushes WHERE org=? AND wal=?", (org, self.replica))
            log.warning("ingest: org %s was deleted; its unflushed batches were dropped", org)
            raise e

    def _flush_failed(self, org: str, exc: Exception) -> None:
        n = self._failures[org] = self._failures.get(org, 0) + 1
        log.error(
            "ingest: flushing org %s failed (%s in a row): %s; the WAL keeps the batches",
            org,
            n,
            exc,
        )
        if n == self.max_flush_failures and self.lease.holds(org):
            reason = f"rows cannot be stored: {type(exc).__name__}: {exc}"[:300]
            for sid, box in self._sql(
                "SELECT id, run_box FROM streams WHERE org=? AND status IN "
                "('active', 'interrupted', 'finalizing')",
                (org,),
            ):
                self._set_status(sid, "error", reason)
                with contextlib.suppress(Exception):
                    self._update_run(org, self._run_of(org, sid, box), "error", actor="ingest")

    def _wal_orgs(self) -> list[str]:
        root = self.state_dir / "wal"
        on_disk = [p.name for p in root.iterdir() if p.is_dir()] if root.exists() else []
        return sorted(set(on_disk) | set(self._wals))

    def _flush_segments(
        self, org: str, wal: Wal, segs: list[Path], seg_key: str | None = None
    ) -> int:
        seg_key = seg_key or ",".join(p.stem for p in segs)
        records: list[WalRecord] = []
        readable = []
        for p in segs:
            try:
                records.extend(wal.read(p))
                readable.append(p)
            except IntegrityError:
                self.flush_errors += 1  # quarantined and logged by the WAL
        # Claim every batch for this WAL; a batch another replica claimed first (a client
        # retried it there after this one died unacknowledged) is that replica's to store.
        mine = []
        with self._tx() as db:
            owners = self._claims(db, records)
            for r in records:
                ident = (r.stream_id, r.batch_id)
                if ident not in owners:  # acknowledged (or not) but never counted: a crash
                    cur = db.execute(
                        "INSERT INTO batches (stream_id, batch_id, rows, digest, accepted, wal) "
                        "VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                        (*ident, r.rows.num_rows, r.digest, _iso(_now()), self.replica),
                    )
                    if cur.rowcount == 1:
                        db.execute(
                            "UPDATE streams SET rows=rows+?, batches=batches+1 WHERE id=?",
                            (r.rows.num_rows, r.stream_id),
                        )
                        owners[ident] = self.replica
                    else:  # claimed between the look-up and now
                        owners.update(self._claims(db, [r]))
                if owners[ident] in (None, self.replica):  # None: a file from before replicas
                    mine.append(r)
        records = mine
        groups: dict[str, list[pa.Table]] = defaultdict(list)
        for r in records:
            groups[r.table].append(r.rows)
        done = {
            t
            for (t,) in self._sql(
                "SELECT tbl FROM flushes WHERE wal=? AND org=? AND segments=? AND state='done'",
                (self.replica, org, seg_key),
            )
        }
        doubt = {
            t
            for (t,) in self._sql(
                "SELECT tbl FROM flushes WHERE wal=? AND org=? AND segments=? "
                "AND state='committing'",
                (self.replica, org, seg_key),
            )
        }
        committed = 0
        for name, parts in sorted(groups.items()):
            if name in done:
                continue
            data = pa.concat_tables(parts)
            with self._org_lock(org):
                table = self._store(org).table(name)
                if name in doubt and self._already_committed(table, data):
                    log.warning(
                        "ingest: a flush of org %s to %s interrupted by a crash had "
                        "committed; not writing it again",
                        org,
                        name,
                    )
                else:
                    self._intent(org, seg_key, name, data.num_rows, "committing")
                    table.write(data, actor="ingest")
                    committed += data.num_rows
            self._sql(
                "UPDATE flushes SET state='done' WHERE wal=? AND org=? AND segments=? AND tbl=?",
                (self.replica, org, seg_key, name),
            )
            self._dirty.setdefault((org, name), time.monotonic())
        per_stream = Counter()
        for r in records:
            per_stream[r.stream_id] += r.rows.num_rows
        # One transaction marks the whole set done and counts its rows; only then are the
        # segments deleted, and only after that the intents (a crash in between is harmless).
        with self._tx() as db:
            for sid, n in per_stream.items():
                db.execute("UPDATE streams SET flushed_rows=flushed_rows+? WHERE id=?", (n, sid))
            self._intent(org, seg_key, "*", len(records), "done", db)
        self._finish(org, wal, seg_key, segs)
        return committed

    @staticmethod
    def _claims(db, records: list[WalRecord]) -> dict[tuple[str, str], str | None]:
        """``(stream, batch id) → wal`` of the claims that exist for ``records``."""
        wanted: dict[str, set[str]] = defaultdict(set)
        for r in records:
            wanted[r.stream_id].add(r.batch_id)
        out = {}
        for sid, ids in wanted.items():
            ids = sorted(ids)
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                q = f"SELECT batch_id, wal FROM batches WHERE stream_id=? AND batch_id IN ({marks})"  # noqa: S608 - placeholders only
                for bid, wal in db.execute(q, (sid, *part)).fetchall():
                    out[(sid, bid)] = wal
        return out

    def _intent(self, org: str, seg_key: str, tbl: str, rows: int, state: str, db=None) -> None:
        """Record (or replace) the flush intent of this replica for ``(segments, tbl)``."""
        args = (self.replica, org, seg_key, tbl)
        if db is None:
            with self._tx() as db:
                return self._intent(org, seg_key, tbl, rows, state, db)
        where = "WHERE wal=? AND org=? AND segments=? AND tbl=?"
        db.execute(f"DELETE FROM flushes {where}", args)  # noqa: S608 - placeholders only
        db.execute(
            "INSERT INTO flushes (wal, org, segments, tbl, rows, state, started) "
            "VALUES (?,?,?,?,?,?,?)",
            (*args, rows, state, _iso(_now())),
        )

    def _finish(self, org: str, wal: Wal, seg_key: str, segs: list[Path]) -> None:
        wal.remove(segs)
        self._sql(
            "DELETE FROM flushes WHERE wal=? AND org=? AND segments=?",
            (self.replica, org, seg_key),
        )

    @staticmethod
    def _already_committed(table, data: pa.Table) -> bool:
        runs = pc.unique(data.column("run_id")).to_pylist()
        try:
            stored = table.read(run_ids=runs)
        except NotFound:
            return False
        if stored.num_rows < data.num_rows:
            return False
        have = Counter(_row_keys(stored.select(data.column_names)))
        for k in _row_keys(data):
            if have[k] <= 0:
                return False
            have[k] -= 1
        return True

    def compact(self, force: bool = False) -> int:
        """Compact the tables this service wrote to; returns how many were compacted."""
        n = 0
        for org, name in list(self._dirty):
            with self._org_lock(org):
                try:
                    if self._store(org).table(name).compact() is not None:
                        n += 1
                except AtomscaleError:
                    log.exception("ingest: compaction of %s for org %s failed", name, org)
            self._dirty.pop((org, name), None)
        return n

    # -- restart and background work ---------------------------------------------------------
    def recover(self) -> None:
        """After a (re)start: mark streams that were live as interrupted and replay the WALs.

        With a shared state database the streams of an org are marked when this replica takes
        the org over (:meth:`own`), not here: another replica may own them. Its own WAL a
        replica always replays, lease or not (the batches in it are claimed for it).
        """
        self._seal_plaintext_streams()
        if getattr(self.lease, "shared", False):
            self.adopt_orphans()
        else:
            self._interrupt_live(None)
        with self._flush_lock:
            for org in self._wal_orgs():
                try:
                    self._recover_org(org)
                except Exception as e:  # the service must start for the other orgs
                    self._flush_failed(org, e)

    def adopt_orphans(self) -> list[str]:
        """Take over every org that has live streams and no owner (its replica died): they
        become interrupted here at once, not only when a client comes back. Returns the orgs
        taken over."""
        from atomscale_lab.ingest.lease import NotLeaseHolder

        taken = []
        for (org,) in self._sql(
            "SELECT DISTINCT org FROM streams WHERE status IN ('active', 'finalizing')"
        ):
            if org in self._owned:
                continue
            try:
                self.own(org)
                taken.append(org)
            except NotLeaseHolder:
                continue  # a live replica owns it
            except AtomscaleError:
                log.exception("ingest: could not take org %s over", org)
        return taken

    def _interrupt_live(self, org: str | None) -> None:
        """Mark the live streams of ``org`` (None: of every org) and their runs interrupted."""
        q = "SELECT id, org, run_box FROM streams WHERE status IN ('active', 'finalizing')"
        live = self._sql(q, ()) if org is None else self._sql(q + " AND org=?", (org,))
        for sid, o, box in live:
            self._set_status(sid, "interrupted")
            try:
                self._update_run(o, self._run_of(o, sid, box), "interrupted", actor="ingest")
            except AtomscaleError:
                log.exception("ingest: could not mark stream %s of org %s interrupted", sid, o)

    def _seal_plaintext_streams(self) -> None:
        """Seal the run ids and time ranges of a state file from before sealing (per org; an
        org whose keys are unavailable stays as it was until a later start)."""
        old = self._sql(
            "SELECT id, org, run_id, min_time, max_time FROM streams WHERE run_box IS NULL"
        )
        for sid, org, run_id, lo, hi in old:
            try:
                times = (
                    self._seal.seal(org, f"{lo}|{hi}", f"{org}/{sid}/times")
                    if lo is not None
                    else None
                )
                self._sql(
                    "UPDATE streams SET run_id=?, run_box=?, time_box=?, min_time=NULL, "
                    "max_time=NULL WHERE id=?",
                    (
                        self._run_tag(org, run_id),
                        self._seal.seal(org, run_id, f"{org}/{sid}/run"),
                        times,
                        sid,
                    ),
                )
            except AtomscaleError as e:
                log.warning("ingest: could not seal stream %s of org %s yet: %s", sid, org, e)
        if old and statedb.is_sqlite(self._database):
            with self._db_lock:
                # the plaintext must not stay in free pages
                self._database.conn.execute("VACUUM")

    def _recover_org(self, org: str) -> None:
        self._check_org(org)
        wal = self._wal(org)
        for (seg_key,) in self._sql(
            "SELECT DISTINCT segments FROM flushes WHERE wal=? AND org=?", (self.replica, org)
        ):
            segs = [wal.dir / f"{s}.wal" for s in seg_key.split(",")]
            finished = self._sql(
                "SELECT 1 FROM flushes WHERE wal=? AND org=? AND segments=? AND tbl='*'",
                (self.replica, org, seg_key),
            )
            if finished:
                self._finish(org, wal, seg_key, segs)
            else:
                self._flush_segments(org, wal, [p for p in segs if p.exists()], seg_key)
        segs = wal.rotate()
        if segs:
            self._flush_segments(org, wal, segs)

    def check_idle(self) -> list[str]:
        """Mark active streams without a batch for ``idle_timeout`` seconds as interrupted."""
        cutoff = time.time() - self.idle_timeout
        idle = self._sql(
            "SELECT id, org, run_box FROM streams WHERE status='active' AND last_batch < ?",
            (cutoff,),
        )
        idle = [r for r in idle if self.lease.holds(r[1])]  # another replica's are its own
        for sid, org, box in idle:
            self._set_status(sid, "interrupted")
            self._update_run(org, self._run_of(org, sid, box), "interrupted", actor="ingest")
        return [r[0] for r in idle]

    def start(self) -> None:
        """Start the background flusher (flush, idle check, compaction)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ingest-flusher", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
                self.check_idle()
                if getattr(self.lease, "shared", False) and (
                    time.monotonic() - self._last_adopt > self.adopt_interval
                ):
                    self._last_adopt = time.monotonic()
                    self.adopt_orphans()
                if time.monotonic() - self._last_compact > self.compact_interval:
                    self._last_compact = time.monotonic()
                    self.compact()
            except Exception:  # keep flushing: the WAL holds the data until a flush succeeds
                self.flush_errors += 1
                self._stop.wait(min(5.0, self.flush_interval * 4))
