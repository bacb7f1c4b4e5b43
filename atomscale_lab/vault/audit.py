"""The per-org audit trail: one JSON line per event, hash-chained and MACed with the org audit key.

``audit_root/<org>.jsonl``; each line ``{"seq", "ts", "org", "actor", "action", "outcome",
"detail", "prev", "mac"}``; ``prev`` is the SHA-256 of the previous line, ``mac`` an HMAC-SHA256
of the line without ``mac``. Appends take an exclusive file lock so several processes can share a
log. Actions are dotted names: ``auth.login``, ``key.release``, ``data.read``, ``data.write``,
``context.join``, ``context.read``, ``config.change``, ``apikey.create|use|revoke``,
``org.create`` …; outcomes ``allowed``/``denied``/``error``. ``detail`` must never contain secrets
or key material.

Beyond the chain, the tail is anchored: after each append the log's ``(count, hash of the last
line)`` is stored in the ``audit_heads`` table of a SQLite file outside the audit folder (the
registry), so cutting lines off the end is detected as well as editing, deleting or reordering
lines inside.

With a PostgreSQL deployment database (``AuditLog(..., db=Database(url))``) the chain lives in the
insert-only table ``audit_events`` instead of the file: one row per event, ``(org, seq)`` unique,
``line`` the same canonical record (same hash chain, same MAC), appends serialised per org by a
transaction-scoped advisory lock, and the head written in the same transaction. Pages are read
from the newest row.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import threading
from datetime import UTC, date, datetime
from pathlib import Path, PurePath
from typing import Protocol

from atomscale_lab.errors import IntegrityError, ValidationError
from atomscale_lab.fsutil import fsync_dir as _fsync_dir
from atomscale_lab.vault.db import Database, connect, is_database_url
from atomscale_lab.vault.migrations import ensure

OUTCOMES = ("allowed", "denied", "error")
ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_-]*)+$")
FIELDS = ("seq", "ts", "org", "actor", "action", "outcome", "detail", "prev")

# Detail names that suggest a secret. A caller that means to log "which key" passes a version or a
# fingerprint (``key_version``, ``fingerprint``, ``key_id``), never the key itself.
_SECRET_NAME = re.compile(
    r"(secret|token|passw|passphrase|private|credential|cookie|session_key|material"
    r"|^key$|_key$|^apikey$|^api_key|root_key|data_key|(^|_)t?otp($|_))",
    re.IGNORECASE,
)
# Text that looks like a root key (``ask1:`` prefix) or a bare 256-bit base64url key (43 random
# characters almost always mix upper case, lower case and digits; names and ids rarely do).
_ROOT_KEY_TEXT = re.compile(r"ask1:")
_B64_KEY = re.compile(r"^[A-Za-z0-9_-]{43}=?$")


def _looks_like_key(text: str) -> bool:
    if _ROOT_KEY_TEXT.search(text):
        return True
    return bool(_B64_KEY.match(text)) and all(
        any(test(c) for c in text) for test in (str.isupper, str.islower, str.isdigit)
    )


MAX_DETAIL_BYTES = 16_384


def genesis(org: str) -> str:
    """The ``prev`` value of an org's first line (binds the chain to the org name)."""
    return hashlib.sha256(f"atomscale-audit-genesis:{org}".encode()).hexdigest()


class AuditSink(Protocol):
    """Anything that records audit events: the local log, or a client posting to the hub service."""

    def record(self, actor: str, action: str, outcome: str = "allowed", **detail) -> None:
        """Record one event."""


def clean_detail(detail: dict) -> dict:
    """Return ``detail`` made JSON-safe; raise ``ValidationError`` for secret-looking names/values.

    The filter is defensive: the callers are ours, and a detail named ``token`` or carrying bytes is
    a programming error that must fail loudly rather than put a secret into a long-lived file.
    """
    return {str(k): _clean(str(k), v) for k, v in detail.items()}


