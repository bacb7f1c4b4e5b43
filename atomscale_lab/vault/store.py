"""Org datasets: encrypted Parquet files listed by an append-only, signed commit log.

CONTRACT (filled in by the vault work):

Layout: ``data_root/<org>/<category>/<table>/`` holds ``bucket=<NN>/part-<uuid>.parquet`` files
(unbucketed tables: ``part-<uuid>.parquet``; NN is the CRC-32 bucket of the run id, never the run
id), ``_log/commits.jsonl``, ``_log/checkpoint.json`` and ``_tmp/``. Each log line lists added and
removed files; readers open only what the log lists, and refuse a listed file whose size, trailer
or fingerprint differs, an unlisted or plaintext file in its place, a line whose chain or
signature breaks, an unsigned line once the org has a signing key, and a log older than the last
head they (or the ``HeadStore``) saw.

Log line (one JSON object per line, keys sorted)::

    {"seq": 7, "prev": "<sha256 of line 6>", "ts": "...", "op": "add"|"replace"|"seal",
     "added": [{"path": "bucket=03/part-<hex>.parquet", "size": bytes, "bucket": 3, "kv": 2,
                "fp": "<sha256 of size + file tail incl. the encrypted footer>"}],
     "removed": ["bucket=03/part-<hex>.parquet"], "key_version": 2, "kfp": "<key fingerprint>",
     "ck": <seq of the newest checkpoint when written>, "sv": <signing-key version>,
     "stats": "<base64 nonce + AES-256-GCM of {"actor": ..., "files": {path: {"rows", "tmin",
               "tmax" (µs), "run_ids" | null, "run_min", "run_max"}}}>",
     "sig": "<base64 Ed25519 signature>"}

``stats`` is sealed under an HKDF key of data-key version ``key_version`` (label
``seal/commit-log-stats/<table>``, AAD ``<org>/<table>/line/<seq>``): nothing in a log names a run,
a time range or a row count in plaintext. ``sig`` is the org's signing key (version ``sv``) over
``"atomscale-lab/commit-log/v2\0<org>\0<table>\0line\0" + canonical JSON of the rest``; only
writers hold it (``OrgKeys.signing``), readers hold the verify keys. Neither ``key_version`` nor
``sv`` ever decreases along the log, so a retired key cannot be used to forge new lines.

Checkpoint (``_log/checkpoint.json``, replaced atomically by the writer every
``CHECKPOINT_EVERY`` commits and after a signing-key rotation)::

    {"v": 1, "seq": 640, "digest": "<sha256 of line 640>", "offset": <byte end of line 640>,
     "key_version": 2, "kfp": "...", "sv": 1,
     "files": "<base64 sealed list of the live file entries>", "sig": "<Ed25519 over the rest>"}

A reader starts from the newest checkpoint and verifies only the lines after ``offset`` (the
first must continue ``digest``); a line's ``ck`` names the checkpoint it saw, so a removed or
older checkpoint is refused; ``verify()`` also replays the whole log (when it starts at commit 1)
and compares. A long-running reader reads only the bytes appended since its last read.

Lines written before commit-log signing carry ``actor`` and the statistics in plaintext and a
``mac`` (HMAC-SHA256, key derived from the data key) instead of ``stats``/``sig``. A reader
accepts them only before a signed line (which seals them) or, holding no verify key, in a log with
no signed line at all;
``Table.seal`` (``atomscale-lab org migrate``) seals them with a signed line, writes a checkpoint
and restarts the log from it, dropping the plaintext lines.

A final line without a newline is an unfinished (uncommitted) write and is ignored; writers cut it
off before appending. Time ranges in reads are ``start <= t < end``.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from atomscale_lab.errors import IntegrityError, KeyUnavailable, ValidationError
from atomscale_lab.fsutil import fsync_dir as _fsync_dir
from atomscale_lab.fsutil import mkdirs as _mkdirs
from atomscale_lab.schema import TABLES, TableSpec, conform
from atomscale_lab.schema import spec as lookup_spec
from atomscale_lab.vault.crypto import OrgCrypto

log = logging.getLogger(__name__)

N_BUCKETS = 32
ROW_GROUP_ROWS = 32 * 1024
READ_POOL = pa.system_memory_pool()
"""Memory pool of the store's reads. With pyarrow's default (mimalloc) a full scan of encrypted
files ran ~30 % slower than with the system allocator, which keeps encrypted scans within ~1.1x
of plaintext (bench/vault.py prints both)."""
"""Rows per row group. Measured on 16 columns: a one-run read (10k rows) decodes 1-2 groups,
~14 ms CPU at 32k against ~19 ms at 64k, with no measurable cost to full scans."""
ROW_GROUP_BYTES = 32 << 20
MAX_LISTED_RUN_IDS = 10_000
"""Files with more distinct runs store only their min/max run id in the log."""
COMPRESSION = "zstd"
_MAGIC = b"PARE"
_FP_MIN_TAIL = 64 * 1024
_GENESIS = "0" * 64
_PATH_RE = re.compile(r"^(bucket=[0-9]{2}/)?part-[0-9a-f]{32}\.parquet$")
_LOCAL_FS = pafs.LocalFileSystem()
_WARM_TTL = 3600.0
"""Seconds a file's footer counts as opened (pyarrow's read-key cache lives 12 hours)."""
_LOG = "_log"
CHECKPOINT_EVERY = 64
"""A writer signs a checkpoint of the table's state every this many commits (0: never), so that
a fresh reader verifies at most this many lines. Also written when the signing key rotated."""
_KEEP_DIGESTS = 4096
_TMP = "_tmp"

_HIGH_WATER: dict[str, tuple[int, str]] = {}
"""Newest (seq, line hash) this process has seen per table folder: a rolled-back log is refused."""
_HW_LOCK = threading.Lock()


class HeadStore(Protocol):
    """Keeps the latest (seq, hash) of each table's log outside the data root (rollback defence)."""

    def get(self, org: str, table: str) -> tuple[int, str] | None:
        """Latest known head, or None."""

    def advance(self, org: str, table: str, seq: int, digest: str) -> None:
        """Record a newer head (never goes backwards)."""


