"""Org datasets: encrypted Parquet files listed by an append-only, signed commit log.

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

    {"v": 2, "seq": 640, "digest": "<sha256 of line 640>", "offset": <byte end of line 640>,
     "key_version": 2, "kfp": "...", "sv": 1,
     "files": "<base64 sealed file list, grouped by bucket>", "sig": "<Ed25519, see below>"}

Format 2's ``sig`` covers the document with ``files`` replaced by ``files_sha256`` (the SHA-256
of the sealed bytes), and its file list is grouped by bucket (:mod:`.filemap`), so that a
one-run query parses only its own bucket's entries. Format 1 (written before; still read) seals
one flat JSON list of the entries and signs the document as it is.

A reader starts from the newest checkpoint and verifies only the lines after ``offset`` (the
first must continue ``digest``); a line's ``ck`` names the checkpoint it saw, so a removed or
older checkpoint is refused; ``verify()`` also replays the whole log (when it starts at commit 1)
and compares. A long-running reader reads only the bytes appended since its last read. Of
several lines read at once, only the newest one's signature is checked (each line names the
hash of the one before); any fault makes the reader check every signature to name the first
bad line.

Lines written before commit-log signing carry ``actor`` and the statistics in plaintext and a
``mac`` (HMAC-SHA256, key derived from the data key) instead of ``stats``/``sig``. A reader
accepts them only before a signed line (which seals them) or, holding no verify key, in a log with
no signed line at all;
``OrgTable.seal`` (``atomscale-lab org migrate``) seals them with a signed line, writes a checkpoint
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
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from atomscale_lab.errors import Conflict, IntegrityError, KeyUnavailable
from atomscale_lab.fsutil import fsync_dir as _fsync_dir
from atomscale_lab.fsutil import mkdirs as _mkdirs
from atomscale_lab.vault.crypto import OrgCrypto
from atomscale_lab.vault.db import Database, db_errors, is_database_url
from atomscale_lab.vault.migrations import ensure
from atomscale_lab.vault.store import filemap
from atomscale_lab.vault.store.filemap import FileMap
from atomscale_lab.vault.store.files import (
    _PATH_RE,
)

log = logging.getLogger(__name__)

_GENESIS = "0" * 64
_LOG = "_log"
_CKPT = f"{_LOG}/checkpoint.json"
"""The checkpoint's key on object storage (locally ``_ckpt_path``)."""
_MAX_RETRIES = 10_000
CHECKPOINT_EVERY = 64
"""A writer signs a checkpoint of the table's state every this many commits (0: never), so that
a fresh reader verifies at most this many lines. Also written when the signing key rotated."""
CHECKPOINT_FORMAT = 2
"""Format of the checkpoints written: 2 seals the file list grouped by bucket, so that a reader
parses only the buckets it needs (:mod:`.filemap`); 1 (a flat list) is what earlier versions
wrote. Both are read."""
_KEEP_DIGESTS = 4096
_HIGH_WATER: dict[str, tuple[int, str]] = {}
"""Newest (seq, line hash) this process has seen per table folder: a rolled-back log is refused."""
_HW_LOCK = threading.Lock()


class _Seen(list):
    """Heads seen (see ``_heads_seen``); ``store``: the head store's, when it had one."""

    store: tuple[int, str] | None = None


class _Recheck(Exception):  # noqa: N818 - a signal between two methods, never raised to callers
    """A check failed after a signature was left to a later line's: load again checking all."""


class HeadStore(Protocol):
    """Keeps the latest (seq, hash) of each table's log outside the data root (rollback defence)."""

    def get(self, org: str, table: str) -> tuple[int, str] | None:
        """Latest known head, or None."""

    def advance(self, org: str, table: str, seq: int, digest: str) -> None:
        """Record a newer head (never goes backwards)."""


