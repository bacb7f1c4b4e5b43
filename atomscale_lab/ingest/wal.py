"""The ingest write-ahead log: encrypted, fsynced segments of accepted batches, per org.

A batch is acknowledged only after its record is in a segment file and ``fsync`` returned, so an
acknowledged batch survives ``kill -9`` (and a power cut, as far as the disk keeps its promises).

Segment file ``<seq:012d>.wal``::

    b"ASWAL1" | u32 header length | header JSON {"org", "segment", "key_version"}
    then records: u32 frame length | 12-byte nonce | AES-256-GCM(ciphertext + tag)

Each record is encrypted with a key HKDF-derived from the org's data key for this one purpose
(``atomscale-lab/ingest-wal/<org>/v<N>``), with the org, the segment number and the record number
as associated data, so a record cannot be moved to another org, segment or position unnoticed.
The plaintext of a record is ``u32 meta length | meta JSON | Arrow IPC stream of the rows``.

A crash can leave a torn last record (never acknowledged): replay stops there and trims it. A whole
record that fails authentication is corruption, tampering or the wrong key: the segment is moved
aside to ``quarantine/`` and reported, never silently dropped.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atomscale_lab.errors import IntegrityError
from atomscale_lab.fsutil import fsync_dir as _fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"ASWAL1"
_U32 = struct.Struct(">I")
MAX_FRAME = 1 << 30


def wal_key(org_keys, version: int | None = None) -> tuple[int, bytes]:
    """The WAL encryption key of an org (``OrgKeys``): HKDF of its data key, for this one use."""
    v = org_keys.current if version is None else version
    info = f"atomscale-lab/ingest-wal/{org_keys.org}/v{v}".encode()
    return v, HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        org_keys.keys[v]
    )


@dataclass
class WalRecord:
    """One accepted batch: which stream, which batch id, which table, and the conformed rows."""

    stream_id: str
    batch_id: str
    table: str
    rows: pa.Table
    digest: str = ""

    def encode(self) -> bytes:
        """Meta JSON plus the rows as an Arrow IPC stream."""
        meta = json.dumps(
            {
                "stream_id": self.stream_id,
                "batch_id": self.batch_id,
                "table": self.table,
                "digest": self.digest,
                "rows": self.rows.num_rows,
            }
        ).encode()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.rows.schema) as w:
            w.write_table(self.rows)
        return _U32.pack(len(meta)) + meta + sink.getvalue().to_pybytes()

    @classmethod
    def decode(cls, data: bytes) -> WalRecord:
        """Inverse of :meth:`encode`."""
        (n,) = _U32.unpack_from(data, 0)
        meta = json.loads(data[4 : 4 + n])
        rows = pa.ipc.open_stream(pa.py_buffer(data[4 + n :])).read_all()
        return cls(meta["stream_id"], meta["batch_id"], meta["table"], rows, meta.get("digest", ""))


class Wal:
    """The write-ahead log of one org in ``directory``; thread-safe.

    ``key_for(version)`` returns ``(version, key)``; ``version=None`` means the current one.
    """

    def __init__(
        self, directory: Path, org: str, key_for: Callable[[int | None], tuple[int, bytes]]
    ):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.org = org
        self._key_for = key_for
        self._keys: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._seg: int | None = None
        self._recno = 0
        self._aead: AESGCM | None = None
        existing = self.segments()
        self._next = (int(existing[-1].stem) + 1) if existing else 1
        self.pending_bytes = sum(p.stat().st_size for p in existing)
        """Bytes in segments not yet flushed (for back-pressure)."""

    # -- writing ------------------------------------------------------------------------------
    def append(self, records: list[WalRecord]) -> str:
        """Encrypt, write and fsync ``records``; returns the segment name. Durable on return."""
        payloads = [r.encode() for r in records]
        with self._lock:
            if self._fd is None:
                self._open_segment()
            frames = []
            for p in payloads:
                nonce = secrets.token_bytes(12)
                ct = self._aead.encrypt(nonce, p, self._aad(self._seg, self._recno))
                frames.append(_U32.pack(len(nonce) + len(ct)) + nonce + ct)
                self._recno += 1
            data = b"".join(frames)
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
            self.pending_bytes += len(data)
            return f"{self._seg:012d}"

    def _open_segment(self) -> None:
        version, key = self._key_for(None)
        self._keys[version] = key
        self._aead = AESGCM(key)
        self._seg = self._next
        self._next += 1
        path = self.dir / f"{self._seg:012d}.wal"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        header = json.dumps(
            {"org": self.org, "segment": self._seg, "key_version": version}
        ).encode()
        os.write(fd, MAGIC + _U32.pack(len(header)) + header)
        os.fsync(fd)
        _fsync_dir(self.dir)
        self._fd, self._recno = fd, 0

    def rotate(self) -> list[Path]:
        """Seal the active segment (new appends go to a new one); return every sealed segment."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            return self.segments()

    def close(self) -> None:
        """Close the active segment."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def active_segment(self) -> str | None:
        """Name of the segment being written, or None."""
        with self._lock:
            return None if self._fd is None else f"{self._seg:012d}"

    # -- reading ------------------------------------------------------------------------------
    def segments(self) -> list[Path]:
        """Segment files in order (the active one included)."""
        return sorted(p for p in self.dir.glob("*.wal") if p.stem.isdigit())

    def sealed(self) -> list[Path]:
        """Segment files that are no longer written to."""
        active = self.active_segment()
        return [p for p in self.segments() if p.stem != active]

    def read(self, path: Path) -> list[WalRecord]:
        """Decrypt every record of a segment; trim a torn tail; quarantine a corrupt segment."""
        data = Path(path).read_bytes()
        seg = int(Path(path).stem)
        if len(data) < len(MAGIC) + 4 or data[: len(MAGIC)] != MAGIC:
            if len(data) <= len(MAGIC) + 4:  # crashed while creating: nothing was acknowledged
                return []
            raise self._quarantine(path, "bad segment header")
        (hlen,) = _U32.unpack_from(data, len(MAGIC))
        pos = len(MAGIC) + 4
        try:
            header = json.loads(data[pos : pos + hlen])
        except ValueError:
            return []  # header torn: the segment never got a record
        pos += hlen
        if header.get("org") != self.org or header.get("segment") != seg:
            raise self._quarantine(path, "segment belongs to another org or position")
        version = int(header["key_version"])
        if version not in self._keys:
            self._keys[version] = self._key_for(version)[1]
        aead = AESGCM(self._keys[version])
        records, recno = [], 0
        while pos < len(data):
            if pos + 4 > len(data):
                break
            (flen,) = _U32.unpack_from(data, pos)
            end = pos + 4 + flen
            if flen < 28 or flen > MAX_FRAME:
                raise self._quarantine(path, f"bad frame length at record {recno}")
            if end > len(data):
                break  # torn tail: written partly before a crash, never acknowledged
            nonce, ct = data[pos + 4 : pos + 16], data[pos + 16 : end]
            try:
                plain = aead.decrypt(nonce, ct, self._aad(seg, recno))
            except InvalidTag:
                # A crash cuts a write short (handled above); a whole frame that fails
                # authentication is tampering, corruption or the wrong key.
                raise self._quarantine(path, f"record {recno} fails authentication") from None
            records.append(WalRecord.decode(plain))
            pos, recno = end, recno + 1
        return records

    def remove(self, paths: list[Path]) -> None:
        """Delete flushed segments."""
        for p in paths:
            try:
                size = os.stat(p).st_size
                os.unlink(p)
                with self._lock:
                    self.pending_bytes = max(0, self.pending_bytes - size)
            except FileNotFoundError:
                pass
        _fsync_dir(self.dir)

    def _quarantine(self, path: Path, reason: str) -> IntegrityError:
        qdir = self.dir / "quarantine"
        qdir.mkdir(exist_ok=True, mode=0o700)
        os.replace(path, qdir / Path(path).name)
        log.error(
            "ingest WAL segment %s of org %s quarantined: %s", Path(path).name, self.org, reason
        )
        return IntegrityError(f"WAL segment {Path(path).name} of org {self.org!r}: {reason}")

    def _aad(self, seg: int, recno: int) -> bytes:
        return f"atomscale-lab/ingest-wal/{self.org}/{seg}/{recno}".encode()