class SqliteHeadStore:
    """``HeadStore`` in a SQLite file (default: the registry)."""

    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.db_path), timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS log_heads (org TEXT NOT NULL, tbl TEXT NOT NULL, "
            "seq INTEGER NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (org, tbl))")

    def get(self, org: str, table: str) -> tuple[int, str] | None:
        """Latest known head, or None."""
        with self._lock:
            row = self._db.execute("SELECT seq, digest FROM log_heads WHERE org=? AND tbl=?",
                                   (org, table)).fetchone()
        return (row[0], row[1]) if row else None

    def advance(self, org: str, table: str, seq: int, digest: str) -> None:
        """Record a newer head (never goes backwards)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO log_heads VALUES (?,?,?,?) ON CONFLICT (org, tbl) DO UPDATE SET "
                "seq=excluded.seq, digest=excluded.digest WHERE excluded.seq > log_heads.seq",
                (org, table, seq, digest))

    def forget(self, org: str) -> None:
        """Drop the heads of a deleted org."""
        with self._lock:
            self._db.execute("DELETE FROM log_heads WHERE org=?", (org,))


@dataclass(frozen=True)
class Commit:
    """What a write or compaction committed."""

    seq: int
    files: int
    rows: int


# ---------------------------------------------------------------------------------------------
# helpers shared by writers, readers and the benchmark


def bucket_of(run_id: str) -> int:
    """The bucket of a run id: a stable hash (CRC-32), not Python's salted ``hash()``."""
    return zlib.crc32(run_id.encode()) % N_BUCKETS


def prepare(spec: TableSpec, data) -> list[tuple[int | None, pa.Table]]:
    """Conform, sort by ``spec.sort_by`` and split into ``(bucket, rows)`` parts as files are."""
    table = conform(spec, data)
    if table.num_rows == 0:
        return []
    if not spec.bucketed:
        return [(None, table.sort_by([(c, "ascending") for c in spec.sort_by]))]
    runs = table.column("run_id")
    uniq = pc.unique(runs)
    ub = pa.array([bucket_of(r) for r in uniq.to_pylist()], pa.int8())
    table = table.append_column("__bucket", pc.take(ub, pc.index_in(runs, value_set=uniq)))
    # One sort by (bucket, sort key) makes every bucket a contiguous slice.
    table = table.sort_by([("__bucket", "ascending")] + [(c, "ascending") for c in spec.sort_by])
    counts = pc.value_counts(table.column("__bucket"))
    table = table.drop_columns(["__bucket"])
    parts, off = [], 0
    for item in sorted(counts.to_pylist(), key=lambda d: d["values"]):
        parts.append((item["values"], table.slice(off, item["counts"])))
        off += item["counts"]
    return parts


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group: ``ROW_GROUP_ROWS``, fewer for wide rows (spectra) so that one group
    stays near ``ROW_GROUP_BYTES`` of uncompressed data."""
    if table.num_rows == 0:
        return ROW_GROUP_ROWS
    per_row = max(1, table.nbytes // table.num_rows)
    return max(256, min(ROW_GROUP_ROWS, ROW_GROUP_BYTES // per_row))


def write_parquet(path: Path, table: pa.Table, encryption_properties=None) -> None:
    """Write one Parquet file the way the store does (zstd, row groups, stats), and fsync."""
    with pq.ParquetWriter(str(path), table.schema, compression=COMPRESSION,
                          encryption_properties=encryption_properties,
                          write_statistics=True) as w:
        w.write_table(table, row_group_size=row_group_rows(table))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_fingerprint(path: Path) -> tuple[int, str]:
    """``(size, fp)`` of a file: fp = sha256 over its size and its tail incl. the footer.

    Raises ``IntegrityError`` when the file is not an encrypted Parquet file (no ``PARE`` magic)
    or too short to be one.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 12:
            raise _BadFile("is truncated (too short to be a Parquet file)")
        head = f.read(4)
        f.seek(size - 8)
        trailer = f.read(8)
        if trailer[4:] == b"PAR1" or head == b"PAR1":
            raise _BadFile("is a plaintext Parquet file, not an encrypted one (planted file?)")
        if head != _MAGIC or trailer[4:] != _MAGIC:
            raise _BadFile("is not an encrypted Parquet file (no PARE magic: truncated or planted)")
        footer_len = int.from_bytes(trailer[:4], "little")
        if footer_len + 12 > size:
            raise _BadFile("is truncated (its footer length points outside the file)")
        tail_len = min(size, max(footer_len + 8, _FP_MIN_TAIL))
        f.seek(size - tail_len)
        tail = f.read(tail_len)
    h = hashlib.sha256(b"atomscale-lab file fp v1\0")
    h.update(size.to_bytes(8, "little"))
    h.update(tail)
    return size, h.hexdigest()


class _BadFile(Exception):
    """Internal: why a file failed its check (turned into IntegrityError naming the file)."""


