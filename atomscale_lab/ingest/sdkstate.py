"""The Atomscale-compatible API's names, identifiers and own records (``sdk.sqlite``): what
:class:`~atomscale_lab.ingest.sdkapi.SdkApi` and its parts share."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import uuid
from datetime import UTC, datetime

import numpy as np

from atomscale_lab.errors import ValidationError
from atomscale_lab.ingest import statedb

log = logging.getLogger(__name__)

METROLOGY_PREFIX = "mt~"
"""Data id prefix of a metrology item; a run's data id is its run id (which never has ``~``), the
same id ``Workspace.search`` shows."""
STATUS = {
    "complete": "success",
    "active": "stream_active",
    "interrupted": "stream_interrupted",
    "finalizing": "stream_finalizing",
    "error": "stream_error",
}
"""Run status → the hosted platform's ``pipeline_status``."""
TECHNIQUE_TYPE = {
    "xrd": "xrd",
    "xps": "xps",
    "raman": "raman",
    "pl": "photoluminescence",
    "photoluminescence": "photoluminescence",
}
"""Metrology technique (lower case) → data type; other techniques keep their own name."""
SPECTRUM_TYPES = ("xrd", "xps", "raman", "photoluminescence")
READ_SCOPES = ("read:process", "read:tool_state", "read:metrology")
INGEST_SCOPES = ("ingest:process", "ingest:tool_state", "ingest:metrology")
_NS = uuid.UUID("0b6f3d2e-5a51-4c4e-9d4b-6f1d0e6c2a10")
_META_COLUMNS = ["item_id", "run_id", "sample", "technique", "time"]
FINALIZE_QUIET = 0.2
"""Seconds without a chunk of the stream before finalize closes it (the SDK's push is
fire-and-forget, so its last chunks may still be on their way when finalize arrives)."""
FINALIZE_GRACE = 10.0
"""At most this many seconds are spent waiting for such chunks."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    org TEXT NOT NULL, data_id TEXT NOT NULL, run_id TEXT NOT NULL, stream_id TEXT NOT NULL,
    created TEXT NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (org, data_id));
CREATE TABLE IF NOT EXISTS chunks (
    org TEXT NOT NULL, data_id TEXT NOT NULL, channel TEXT NOT NULL, chunk_index INTEGER NOT NULL,
    digest TEXT NOT NULL, points INTEGER NOT NULL,
    PRIMARY KEY (org, data_id, chunk_index, channel));
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, name TEXT NOT NULL, created TEXT NOT NULL,
    created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tags (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, name TEXT NOT NULL, created TEXT NOT NULL,
    created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS item_tags (
    org TEXT NOT NULL, data_id TEXT NOT NULL, tag_id TEXT NOT NULL,
    PRIMARY KEY (org, data_id, tag_id));
CREATE TABLE IF NOT EXISTS tracking (
    org TEXT NOT NULL, project_id TEXT NOT NULL, sample_id TEXT NOT NULL, active INTEGER NOT NULL,
    updated TEXT NOT NULL, PRIMARY KEY (org, project_id, sample_id));
"""
# Nothing identifying at rest: data ids (run ids) are stored as keyed hashes (``sealed.py``),
# run ids, sample names and tag names sealed with the org's key; channel names, counts and
# digests stay as they are.


def entity_id(org: str, kind: str, name: str) -> str:
    """The stable UUID of a named sample or project of ``org`` (case-insensitive name)."""
    return str(uuid.uuid5(_NS, f"{org}\x00{kind}\x00{name.strip().lower()}"))


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(f"{name}={value!r} is not an ISO 8601 time", field=name) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:100]
    return s or "sdk-stream"


def _digest(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _floats(values, field: str, *, allow_null: bool) -> np.ndarray:
    if not isinstance(values, list):
        raise ValidationError(f"{field} must be a list of numbers", field=field)
    try:
        arr = np.array(
            [np.nan if (v is None and allow_null) else v for v in values], dtype=np.float64
        )
    except (TypeError, ValueError):
        raise ValidationError(f"{field} must be a list of numbers", field=field) from None
    if any(isinstance(v, bool | str) for v in values):
        raise ValidationError(f"{field} must be a list of numbers", field=field)
    return arr


class _TagIndex:
    """Tag names per data item, looked up by data id (the registry holds keyed hashes)."""

    def __init__(self, by_tag: dict[str, list[str]], did):
        self._by_tag, self._did = by_tag, did

    def get(self, data_id: str, default=None):
        """The tag names of ``data_id`` (``default`` if it has none)."""
        if not self._by_tag:
            return default
        return self._by_tag.get(self._did(data_id), default)


class SdkState:
    """The compatibility layer's own records in ``sdk.sqlite`` beside the ingest state, or in
    ``database`` (the deployment's shared state database, tables from its migrations)."""

    def __init__(self, path, database=None):
        if database is None:  # the embedded default: a SQLite file beside the ingest state
            database = statedb.sqlite_database(path)
            database.conn.executescript(_SCHEMA)
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
        self._database = database
        self._lock = database.lock or threading.RLock()

    def sql(self, query: str, args=()) -> list:
        """Run one statement; returns all rows."""
        return self._database.sql(query, args)

    def tx(self):
        """One transaction (holding the connection's lock throughout)."""
        return self._database.tx()

    def close(self) -> None:
        """Close the database."""
        statedb.close(self._database)
