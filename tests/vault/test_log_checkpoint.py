"""Signed checkpoints: a fresh reader starts from the newest one; tampering with it is refused.

``CHECKPOINT_EVERY`` is lowered so that a handful of commits make several checkpoints.
"""

import base64
import json
import shutil

import pytest

from atomscale_lab.errors import IntegrityError
from atomscale_lab.schema import SERIES
from atomscale_lab.vault.crypto import OrgCrypto
from atomscale_lab.vault.store import OrgTable
from atomscale_lab.vault.store import log as store_log
from atomscale_lab.vault.store.log import _canon, _sign_message
from tests.support.vault import head_store, make_keys, series, store

EVERY = 4


@pytest.fixture
def env(tmp_path, monkeypatch, database):
    monkeypatch.setattr(store_log, "CHECKPOINT_EVERY", EVERY)
    reg = make_keys(tmp_path, database=database)
    t = store(tmp_path, reg).table("process/series")
    for i in range(10):
        t.write(series(2, 5, prefix=f"c{i:02d}"))
    return tmp_path, reg, t


def _fresh(tmp, reg, heads=True, reader=True):
    keys = reg.org_keys("a")
    return OrgTable(
        tmp / "data",
        "a",
        SERIES,
        OrgCrypto(keys.reader() if reader else keys),
        head_store(tmp, reg) if heads else None,
    )


def _ckpt(t):
    return t.path / "_log" / "checkpoint.json"


def test_fresh_reader_starts_from_the_checkpoint(env, monkeypatch):
    tmp, reg, t = env
    doc = json.loads(_ckpt(t).read_bytes())
    assert doc["seq"] == 8 and doc["offset"] > 0
    applied = []
    real = OrgTable._apply

    def counting(self, state, data, end, skip=False):
        applied.append(data[:end].count(b"\n"))
        return real(self, state, data, end, skip)

    monkeypatch.setattr(OrgTable, "_apply", counting)
    fresh = _fresh(tmp, reg)
    assert fresh.read().num_rows == 100
    assert fresh.read(run_ids=["c03-0001"]).num_rows == 5
    assert sum(applied) == 2  # lines 9 and 10 only
    # the checkpoint's file list is sealed: no run id in it
    assert b"c03-0001" not in _ckpt(t).read_bytes()
    fresh.verify(deep=True)


def test_edited_checkpoint_is_refused(env):
    tmp, reg, t = env
    doc = json.loads(_ckpt(t).read_bytes())
    doc["offset"] = 0
    _ckpt(t).write_bytes(_canon(doc))
    with pytest.raises(IntegrityError, match="checkpoint failed its signature"):
        _fresh(tmp, reg).read()
    raw = bytearray(_ckpt(t).read_bytes())
    raw[len(raw) // 2] ^= 1
    _ckpt(t).write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="checkpoint"):
        _fresh(tmp, reg).read()


def test_removed_or_older_checkpoint_is_refused(env):
    tmp, reg, t = env
    older = _ckpt(t).read_bytes()  # at commit 8
    for i in range(4):
        t.write(series(1, 5, prefix=f"d{i}"))  # commit 12 writes a new checkpoint, 13 names it
    t.write(series(1, 5, prefix="e"))
    assert json.loads(_ckpt(t).read_bytes())["seq"] == 12
    _ckpt(t).write_bytes(older)
    with pytest.raises(IntegrityError, match="replaced by an older one"):
        _fresh(tmp, reg).read()
    _ckpt(t).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        _fresh(tmp, reg).read()
    with pytest.raises(IntegrityError, match="missing"):
        _fresh(tmp, reg, heads=False).verify()


def test_forged_checkpoint_is_refused(env):
    """Signed with a key other than the org's: the data key alone makes no valid checkpoint."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    tmp, reg, t = env
    doc = json.loads(_ckpt(t).read_bytes())
    doc.pop("sig")
    doc["files"] = base64.b64encode(
        t.crypto.seal(
            "commit-log-checkpoint/process/series", 1, _canon([]), b"a/process/series/checkpoint/8"
        )
    ).decode()  # an empty table: every row hidden
    sig = Ed25519PrivateKey.generate().sign(_sign_message("a", "process/series", "checkpoint", doc))
    _ckpt(t).write_bytes(_canon(dict(doc, sig=base64.b64encode(sig).decode())))
    with pytest.raises(IntegrityError, match="checkpoint failed its signature"):
        _fresh(tmp, reg).read()


def test_checkpoint_that_disagrees_with_the_log_fails_verify(env):
    """Even a checkpoint signed with the org's key must match the lines it summarises."""
    tmp, reg, t = env
    state = t._load().copy()
    victim = sorted(state.files)[0]
    del state.files[victim]
    t._write_checkpoint(state)
    with pytest.raises(IntegrityError, match="does not match the log"):
        _fresh(tmp, reg).verify()


def test_rollback_with_its_checkpoint_is_refused(env):
    tmp, reg, t = env
    log = t.path / "_log" / "commits.jsonl"
    old_log, old_ck = log.read_bytes(), _ckpt(t).read_bytes()
    for i in range(4):
        t.write(series(1, 5, prefix=f"r{i}"))
    log.write_bytes(old_log)
    _ckpt(t).write_bytes(old_ck)
    with pytest.raises(IntegrityError, match="rolled back"):
        _fresh(tmp, reg).read()


def test_writer_on_a_checkpointed_log_and_gc(env, tmp_path):
    tmp, reg, t = env
    other = _fresh(tmp, reg, reader=False)
    other.write(series(1, 5, prefix="w"))
    assert t.read().num_rows == 105
    assert t.compact(min_rows=10**6) is not None
    t.gc()
    assert _fresh(tmp, reg).read().num_rows == 105
    _fresh(tmp, reg).verify(deep=True)
    # a table copied elsewhere as a whole still reads (checkpoint offsets are relative)
    shutil.copytree(tmp / "data", tmp_path / "copy" / "data")
    moved = OrgTable(tmp_path / "copy" / "data", "a", SERIES, OrgCrypto(reg.org_keys("a")))
    assert moved.read().num_rows == 105


def test_signing_key_rotation_with_checkpoints(env):
    """After a rotation the old checkpoint is not started from; the writer's next line (the
    seal) writes one under the new key, and everything stays readable."""
    tmp, reg, t = env
    old_ck = json.loads(_ckpt(t).read_bytes())
    reg.rotate("a", "sign")
    rotated = _fresh(tmp, reg)  # a reader with the new verify keys, before any new line
    assert rotated.read().num_rows == 100
    writer = _fresh(tmp, reg, reader=False)
    assert writer.seal(scrub=False) is True
    ck = json.loads(_ckpt(t).read_bytes())
    assert ck["sv"] == 2 and ck["seq"] == old_ck["seq"] + 3
    assert _fresh(tmp, reg).read().num_rows == 100
    _fresh(tmp, reg).verify(deep=True)
    # the checkpoint signed with the retired key, put back, is not trusted as a start: the log
    # is replayed (same rows), and once a line names the newer checkpoint it is refused
    _ckpt(t).write_bytes(_canon(old_ck))
    assert _fresh(tmp, reg).read().num_rows == 100
    writer.write(series(1, 5, prefix="after"))
    with pytest.raises(IntegrityError, match="older one"):
        _fresh(tmp, reg).read()