def _to_us(value) -> int | None:
    """A datetime / pandas Timestamp / ISO string as µs since the epoch (naive = UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"{value!r} is not an ISO date-time", field="time") from None
    if isinstance(value, np.datetime64):
        value = value.astype("datetime64[us]").astype(datetime)
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValidationError(f"{value!r} is not a date-time", field="time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _canon(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class _State:
    """The verified log of one table: listed files (path → entry) and the head.

    ``size`` is the byte offset in ``commits.jsonl`` up to which lines were applied; ``signed``
    says whether the newest applied element (line or checkpoint) was signed and ``sealed``
    whether any was (after which an unsigned line is refused); ``ck_file`` is the newest
    checkpoint known to exist and ``ck_said`` the newest one a line announced.
    """

    __slots__ = ("files", "seq", "digest", "key_version", "sign_version", "size", "ino",
                 "signed", "sealed", "ck_file", "ck_sv", "ck_said", "digests", "legacy",
                 "_sorted")

    def __init__(self):
        self.files: dict[str, dict] = {}
        self.seq = 0
        self.digest = _GENESIS
        self.key_version = 0
        self.sign_version = 0
        self.size = 0
        self.ino = None
        self.signed = False
        self.sealed = False
        self.ck_file = 0
        self.ck_sv = 0
        self.ck_said = 0
        self.digests: dict[int, str] = {}
        self.legacy = 0
        self._sorted: list[dict] | None = None

    def copy(self) -> _State:
        s = _State()
        for name in self.__slots__:
            setattr(s, name, getattr(self, name))
        s.files = dict(self.files)
        s.digests = dict(self.digests)
        s._sorted = None
        return s

    def ordered(self) -> list[dict]:
        """Entries by (commit, path), computed once per state."""
        if self._sorted is None:
            self._sorted = sorted(self.files.values(), key=lambda e: (e["seq"], e["path"]))
        return self._sorted

    def remember(self, seq: int, digest: str) -> None:
        """Keep the digests of recent lines for the head checks (bounded)."""
        self.digests[seq] = digest
        if len(self.digests) > 2 * _KEEP_DIGESTS:
            for s in sorted(self.digests)[:-_KEEP_DIGESTS]:
                del self.digests[s]


def _sign_message(org: str, table: str, kind: str, body: dict) -> bytes:
    """What a commit-log line or checkpoint signature covers: org, table, kind and the body."""
    return b"atomscale-lab/commit-log/v2\0" + f"{org}\0{table}\0{kind}\0".encode() + _canon(body)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text) -> bytes:
    return base64.b64decode(str(text), validate=True)


_STAT_KEYS = ("rows", "tmin", "tmax", "run_ids", "run_min", "run_max")
_PUBLIC_KEYS = ("path", "size", "fp", "kv", "bucket")


def _ensure_version(crypto, version: int) -> bool:
    """Let the crypto re-fetch its org's keys for an unseen version (after a rotation)."""
    ensure = getattr(crypto, "ensure_version", None)
    return bool(ensure and ensure(version))


def _ensure_sign_version(crypto, version: int) -> bool:
    """Let the crypto re-fetch its org's keys for a newer signing key (after a rotation)."""
    ensure = getattr(crypto, "ensure_sign_version", None)
    return bool(ensure and ensure(version))


def _check_crypto(org: str, crypto: OrgCrypto | None) -> None:
    """Refuse a missing key, or the key of another org, before touching any file."""
    if crypto is None:
        raise KeyUnavailable(f"no data key for org {org!r}: its data cannot be read")
    if crypto.org != org:
        raise KeyUnavailable(
            f"the key of org {crypto.org!r} cannot read or write org {org!r}'s data")