class DatabaseHeadStore:
    """``HeadStore`` in the deployment database: a SQLite file (default: the registry) or
    PostgreSQL (``db``: a path, a ``postgresql://`` URL or a :class:`Database`).

    Advancing is a compare-and-swap in one statement: the row changes only if the new ``seq`` is
    greater than the stored one, so of two writers that both advance from the same head to the
    same ``seq`` with different digests (a forked log) one wins and the other gets an
    ``IntegrityError``; :meth:`swap` is the explicit form (``expect`` the current head).
    """

    def __init__(self, db: Path | str | Database):
        if not isinstance(db, Database):
            db = Database(db if is_database_url(db) else Path(db), private=False)
        self._db = db
        self.db_path = db.path
        ensure(db, "heads")

    def get(self, org: str, table: str) -> tuple[int, str] | None:
        """Latest known head, or None."""
        rows = self._db.sql("SELECT seq, digest FROM log_heads WHERE org=? AND tbl=?", (org, table))
        return (int(rows[0][0]), rows[0][1]) if rows else None

    def advance(self, org: str, table: str, seq: int, digest: str) -> None:
        """Record a newer head (never goes backwards); refuse a different digest at the stored
        ``seq`` (two writers advanced from the same head)."""
        moved = self._db.execute(
            "INSERT INTO log_heads (org, tbl, seq, digest) VALUES (?,?,?,?) "
            "ON CONFLICT (org, tbl) DO UPDATE SET seq=excluded.seq, digest=excluded.digest "
            "WHERE excluded.seq > log_heads.seq",
            (org, table, seq, digest),
        ).rowcount
        if moved:
            return
        # Not moved: the same head again, a newer one, or a fork at this seq. (A head that moved
        # further meanwhile is newer: readers check that log's digests themselves.)
        row = self.get(org, table)
        if row is not None and row[0] == seq and row[1] != digest:
            raise IntegrityError(
                f"commit log of {org}/{table}: commit {seq} was already recorded with another "
                "digest (two writers committed from the same head)"
            )

    def swap(
        self, org: str, table: str, expect: tuple[int, str] | None, new: tuple[int, str]
    ) -> bool:
        """Compare-and-swap: set the head to ``new`` only if it is ``expect`` now (None: no head
        yet) and ``new`` is newer. Returns whether this call moved it."""
        seq, digest = new
        if expect is not None and seq <= expect[0]:
            return False
        with self._db.tx() as tx:
            if expect is None:
                cur = tx.execute(
                    "INSERT INTO log_heads (org, tbl, seq, digest) VALUES (?,?,?,?) "
                    "ON CONFLICT (org, tbl) DO NOTHING",
                    (org, table, seq, digest),
                )
            else:
                cur = tx.execute(
                    "UPDATE log_heads SET seq=?, digest=? WHERE org=? AND tbl=? AND seq=? "
                    "AND digest=?",
                    (seq, digest, org, table, expect[0], expect[1]),
                )
            return cur.rowcount == 1

    def forget(self, org: str) -> None:
        """Drop the heads of a deleted org."""
        self._db.sql("DELETE FROM log_heads WHERE org=?", (org,))


SqliteHeadStore = DatabaseHeadStore
"""The former name of :class:`DatabaseHeadStore`."""


@dataclass(frozen=True)
class Commit:
    """What a write or compaction committed."""

    seq: int
    files: int
    rows: int


