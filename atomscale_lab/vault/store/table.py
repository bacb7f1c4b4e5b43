"""One table of one org (:class:`OrgTable`) and an org's raw-data tables (:class:`OrgStore`).

The commit log a table is listed by is :mod:`.log`, its data files :mod:`.files`; a read opens
only what the log lists and checks each file against its entry first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from atomscale_lab.errors import IntegrityError, KeyUnavailable, ValidationError
from atomscale_lab.schema import TABLES, TableSpec
from atomscale_lab.schema import spec as lookup_spec
from atomscale_lab.vault.crypto import OrgCrypto, key_refusal
from atomscale_lab.vault.store.files import (
    _WARM_TTL,
    MAX_LISTED_RUN_IDS,
    READ_POOL,
    _BadFile,
    _to_us,
    bucket_of,
    prepare,
)
from atomscale_lab.vault.store.log import (
    _CKPT,
    _LOG,
    _STAT_KEYS,
    Commit,
    CommitLog,
    HeadStore,
    _check_crypto,
    _State,
)
from atomscale_lab.vault.store.media import as_root, medium

log = logging.getLogger(__name__)


class OrgTable(CommitLog):
    """One table of one org. All reads and writes go through here."""

    def __init__(
        self,
        root,
        org: str,
        spec: TableSpec,
        crypto: OrgCrypto,
        heads: HeadStore | None = None,
    ):
        """``root``: a ``Path`` or an ``S3Root`` (``s3://bucket/prefix`` text also works)."""
        _check_crypto(org, crypto)
        self.root = as_root(root)
        self.org = org
        self.spec = spec
        self.crypto = crypto
        self.heads = heads
        self._m = medium(self.root, org, spec.name)
        self.path: Path | None = getattr(self._m, "path", None)
        """The table's folder (local roots only; see ``_m`` for either kind)."""
        if self.path is not None:
            self._log_path = self.path / _LOG / "commits.jsonl"
            self._lock_path = self.path / _LOG / "lock"
            self._ckpt_path = self.path / _LOG / "checkpoint.json"
        self._wlock = threading.RLock()
        self._kfps: dict[int, str] = {}
        # Heads are bound to the org's first key: an org deleted and created again under the same
        # name (fresh keys, empty folders) starts a new history instead of looking rolled back.
        self._epoch = crypto.fingerprint(min(crypto.keys.keys))[:8]
        self._head_name = f"{spec.name}@{self._epoch}"
        self._hw_key = f"{self._m.identity()}@{self._epoch}"
        self._advanced = 0
        self._state_cache: _State | None = None
        self._log_sig: tuple | None = None
        self._verified: dict[str, tuple] = {}
        self._frags: dict[str, tuple] = {}
        self._fmt: ds.ParquetFileFormat | None = None
        self._mutex = threading.RLock()
        self.last_read_files: list[str] = []
        """Relative paths of the files the last read opened (for tests and diagnostics)."""

    def __repr__(self) -> str:
        return f"OrgTable(org={self.org!r}, name={self.spec.name!r})"

    @property
    def medium(self):
        """Where the table's files live (``LocalMedium`` or ``S3Medium``, see ``media``)."""
        return self._m

    # -- files ------------------------------------------------------------------------------

    def _check_file(self, entry: dict, *, cached: bool = True) -> str:
        """Size, magic and fingerprint of a listed file (cached by path/size/mtime/inode);
        returns its path for the medium's pyarrow file system."""
        rel = entry["path"]
        st = self._m.stat(rel)
        if st is None:
            raise self._fail(f"listed file {rel} is missing")
        sig = (*st, entry["fp"])
        if cached and self._verified.get(rel) == sig:
            return self._m.fs_path(rel)
        try:
            size, fp = self._m.fingerprint(rel)
        except _BadFile as e:
            raise self._fail(f"file {rel} {e}") from None
        if size != entry["size"]:
            raise self._fail(
                f"file {rel} has {size} bytes, the commit log says "
                f"{entry['size']} (truncated or replaced)"
            )
        if size != entry["size"] or fp != entry["fp"]:
            raise self._fail(
                f"file {rel} does not match its fingerprint in the commit log "
                "(swapped, replaced or modified)"
            )
        self._verified[rel] = sig
        return self._m.fs_path(rel)

    def _write_file(self, bucket: int | None, part: pa.Table) -> dict:
        """Encrypt one part and put it in place atomically (locally: ``_tmp/``, fsync, rename;
        on object storage: one PUT); returns its log entry."""
        name = f"part-{uuid.uuid4().hex}.parquet"
        rel = name if bucket is None else f"bucket={bucket:02d}/{name}"
        size, fp = self._m.write_file(rel, part, self.crypto.file_encryption_properties())
        tcol = part.column(self.spec.time_column)
        mm = pc.min_max(tcol.cast(pa.int64()))
        runs = pc.unique(part.column("run_id")) if "run_id" in part.column_names else None
        entry = {
            "path": rel,
            "rows": part.num_rows,
            "size": size,
            "bucket": bucket,
            "tmin": mm["min"].as_py(),
            "tmax": mm["max"].as_py(),
            "fp": fp,
            "kv": self.crypto.version,
            "run_ids": None,
            "run_min": None,
            "run_max": None,
        }
        if runs is not None and len(runs):
            runs = runs.drop_null()
            rmm = pc.min_max(runs)
            entry["run_min"], entry["run_max"] = rmm["min"].as_py(), rmm["max"].as_py()
            if len(runs) <= MAX_LISTED_RUN_IDS:
                entry["run_ids"] = sorted(runs.to_pylist())
        return entry

    def _write_parallel(self, parts, added: list[dict]) -> None:
        """Upload parts concurrently (object storage: each PUT is a round trip); every file
        that made it is in ``added`` even when another failed, so that it is discarded."""
        with ThreadPoolExecutor(max_workers=min(8, len(parts))) as pool:
            futures = [pool.submit(self._write_file, b, p) for b, p in parts]
        error = None
        for f in futures:
            try:
                added.append(f.result())
            except BaseException as e:  # noqa: BLE001 - re-raised below after collecting
                error = error or e
        if error is not None:
            raise error

    def _discard(self, entries: Iterable[dict]) -> None:
        for e in entries:
            self._m.delete(e["path"])

    # -- writing ----------------------------------------------------------------------------

    def write(self, data, *, actor: str = "system") -> Commit:
        """Conform ``data`` to the schema, write encrypted files atomically, commit them."""
        self._require_writer()
        parts = prepare(self.spec, data)
        with self._locked():
            state = self._load()
            if not parts:
                return Commit(state.seq, 0, 0)
            added = []
            try:
                if self._m.objects and len(parts) > 1:
                    self._write_parallel(parts, added)
                else:
                    for bucket, part in parts:
                        added.append(self._write_file(bucket, part))
                state = self._append(state, "add", actor, added, [])
            except BaseException:
                self._discard(added)
                raise
        rows = sum(e["rows"] for e in added)
        log.debug(
            "%s/%s: commit %s added %s files, %s rows",
            self.org,
            self.spec.name,
            state.seq,
            len(added),
            rows,
        )
        return Commit(state.seq, len(added), rows)

    def _replace(
        self,
        groups: list[tuple[int | None, list[dict]]],
        actor: str,
        op: str,
        target_rows: int,
        dedupe: bool,
        progress=None,
    ) -> Commit | None:
        """Rewrite groups of listed files into new files (caller holds the lock); one commit."""
        state = self._load()
        added, removed = [], []
        try:
            for bucket, entries in groups:
                parts = self._read_files(entries, None, None)
                if dedupe and self.spec.key:
                    parts = self._latest(parts)
                parts = parts.sort_by([(c, "ascending") for c in self.spec.sort_by])
                for off in range(0, max(parts.num_rows, 1), target_rows):
                    chunk = parts.slice(off, target_rows)
                    if chunk.num_rows:
                        added.append(self._write_file(bucket, chunk))
                removed.extend(e["path"] for e in entries)
                if progress is not None:
                    progress(len(removed))
            if not removed:
                return None
            state = self._append(state, op, actor, added, removed)
        except BaseException:
            self._discard(added)
            raise
        self._discard([{"path": p} for p in removed])
        return Commit(state.seq, len(added), sum(e["rows"] for e in added))

    def compact(
        self, *, target_rows: int = 1_000_000, min_rows: int = 100_000, actor: str = "system"
    ) -> Commit | None:
        """Merge files smaller than ``min_rows`` per partition; returns None when nothing to do."""
        self._require_writer()
        with self._locked():
            state = self._load()
            by_bucket: dict[int | None, list[dict]] = {}
            for e in state.ordered():
                if e["rows"] < min_rows:
                    by_bucket.setdefault(e.get("bucket"), []).append(e)
            groups = [
                (b, es)
                for b, es in sorted(by_bucket.items(), key=lambda kv: str(kv[0]))
                if len(es) > 1
            ]
            if not groups:
                return None
            return self._replace(groups, actor, "replace", target_rows, dedupe=True)

    def rewrite(
        self, *, progress=None, only_older: bool = False, actor: str = "system"
    ) -> Commit | None:
        """Re-encrypt every listed file under the crypto's current key version, in one commit
        that replaces them (data-key rotation with ``--rewrite``); rows are unchanged.
        ``progress`` is called with the number of files done after each one. None if empty.

        With ``only_older`` files already under the current version are kept as they are.
        Older key versions stay needed to verify the older commit-log lines.
        """
        self._require_writer()
        with self._locked():
            state = self._load()
            groups = [
                (e.get("bucket"), [e])
                for e in sorted(state.files.values(), key=lambda e: e["path"])
                if not only_older or e.get("kv", 0) < self.crypto.version
            ]
            if not groups:
                return None
            return self._replace(groups, actor, "replace", 1 << 62, dedupe=False, progress=progress)

    def gc(self, *, now: float | None = None, grace: float | None = None) -> int:
        """Remove unlisted files (leftovers of crashed writes, replaced files). Returns count.

        On object storage only objects older than ``grace`` seconds (default: the root's
        ``gc_grace``, 1 h) go: another writer may have uploaded files whose commit is still on
        its way (locally, writers hold the table lock gc takes). ``now`` (epoch seconds)
        defaults to the clock.
        """
        if self._m.objects:
            if grace is None:
                grace = self.root.config.gc_grace
            cutoff = (time.time() if now is None else now) - grace
        with self._locked():
            state = self._load()
            n = 0
            for rel, mtime in self._m.list_data():
                if rel in state.files:
                    continue
                if self._m.objects and mtime > cutoff:
                    continue
                self._m.delete(rel)
                n += 1
            return n + self._m.clear_tmp()

    # -- reading ----------------------------------------------------------------------------

    def _format(self) -> ds.ParquetFileFormat:
        if self._fmt is None:
            opts = ds.ParquetFragmentScanOptions(
                decryption_config=self.crypto.dataset_decryption_config()
            )
            self._fmt = ds.ParquetFileFormat(default_fragment_scan_options=opts)
        return self._fmt

    def select_files(
        self, *, run_ids: Sequence[str] | None = None, start=None, end=None
    ) -> list[dict]:
        """Listed files that may hold rows of ``run_ids`` in ``[start, end)`` (from the log)."""
        return self._select(self._load(), run_ids, _to_us(start), _to_us(end))

    def _select(self, state: _State, run_ids, t0, t1) -> list[dict]:
        want = buckets = None
        if run_ids is not None:
            want = set(run_ids)
            buckets = {bucket_of(r) for r in want} if self.spec.bucketed else None
        out = []
        # Only the queried runs' buckets: the rest of a checkpoint's file list stays unparsed.
        for e in state.ordered() if buckets is None else state.ordered_in(buckets):
            if want is not None:
                if buckets is not None and e.get("bucket") not in buckets:
                    continue
                if e.get("run_ids") is not None:
                    if want.isdisjoint(e["run_ids"]):
                        continue
                elif e.get("run_min") is not None and not any(
                    e["run_min"] <= r <= e["run_max"] for r in want
                ):
                    continue
            if t0 is not None and e.get("tmax") is not None and e["tmax"] < t0:
                continue
            if t1 is not None and e.get("tmin") is not None and e["tmin"] >= t1:
                continue
            out.append(e)
        return out

    def _expr(self, run_ids, t0, t1, extra):
        expr = None

        def add(x):
            nonlocal expr
            expr = x if expr is None else expr & x

        if run_ids is not None:
            add(pc.field("run_id").isin(pa.array(list(run_ids), pa.string())))
        tcol = self.spec.time_column
        if t0 is not None:
            add(pc.field(tcol) >= pa.scalar(t0, pa.int64()).cast(self.spec.schema.field(tcol).type))
        if t1 is not None:
            add(pc.field(tcol) < pa.scalar(t1, pa.int64()).cast(self.spec.schema.field(tcol).type))
        if extra is not None:
            add(extra)
        return expr

    def _open_dataset(self, entries: list[dict]) -> ds.Dataset:
        if self._m.objects and len(entries) > 1:
            # Each check is a round trip to the store: overlap them.
            with ThreadPoolExecutor(max_workers=min(8, len(entries))) as pool:
                frags = list(pool.map(self._fragment, entries))
        else:
            frags = [self._fragment(e) for e in entries]
        self.last_read_files = [e["path"] for e in entries]
        return ds.FileSystemDataset(frags, self.spec.schema, self._format(), self._m.fs)

    def _fragment(self, entry: dict):
        """The checked file as a dataset fragment whose footer was opened here, cached.

        Opening the footer here (not in a scan thread) authenticates it and puts its key into
        pyarrow's key cache: unwrapping a key calls back into Python, and when a scan is driven
        from another engine's threads (DuckDB) that callback can deadlock on the GIL. Cached
        fragments keep their parsed footer, so a one-run read does not decrypt it again.
        """
        rel = entry["path"]
        path = self._check_file(entry)
        sig = self._verified[rel]
        now = time.monotonic()
        hit = self._frags.get(rel)
        if hit is not None and hit[0] == sig and now - hit[2] < _WARM_TTL:
            return hit[1]
        if self._m.objects:  # the size from the log saves a HEAD request per file
            frag = self._format().make_fragment(
                path, filesystem=self._m.fs, file_size=entry["size"]
            )
        else:
            frag = self._format().make_fragment(path, filesystem=self._m.fs)
        try:
            frag.ensure_complete_metadata()
        except KeyUnavailable:
            raise
        except (OSError, pa.ArrowException) as e:
            kerr = key_refusal(e)
            if kerr is not None:
                raise kerr from None
            raise self._fail(
                f"file {rel} has a footer that fails authentication (tampered)"
            ) from None
        self._frags[rel] = (sig, frag, now)
        return frag

    def _scan(self, entries: list[dict], fn):
        """Run ``fn(dataset)``; turn pyarrow's errors into KeyUnavailable / IntegrityError."""
        dataset = self._open_dataset(entries)
        try:
            return fn(dataset)
        except KeyUnavailable:
            raise
        except (OSError, pa.ArrowException, ValueError) as e:
            kerr = key_refusal(e)
            if kerr is not None:
                raise kerr from None
            bad = self._culprit(entries)
            log.warning("%s/%s: read failed (%s)", self.org, self.spec.name, type(e).__name__)
            raise self._fail(
                f"file {bad} failed decryption or decoding (tampered or corrupt)"
                if bad
                else "a file failed decryption or decoding (tampered or corrupt)"
            ) from None

    def _culprit(self, entries: list[dict]) -> str | None:
        fmt = self._format()
        for e in entries:
            try:
                ds.dataset(
                    self._m.fs_path(e["path"]),
                    schema=self.spec.schema,
                    format=fmt,
                    filesystem=self._m.fs,
                ).to_table()
            except Exception:  # noqa: BLE001 - only locating the bad file
                return e["path"]
        return None

    def _read_files(self, entries, columns, expr) -> pa.Table:
        if not entries:
            schema = self.spec.schema
            if columns is not None:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        return self._scan(
            entries, lambda d: d.to_table(columns=columns, filter=expr, memory_pool=READ_POOL)
        )

    def _latest(self, table: pa.Table) -> pa.Table:
        """Keep the newest version of each key (latest ``updated_at``, then the later write)."""
        if table.num_rows == 0:
            return table
        order = "__ordinal"
        t = table.append_column(order, pa.array(range(table.num_rows), pa.int64()))
        keys = [(k, "ascending", "at_end") for k in self.spec.key]
        if "updated_at" in t.column_names:
            keys.append(("updated_at", "descending", "at_end"))
        keys.append((order, "descending", "at_end"))
        t = t.take(pc.sort_indices(t, sort_keys=keys))
        first = None
        for k in self.spec.key:
            col = t.column(k).combine_chunks()
            diff = pc.fill_null(pc.not_equal(col.slice(1), col.slice(0, len(col) - 1)), True)
            first = diff if first is None else pc.or_(first, diff)
        mask = pa.concat_arrays([pa.array([True]), first])
        t = t.filter(mask).drop_columns([order])
        return t.sort_by([(c, "ascending") for c in self.spec.sort_by])

    def read(
        self,
        *,
        run_ids: Sequence[str] | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        columns: Sequence[str] | None = None,
        filter=None,
    ) -> pa.Table:
        """Read matching rows; run/time filters prune files via the log and row groups via stats.

        Tables with a ``key`` return only the latest version of each key.
        """
        if columns is not None:
            unknown = [c for c in columns if c not in self.spec.schema.names]
            if unknown:
                raise ValidationError(
                    f"unknown column {unknown[0]!r} in {self.spec.name}", field=unknown[0]
                )
            columns = list(columns)
        t0, t1 = _to_us(start), _to_us(end)
        if run_ids is not None:
            run_ids = [str(r) for r in run_ids]
        for attempt in (0, 1):
            state = self._load()
            entries = self._select(state, run_ids, t0, t1)
            try:
                if not self.spec.key:
                    return self._read_files(entries, columns, self._expr(run_ids, t0, t1, filter))
                # Versioned rows: filter on the key only before choosing the newest version.
                pre = run_ids if "run_id" in self.spec.key else None
                if pre is None:
                    entries = self._select(state, None, None, None)
                latest = self._latest(
                    self._read_files(entries, None, self._expr(pre, None, None, None))
                )
                post = self._expr(None if pre is not None else run_ids, t0, t1, filter)
                if post is not None:
                    latest = ds.dataset(latest).to_table(filter=post)
                return latest.select(columns) if columns is not None else latest
            except IntegrityError:
                # A concurrent compaction may have replaced files after we listed them.
                if attempt or self._peek_seq() == state.seq:
                    raise
        raise AssertionError("unreachable")

    def _peek_seq(self) -> int:
        try:
            return self._load().seq
        except IntegrityError:
            return -1

    def to_pandas(self, **kw):
        """``read(**kw).to_pandas()``."""
        return self.read(**kw).to_pandas()

    def dataset(self):
        """A decrypting ``pyarrow.dataset.Dataset`` over exactly the verified, listed files.

        Usable from DuckDB (``duckdb.sql("select ... from ds")``) and Polars
        (``pl.scan_pyarrow_dataset(ds)``) with filter push-down. For tables with a ``key`` it is an
        in-memory dataset of the latest row versions. Get a fresh one rather than keeping it for
        hours: it covers the files listed when it was made, with their keys cached.
        """
        if self.spec.key:
            return ds.dataset(self.read())
        state = self._load()
        entries = self._select(state, None, None, None)
        if not entries:
            return ds.dataset(self.spec.schema.empty_table())
        return self._open_dataset(entries)

    def files(self) -> list[dict]:
        """Current file entries from the verified log."""
        return [dict(e) for e in self._load().ordered()]

    def run_ids(self) -> set[str]:
        """Run ids present (from the log, without opening data files)."""
        state = self._load()
        out: set[str] = set()
        unlisted = []
        for e in state.files.values():
            if e.get("run_ids") is not None:
                out.update(e["run_ids"])
            else:
                unlisted.append(e)
        if unlisted:  # files with very many runs only store a range: read that one column
            col = self._read_files(unlisted, ["run_id"], None).column("run_id")
            out.update(pc.unique(col).drop_null().to_pylist())
        return out

    def num_rows(self) -> int:
        """Row count from the log (for keyed tables: stored row versions)."""
        return sum(e["rows"] for e in self._load().files.values())

    def head(self) -> tuple[int, str]:
        """``(seq, digest)`` of the verified log's last commit (0 and zeros when empty)."""
        state = self._load()
        return state.seq, state.digest

    def verify(self, *, deep: bool = False) -> None:
        """Check the log chain and every listed file; raise ``IntegrityError`` on the first fault.

        Also refuses a plaintext or foreign file lying unlisted among the data files. With
        ``deep``, every listed file is decrypted in full (authenticating every page).
        """
        with self._mutex:
            self._state_cache = None
            self._log_sig = None
            self._verified.clear()
            # An audit checks each line's own signature, not only the newest (see ``_apply``).
            self._every_signature = True
            try:
                state = self._load()
                self._check_replay(state)
            finally:
                self._every_signature = False
        entries = sorted(state.files.values(), key=lambda e: e["path"])
        self._each(lambda e: self._check_file(e, cached=False), entries)

        def unlisted(rel):
            try:
                self._m.fingerprint(rel)
            except _BadFile as e:
                raise self._fail(f"unlisted file {rel} {e}") from None
            except OSError as e:
                raise self._fail(f"unlisted file {rel} cannot be read ({e.strerror})") from None

        self._each(unlisted, [rel for rel, _ in self._m.list_data() if rel not in state.files])
        if deep:
            self._each(lambda e: self._scan([e], lambda d: d.to_table()), entries)
        elif entries:
            self._frags.clear()
            self._each(self._fragment, entries)

    def _each(self, fn, items: list) -> None:
        """``fn`` on every item, in order; on object storage eight at a time (each is a round
        trip), still raising the error of the first failing item."""
        if self._m.objects and len(items) > 1:
            with ThreadPoolExecutor(max_workers=8) as pool:
                for _ in pool.map(fn, items):
                    pass
        else:
            for item in items:
                fn(item)

    def _check_replay(self, state: _State) -> None:
        """Replay a log that starts at its first commit and compare with the checkpointed state:
        a checkpoint that disagrees with the lines it summarises is refused."""
        if self._m.objects:
            if self._m.get(_CKPT) is None:
                return
            starts = self._m.stat(self._m.log_key(1)) is not None
        else:
            if not self._ckpt_path.exists():
                return
            try:
                with open(self._log_path, "rb") as f:
                    first = f.readline()
            except FileNotFoundError:
                return
            try:
                starts = bool(first.strip()) and json.loads(first).get("seq") == 1
            except (ValueError, AttributeError):
                raise self._fail("commit log line 1 is corrupt") from None
        if not starts:
            return  # the history before the checkpoint was dropped (migration scrub)
        full = self._load(use_checkpoint=False)
        pick = ("path", "size", "fp", *_STAT_KEYS)

        def same(a: dict, b: dict) -> bool:
            return all(a.get(k) == b.get(k) for k in pick)

        if (
            (full.seq, full.digest) != (state.seq, state.digest)
            or full.files.keys() != state.files.keys()
            or not all(same(full.files[p], e) for p, e in state.files.items())
        ):
            raise self._fail("the commit-log checkpoint does not match the log's lines")


class OrgStore:
    """All raw-data tables of one org (never context)."""

    def __init__(self, data_root, org: str, crypto: OrgCrypto, heads: HeadStore | None = None):
        """``data_root``: a ``Path`` or an ``S3Root`` (``s3://bucket/prefix`` text also works)."""
        _check_crypto(org, crypto)
        self.data_root = as_root(data_root)
        self.org = org
        self.crypto = crypto
        self.heads = heads
        self._tables: dict[str, OrgTable] = {}

    def table(self, name: str) -> OrgTable:
        """The table ``"<category>/<name>"`` (see ``schema.TABLES``); a bare name also works."""
        if name not in TABLES and "/" not in name:
            matches = [t for t in TABLES if t.split("/", 1)[1] == name]
            if len(matches) == 1:
                name = matches[0]
        if name not in TABLES:
            lookup_spec(name)  # raises ValidationError naming the valid tables
            raise ValidationError(f"{name!r} is not a raw-data table", field="table")
        if name not in self._tables:
            self._tables[name] = OrgTable(
                self.data_root, self.org, TABLES[name], self.crypto, self.heads
            )
        return self._tables[name]

    def tables(self) -> Iterable[OrgTable]:
        """Every raw-data table."""
        return [self.table(n) for n in TABLES]