class Table:
    """One table of one org. All reads and writes go through here."""

    def __init__(self, root: Path, org: str, spec: TableSpec, crypto: OrgCrypto,
                 heads: HeadStore | None = None):
        _check_crypto(org, crypto)
        self.root = Path(root)
        self.org = org
        self.spec = spec
        self.crypto = crypto
        self.heads = heads
        self.path = self.root / org / spec.name
        self._log_path = self.path / _LOG / "commits.jsonl"
        self._lock_path = self.path / _LOG / "lock"
        self._ckpt_path = self.path / _LOG / "checkpoint.json"
        self._kfps: dict[int, str] = {}
        # Heads are bound to the org's first key: an org deleted and created again under the same
        # name (fresh keys, empty folders) starts a new history instead of looking rolled back.
        self._epoch = crypto.fingerprint(min(crypto.keys.keys))[:8]
        self._head_name = f"{spec.name}@{self._epoch}"
        self._hw_key = f"{self.path.resolve()}@{self._epoch}"
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
        return f"Table(org={self.org!r}, name={self.spec.name!r})"

    # -- commit log -------------------------------------------------------------------------

    def _mac(self, body: dict, version: int) -> str:
        key = self.crypto.mac_key(f"commit-log/{self.spec.name}", version)
        return hmac.new(key, _canon(body), hashlib.sha256).hexdigest()

    def _fail(self, msg: str) -> IntegrityError:
        return IntegrityError(f"{self.org}/{self.spec.name}: {msg}")

    def _aad(self, kind: str, seq: int) -> bytes:
        return f"{self.org}/{self.spec.name}/{kind}/{seq}".encode()

    def _load(self, *, strict_heads: bool = True, allow_unsealed: bool = False,
              use_checkpoint: bool = True) -> _State:
        """Verify the log from the newest checkpoint (or incrementally, when only appended to
        since the last load); check the heads. Never re-reads lines it has verified."""
        with self._mutex:
            cached = self._state_cache if use_checkpoint else None
            try:
                with open(self._log_path, "rb") as f:
                    st = os.fstat(f.fileno())
                    # ctime cannot be set back by a user, unlike mtime: unchanged means unchanged.
                    sig = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                    if cached is not None and sig == self._log_sig:
                        # Checked against the head store when loaded; an unchanged file cannot
                        # have fallen behind a head recorded since (that needs a new ctime).
                        self._check_signed_head(cached, allow_unsealed)
                        self._check_heads(cached, strict=False, use_store=False)
                        return cached
                    if (cached is not None and cached.ino == st.st_ino
                            and st.st_size > cached.size):
                        state, skip = cached.copy(), False
                    else:
                        state, skip = self._start(st.st_size, use_checkpoint)
                        if state.size:
                            f.seek(state.size - 1)
                            if f.read(1) != b"\n":  # the checkpoint's offset is not a line end
                                state.size, skip = 0, True
                    f.seek(state.size)
                    data = f.read()
                    state.ino = st.st_ino
            except FileNotFoundError:
                data, sig = b"", None
                state, skip = self._start(0, use_checkpoint)
                state.size = 0
            end = data.rfind(b"\n") + 1  # a last line without newline is not committed
            if end:
                self._apply(state, data, end, skip)
                state.size += end
            elif skip:
                state.size = 0
            if use_checkpoint and state.ck_said > state.ck_file:
                # A line names a newer checkpoint than the one read: another writer made it
                # since, or it was removed or replaced by an older one.
                newer = self._read_checkpoint(allow_retired=True)
                if newer is None or newer.seq < state.ck_said:
                    raise self._fail(f"the checkpoint at commit {state.ck_said} named by the log "
                                     "is missing or was replaced by an older one")
                state.ck_file, state.ck_sv = newer.seq, newer.sign_version
            self._check_signed_head(state, allow_unsealed)
            self._check_heads(state, strict=strict_heads)
            if use_checkpoint:
                self._state_cache = state
                self._log_sig = sig
            return state

    def _check_signed_head(self, state: _State, allow_unsealed: bool) -> None:
        """Once the org has a signing key, the newest line must be signed: a line appended
        with the data key alone (or a new log made with it) is refused."""
        if state.seq and not state.signed and self.crypto.can_verify and not allow_unsealed:
            raise self._fail(
                f"commit log line {state.seq} is not signed (forged with the data key alone, "
                f"or the table predates commit-log signing: run `atomscale-lab org migrate "
                f"{self.org}`)")

    def _start(self, log_size: int, use_checkpoint: bool) -> tuple[_State, bool]:
        """The state to read the log from: the newest valid checkpoint, or the empty log."""
        ck = self._read_checkpoint() if use_checkpoint else None
        if ck is None:
            return _State(), False
        if ck.size > log_size:
            # The log was cut back to start after the checkpoint (migration drops the plaintext
            # history): read it from the start, skipping lines the checkpoint covers.
            ck.size = 0
            return ck, True
        return ck, False

    def _read_checkpoint(self, *, allow_retired: bool = False) -> _State | None:
        """The verified newest checkpoint as a state, or None when there is none.

        A checkpoint signed with a retired signing key is not started from (a leaked old key
        cannot forge one; the log is replayed instead) unless ``allow_retired``; any other
        fault is refused.
        """
        try:
            raw = self._ckpt_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            sig = _unb64(doc.pop("sig"))
            seq, digest, offset = int(doc["seq"]), str(doc["digest"]), int(doc["offset"])
            kv, sv = int(doc["key_version"]), int(doc["sv"])
            blob = _unb64(doc["files"])
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise self._fail("the commit-log checkpoint is corrupt") from None
        if not self.crypto.verify_signature(sv, _sign_message(self.org, self.spec.name,
                                                              "checkpoint", doc), sig):
            raise self._fail("the commit-log checkpoint failed its signature check "
                             "(edited or forged)")
        if sv < max(self.crypto.keys.verify) and not allow_retired:
            return None
        if kv not in self.crypto.keys.keys:
            raise KeyUnavailable(f"data key version {kv} of org {self.org!r} is not available "
                                 f"({self.spec.name} was written with it)")
        plain = self.crypto.unseal(f"commit-log-checkpoint/{self.spec.name}", kv, blob,
                                   self._aad("checkpoint", seq))
        if plain is None:
            if doc.get("kfp") != self.crypto.fingerprint(kv):
                raise KeyUnavailable(
                    f"the data key given for org {self.org!r} does not match "
                    f"{self.spec.name}'s files (wrong key or another org's data)")
            raise self._fail("the commit-log checkpoint's file list fails authentication")
        state = _State()
        for e in json.loads(plain):
            state.files[e["path"]] = e
        state.seq, state.digest, state.size = seq, digest, offset
        state.key_version, state.sign_version = kv, sv
        state.signed = state.sealed = True
        state.ck_file, state.ck_sv = seq, sv
        state.remember(seq, digest)
        return state

    def _apply(self, state: _State, data: bytes, end: int, skip: bool = False) -> None:
        lineno = state.seq
        for raw in data[:end].split(b"\n")[:-1]:
            lineno += 1
            try:
                doc = json.loads(raw)
                seq = doc["seq"]
                if skip and isinstance(seq, int) and seq <= state.seq:
                    lineno -= 1
                    continue  # covered by the checkpoint the state started from
                skip = False
                sig = doc.pop("sig", None)
                mac = doc.pop("mac") if sig is None else None
                prev, kv = doc["prev"], int(doc["key_version"])
                added, removed = doc["added"], doc["removed"]
            except (ValueError, KeyError, TypeError, AttributeError):
                raise self._fail(f"commit log line {lineno} is corrupt") from None
            if seq != state.seq + 1 or prev != state.digest:
                raise self._fail(f"commit log line {lineno} does not continue the chain "
                                 "(lines removed, reordered or inserted)")
            if kv < state.key_version:
                raise self._fail(f"commit log line {lineno} uses a retired key version")
            if kv not in self.crypto.keys.keys and not _ensure_version(self.crypto, kv):
                raise KeyUnavailable(
                    f"data key version {kv} of org {self.org!r} is not available "
                    f"({self.spec.name} was written with it)")
            if sig is None:
                added = self._check_legacy(state, doc, mac, kv, lineno)
            else:
                added = self._check_signed(state, doc, sig, kv, lineno)
            for p in removed:
                if state.files.pop(p, None) is None:
                    raise self._fail(f"commit log line {lineno} removes unlisted file {p}")
            for e in added:
                p = e.get("path", "")
                if not _PATH_RE.match(p) or p in state.files:
                    raise self._fail(f"commit log line {lineno} lists a bad path {p!r}")
                state.files[p] = dict(e, seq=seq)
            state.seq, state.key_version = seq, kv
            state.digest = hashlib.sha256(raw).hexdigest()
            state.remember(seq, state.digest)
            state._sorted = None

    def _check_legacy(self, state: _State, doc: dict, mac, kv: int, lineno: int) -> list:
        """A line from before commit-log signing: HMAC only, statistics in plaintext."""
        if state.sealed:
            raise self._fail(f"commit log line {lineno} is not signed, but the log was sealed "
                             "by signed lines before it (forged with the data key alone?)")
        if not hmac.compare_digest(str(mac), self._mac(doc, kv)):
            self._check_kfp(doc, kv)
            raise self._fail(f"commit log line {lineno} failed its MAC check (edited)")
        state.signed = False
        state.legacy += 1
        return doc["added"]

    def _check_kfp(self, doc: dict, kv: int) -> None:
        kfp = self._kfps.get(kv)
        if kfp is None:
            kfp = self._kfps[kv] = self.crypto.fingerprint(kv)
        if doc.get("kfp") != kfp:
            raise KeyUnavailable(
                f"the data key given for org {self.org!r} does not match "
                f"{self.spec.name}'s files (wrong key or another org's data)")

    def _check_signed(self, state: _State, doc: dict, sig, kv: int, lineno: int) -> list:
        """A signed line: Ed25519 signature over the body, statistics sealed with the data key."""
        try:
            sv, blob, signature = int(doc["sv"]), _unb64(doc["stats"]), _unb64(sig)
            ck = int(doc.get("ck", 0))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise self._fail(f"commit log line {lineno} is corrupt") from None
        self._check_kfp(doc, kv)  # the wrong data key is named as such, not as tampering
        if sv < state.sign_version:
            raise self._fail(f"commit log line {lineno} is signed with a retired signing key")
        if not self.crypto.verify_signature(
                sv, _sign_message(self.org, self.spec.name, "line", doc), signature):
            raise self._fail(f"commit log line {lineno} failed its signature check "
                             "(edited, or forged without the org's signing key)")
        plain = self.crypto.unseal(f"commit-log-stats/{self.spec.name}", kv, blob,
                                   self._aad("line", doc["seq"]))
        if plain is None:
            raise self._fail(f"commit log line {lineno} has statistics that fail "
                             "authentication")
        try:
            stats = json.loads(plain)["files"]
            added = [dict(e, **stats[e["path"]]) for e in doc["added"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self._fail(f"commit log line {lineno} is corrupt") from None
        state.sign_version = sv
        state.signed = state.sealed = True
        state.ck_said = max(state.ck_said, ck)
        return added

    def _check_heads(self, state: _State, *, strict: bool = True,
                     use_store: bool = True) -> None:
        seen = []
        with _HW_LOCK:
            hw = _HIGH_WATER.get(self._hw_key)
        if hw:
            seen.append(hw)
        if self.heads is not None and use_store:
            h = self.heads.get(self.org, self._head_name)
            if h:
                seen.append(tuple(h))
        for seq, digest in seen:
            if state.seq < seq:
                raise self._fail(f"commit log was rolled back (it ends at commit {state.seq}, "
                                 f"but commit {seq} was seen before)")
            # Lines before the retained ones are covered by signatures and checkpoints.
            mine = state.digests.get(seq)
            if strict and seq >= 1 and mine is not None and mine != digest:
                raise self._fail(f"commit log was rewritten (commit {seq} differs from "
                                 "the one seen before)")
        with _HW_LOCK:
            old = _HIGH_WATER.get(self._hw_key)
            if not old or old[0] < state.seq:
                _HIGH_WATER[self._hw_key] = (state.seq, state.digest)
        if self.heads is not None and state.seq > self._advanced:
            # Readers advance the head too: a verified newer log is a head worth remembering.
            try:
                self.heads.advance(self.org, self._head_name, state.seq, state.digest)
                self._advanced = state.seq
            except sqlite3.Error as e:
                log.warning("cannot record the commit-log head of %s/%s: %s",
                            self.org, self.spec.name, e)

    def _require_writer(self) -> None:
        """Refuse a write before any file is made when this process cannot sign."""
        if self.crypto.sign_version is None:
            self.crypto.sign(b"")  # raises PermissionDenied with the reason

    def _append(self, state: _State, op: str, actor: str, added: list[dict],
                removed: list[str]) -> _State:
        """Append one signed line (caller holds the table lock) and advance the heads;
        write a checkpoint when one is due."""
        sv = self.crypto.sign_version
        if sv is None:
            self._require_writer()
        if sv < state.sign_version and _ensure_sign_version(self.crypto, state.sign_version):
            sv = self.crypto.sign_version
        kv = self.crypto.version
        if sv < state.sign_version:
            raise KeyUnavailable(f"the signing key this process holds for org {self.org!r} "
                                 "was rotated; reload the org's keys")
        seq = state.seq + 1
        stats = {"actor": str(actor),
                 "files": {e["path"]: {k: e.get(k) for k in _STAT_KEYS} for e in added}}
        body = {
            "seq": seq, "prev": state.digest,
            "ts": datetime.now(UTC).isoformat(timespec="microseconds"), "op": op,
            "added": [{k: e.get(k) for k in _PUBLIC_KEYS} for e in added], "removed": removed,
            "key_version": kv, "kfp": self.crypto.fingerprint(kv), "sv": sv,
            "ck": state.ck_file,
            "stats": _b64(self.crypto.seal(f"commit-log-stats/{self.spec.name}", kv,
                                           _canon(stats), self._aad("line", seq))),
        }
        _, signature = self.crypto.sign(_sign_message(self.org, self.spec.name, "line", body))
        line = _canon(dict(body, sig=_b64(signature)))
        _mkdirs(self._log_path.parent)
        new_file = not self._log_path.exists()
        # group-writable within the umask: in hub mode the folder's group is the org's
        # data-server account, which reads (and for data:write appends to) logs others created
        fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o660)
        try:
            if os.fstat(fd).st_size != state.size:
                # An unfinished line of a crashed writer: cut it off before appending.
                os.ftruncate(fd, state.size)
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if new_file:
            _fsync_dir(self._log_path.parent)
        new = self._load(strict_heads=False)
        if new.seq != seq:
            raise self._fail("commit log changed during a commit (concurrent writer?)")
        if CHECKPOINT_EVERY and (new.seq - new.ck_file >= CHECKPOINT_EVERY
                                 or (new.ck_file and new.ck_sv < sv)):
            self._write_checkpoint(new)
        return new

    def _write_checkpoint(self, state: _State, offset: int | None = None) -> None:
        """Sign the verified state at its head into ``_log/checkpoint.json`` (atomic replace)."""
        kv = self.crypto.version
        files = [state.files[p] for p in sorted(state.files)]
        doc = {
            "v": 1, "seq": state.seq, "digest": state.digest,
            "offset": state.size if offset is None else offset,
            "key_version": kv, "kfp": self.crypto.fingerprint(kv), "sv": self.crypto.sign_version,
            "files": _b64(self.crypto.seal(f"commit-log-checkpoint/{self.spec.name}", kv,
                                           _canon(files), self._aad("checkpoint", state.seq))),
        }
        _, signature = self.crypto.sign(_sign_message(self.org, self.spec.name, "checkpoint",
                                                      doc))
        tmp = self._ckpt_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _canon(dict(doc, sig=_b64(signature))))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._ckpt_path)
        _fsync_dir(self._ckpt_path.parent)
        state.ck_file, state.ck_sv = state.seq, doc["sv"]

    def seal(self, *, actor: str = "system", scrub: bool = True) -> bool:
        """Sign the log's head so that unsigned lines are refused from now on (migration from
        HMAC-only logs, and after a signing-key rotation). With ``scrub``, a log that still
        holds lines with plaintext statistics is restarted from a signed checkpoint and those
        lines are dropped. Returns True when something was written."""
        self._require_writer()
        with self._locked():
            state = self._load(allow_unsealed=True)
            if state.seq == 0:
                return False
            changed = False
            if not state.signed or state.sign_version < self.crypto.sign_version:
                state = self._append(state, "seal", actor, [], [])
                changed = True
            if scrub and (state.legacy or self._legacy_prefix()):
                self._scrub(state)
                changed = True
            return changed

    def _legacy_prefix(self) -> bool:
        """True when the log file still starts with a line from before signing (a scrub that
        stopped after its first checkpoint)."""
        try:
            with open(self._log_path, "rb") as f:
                first = f.readline()
        except FileNotFoundError:
            return False
        try:
            return first.endswith(b"\n") and "mac" in json.loads(first)
        except (ValueError, TypeError):
            return False

    def _scrub(self, state: _State) -> None:
        """Drop a sealed log's lines from before signing: checkpoint, empty log, checkpoint."""
        self._write_checkpoint(state)
        tmp = self._log_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._log_path)
        _fsync_dir(self._log_path.parent)
        # Readers between the two steps see an offset past the end and read from the start.
        self._write_checkpoint(state, offset=0)
        with self._mutex:
            self._state_cache, self._log_sig = None, None
        self._load()

    class _Locked:
        def __init__(self, table: Table):
            self.table = table
            self.fd = -1

        def __enter__(self):
            _mkdirs(self.table._lock_path.parent)
            self.fd = os.open(self.table._lock_path, os.O_RDWR | os.O_CREAT, 0o660)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            return self

        def __exit__(self, *exc):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)

    def _locked(self) -> Table._Locked:
        return Table._Locked(self)

    # -- files ------------------------------------------------------------------------------

    def _check_file(self, entry: dict, *, cached: bool = True) -> Path:
        """Size, magic and fingerprint of a listed file (cached by path/size/mtime/inode)."""
        rel = entry["path"]
        path = self.path / rel
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise self._fail(f"listed file {rel} is missing") from None
        sig = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, entry["fp"])
        if cached and self._verified.get(rel) == sig:
            return path
        try:
            size, fp = file_fingerprint(path)
        except _BadFile as e:
            raise self._fail(f"file {rel} {e}") from None
        if size != entry["size"]:
            raise self._fail(f"file {rel} has {size} bytes, the commit log says "
                             f"{entry['size']} (truncated or replaced)")
        if size != entry["size"] or fp != entry["fp"]:
            raise self._fail(f"file {rel} does not match its fingerprint in the commit log "
                             "(swapped, replaced or modified)")
        self._verified[rel] = sig
        return path

    def _write_file(self, bucket: int | None, part: pa.Table) -> dict:
        """Encrypt one part into ``_tmp/``, fsync, rename into place; returns its log entry."""
        name = f"part-{uuid.uuid4().hex}.parquet"
        rel = name if bucket is None else f"bucket={bucket:02d}/{name}"
        tmp_dir = self.path / _TMP
        _mkdirs(tmp_dir)
        tmp = tmp_dir / name
        write_parquet(tmp, part, self.crypto.file_encryption_properties())
        size, fp = file_fingerprint(tmp)
        final = self.path / rel
        _mkdirs(final.parent)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        tcol = part.column(self.spec.time_column)
        mm = pc.min_max(tcol.cast(pa.int64()))
        runs = pc.unique(part.column("run_id")) if "run_id" in part.column_names else None
        entry = {"path": rel, "rows": part.num_rows, "size": size, "bucket": bucket,
                 "tmin": mm["min"].as_py(), "tmax": mm["max"].as_py(), "fp": fp,
                 "kv": self.crypto.version, "run_ids": None, "run_min": None, "run_max": None}
        if runs is not None and len(runs):
            runs = runs.drop_null()
            rmm = pc.min_max(runs)
            entry["run_min"], entry["run_max"] = rmm["min"].as_py(), rmm["max"].as_py()
            if len(runs) <= MAX_LISTED_RUN_IDS:
                entry["run_ids"] = sorted(runs.to_pylist())
        return entry

    def _discard(self, entries: Iterable[dict]) -> None:
        for e in entries:
            try:
                os.unlink(self.path / e["path"])
            except FileNotFoundError:
                pass

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
                for bucket, part in parts:
                    added.append(self._write_file(bucket, part))
                state = self._append(state, "add", actor, added, [])
            except BaseException:
                self._discard(added)
                raise
        rows = sum(e["rows"] for e in added)
        log.debug("%s/%s: commit %s added %s files, %s rows", self.org, self.spec.name,
                  state.seq, len(added), rows)
        return Commit(state.seq, len(added), rows)

    def _replace(self, groups: list[tuple[int | None, list[dict]]], actor: str, op: str,
                 target_rows: int, dedupe: bool, progress=None) -> Commit | None:
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

    def compact(self, *, target_rows: int = 1_000_000, min_rows: int = 100_000,
                actor: str = "system") -> Commit | None:
        """Merge files smaller than ``min_rows`` per partition; returns None when nothing to do."""
        self._require_writer()
        with self._locked():
            state = self._load()
            by_bucket: dict[int | None, list[dict]] = {}
            for e in state.ordered():
                if e["rows"] < min_rows:
                    by_bucket.setdefault(e.get("bucket"), []).append(e)
            groups = [(b, es) for b, es in sorted(by_bucket.items(), key=lambda kv: str(kv[0]))
                      if len(es) > 1]
            if not groups:
                return None
            return self._replace(groups, actor, "replace", target_rows, dedupe=True)

    def rewrite(self, *, progress=None, only_older: bool = False,
                actor: str = "system") -> Commit | None:
        """Re-encrypt every listed file under the crypto's current key version, in one commit
        that replaces them (data-key rotation with ``--rewrite``); rows are unchanged.
        ``progress`` is called with the number of files done after each one. None if empty.

        With ``only_older`` files already under the current version are kept as they are.
        Older key versions stay needed to verify the older commit-log lines.
        """
        self._require_writer()
        with self._locked():
            state = self._load()
            groups = [(e.get("bucket"), [e])
                      for e in sorted(state.files.values(), key=lambda e: e["path"])
                      if not only_older or e.get("kv", 0) < self.crypto.version]
            if not groups:
                return None
            return self._replace(groups, actor, "replace", 1 << 62, dedupe=False,
                                 progress=progress)

    def gc(self) -> int:
        """Remove unlisted files (leftovers of crashed writes, replaced files). Returns count."""
        with self._locked():
            state = self._load()
            n = 0
            for p in self._all_data_files():
                rel = p.relative_to(self.path).as_posix()
                if rel not in state.files:
                    p.unlink()
                    n += 1
            tmp = self.path / _TMP
            if tmp.is_dir():
                for p in tmp.iterdir():
                    p.unlink()
                    n += 1
            return n

    def _all_data_files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        out = []
        for p in self.path.rglob("*"):
            rel = p.relative_to(self.path)
            if rel.parts[0] in (_LOG, _TMP) or not p.is_file():
                continue
            out.append(p)
        return out

    # -- reading ----------------------------------------------------------------------------

    def _format(self) -> ds.ParquetFileFormat:
        if self._fmt is None:
            opts = ds.ParquetFragmentScanOptions(
                decryption_config=self.crypto.dataset_decryption_config())
            self._fmt = ds.ParquetFileFormat(default_fragment_scan_options=opts)
        return self._fmt

    def select_files(self, *, run_ids: Sequence[str] | None = None, start=None,
                     end=None) -> list[dict]:
        """Listed files that may hold rows of ``run_ids`` in ``[start, end)`` (from the log)."""
        return self._select(self._load(), run_ids, _to_us(start), _to_us(end))

    def _select(self, state: _State, run_ids, t0, t1) -> list[dict]:
        want = None
        if run_ids is not None:
            want = set(run_ids)
            buckets = {bucket_of(r) for r in want} if self.spec.bucketed else None
        out = []
        for e in state.ordered():
            if want is not None:
                if buckets is not None and e.get("bucket") not in buckets:
                    continue
                if e.get("run_ids") is not None:
                    if want.isdisjoint(e["run_ids"]):
                        continue
                elif e.get("run_min") is not None and not any(
                        e["run_min"] <= r <= e["run_max"] for r in want):
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
            add(pc.field(tcol) >= pa.scalar(t0, pa.int64()).cast(self.spec.schema.field(
                tcol).type))
        if t1 is not None:
            add(pc.field(tcol) < pa.scalar(t1, pa.int64()).cast(self.spec.schema.field(
                tcol).type))
        if extra is not None:
            add(extra)
        return expr

    def _open_dataset(self, entries: list[dict]) -> ds.Dataset:
        frags = [self._fragment(e) for e in entries]
        self.last_read_files = [e["path"] for e in entries]
        return ds.FileSystemDataset(frags, self.spec.schema, self._format(), _LOCAL_FS)

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
        frag = self._format().make_fragment(str(path), filesystem=_LOCAL_FS)
        try:
            frag.ensure_complete_metadata()
        except KeyUnavailable:
            raise
        except (OSError, pa.ArrowException):
            kerr = self.crypto.key_error()
            if kerr is not None:
                raise kerr from None
            raise self._fail(f"file {rel} has a footer that fails authentication "
                             "(tampered)") from None
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
            kerr = self.crypto.key_error()
            if kerr is not None:
                raise kerr from None
            bad = self._culprit(entries)
            log.warning("%s/%s: read failed (%s)", self.org, self.spec.name, type(e).__name__)
            raise self._fail(f"file {bad} failed decryption or decoding (tampered or corrupt)"
                             if bad else "a file failed decryption or decoding "
                             "(tampered or corrupt)") from None

    def _culprit(self, entries: list[dict]) -> str | None:
        fmt = self._format()
        for e in entries:
            try:
                ds.dataset(str(self.path / e["path"]), schema=self.spec.schema,
                           format=fmt).to_table()
            except Exception:  # noqa: BLE001 - only locating the bad file
                return e["path"]
        return None

    def _read_files(self, entries, columns, expr) -> pa.Table:
        if not entries:
            schema = self.spec.schema
            if columns is not None:
                schema = pa.schema([schema.field(c) for c in columns])
            return schema.empty_table()
        return self._scan(entries, lambda d: d.to_table(columns=columns, filter=expr,
                                                        memory_pool=READ_POOL))

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

    def read(self, *, run_ids: Sequence[str] | None = None, start: datetime | None = None,
             end: datetime | None = None, columns: Sequence[str] | None = None,
             filter=None) -> pa.Table:
        """Read matching rows; run/time filters prune files via the log and row groups via stats.

        Tables with a ``key`` return only the latest version of each key.
        """
        if columns is not None:
            unknown = [c for c in columns if c not in self.spec.schema.names]
            if unknown:
                raise ValidationError(f"unknown column {unknown[0]!r} in {self.spec.name}",
                                      field=unknown[0])
            columns = list(columns)
        t0, t1 = _to_us(start), _to_us(end)
        if run_ids is not None:
            run_ids = [str(r) for r in run_ids]
        for attempt in (0, 1):
            state = self._load()
            entries = self._select(state, run_ids, t0, t1)
            try:
                if not self.spec.key:
                    return self._read_files(entries, columns,
                                            self._expr(run_ids, t0, t1, filter))
                # Versioned rows: filter on the key only before choosing the newest version.
                pre = run_ids if "run_id" in self.spec.key else None
                if pre is None:
                    entries = self._select(state, None, None, None)
                latest = self._latest(self._read_files(entries, None,
                                                       self._expr(pre, None, None, None)))
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
        state = self._load()
        self._check_replay(state)
        entries = sorted(state.files.values(), key=lambda e: e["path"])
        for e in entries:
            self._check_file(e, cached=False)
        for p in self._all_data_files():
            rel = p.relative_to(self.path).as_posix()
            if rel in state.files:
                continue
            try:
                file_fingerprint(p)
            except _BadFile as e:
                raise self._fail(f"unlisted file {rel} {e}") from None
            except OSError as e:
                raise self._fail(f"unlisted file {rel} cannot be read ({e.strerror})") from None
        if deep:
            for e in entries:
                self._scan([e], lambda d: d.to_table())
        elif entries:
            self._frags.clear()
            for e in entries:
                self._fragment(e)


    def _check_replay(self, state: _State) -> None:
        """Replay a log that starts at its first commit and compare with the checkpointed state:
        a checkpoint that disagrees with the lines it summarises is refused."""
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

        if (full.seq, full.digest) != (state.seq, state.digest) or full.files.keys() != \
                state.files.keys() or not all(same(full.files[p], e)
                                              for p, e in state.files.items()):
            raise self._fail("the commit-log checkpoint does not match the log's lines")


class OrgStore:
    """All raw-data tables of one org (never context)."""

    def __init__(self, data_root: Path, org: str, crypto: OrgCrypto,
                 heads: HeadStore | None = None):
        _check_crypto(org, crypto)
        self.data_root = Path(data_root)
        self.org = org
        self.crypto = crypto
        self.heads = heads
        self._tables: dict[str, Table] = {}

    def table(self, name: str) -> Table:
        """The table ``"<category>/<name>"`` (see ``schema.TABLES``); a bare name also works."""
        if name not in TABLES and "/" not in name:
            matches = [t for t in TABLES if t.split("/", 1)[1] == name]
            if len(matches) == 1:
                name = matches[0]
        if name not in TABLES:
            lookup_spec(name)  # raises ValidationError naming the valid tables
            raise ValidationError(f"{name!r} is not a raw-data table", field="table")
        if name not in self._tables:
            self._tables[name] = Table(self.data_root, self.org, TABLES[name], self.crypto,
                                       self.heads)
        return self._tables[name]

    def tables(self) -> Iterable[Table]:
        """Every raw-data table."""
        return [self.table(n) for n in TABLES]
