"""The audit log: chain, MACs, tail anchor, locking and the secret filter."""

import json
import multiprocessing
import secrets

import pytest

from atomscale_lab.errors import IntegrityError, ValidationError
from tests.support.auditlog import lines, open_log, same_storage, write


@pytest.fixture
def log(tmp_path, database):
    lg = open_log(tmp_path, database, "acme", secrets.token_bytes(32))
    for i in range(6):
        lg.record(f"user{i % 2}", "data.read", table="process/series", rows=i * 10)
    return lg


def test_intact_log_verifies(log):
    assert log.verify() == 6
    ev = log.events(limit=2)
    assert [e["seq"] for e in ev] == [6, 5]
    assert log.events(actor="user1", limit=10)[0]["actor"] == "user1"
    assert len(log.events(actor="user1", limit=10)) == 3
    assert log.events(action="data.*", limit=1, offset=5)[0]["seq"] == 1


def test_edit_is_detected(log):
    ls = lines(log)
    ls[2] = ls[2].replace(b'"rows":20', b'"rows":21')
    write(log, ls)
    with pytest.raises(IntegrityError, match="line 3: MAC mismatch"):
        log.verify()


def test_delete_middle_is_detected(log):
    ls = lines(log)
    del ls[3]
    write(log, ls)
    with pytest.raises(IntegrityError, match="line 4"):
        log.verify()


def test_delete_last_is_detected(log):
    write(log, lines(log)[:-1])
    with pytest.raises(IntegrityError, match="line 6: missing"):
        log.verify()


def test_delete_whole_file_is_detected(log):
    if log.db is None:
        log.path.unlink()
    else:
        write(log, [])
    with pytest.raises(IntegrityError, match="line 1: missing"):
        log.verify()


def test_reorder_is_detected(log):
    ls = lines(log)
    ls[1], ls[2] = ls[2], ls[1]
    write(log, ls)
    with pytest.raises(IntegrityError, match="line 2"):
        log.verify()


def test_other_key_or_org_fails(log, tmp_path):
    other = same_storage(log, "acme", secrets.token_bytes(32))
    with pytest.raises(IntegrityError, match="line 1: MAC mismatch"):
        other.verify()
    renamed = same_storage(log, "beta", log._key)
    with pytest.raises(IntegrityError, match="line 1"):
        renamed.verify()


def test_append_after_verify_keeps_chain(log):
    log.record("admin", "org.create", region="us")
    assert log.verify() == 7


def test_secret_names_and_values_are_refused(log):
    before = lines(log)
    for detail in (
        {"token": "abc"},
        {"api_key": "x"},
        {"root_key": "x"},
        {"password": "x"},
        {"client_secret": "x"},
        {"nested": {"data_key": "x"}},
        {"blob": b"\x00" * 32},
        {"value": "ask1:" + "A" * 43},
        {"value": "q3Zx9_Lk2PwR7tYv-Bn4Hs8Jd1Fg6Ma0Ce5Ui2Oo7Rb"},
        {"obj": object()},
    ):
        with pytest.raises(ValidationError):
            log.record("admin", "config.change", **detail)
    assert lines(log) == before
    # Ordinary names of that length are fine.
    log.record("admin", "config.change", name="instrument-feed-for-the-growth-chamber-mbe1")
    with pytest.raises(ValidationError):
        log.record("admin", "Not An Action")
    with pytest.raises(ValidationError):
        log.record("admin", "data.read", outcome="maybe")


def test_no_key_material_in_log(tmp_path, database):
    key = secrets.token_bytes(32)
    lg = open_log(tmp_path, database, "acme", key)
    lg.record("admin", "key.release", key_version=2, fingerprint="0123abcd")
    raw = b"".join(lines(lg))
    import base64

    for form in (
        key,
        key.hex().encode(),
        base64.b64encode(key),
        base64.urlsafe_b64encode(key).rstrip(b"="),
    ):
        assert form not in raw
    ev = json.loads(raw.splitlines()[0])
    assert set(ev) == {"seq", "ts", "org", "actor", "action", "outcome", "detail", "prev", "mac"}
    assert ev["detail"] == {"key_version": 2, "fingerprint": "0123abcd"}


def _append_many(tmp_path, database, key, n):
    lg = open_log(tmp_path, database, "acme", key)
    for i in range(n):
        lg.record("worker", "data.write", i=i)


def test_concurrent_appends_keep_chain(tmp_path, database):
    """Several processes append to one org's log: one gapless chain, every event kept."""
    key = secrets.token_bytes(32)
    # A forked child must not share the parent's database connections: spawn on PostgreSQL.
    ctx = multiprocessing.get_context("spawn" if isinstance(database, str) else "fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, database, key, 40)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # a deadline, not a speed goal: a loaded machine may take long
        assert p.exitcode == 0
    lg = open_log(tmp_path, database, "acme", key)
    assert lg.verify() == 120
    assert [e["seq"] for e in lg.events(limit=200)] == list(range(120, 0, -1))
    assert sorted(e["detail"]["i"] for e in lg.events(limit=200)) == sorted(list(range(40)) * 3)
