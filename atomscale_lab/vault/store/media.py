"""Where a table's files live: a local folder (:class:`LocalMedium`) or an S3 prefix
(:class:`~atomscale_lab.vault.store.objects.S3Medium`).

A storage root is either a ``Path`` or an :class:`~atomscale_lab.vault.store.objects.S3Root`
(``s3://bucket/prefix``); :func:`as_root` turns configuration text into one of them and
:func:`medium` gives the medium of one table folder under a root. The data-file operations
(write, stat, fingerprint, list, delete, the pyarrow file system readers use) are the medium's;
the commit log's own storage (an appended file locally, one object per commit on S3) is chosen by
:class:`~atomscale_lab.vault.store.log.CommitLog` from the medium's ``objects`` flag.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from atomscale_lab.fsutil import fsync_dir as _fsync_dir
from atomscale_lab.fsutil import mkdirs as _mkdirs
from atomscale_lab.vault.store.files import _LOCAL_FS, _TMP, file_fingerprint, write_parquet
from atomscale_lab.vault.store.log import _LOG

S3_SCHEME = "s3://"


def is_object_url(value) -> bool:
    """True for an ``s3://`` root (text or :class:`S3Root`)."""
    from atomscale_lab.vault.store.objects import S3Root

    return isinstance(value, S3Root) or str(value).startswith(S3_SCHEME)


def as_root(value, s3_config=None):
    """A storage root from a ``Path``, a local path text, an ``s3://bucket/prefix`` text or an
    ``S3Root`` (returned as is). ``s3_config`` (an ``S3Config``) defaults to the environment."""
    if isinstance(value, Path):
        return value  # a local root never needs the object-storage module (slow to import)
    from atomscale_lab.vault.store.objects import S3Root

    if isinstance(value, S3Root):
        return value
    if isinstance(value, str) and value.startswith(S3_SCHEME):
        return S3Root.parse(value, s3_config)
    return Path(value)


def join(root, *parts: str):
    """``root / part / ...`` for either kind of root."""
    if isinstance(root, Path):
        return root.joinpath(*parts)
    return root.child(*parts)


def medium(root, *parts: str):
    """The medium of the folder ``root/parts...`` (a table's folder)."""
    if isinstance(root, Path):
        return LocalMedium(root.joinpath(*parts))
    from atomscale_lab.vault.store.objects import S3Medium

    return S3Medium(root.child(*parts))


class LocalMedium:
    """A table folder on the local file system: files written to ``_tmp/``, fsynced and renamed
    into place; the commit log is ``_log/commits.jsonl`` guarded by ``flock``."""

    objects = False
    fs = _LOCAL_FS

    def __init__(self, path: Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def identity(self) -> str:
        """A stable name of the folder (for the process-wide rollback guard)."""
        return str(self.path.resolve())

    def fs_path(self, rel: str) -> str:
        """The path of ``rel`` for :attr:`fs` (pyarrow)."""
        return str(self.path / rel)

    def stat(self, rel: str) -> tuple | None:
        """A signature that changes when the file is replaced or modified; None if missing."""
        try:
            st = os.stat(self.path / rel)
        except FileNotFoundError:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def fingerprint(self, rel: str) -> tuple[int, str]:
        """``(size, fp)`` of a data file (see :func:`files.file_fingerprint`)."""
        return file_fingerprint(self.path / rel)

    def write_file(self, rel: str, table: pa.Table, props) -> tuple[int, str]:
        """Encrypt ``table`` into ``_tmp/``, fsync, rename to ``rel``; returns ``(size, fp)``."""
        name = rel.rsplit("/", 1)[-1]
        tmp_dir = self.path / _TMP
        _mkdirs(tmp_dir)
        tmp = tmp_dir / name
        write_parquet(tmp, table, props)
        size, fp = file_fingerprint(tmp)
        final = self.path / rel
        _mkdirs(final.parent)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return size, fp

    def delete(self, rel: str) -> None:
        """Remove a data file (a missing one is fine)."""
        try:
            os.unlink(self.path / rel)
        except FileNotFoundError:
            pass

    def list_data(self) -> list[tuple[str, float]]:
        """``(rel, mtime)`` of every file outside ``_log/`` and ``_tmp/``."""
        if not self.path.is_dir():
            return []
        out = []
        for p in self.path.rglob("*"):
            rel = p.relative_to(self.path)
            if rel.parts[0] in (_LOG, _TMP) or not p.is_file():
                continue
            out.append((rel.as_posix(), p.stat().st_mtime))
        return out

    def clear_tmp(self, older_than: float | None = None) -> int:
        """Remove leftovers in ``_tmp/`` (all of them: writers hold the table lock)."""
        tmp = self.path / _TMP
        n = 0
        if tmp.is_dir():
            for p in tmp.iterdir():
                p.unlink()
                n += 1
        return n

    def read_bytes(self, rel: str) -> bytes:
        """The raw bytes of a file (diagnostics and tests)."""
        return (self.path / rel).read_bytes()