def _canon(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class _State:
    """The verified log of one table: listed files (path → entry) and the head.

    ``size`` is the byte offset in ``commits.jsonl`` up to which lines were applied; ``signed``
    says whether the newest applied element (line or checkpoint) was signed and ``sealed``
    whether any was (after which an unsigned line is refused); ``ck_file`` is the newest
    checkpoint known to exist and ``ck_said`` the newest one a line announced.
    """

    __slots__ = (
        "files",
        "seq",
        "digest",
        "key_version",
        "sign_version",
        "size",
        "ino",
        "signed",
        "sealed",
        "ck_file",
        "ck_sv",
        "ck_said",
        "digests",
        "legacy",
        "_sorted",
    )

    def __init__(self):
        self.files: FileMap = FileMap()
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
        s.files = self.files.copy()
        s.digests = dict(self.digests)
        s._sorted = None
        return s

    def ordered(self) -> list[dict]:
        """Entries by (commit, path), computed once per state."""
        if self._sorted is None:
            self._sorted = sorted(self.files.values(), key=lambda e: (e["seq"], e["path"]))
        return self._sorted

    def ordered_in(self, buckets) -> list[dict]:
        """Entries of the given buckets by (commit, path), without parsing the other buckets'
        part of a checkpoint."""
        if self._sorted is not None:
            return [e for e in self._sorted if e.get("bucket") in buckets]
        return sorted(self.files.in_buckets(buckets), key=lambda e: (e["seq"], e["path"]))

    def remember(self, seq: int, digest: str) -> None:
        """Keep the digests of recent lines for the head checks (bounded)."""
        self.digests[seq] = digest
        if len(self.digests) > 2 * _KEEP_DIGESTS:
            for s in sorted(self.digests)[:-_KEEP_DIGESTS]:
                del self.digests[s]


def _sign_message(org: str, table: str, kind: str, body: dict) -> bytes:
    """What a commit-log line or checkpoint signature covers: org, table, kind and the body."""
    return b"atomscale-lab/commit-log/v2\0" + f"{org}\0{table}\0{kind}\0".encode() + _canon(body)


def _ckpt_signed(doc: dict, blob: bytes | None = None) -> dict:
    """What a checkpoint's signature covers: format 1 the document as it is; format 2 the
    document with the sealed file list replaced by its SHA-256 (``files_sha256``), so that
    neither side encodes the whole list once more as part of the signed message."""
    if doc.get("v", 1) == 1:
        return doc
    if blob is None:
        blob = _unb64(doc["files"])
    signed = {k: v for k, v in doc.items() if k != "files"}
    signed["files_sha256"] = hashlib.sha256(blob).hexdigest()
    return signed


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
            f"the key of org {crypto.org!r} cannot read or write org {org!r}'s data"
        )


