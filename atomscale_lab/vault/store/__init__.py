"""Org datasets: encrypted Parquet files (:mod:`.files`) listed by an append-only, signed commit
log (:mod:`.log`), read and written one table at a time (:mod:`.table`)."""

from atomscale_lab.vault.store.files import (
    COMPRESSION,
    N_BUCKETS,
    READ_POOL,
    bucket_of,
    file_fingerprint,
    prepare,
    write_parquet,
)
from atomscale_lab.vault.store.log import (
    CHECKPOINT_EVERY,
    Commit,
    DatabaseHeadStore,
    HeadStore,
    SqliteHeadStore,
)
from atomscale_lab.vault.store.table import OrgStore, OrgTable

__all__ = [
    "CHECKPOINT_EVERY",
    "COMPRESSION",
    "N_BUCKETS",
    "READ_POOL",
    "Commit",
    "DatabaseHeadStore",
    "HeadStore",
    "OrgStore",
    "OrgTable",
    "SqliteHeadStore",
    "bucket_of",
    "file_fingerprint",
    "prepare",
    "write_parquet",
]
