"""The per-org audit trail: one JSON line per event, hash-chained and MACed with the org audit key.

CONTRACT (filled in by the vault work):

``audit_root/<org>.jsonl``; each line ``{"seq", "ts", "org", "actor", "action", "outcome",
"detail", "prev", "mac"}``; ``prev`` is the SHA-256 of the previous line, ``mac`` an HMAC-SHA256 of the
line without ``mac``. Appends take an exclusive file lock so several processes can share a log.
Actions are dotted names: ``auth.login``, ``key.release``, ``data.read``, ``data.write``,
``context.join``, ``context.read``, ``config.change``, ``apikey.create|use|revoke``, ``org.create`` …;
outcomes ``allowed``/``denied``/``error``. ``detail`` must never contain secrets or key material.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class AuditSink(Protocol):
    """Anything that records audit events: the local log, or a client posting to the hub service."""

    def record(self, actor: str, action: str, outcome: str = "allowed", **detail) -> None:
        """Record one event."""


class AuditLog:
    """The hash-chained, MACed audit log of one org (an ``AuditSink``)."""

    def __init__(self, path: Path, org: str, key: bytes):
        raise NotImplementedError

    def record(self, actor: str, action: str, outcome: str = "allowed", **detail) -> None:
        """Append one event (locked, fsynced)."""
        raise NotImplementedError

    def events(self, *, actor: str | None = None, action: str | None = None,
               limit: int = 100, offset: int = 0) -> list[dict]:
        """Most recent events first, optionally filtered."""
        raise NotImplementedError

    def verify(self) -> int:
        """Check every line's chain and MAC; returns the number of events or raises
        ``IntegrityError`` naming the first bad line."""
        raise NotImplementedError


class NullAudit:
    """An ``AuditSink`` that drops events (only for tests of pure logic that do not audit)."""

    def record(self, actor: str, action: str, outcome: str = "allowed", **detail) -> None:
        """Drop the event."""
