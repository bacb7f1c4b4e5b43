"""Versioned schemas of the deployment database (SQLite or PostgreSQL).

Each component (``orgs``, ``keys``, ``heads``, ``audit``, and components registered by other
packages, such as ingest) has numbered migrations, applied in order; the ``schema_version`` table
records the version each component is at. :func:`upgrade` applies what is missing, one component
per transaction, and is idempotent (running it again changes nothing). ``atomscale-lab db
upgrade`` runs it; ``atomscale-lab db status`` shows :func:`status`.

An embedded SQLite file upgrades itself on first use (:func:`ensure`); a PostgreSQL database is
upgraded only by the command, and a service started against an older schema refuses with a
:class:`~atomscale_lab.errors.ConfigError` naming it.

Adding a migration: append ``Migration(version=N + 1, sqlite=[...], postgres=[...])`` to the
component's list with :func:`register` (never edit an applied one). Statements are plain SQL, one
per list item, run inside the component's transaction.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from atomscale_lab.errors import ConfigError
from atomscale_lab.vault.db import Database

UPGRADE_COMMAND = "atomscale-lab db upgrade"


@dataclass(frozen=True)
class Migration:
    """One schema step of a component: statements per dialect (same list for both if
    ``postgres`` is None)."""

    version: int
    sqlite: list[str]
    postgres: list[str] | None = None
    note: str = ""

    def statements(self, dialect: str) -> list[str]:
        """The statements for ``dialect``."""
        if dialect == "postgres" and self.postgres is not None:
            return self.postgres
        return self.sqlite


@dataclass
class _Registry:
    components: dict[str, list[Migration]] = field(default_factory=dict)


_REGISTRY = _Registry()
_LOCK = threading.Lock()
_CHECKED: set[tuple[str, str]] = set()


def register(component: str, *migrations: Migration) -> None:
    """Add migrations of ``component`` (versions must continue 1, 2, ... without gaps)."""
    with _LOCK:
        have = _REGISTRY.components.setdefault(component, [])
        known = {m.version for m in have}
        for m in migrations:
            if m.version in known:
                continue  # a module imported twice registers the same steps again
            if m.version != len(have) + 1:
                raise ValueError(f"migration {component} v{m.version} does not follow v{len(have)}")
            have.append(m)
            known.add(m.version)


def components() -> dict[str, int]:
    """Registered components and the version this code needs."""
    with _LOCK:
        return {c: len(ms) for c, ms in _REGISTRY.components.items()}


_SCHEMA_VERSION = (
    "CREATE TABLE IF NOT EXISTS schema_version (component TEXT PRIMARY KEY, "
    "version INTEGER NOT NULL, updated TEXT NOT NULL)"
)


def _where(db: Database) -> str:
    return repr(db)


def _has_versions(db: Database) -> bool:
    # Only looks: an application role may not create tables.
    if db.dialect == "postgres":
        return db.sql("SELECT to_regclass('schema_version') IS NOT NULL")[0][0]
    return bool(
        db.sql("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
    )


def status(db: Database) -> dict[str, tuple[int, int]]:
    """``{component: (version in the database, version this code needs)}``."""
    have = {}
    if _has_versions(db):
        have = dict(db.sql("SELECT component, version FROM schema_version"))
    return {c: (int(have.get(c, 0)), need) for c, need in sorted(components().items())} | {
        c: (int(v), 0) for c, v in have.items() if c not in components()
    }


def upgrade(db: Database, only: list[str] | None = None) -> dict[str, tuple[int, int]]:
    """Apply the missing migrations of every component (or of ``only``); returns
    ``{component: (from, to)}`` for the components that changed."""
    db.sql(_SCHEMA_VERSION)
    done = {}
    for comp, migrations in sorted(_REGISTRY.components.items()):
        if only is not None and comp not in only:
            continue
        with db.tx() as tx:
            db.serialize(tx, "atomscale-lab/schema")
            row = tx.execute(
                "SELECT version FROM schema_version WHERE component = ?", (comp,)
            ).fetchone()
            start = int(row[0]) if row else 0
            if start > len(migrations):
                raise ConfigError(
                    f"the {comp} schema in {_where(db)} is at version {start}, newer than this "
                    f"release knows ({len(migrations)}): upgrade atomscale-lab"
                )
            for m in migrations[start:]:
                for stmt in m.statements(db.dialect):
                    tx.execute(stmt)
            if start < len(migrations):
                tx.execute(
                    "INSERT INTO schema_version (component, version, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT (component) DO UPDATE SET version = excluded.version, "
                    "updated = excluded.updated",
                    (comp, len(migrations), datetime.now(UTC).isoformat(timespec="seconds")),
                )
                done[comp] = (start, len(migrations))
    return done


def ensure(db: Database, *comps: str) -> None:
    """Make sure ``comps`` are at the version this code needs: an embedded SQLite file is
    upgraded in place; PostgreSQL must have been upgraded with ``atomscale-lab db upgrade``."""
    key = (repr(db), ",".join(comps))
    if key in _CHECKED and db.dialect == "postgres":
        return
    if db.dialect == "sqlite":
        upgrade(db, list(comps))
        return
    have = status(db)
    for c in comps:
        cur, need = have.get(c, (0, components().get(c, 0)))
        if cur < need:
            raise ConfigError(
                f"the database {_where(db)} has the {c} schema at version {cur}, this release "
                f"needs {need}: run `{UPGRADE_COMMAND}`"
            )
        if cur > need:
            raise ConfigError(
                f"the {c} schema in {_where(db)} is at version {cur}, newer than this release "
                f"knows ({need}): upgrade atomscale-lab"
            )
    _CHECKED.add(key)


# -- the vault's components --------------------------------------------------------------------

register(
    "orgs",
    Migration(
        1,
        [
            "CREATE TABLE IF NOT EXISTS orgs (name TEXT PRIMARY KEY, region TEXT NOT NULL, "
            "created TEXT NOT NULL, deleted TEXT)",
            "CREATE TABLE IF NOT EXISTS org_config (name TEXT PRIMARY KEY, doc TEXT NOT NULL, "
            "updated TEXT NOT NULL)",
        ],
        note="org registry and per-org configuration",
    ),
)

_KEYS_V1 = (
    "CREATE TABLE IF NOT EXISTS org_keys (org TEXT NOT NULL, purpose TEXT NOT NULL, "
    "version INTEGER NOT NULL, wrapped {blob} NOT NULL, kms_key_id TEXT NOT NULL, "
    "fingerprint TEXT NOT NULL, created TEXT NOT NULL, PRIMARY KEY (org, purpose, version))"
)
register(
    "keys",
    Migration(
        1,
        [
            _KEYS_V1.format(blob="BLOB"),
            "CREATE TABLE IF NOT EXISTS shredded_orgs (org TEXT PRIMARY KEY, "
            "shredded TEXT NOT NULL)",
        ],
        [
            _KEYS_V1.format(blob="BYTEA"),
            "CREATE TABLE IF NOT EXISTS shredded_orgs (org TEXT PRIMARY KEY, "
            "shredded TEXT NOT NULL)",
        ],
        note="wrapped per-org keys",
    ),
)

register(
    "heads",
    Migration(
        1,
        [
            "CREATE TABLE IF NOT EXISTS log_heads (org TEXT NOT NULL, tbl TEXT NOT NULL, "
            "seq INTEGER NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (org, tbl))"
        ],
        [
            "CREATE TABLE IF NOT EXISTS log_heads (org TEXT NOT NULL, tbl TEXT NOT NULL, "
            "seq BIGINT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (org, tbl))"
        ],
        note="commit-log heads (rollback defence)",
    ),
)

register(
    "audit",
    Migration(
        1,
        [
            "CREATE TABLE IF NOT EXISTS audit_heads (org TEXT PRIMARY KEY, "
            "count INTEGER NOT NULL, last_hash TEXT NOT NULL, updated TEXT NOT NULL)"
        ],
        [
            "CREATE TABLE IF NOT EXISTS audit_heads (org TEXT PRIMARY KEY, "
            "count BIGINT NOT NULL, last_hash TEXT NOT NULL, updated TEXT NOT NULL)",
            # The chain itself (SQLite deployments keep it in JSONL files): one row per event,
            # ``line`` is the exact canonical record that is hashed and MACed; the other columns
            # are copies for filtering, checked against ``line`` by verify.
            "CREATE TABLE IF NOT EXISTS audit_events (org TEXT NOT NULL, seq BIGINT NOT NULL, "
            "actor TEXT NOT NULL, action TEXT NOT NULL, line TEXT NOT NULL, "
            "PRIMARY KEY (org, seq))",
        ],
        note="audit anchors; on PostgreSQL the insert-only audit chain",
    ),
)


APP_TABLES = {
    "orgs": "SELECT, INSERT, UPDATE",
    "org_config": "SELECT, INSERT, UPDATE",
    "org_keys": "SELECT, INSERT, UPDATE, DELETE",
    "shredded_orgs": "SELECT, INSERT, UPDATE, DELETE",
    "log_heads": "SELECT, INSERT, UPDATE, DELETE",
    "audit_heads": "SELECT, INSERT, UPDATE, DELETE",
    "audit_events": "SELECT, INSERT",
    "schema_version": "SELECT",
}
"""What the application's role may do on PostgreSQL: the audit chain is insert-only (no UPDATE,
DELETE or TRUNCATE), and only the owner (``db upgrade``) changes the schema."""


def app_role_grants(role: str, schema: str = "public") -> list[str]:
    """The ``GRANT`` statements that give ``role`` exactly :data:`APP_TABLES` (run them as the
    owner after ``db upgrade``). ``VACUUM org_keys`` after a shred is skipped with a warning for
    a role that does not own the table: then autovacuum, or the owner, reclaims the rows."""
    if not role.replace("_", "").isalnum() or not schema.replace("_", "").isalnum():
        raise ValueError("role and schema must be plain identifiers")
    out = [f"GRANT USAGE ON SCHEMA {schema} TO {role}"]
    for table, privileges in APP_TABLES.items():
        out.append(f"REVOKE ALL ON {schema}.{table} FROM {role}")
        out.append(f"GRANT {privileges} ON {schema}.{table} TO {role}")
    return out
