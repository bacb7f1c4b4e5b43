"""The ingest tables in the deployment's shared database (component ``ingest``), as numbered
migrations of :mod:`atomscale_lab.vault.migrations` (``atomscale-lab db upgrade``).

The same tables as the embedded files (``registry.sqlite``'s ``apikeys``, ``ingest/state.sqlite``,
``ingest/sdk.sqlite``), with the replica columns (``batches.wal``: the WAL holding a batch, its
claim; ``flushes.wal``: whose flush intent) and PostgreSQL types (a float time is ``DOUBLE
PRECISION``: ``REAL`` would round it to seconds). Never edit an applied step: append one.
"""

from __future__ import annotations

from atomscale_lab.vault.migrations import APP_TABLES, Migration, register

COMPONENT = "ingest"

_V1 = [
    """CREATE TABLE IF NOT EXISTS apikeys (
    prefix TEXT PRIMARY KEY, org TEXT NOT NULL, name TEXT NOT NULL, scopes TEXT NOT NULL,
    digest TEXT NOT NULL, key_version INTEGER NOT NULL, created TEXT NOT NULL,
    expires TEXT NOT NULL, last_used TEXT, revoked TEXT, created_by TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS apikeys_org ON apikeys (org)",
    """CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, run_id TEXT NOT NULL, tool TEXT NOT NULL,
    category TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL,
    last_batch DOUBLE PRECISION, rows BIGINT NOT NULL DEFAULT 0,
    batches BIGINT NOT NULL DEFAULT 0, flushed_rows BIGINT NOT NULL DEFAULT 0, min_time TEXT,
    max_time TEXT, opened_by TEXT NOT NULL, error TEXT, run_box TEXT, time_box TEXT)""",
    "CREATE INDEX IF NOT EXISTS streams_run ON streams (org, run_id, tool, category)",
    "CREATE INDEX IF NOT EXISTS streams_live ON streams (status, org)",
    """CREATE TABLE IF NOT EXISTS batches (
    stream_id TEXT NOT NULL, batch_id TEXT NOT NULL, rows BIGINT NOT NULL, digest TEXT NOT NULL,
    accepted TEXT NOT NULL, wal TEXT, PRIMARY KEY (stream_id, batch_id))""",
    """CREATE TABLE IF NOT EXISTS flushes (
    wal TEXT NOT NULL, org TEXT NOT NULL, segments TEXT NOT NULL, tbl TEXT NOT NULL,
    rows BIGINT NOT NULL, state TEXT NOT NULL, started TEXT NOT NULL,
    PRIMARY KEY (wal, org, segments, tbl))""",
    """CREATE TABLE IF NOT EXISTS items (
    org TEXT NOT NULL, data_id TEXT NOT NULL, run_id TEXT NOT NULL, stream_id TEXT NOT NULL,
    created TEXT NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (org, data_id))""",
    """CREATE TABLE IF NOT EXISTS chunks (
    org TEXT NOT NULL, data_id TEXT NOT NULL, channel TEXT NOT NULL, chunk_index BIGINT NOT NULL,
    digest TEXT NOT NULL, points BIGINT NOT NULL,
    PRIMARY KEY (org, data_id, chunk_index, channel))""",
    """CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, name TEXT NOT NULL, created TEXT NOT NULL,
    created_by TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tags (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, name TEXT NOT NULL, created TEXT NOT NULL,
    created_by TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS item_tags (
    org TEXT NOT NULL, data_id TEXT NOT NULL, tag_id TEXT NOT NULL,
    PRIMARY KEY (org, data_id, tag_id))""",
    """CREATE TABLE IF NOT EXISTS tracking (
    org TEXT NOT NULL, project_id TEXT NOT NULL, sample_id TEXT NOT NULL,
    active INTEGER NOT NULL, updated TEXT NOT NULL, PRIMARY KEY (org, project_id, sample_id))""",
]

register(
    COMPONENT,
    Migration(
        version=1,
        sqlite=[s.replace("DOUBLE PRECISION", "REAL").replace("BIGINT", "INTEGER") for s in _V1],
        postgres=_V1,
        note="API keys, streams, batch claims, flush intents, SDK records",
    ),
)

# What the application role may do on the ingest tables (``app_role_grants``): claims, chunks and
# SDK records are only added; flush intents come and go; nothing of an API key is ever deleted.
APP_TABLES.update(
    {
        "apikeys": "SELECT, INSERT, UPDATE",
        "streams": "SELECT, INSERT, UPDATE",
        "batches": "SELECT, INSERT",
        "flushes": "SELECT, INSERT, UPDATE, DELETE",
        "items": "SELECT, INSERT",
        "chunks": "SELECT, INSERT",
        "samples": "SELECT, INSERT",
        "tags": "SELECT, INSERT",
        "item_tags": "SELECT, INSERT",
        "tracking": "SELECT, INSERT, UPDATE",
    }
)
