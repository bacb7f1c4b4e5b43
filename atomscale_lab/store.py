"""Org datasets: encrypted Parquet files listed by an append-only, MACed commit log.

CONTRACT (filled in by the vault work):

Layout: ``data_root/<org>/<category>/<table>/`` holds ``bucket=<NN>/part-<uuid>.parquet`` files
(unbucketed tables: ``part-<uuid>.parquet``), ``_log/commits.jsonl`` and ``_tmp/``. Each log line lists
added/removed files with path, rows, size, partition values, time range, run ids and a fingerprint
binding the file's bytes. Readers open only what the log lists, and refuse a listed file whose
size, trailer or fingerprint differs, an unlisted or plaintext file in its place, a log whose MAC
chain breaks, and a log older than the last head they (or the ``HeadStore``) saw.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import pyarrow as pa

from .crypto import OrgCrypto
from .schema import TableSpec


class HeadStore(Protocol):
    """Keeps the latest (seq, hash) of each table's log outside the data root (rollback defence)."""

    def get(self, org: str, table: str) -> tuple[int, str] | None:
        """Latest known head, or None."""

    def advance(self, org: str, table: str, seq: int, digest: str) -> None:
        """Record a newer head (never goes backwards)."""


class SqliteHeadStore:
    """``HeadStore`` in a SQLite file (default: the registry)."""

    def __init__(self, db_path: Path):
        raise NotImplementedError


@dataclass(frozen=True)
class Commit:
    """What a write or compaction committed."""

    seq: int
    files: int
    rows: int


class Table:
    """One table of one org. All reads and writes go through here."""

    def __init__(self, root: Path, org: str, spec: TableSpec, crypto: OrgCrypto,
                 heads: HeadStore | None = None):
        raise NotImplementedError

    def write(self, data, *, actor: str = "system") -> Commit:
        """Conform ``data`` to the schema, write encrypted files atomically, commit them."""
        raise NotImplementedError

    def read(self, *, run_ids: Sequence[str] | None = None, start: datetime | None = None,
             end: datetime | None = None, columns: Sequence[str] | None = None,
             filter=None) -> pa.Table:
        """Read matching rows; run/time filters prune files via the log and row groups via stats.

        Tables with a ``key`` return only the latest version of each key.
        """
        raise NotImplementedError

    def to_pandas(self, **kw):
        """``read(**kw).to_pandas()``."""
        raise NotImplementedError

    def dataset(self):
        """A decrypting ``pyarrow.dataset.Dataset`` over exactly the verified, listed files."""
        raise NotImplementedError

    def files(self) -> list[dict]:
        """Current file entries from the verified log."""
        raise NotImplementedError

    def run_ids(self) -> set[str]:
        """Run ids present (from the log, without opening data files)."""
        raise NotImplementedError

    def num_rows(self) -> int:
        """Row count from the log."""
        raise NotImplementedError

    def compact(self, *, target_rows: int = 1_000_000, min_rows: int = 100_000) -> Commit | None:
        """Merge files smaller than ``min_rows`` per partition; returns None when nothing to do."""
        raise NotImplementedError

    def rewrite(self, *, progress=None) -> Commit | None:
        """Re-encrypt every listed file under the crypto's current key version, in one commit
        that replaces them (data-key rotation with ``--rewrite``); rows are unchanged.
        ``progress`` is called with the number of files done after each one. None if empty."""
        raise NotImplementedError

    def gc(self) -> int:
        """Remove unlisted files (leftovers of crashed writes, replaced files). Returns count."""
        raise NotImplementedError

    def verify(self) -> None:
        """Check the log chain and every listed file; raise ``IntegrityError`` on the first fault."""
        raise NotImplementedError


class OrgStore:
    """All raw-data tables of one org (never context)."""

    def __init__(self, data_root: Path, org: str, crypto: OrgCrypto,
                 heads: HeadStore | None = None):
        raise NotImplementedError

    def table(self, name: str) -> Table:
        """The table ``"<category>/<name>"`` (see ``schema.TABLES``)."""
        raise NotImplementedError

    def tables(self) -> Iterable[Table]:
        """Every raw-data table."""
        raise NotImplementedError