def _clean(name: str, value, depth: int = 0):
    if _SECRET_NAME.search(name):
        raise ValidationError(
            f"audit detail {name!r} looks like a secret and is not recorded", field=name
        )
    if depth > 6:
        raise ValidationError(f"audit detail {name!r} is nested too deeply", field=name)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, str):
        if _looks_like_key(value):
            raise ValidationError(f"audit detail {name!r} looks like key material", field=name)
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raise ValidationError(
            f"audit detail {name!r} is binary; record a fingerprint instead", field=name
        )
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return _clean(name, value.value, depth + 1)
    if isinstance(value, dict):
        return {str(k): _clean(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_clean(name, v, depth + 1) for v in items]
    if hasattr(value, "item"):  # numpy / pyarrow scalars
        return _clean(name, value.item(), depth + 1)
    raise ValidationError(
        f"audit detail {name!r} of type {type(value).__name__} is not JSON-safe", field=name
    )


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


class AuditHeads:
    """``(count, last line hash)`` of each org's log in the deployment database, never going
    backwards (``db``: the SQLite registry file, a ``postgresql://`` URL or a :class:`Database`).

    On SQLite the connection is kept open (WAL, ``synchronous=NORMAL``): the log line is fsynced
    before its head is written, so a head lost in a crash only leaves the log ahead of it, which
    verifies. On PostgreSQL the head is written in the transaction that inserts the events.
    """

    def __init__(self, db: Path | str | Database):
        if isinstance(db, Database) and db.is_postgres:
            self.database: Database | None = db
        elif is_database_url(db):
            self.database = Database(db)
        else:
            self.database = None
        self._lock = threading.Lock()
        self._db = None
        self._pid = None
        if self.database is not None:
            self.db_path = None
            ensure(self.database, "audit")
            return
        self.db_path = Path(db.path if isinstance(db, Database) else db)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        schema = Database(self.db_path, synchronous="NORMAL", private=False)
        try:
            ensure(schema, "audit")
        finally:
            schema.close()

    @contextlib.contextmanager
    def _connect(self):
        with self._lock:
            if self._db is None or self._pid != os.getpid():
                # A connection must not cross a fork: a child opens its own.
                db = connect(self.db_path, synchronous="NORMAL", autocommit=False, private=False)
                self._db, self._pid = db, os.getpid()
            with self._db:
                yield self._db

    def _sql(self, query: str, args=()) -> list:
        if self.database is not None:
            return self.database.sql(query, args)
        with self._connect() as db:
            return db.execute(query, args).fetchall()

    def get(self, org: str) -> tuple[int, str] | None:
        """The last recorded head of ``org``'s log, or None."""
        rows = self._sql("SELECT count, last_hash FROM audit_heads WHERE org = ?", (org,))
        return (int(rows[0][0]), rows[0][1]) if rows else None

    _ADVANCE = (
        "INSERT INTO audit_heads (org, count, last_hash, updated) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(org) DO UPDATE SET count = excluded.count, "
        "last_hash = excluded.last_hash, updated = excluded.updated "
        "WHERE excluded.count > audit_heads.count"
    )

    def advance(self, org: str, count: int, last_hash: str, tx=None) -> None:
        """Record a longer log; a shorter one is ignored (the head never moves back). ``tx``: a
        transaction of the same database to write it in."""
        args = (org, count, last_hash, datetime.now(UTC).isoformat())
        if tx is not None:
            tx.execute(self._ADVANCE, args)
        else:
            self._sql(self._ADVANCE, args)

    def forget(self, org: str) -> None:
        """Drop the head of a deleted org."""
        self._sql("DELETE FROM audit_heads WHERE org = ?", (org,))


class _Pending:
    """One event waiting for its group commit."""

    __slots__ = ("log", "actor", "action", "outcome", "detail", "done", "error")

    def __init__(self, log, actor: str, action: str, outcome: str, detail: dict):
        self.log, self.actor, self.action, self.outcome = log, actor, action, outcome
        self.detail, self.done, self.error = detail, False, None


class _Group:
    """The pending events of one log file in this process, and who writes them."""

    def __init__(self):
        self.mutex = threading.Lock()
        self.writer = threading.Lock()
        self.pending: list[_Pending] = []


_GROUPS: dict[str, _Group] = {}
_GROUPS_LOCK = threading.Lock()


def _group_of(path: Path) -> _Group:
    key = os.path.abspath(path)
    with _GROUPS_LOCK:
        group = _GROUPS.get(key)
        if group is None:
            group = _GROUPS[key] = _Group()
        return group


class AuditLog:
    """The hash-chained, MACed audit log of one org (an ``AuditSink``).

    ``heads`` (an :class:`AuditHeads` or the path of its SQLite file) anchors the tail; without it
    only edits, deletions inside the log and reordering are detected.
    """

    def __init__(
        self,
        path: Path,
        org: str,
        key: bytes,
        heads: AuditHeads | Path | str | None = None,
        db: Database | None = None,
    ):
        if not isinstance(key, bytes | bytearray) or len(key) < 16:
            raise ValidationError("the audit key must be at least 16 bytes")
        self.path = Path(path)
        self.org = org
        self._key = bytes(key)
        if heads is not None and not isinstance(heads, AuditHeads):
            heads = AuditHeads(heads if is_database_url(heads) else Path(heads))
        self.heads = heads
        if db is not None and not db.is_postgres:
            db = None  # on SQLite deployments the chain stays in the JSONL file
        if db is not None:
            ensure(db, "audit")
        self.db = db

    def __repr__(self) -> str:
        where = repr(self.db) if self.db is not None else str(self.path)
        return f"AuditLog(org={self.org!r}, at={where!r})"

    def _mac(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def record(self, actor: str, action: str, outcome: str = "allowed", **detail) -> None:
        """Append one event (locked, fsynced); returns once it is on disk.

        Group commit: events recorded concurrently by threads of this process are chained and
        written together, with one ``fsync`` and one head update, by whichever thread gets the
        file first; each caller still returns only after its own event is durable.
        """
        if outcome not in OUTCOMES:
            raise ValidationError(
                f"audit outcome must be one of {', '.join(OUTCOMES)}", field="outcome"
            )
        if not ACTION_RE.match(action or ""):
            raise ValidationError(
                f"audit action {action!r} must be a dotted lower-case name", field="action"
            )
        if not actor or not isinstance(actor, str):
            raise ValidationError("audit actor is required", field="actor")
        clean = clean_detail(detail)
        if len(_canonical(clean)) > MAX_DETAIL_BYTES:
            raise ValidationError("audit detail is too large", field="detail")
        group = _group_of(self.path)
        item = _Pending(self, actor, action, outcome, clean)
        with group.mutex:
            group.pending.append(item)
        with group.writer:
            if not item.done:
                with group.mutex:
                    batch, group.pending = group.pending, []
                self._write_batch(batch)
        if item.error is not None:
            raise item.error

    def _chain(self, batch: list[_Pending], seq: int, prev: str) -> list[tuple[int, bytes]]:
        """``(seq, canonical line)`` of each event of ``batch``, continuing ``(seq, prev)``."""
        out = []
        for item in batch:
            seq += 1
            event = {
                "seq": seq,
                "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
                "org": self.org,
                "actor": item.actor,
                "action": item.action,
                "outcome": item.outcome,
                "detail": item.detail,
                "prev": prev,
            }
            event["mac"] = item.log._mac(_canonical(event))
            line = _canonical(event)
            out.append((seq, line))
            prev = _line_hash(line)
        return out

    def _write_rows(self, batch: list[_Pending]) -> None:
        """Chain and insert ``batch`` in one PostgreSQL transaction, serialised per org (an
        advisory lock; the (org, seq) key refuses a second event at a sequence number)."""
        db = self.db
        try:
            with db.tx() as tx:
                db.serialize(tx, f"atomscale-lab/audit/{self.org}")
                row = tx.execute(
                    "SELECT seq, line FROM audit_events WHERE org = ? ORDER BY seq DESC LIMIT 1",
                    (self.org,),
                ).fetchone()
                if row:
                    seq, prev = int(row[0]), _line_hash(row[1].encode())
                else:
                    seq, prev = 0, genesis(self.org)
                lines = self._chain(batch, seq, prev)
                tx.executemany(
                    "INSERT INTO audit_events (org, seq, actor, action, line) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (self.org, n, item.actor, item.action, line.decode())
                        for (n, line), item in zip(lines, batch, strict=True)
                    ],
                )
                last_seq, last_line = lines[-1]
                for heads in {
                    id(i.log.heads): i.log.heads for i in batch if i.log.heads is not None
                }.values():
                    same_db = heads.database is not None and heads.database.url == db.url
                    heads.advance(
                        self.org, last_seq, _line_hash(last_line), tx=tx if same_db else None
                    )
        except BaseException as e:
            for item in batch:
                item.error = e
            raise
        finally:
            for item in batch:
                item.done = True

    def _write_batch(self, batch: list[_Pending]) -> None:
        """Chain, write and fsync ``batch`` (this process's pending events) under the file lock."""
        if self.db is not None:
            self._write_rows(batch)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev = self._tail(fd)
                chained = self._chain(batch, seq, prev)
                lines = [line for _, line in chained]
                seq, prev = chained[-1][0], _line_hash(lines[-1])
                data = b"".join(line + b"\n" for line in lines)
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
                for heads in {
                    id(i.log.heads): i.log.heads for i in batch if i.log.heads is not None
                }.values():
                    heads.advance(self.org, seq, prev)
            finally:
                os.close(fd)  # also releases the lock
            if created:
                _fsync_dir(self.path.parent)
        except BaseException as e:
            for item in batch:
                item.error = e
            raise
        finally:
            for item in batch:
                item.done = True

    def _tail(self, fd: int) -> tuple[int, str]:
        """(seq, hash) of the last line, read backwards from the end of the file."""
        size = os.lseek(fd, 0, os.SEEK_END)
        if size == 0:
            return 0, genesis(self.org)
        chunk, buf, pos = 8192, b"", size
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            buf = os.pread(fd, step, pos) + buf
            body = buf.rstrip(b"\n")
            nl = body.rfind(b"\n")
            if nl >= 0 or pos == 0:
                last = body[nl + 1 :]
                break
        try:
            seq = int(json.loads(last)["seq"])
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(
                f"the audit log {self.path} ends with a malformed line; run "
                "`atomscale-lab audit verify` and restore it from a backup"
            ) from None
        return seq, _line_hash(last)

    def _row_lines(self) -> list[bytes]:
        """The chain's records from the table, in sequence order; a row whose columns disagree
        with its MACed record is refused."""
        rows = self.db.sql(
            "SELECT seq, actor, action, line FROM audit_events WHERE org = ? ORDER BY seq",
            (self.org,),
        )
        out = []
        for i, (seq, actor, action, line) in enumerate(rows, start=1):
            try:
                ev = json.loads(line)
                same = (ev["seq"], ev["actor"], ev["action"]) == (int(seq), actor, action)
            except (ValueError, KeyError, TypeError):
                same = True  # verify() names the record itself as invalid
            if not same:
                raise IntegrityError(
                    f"audit log of {self.org!r}, line {i}: the row (event {seq}) differs from "
                    "its MACed record (the table was edited or rows were moved)"
                )
            out.append(line.encode())
        return out

    def _lines(self) -> list[bytes]:
        if self.db is not None:
            return self._row_lines()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        # A torn final write (no newline) is kept: verify() reports it as a bad line.
        return [ln for ln in data.split(b"\n") if ln] if data else []

    def _reverse_rows(self, page: int = 500):
        before = None
        while True:
            if before is None:
                rows = self.db.sql(
                    "SELECT seq, line FROM audit_events WHERE org = ? ORDER BY seq DESC LIMIT ?",
                    (self.org, page),
                )
            else:
                rows = self.db.sql(
                    "SELECT seq, line FROM audit_events WHERE org = ? AND seq < ? "
                    "ORDER BY seq DESC LIMIT ?",
                    (self.org, before, page),
                )
            for _, line in rows:
                yield line.encode()
            if len(rows) < page:
                return
            before = rows[-1][0]

    def _reverse_lines(self, block: int = 1 << 16):
        """The log's lines, last first, read in blocks from the end of the file (on PostgreSQL,
        in pages of rows from the newest)."""
        if self.db is not None:
            yield from self._reverse_rows()
            return
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below, generator-scoped
        except FileNotFoundError:
            return
        with f:
            pos = f.seek(0, os.SEEK_END)
            head = b""
            while pos > 0:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                parts = (f.read(step) + head).split(b"\n")
                head = parts[0]  # a line that may continue in the block before
                for line in reversed(parts[1:]):
                    if line:
                        yield line
            if head:
                yield head

    def events(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict]:
        """Most recent events first, optionally filtered (``action`` may end with ``.*``).

        Pages are read from the end of the file: a recent page costs the same on a log of any
        length (only a filter that matches rarely reads further back).
        """
        out, skipped = [], 0
        if limit <= 0:
            return out
        for raw in self._reverse_lines():
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            if actor is not None and ev.get("actor") != actor:
                continue
            if action is not None:
                name = ev.get("action", "")
                if action.endswith(".*"):
                    if not name.startswith(action[:-1]):
                        continue
                elif name != action:
                    continue
            if skipped < offset:
                skipped += 1
                continue
            out.append({k: ev.get(k) for k in FIELDS if k != "prev"})
            if len(out) >= limit:
                break
        return out

    def verify(self) -> int:
        """Check every line's chain and MAC; returns the number of events or raises
        ``IntegrityError`` naming the first bad line."""
        lines = self._lines()
        prev = genesis(self.org)
        for i, line in enumerate(lines, start=1):
            where = f"audit log of {self.org!r}, line {i}"
            try:
                ev = json.loads(line)
                mac = ev.pop("mac")
            except (ValueError, KeyError, AttributeError, TypeError):
                raise IntegrityError(f"{where}: not a valid audit record") from None
            if not isinstance(ev, dict) or set(ev) != set(FIELDS):
                raise IntegrityError(f"{where}: unexpected fields")
            if not hmac.compare_digest(str(mac), self._mac(_canonical(ev))):
                raise IntegrityError(
                    f"{where}: MAC mismatch (the line was edited, or the log "
                    "belongs to another org or key)"
                )
            if ev["prev"] != prev:
                raise IntegrityError(
                    f"{where}: hash chain broken (a line before it was deleted, inserted or moved)"
                )
            if ev["seq"] != i:
                raise IntegrityError(
                    f"{where}: sequence number {ev['seq']} where {i} was "
                    "expected (lines were deleted or reordered)"
                )
            if ev["org"] != self.org:
                raise IntegrityError(f"{where}: event of org {ev['org']!r}")
            prev = _line_hash(line)
        if self.heads is not None:
            head = self.heads.get(self.org)
            if head is not None:
                count, last_hash = head
                if len(lines) < count:
                    raise IntegrityError(
                        f"audit log of {self.org!r}, line {len(lines) + 1}: missing (the log "
                        f"has {len(lines)} lines but {count} were recorded; lines were cut off "
                        "the end or the file was replaced)"
                    )
                if _line_hash(lines[count - 1]) != last_hash:
                    raise IntegrityError(
                        f"audit log of {self.org!r}, line {count}: does not match the recorded "
                        "head (the log was replaced by another valid-looking log)"
                    )
        return len(lines)


class RateLimiter:
    """A token bucket per caller: ``rate`` events a second on average, bursts of ``burst``."""

    def __init__(self, rate: float = 50.0, burst: int = 200, clock=None):
        import time

        self.rate, self.burst = float(rate), int(burst)
        self._clock = clock or time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        """Take one token of ``caller``: 0 when allowed, else the seconds to wait."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[caller] = (tokens - 1.0, now)
            if len(self._buckets) > 10_000:  # bound memory: forget callers that are full again
                full = [
                    c
                    for c, (t, ts) in self._buckets.items()
                    if t + (now - ts) * self.rate >= self.burst
                ]
                for c in full:
                    del self._buckets[c]
            return 0.0


class NullAudit:
    """An ``AuditSink`` that drops events (only for tests of pure logic that do not audit)."""

    def record(self, actor: str, action: str, outcome: str = "allowed", **detail) -> None:
        """Drop the event."""


class MemoryAudit:
    """An ``AuditSink`` that keeps events in a list (tests and dry runs)."""

    def __init__(self):
        self.events: list[dict] = []

    def record(self, actor: str, action: str, outcome: str = "allowed", **detail) -> None:
        """Keep the event (detail cleaned like the real log)."""
        self.events.append(
            {"actor": actor, "action": action, "outcome": outcome, "detail": clean_detail(detail)}
        )
