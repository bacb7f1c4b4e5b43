"""Audit logs on either backend for the tests, and the attacker's view of their records.

``open_log`` opens an org's log on a ``database`` fixture value: the JSONL file with SQLite heads,
or the PostgreSQL table. ``lines``/``write`` read and rewrite the records wholesale (on PostgreSQL
as the database owner, who can do what the application role cannot).
"""

from __future__ import annotations

import json

from atomscale_lab.vault.audit import AuditHeads, AuditLog
from atomscale_lab.vault.db import Database


def open_log(tmp_path, database, org, key):
    """An org's log on ``database``: the JSONL file + SQLite heads, or the PostgreSQL table."""
    path = tmp_path / "audit" / f"{org}.jsonl"
    if isinstance(database, str):
        return AuditLog(path, org, key, heads=AuditHeads(database), db=Database(database))
    return AuditLog(path, org, key, heads=AuditHeads(database))


def lines(lg):
    """The records of ``lg`` as newline-terminated lines, in order."""
    if lg.db is None:
        return lg.path.read_bytes().splitlines(keepends=True)
    rows = lg.db.sql("SELECT line FROM audit_events WHERE org = ? ORDER BY seq", (lg.org,))
    return [r[0].encode() + b"\n" for r in rows]


def write(lg, ls, org=None):
    """Replace the records of ``lg`` (or of ``org``) with ``ls``."""
    if lg.db is None:
        lg.path.write_bytes(b"".join(ls))
        return
    org = org or lg.org
    with lg.db.tx() as tx:
        tx.execute("DELETE FROM audit_events WHERE org = ?", (org,))
        for i, line in enumerate(ls, start=1):
            ev = json.loads(line)
            tx.execute(
                "INSERT INTO audit_events (org, seq, actor, action, line) VALUES (?,?,?,?,?)",
                (org, i, ev["actor"], ev["action"], line.rstrip(b"\n").decode()),
            )


def same_storage(lg, org, key):
    """Another ``AuditLog`` over the same storage; on PostgreSQL ``lg``'s rows are first copied
    under ``org`` (a planted chain)."""
    if lg.db is not None and org != lg.org:
        write(lg, lines(lg), org=org)
    return AuditLog(lg.path, org, key, db=lg.db)
