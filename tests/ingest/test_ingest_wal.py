"""The write-ahead log: round trip, encryption at rest, torn tails, corruption, wrong org."""

import os
import secrets

import pyarrow as pa
import pytest

from atomscale_lab.errors import IntegrityError
from atomscale_lab.ingest.wal import Wal, WalRecord


def _rows(n, start=0):
    return pa.table(
        {
            "run_id": ["r1"] * n,
            "channel": ["T"] * n,
            "value": [float(i) for i in range(start, start + n)],
        }
    )


def _wal(tmp_path, org="acme", key=None):
    key = key or secrets.token_bytes(32)
    return Wal(tmp_path / org, org, lambda v: (1, key)), key


def test_round_trip_and_ciphertext_only_on_disk(tmp_path):
    wal, key = _wal(tmp_path)
    marker = "UNIQUE-CHANNEL-NAME-123"
    wal.append(
        [
            WalRecord(
                "s1",
                "b1",
                "process/series",
                pa.table({"run_id": ["r1"], "channel": [marker], "value": [1.0]}),
            )
        ]
    )
    wal.append([WalRecord("s1", "b2", "process/series", _rows(100))])
    segs = wal.rotate()
    assert len(segs) == 1
    raw = segs[0].read_bytes()
    assert marker.encode() not in raw and b"process/series" not in raw
    recs = wal.read(segs[0])
    assert [r.batch_id for r in recs] == ["b1", "b2"]
    assert recs[1].rows.equals(_rows(100))
    wal.append([WalRecord("s1", "b3", "process/series", _rows(1))])
    assert len(wal.rotate()) == 2


def test_torn_tail_is_trimmed(tmp_path):
    wal, _ = _wal(tmp_path)
    wal.append([WalRecord("s", "b1", "t", _rows(10))])
    wal.append([WalRecord("s", "b2", "t", _rows(10))])
    (seg,) = wal.rotate()
    data = seg.read_bytes()
    seg.write_bytes(data[:-7])  # a crash in the middle of the last write
    assert [r.batch_id for r in wal.read(seg)] == ["b1"]


def test_corrupt_record_quarantines_the_segment(tmp_path):
    wal, _ = _wal(tmp_path)
    wal.append([WalRecord("s", "b1", "t", _rows(10))])
    wal.append([WalRecord("s", "b2", "t", _rows(10))])
    (seg,) = wal.rotate()
    data = bytearray(seg.read_bytes())
    data[200] ^= 0xFF  # inside the first record
    seg.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="authentication"):
        wal.read(seg)
    assert not seg.exists() and (seg.parent / "quarantine" / seg.name).exists()


def test_segment_of_another_org_or_key_is_refused(tmp_path):
    wal, key = _wal(tmp_path, "acme")
    wal.append([WalRecord("s", "b1", "t", _rows(3))])
    (seg,) = wal.rotate()
    other, _ = _wal(tmp_path, "beta")
    os.replace(seg, other.dir / seg.name)
    with pytest.raises(IntegrityError, match="another org"):
        other.read(other.dir / seg.name)
    wal.append([WalRecord("s", "b2", "t", _rows(3))])
    (seg2,) = wal.rotate()
    wrong_key = Wal(wal.dir, "acme", lambda v: (1, secrets.token_bytes(32)))
    with pytest.raises(IntegrityError):
        wrong_key.read(seg2)