class CommitLog:
    """The commit log of one table: load and verify it, append, checkpoint, seal (a base of
    :class:`~atomscale_lab.vault.store.table.OrgTable`, which sets the paths and keys it uses)."""

    def log_version(self) -> tuple[int, int] | None:
        """``(size, mtime_ns)`` of the commit log, None before the first commit: the log is
        append-only, so this changes with every commit (a cheap "has anything changed?").
        On object storage: ``(seq, digest)`` of the verified head (one listing)."""
        if self._m.objects:
            state = self._load()
            return (state.seq, state.digest) if state.seq else None
        try:
            st = self._log_path.stat()
        except FileNotFoundError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def _mac(self, body: dict, version: int) -> str:
        key = self.crypto.mac_key(f"commit-log/{self.spec.name}", version)
        return hmac.new(key, _canon(body), hashlib.sha256).hexdigest()

    def _fail(self, msg: str) -> IntegrityError:
        return IntegrityError(f"{self.org}/{self.spec.name}: {msg}")

    def _aad(self, kind: str, seq: int) -> bytes:
        return f"{self.org}/{self.spec.name}/{kind}/{seq}".encode()

    def _load(
        self,
        *,
        strict_heads: bool = True,
        allow_unsealed: bool = False,
        use_checkpoint: bool = True,
    ) -> _State:
        """Verify the log from the newest checkpoint (or incrementally, when only appended to
        since the last load); check the heads. Never re-reads lines it has verified.

        Of several signed lines read at once only the newest signature is checked (see
        :meth:`_apply`); when anything fails, the load is repeated checking every signature,
        so that the refusal names the first bad line, as it always did."""
        kw = {
            "strict_heads": strict_heads,
            "allow_unsealed": allow_unsealed,
            "use_checkpoint": use_checkpoint,
        }
        with self._mutex:
            try:
                return self._load_once(**kw)
            except _Recheck:
                self._every_signature = True
                try:
                    return self._load_once(**kw)
                finally:
                    self._every_signature = False

    def _load_once(
        self, *, strict_heads: bool, allow_unsealed: bool, use_checkpoint: bool
    ) -> _State:
        """One attempt of :meth:`_load`."""
        if self._m.objects:
            return self._load_objects(
                strict_heads=strict_heads,
                allow_unsealed=allow_unsealed,
                use_checkpoint=use_checkpoint,
            )
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
                    if cached is not None and cached.ino == st.st_ino and st.st_size > cached.size:
                        state, skip = cached.copy(), False
                    else:
                        state, skip = self._start(st.st_size, use_checkpoint)
                        if state.size:
                            f.seek(state.size - 1)
                            if f.read(1) != b"\n":  # the checkpoint's offset is not a line end
                                state.size, skip = 0, True
                    # Heads read before the lines: a head that a writer records while we read
                    # is no rollback (its line is appended before the head is recorded).
                    before = self._heads_seen()
                    f.seek(state.size)
                    data = f.read()
                    state.ino = st.st_ino
            except FileNotFoundError:
                before = self._heads_seen()
                data, sig = b"", None
                state, skip = self._start(0, use_checkpoint)
                state.size = 0
            end = data.rfind(b"\n") + 1  # a last line without newline is not committed
            if end:
                self._apply(state, data, end, skip)
                state.size += end
            elif skip:
                state.size = 0
            return self._finish_load(
                state, sig, use_checkpoint, allow_unsealed, strict_heads, before
            )

    def _finish_load(
        self, state: _State, sig, use_checkpoint: bool, allow_unsealed: bool, strict_heads, before
    ) -> _State:
        """The checks every load ends with (whatever medium the lines came from), then cache
        ``state`` under the log's signature ``sig``."""
        if use_checkpoint and state.ck_said > state.ck_file:
            # A line names a newer checkpoint than the one read: another writer made it
            # since, or it was removed or replaced by an older one.
            newer = self._read_checkpoint(allow_retired=True)
            if newer is None or newer.seq < state.ck_said:
                raise self._fail(
                    f"the checkpoint at commit {state.ck_said} named by the log "
                    "is missing or was replaced by an older one"
                )
            state.ck_file, state.ck_sv = newer.seq, newer.sign_version
        self._check_signed_head(state, allow_unsealed)
        self._check_heads(state, strict=strict_heads, seen=before)
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
                f"{self.org}`)"
            )

    def _load_objects(
        self, *, strict_heads: bool, allow_unsealed: bool, use_checkpoint: bool
    ) -> _State:
        """:meth:`_load` on object storage: list the commit objects after the cached head (or
        the checkpoint), fetch and verify only those. The listing starts one before the head,
        so a head object deleted or replaced since (its ETag differs) forces a full reload,
        which the heads then refuse.

        The heads are read *before* listing: a head is recorded after its object is visible, so
        every head seen then must be in the listing, while one that another writer records
        while we list is no sign of a rollback.
        """
        m = self._m
        with self._mutex:
            before = self._heads_seen()
            cached = self._state_cache if use_checkpoint else None
            state, new, etag = None, [], None
            if cached is not None:
                listing = m.list_log(after=max(cached.seq - 1, 0))
                if cached.seq == 0:
                    ok, new = True, listing
                else:
                    ok = bool(listing) and listing[0] == self._log_sig
                    new = listing[1:]
                if ok and not new:
                    self._check_signed_head(cached, allow_unsealed)
                    self._check_heads(cached, strict=False, seen=before)
                    return cached
                if ok:
                    state, etag = cached.copy(), (self._log_sig or (0, None))[1]
            if state is None:
                ck = self._read_checkpoint() if use_checkpoint else None
                state = ck if ck is not None else _State()
                listing = m.list_log(after=max(state.seq - 1, 0))
                new = listing
                if state.seq:
                    if not listing or listing[0][0] != state.seq:
                        raise self._fail(
                            f"commit object {state.seq}, the head of the checkpoint, is missing"
                        )
                    etag, new = listing[0][1], listing[1:]
            if new:
                bodies = m.get_log([q for q, _ in new])
                for (seq, _), (body, _) in zip(new, bodies, strict=True):
                    if not body or b"\n" in body:
                        raise self._fail(f"commit object {seq} is missing or corrupt")
                if not getattr(self, "_every_signature", False) and len(new) > 1:
                    # All at once, so that only the newest signature is checked. The keys
                    # listed rise strictly and the chain's numbers by one, so the same count
                    # and the same last number mean that every object holds its own commit.
                    first = state.seq
                    data = b"\n".join(body for body, _ in bodies) + b"\n"
                    self._apply(state, data, len(data))
                    if state.seq != new[-1][0] or state.seq - first != len(new):
                        raise _Recheck()  # named object by object below
                else:
                    for (seq, _), (body, _) in zip(new, bodies, strict=True):
                        self._apply(state, body + b"\n", len(body) + 1)
                        if state.seq != seq:
                            raise self._fail(
                                f"commit object {seq} holds commit {state.seq} (moved or swapped)"
                            )
                etag = new[-1][1]
            return self._finish_load(
                state, (state.seq, etag), use_checkpoint, allow_unsealed, strict_heads, before
            )

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
        if self._m.objects:
            got = self._m.get(_CKPT)
            if got is None:
                return None
            raw = got[0]
        else:
            try:
                raw = self._ckpt_path.read_bytes()
            except FileNotFoundError:
                return None
        try:
            doc = json.loads(raw)
            sig = _unb64(doc.pop("sig"))
            seq, digest, offset = int(doc["seq"]), str(doc["digest"]), int(doc["offset"])
            kv, sv = int(doc["key_version"]), int(doc["sv"])
            fmt = int(doc.get("v", 1))
            blob = _unb64(doc["files"])
            if fmt not in (1, 2):
                raise ValueError(fmt)
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            raise self._fail("the commit-log checkpoint is corrupt") from None
        if not self.crypto.verify_signature(
            sv, _sign_message(self.org, self.spec.name, "checkpoint", _ckpt_signed(doc, blob)), sig
        ):
            raise self._fail(
                "the commit-log checkpoint failed its signature check (edited or forged)"
            )
        if sv < max(self.crypto.keys.verify) and not allow_retired:
            return None
        if kv not in self.crypto.keys.keys:
            raise KeyUnavailable(
                f"data key version {kv} of org {self.org!r} is not available "
                f"({self.spec.name} was written with it)"
            )
        plain = self.crypto.unseal(
            f"commit-log-checkpoint/{self.spec.name}", kv, blob, self._aad("checkpoint", seq)
        )
        if plain is None:
            if doc.get("kfp") != self.crypto.fingerprint(kv):
                raise KeyUnavailable(
                    f"the data key given for org {self.org!r} does not match "
                    f"{self.spec.name}'s files (wrong key or another org's data)"
                )
            raise self._fail("the commit-log checkpoint's file list fails authentication")
        state = _State()
        try:
            if fmt == 1:
                state.files = FileMap(json.loads(plain))
            else:
                state.files = filemap.decode(plain, f"{self.org}/{self.spec.name}: ")
        except (ValueError, KeyError, TypeError):
            raise self._fail("the commit-log checkpoint's file list is corrupt") from None
        state.seq, state.digest, state.size = seq, digest, offset
        state.key_version, state.sign_version = kv, sv
        state.signed = state.sealed = True
        state.ck_file, state.ck_sv = seq, sv
        state.remember(seq, digest)
        return state

    def _apply(self, state: _State, data: bytes, end: int, skip: bool = False) -> None:
        """Verify and apply the lines in ``data[:end]``.

        Each line names the SHA-256 of the line before it, so the newest line's signature covers
        every line before it as written: of a run of signed lines only the last one's signature
        is checked here (every other check is made on each line). A writer checks the newest
        line's signature before it appends, so every line of a log was checked on its own by
        the writer of the next one. Should any check fail after a signature was skipped,
        :class:`_Recheck` makes :meth:`_load` start over checking every signature.
        """
        lines = data[:end].split(b"\n")[:-1]
        skipped = None if getattr(self, "_every_signature", False) else [0]
        try:
            self._apply_lines(state, lines, skip, skipped)
        except IntegrityError:
            if skipped and skipped[0]:
                raise _Recheck() from None
            raise

    def _apply_lines(
        self, state: _State, lines: list[bytes], skip: bool, skipped: list[int] | None
    ) -> None:
        """:meth:`_apply`'s loop; ``skipped`` (None: check every signature) counts the
        signatures left to the newest line's."""
        lineno = state.seq
        last = len(lines) - 1
        for i, raw in enumerate(lines):
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
                raise self._fail(
                    f"commit log line {lineno} does not continue the chain "
                    "(lines removed, reordered or inserted)"
                )
            if kv < state.key_version:
                raise self._fail(f"commit log line {lineno} uses a retired key version")
            if kv not in self.crypto.keys.keys and not _ensure_version(self.crypto, kv):
                raise KeyUnavailable(
                    f"data key version {kv} of org {self.org!r} is not available "
                    f"({self.spec.name} was written with it)"
                )
            if sig is None:
                added = self._check_legacy(state, doc, mac, kv, lineno)
            else:
                check = skipped is None or i == last
                if not check:
                    skipped[0] += 1  # before: its own other checks may fail first
                added = self._check_signed(state, doc, sig, kv, lineno, check)
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
            raise self._fail(
                f"commit log line {lineno} is not signed, but the log was sealed "
                "by signed lines before it (forged with the data key alone?)"
            )
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
                f"{self.spec.name}'s files (wrong key or another org's data)"
            )

    def _check_signed(
        self, state: _State, doc: dict, sig, kv: int, lineno: int, check: bool = True
    ) -> list:
        """A signed line: Ed25519 signature over the body (checked with ``check``; otherwise a
        later line's signature covers it), statistics sealed with the data key."""
        try:
            sv, blob, signature = int(doc["sv"]), _unb64(doc["stats"]), _unb64(sig)
            ck = int(doc.get("ck", 0))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise self._fail(f"commit log line {lineno} is corrupt") from None
        self._check_kfp(doc, kv)  # the wrong data key is named as such, not as tampering
        if sv < state.sign_version:
            raise self._fail(f"commit log line {lineno} is signed with a retired signing key")
        if check and not self.crypto.verify_signature(
            sv, _sign_message(self.org, self.spec.name, "line", doc), signature
        ):
            raise self._fail(
                f"commit log line {lineno} failed its signature check "
                "(edited, or forged without the org's signing key)"
            )
        plain = self.crypto.unseal(
            f"commit-log-stats/{self.spec.name}", kv, blob, self._aad("line", doc["seq"])
        )
        if plain is None:
            raise self._fail(f"commit log line {lineno} has statistics that fail authentication")
        try:
            stats = json.loads(plain)["files"]
            added = [dict(e, **stats[e["path"]]) for e in doc["added"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self._fail(f"commit log line {lineno} is corrupt") from None
        state.sign_version = sv
        state.signed = state.sealed = True
        state.ck_said = max(state.ck_said, ck)
        return added

    def _heads_seen(self, use_store: bool = True) -> list[tuple[int, str]]:
        """The heads known now: this process's high-water mark and the head store's."""
        seen = _Seen()
        with _HW_LOCK:
            hw = _HIGH_WATER.get(self._hw_key)
        if hw:
            seen.append(hw)
        if self.heads is not None and use_store:
            h = self.heads.get(self.org, self._head_name)
            if h:
                seen.store = (int(h[0]), str(h[1]))
                seen.append(tuple(h))
        return seen

    def _check_heads(
        self,
        state: _State,
        *,
        strict: bool = True,
        use_store: bool = True,
        seen: list[tuple[int, str]] | None = None,
    ) -> None:
        if seen is None:
            seen = self._heads_seen(use_store)
        for seq, digest in seen:
            if state.seq < seq:
                raise self._fail(
                    f"commit log was rolled back (it ends at commit {state.seq}, "
                    f"but commit {seq} was seen before)"
                )
            # Lines before the retained ones are covered by signatures and checkpoints.
            mine = state.digests.get(seq)
            if strict and seq >= 1 and mine is not None and mine != digest:
                raise self._fail(
                    f"commit log was rewritten (commit {seq} differs from the one seen before)"
                )
        with _HW_LOCK:
            old = _HIGH_WATER.get(self._hw_key)
            if not old or old[0] < state.seq:
                _HIGH_WATER[self._hw_key] = (state.seq, state.digest)
        if getattr(seen, "store", None) == (state.seq, state.digest):
            self._advanced = max(self._advanced, state.seq)  # recorded already: no write
        if self.heads is not None and state.seq > self._advanced:
            # Readers advance the head too: a verified newer log is a head worth remembering.
            try:
                self.heads.advance(self.org, self._head_name, state.seq, state.digest)
                self._advanced = state.seq
            except db_errors() as e:
                log.warning(
                    "cannot record the commit-log head of %s/%s: %s", self.org, self.spec.name, e
                )

    def _require_writer(self) -> None:
        """Refuse a write before any file is made when this process cannot sign."""
        if self.crypto.sign_version is None:
            self.crypto.sign(b"")  # raises PermissionDenied with the reason

    def _append(
        self, state: _State, op: str, actor: str, added: list[dict], removed: list[str]
    ) -> _State:
        """Append one signed line (caller holds the table lock) and advance the heads;
        write a checkpoint when one is due. On object storage a lost race for the sequence
        number reloads the log, re-checks the commit against it and tries the next number."""
        for _ in range(_MAX_RETRIES):
            sv = self.crypto.sign_version
            if sv is None:
                self._require_writer()
            if sv < state.sign_version and _ensure_sign_version(self.crypto, state.sign_version):
                sv = self.crypto.sign_version
            kv = self.crypto.version
            if sv < state.sign_version:
                raise KeyUnavailable(
                    f"the signing key this process holds for org {self.org!r} "
                    "was rotated; reload the org's keys"
                )
            if kv < state.key_version:
                raise KeyUnavailable(
                    f"the data key this process holds for org {self.org!r} "
                    "was rotated; reload the org's keys"
                )
            seq = state.seq + 1
            line = self._line(state, seq, op, actor, added, removed, kv, sv)
            if not self._m.objects:
                new = self._append_local(state, seq, line)
                break
            before = self._heads_seen()  # none can pass seq: a line seq+1 needs ours first
            etag = self._m.put(self._m.log_key(seq), line)
            if etag is not None:
                new = state.copy()
                self._apply(new, line + b"\n", len(line) + 1)
                self._check_heads(new, strict=False, seen=before)
                with self._mutex:
                    cur = self._state_cache
                    if cur is None or cur.seq < new.seq:
                        self._state_cache, self._log_sig = new, (new.seq, etag)
                break
            state = self._rebase(state, removed)
        else:
            raise Conflict(f"{self.org}/{self.spec.name}: too many concurrent commits")
        if CHECKPOINT_EVERY and (
            new.seq - new.ck_file >= CHECKPOINT_EVERY or (new.ck_file and new.ck_sv < sv)
        ):
            self._write_checkpoint(new)
        return new

    def _line(
        self,
        state: _State,
        seq: int,
        op: str,
        actor: str,
        added: list[dict],
        removed: list[str],
        kv: int,
        sv: int,
    ) -> bytes:
        """The signed log line of commit ``seq`` continuing ``state``."""
        stats = {
            "actor": str(actor),
            "files": {e["path"]: {k: e.get(k) for k in _STAT_KEYS} for e in added},
        }
        body = {
            "seq": seq,
            "prev": state.digest,
            "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
            "op": op,
            "added": [{k: e.get(k) for k in _PUBLIC_KEYS} for e in added],
            "removed": removed,
            "key_version": kv,
            "kfp": self.crypto.fingerprint(kv),
            "sv": sv,
            "ck": state.ck_file,
            "stats": _b64(
                self.crypto.seal(
                    f"commit-log-stats/{self.spec.name}", kv, _canon(stats), self._aad("line", seq)
                )
            ),
        }
        _, signature = self.crypto.sign(_sign_message(self.org, self.spec.name, "line", body))
        return _canon(dict(body, sig=_b64(signature)))

    def _append_local(self, state: _State, seq: int, line: bytes) -> _State:
        """Append ``line`` to ``commits.jsonl`` (under the table's flock) and reload."""
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
        return new

    def _rebase(self, state: _State, removed: list[str]) -> _State:
        """After losing a sequence number: the newer log, if the commit still applies to it.

        Added files never collide (fresh names). Removed files must still be listed, and a
        rewrite of a keyed table must not jump over newer row versions (the compacted file
        would count as the later write): both raise ``Conflict`` (the caller discards).
        """
        new = self._load()
        if new.seq <= state.seq:
            raise self._fail(
                f"commit object {state.seq + 1} exists but is not part of the verified log"
            )
        gone = [p for p in removed if p not in new.files]
        if gone:
            raise Conflict(
                f"{self.org}/{self.spec.name}: {gone[0]} was replaced by a concurrent commit"
            )
        if removed and self.spec.key and any(e["seq"] > state.seq for e in new.files.values()):
            raise Conflict(
                f"{self.org}/{self.spec.name}: rows were written during a rewrite; try again"
            )
        return new

    def _write_checkpoint(self, state: _State, offset: int | None = None) -> None:
        """Sign the verified state at its head into ``_log/checkpoint.json`` (atomic replace)."""
        kv = self.crypto.version
        fmt, plain = CHECKPOINT_FORMAT, None
        if fmt >= 2:
            try:
                plain = filemap.encode(state.files.values())
            except ValueError:  # an entry that cannot be grouped by its path: a flat list
                fmt = 1
        if plain is None:
            plain = _canon([state.files[p] for p in sorted(state.files)])
        doc = {
            "v": fmt,
            "seq": state.seq,
            "digest": state.digest,
            "offset": state.size if offset is None else offset,
            "key_version": kv,
            "kfp": self.crypto.fingerprint(kv),
            "sv": self.crypto.sign_version,
            "files": _b64(
                self.crypto.seal(
                    f"commit-log-checkpoint/{self.spec.name}",
                    kv,
                    plain,
                    self._aad("checkpoint", state.seq),
                )
            ),
        }
        _, signature = self.crypto.sign(
            _sign_message(self.org, self.spec.name, "checkpoint", _ckpt_signed(doc))
        )
        if self._m.objects:
            self._put_checkpoint(state.seq, _canon(dict(doc, sig=_b64(signature))))
            state.ck_file, state.ck_sv = state.seq, doc["sv"]
            return
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

    def _put_checkpoint(self, seq: int, body: bytes) -> None:
        """Replace the checkpoint object by compare-and-swap, never with an older one (two
        writers may checkpoint at once; a checkpoint going back would look like an attack)."""
        for _ in range(16):
            got = self._m.get(_CKPT)
            etag = None
            if got is not None:
                try:
                    if int(json.loads(got[0])["seq"]) >= seq:
                        return
                except (ValueError, KeyError, TypeError):
                    pass  # a corrupt one is replaced
                etag = got[1]
            if self._m.put(_CKPT, body, if_match=etag) is not None:
                return

    def seal(self, *, actor: str = "system", scrub: bool = True) -> bool:
        """Sign the log's head so that unsigned lines are refused from now on (migration from
        HMAC-only logs, and after a signing-key rotation). With ``scrub``, a log that still
        holds lines with plaintext statistics is restarted from a signed checkpoint and those
        lines are dropped (on object storage: their objects are deleted, except the head's).
        Returns True when something was written."""
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
        if self._m.objects:
            return False  # objects of scrubbed lines are deleted after the checkpoint
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
        if self._m.objects:
            for seq, _ in self._m.list_log(0):
                if seq < state.seq:
                    self._m.delete(self._m.log_key(seq))
            with self._mutex:
                self._state_cache, self._log_sig = None, None
            self._load()
            return
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
        def __init__(self, table: CommitLog):
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

    def _locked(self):
        # On object storage the conditional put serialises writers; this lock only keeps one
        # table object's own threads from racing each other for nothing.
        if self._m.objects:
            return self._wlock
        return CommitLog._Locked(self)
