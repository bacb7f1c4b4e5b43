"""Data files of the store: the encrypted Parquet format, buckets and fingerprints."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import zlib
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from atomscale_lab.errors import ValidationError
from atomscale_lab.schema import TableSpec, conform

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
_PATH_RE = re.compile(r"^(bucket=[0-9]{2}/)?part-[0-9a-f]{32}\.parquet$")
_LOCAL_FS = pafs.LocalFileSystem()
_WARM_TTL = 3600.0
"""Seconds a file's footer counts as opened (pyarrow's read-key cache lives 12 hours)."""
_TMP = "_tmp"


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


def _encode(where, table: pa.Table, encryption_properties) -> None:
    with pq.ParquetWriter(
        where,
        table.schema,
        compression=COMPRESSION,
        encryption_properties=encryption_properties,
        write_statistics=True,
    ) as w:
        w.write_table(table, row_group_size=row_group_rows(table))


def parquet_bytes(table: pa.Table, encryption_properties=None) -> pa.Buffer:
    """One Parquet file as :func:`write_parquet` writes it, in memory (uploaded in one PUT)."""
    sink = pa.BufferOutputStream()
    _encode(sink, table, encryption_properties)
    return sink.getvalue()


def write_parquet(path: Path, table: pa.Table, encryption_properties=None) -> None:
    """Write one Parquet file the way the store does (zstd, row groups, stats), and fsync."""
    _encode(str(path), table, encryption_properties)
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
        return fingerprint_stream(f, os.fstat(f.fileno()).st_size)


def fingerprint_stream(f, size: int) -> tuple[int, str]:
    """:func:`file_fingerprint` of an open seekable file ``f`` of ``size`` bytes (a local file
    or a pyarrow input file on object storage: two ranged reads, head and tail)."""
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
