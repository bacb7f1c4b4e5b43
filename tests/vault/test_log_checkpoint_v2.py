"""Checkpoint format 2 (file list grouped by bucket, parsed on first use), format-1 checkpoints
written before it, and log lines of which only the newest signature is checked at once."""

import base64
import hashlib
import json

import pytest

from atomscale_lab.errors import IntegrityError
from atomscale_lab.schema import SERIES
from atomscale_lab.vault.crypto import OrgCrypto
from atomscale_lab.vault.store import OrgTable, filemap
from atomscale_lab.vault.store import log as store_log
from atomscale_lab.vault.store.log import _canon, _sign_message
from tests.support.vault import head_store, make_keys, series, store

EVERY = 4


def _fresh(tmp, reg, heads=True):
    return OrgTable(
        tmp / "data",
        "a",
        SERIES,
        OrgCrypto(reg.org_keys("a").reader()),
        head_store(tmp, reg) if heads else None,
    )


def _ckpt(t):
    return t.path / "_log" / "checkpoint.json"


def _lines(t):
    return (t.path / "_log" / "commits.jsonl").read_bytes().splitlines()


def _write_format1(t, state):
    """A checkpoint as the store wrote them before format 2: the whole list of file entries as
    one sealed JSON array, signed together with the rest of the document."""
    kv = t.crypto.version
    files = [state.files[p] for p in sorted(state.files)]
    doc = {
        "v": 1,
        "seq": state.seq,
        "digest": state.digest,
        "offset": state.size,
        "key_version": kv,
        "kfp": t.crypto.fingerprint(kv),
        "sv": t.crypto.sign_version,
        "files": base64.b64encode(
            t.crypto.seal(
                "commit-log-checkpoint/process/series",
                kv,
                _canon(files),
                f"a/process/series/checkpoint/{state.seq}".encode(),
            )
        ).decode(),
    }
    _, sig = t.crypto.sign(_sign_message("a", "process/series", "checkpoint", doc))
    _ckpt(t).write_bytes(_canon(dict(doc, sig=base64.b64encode(sig).decode())))


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(store_log, "CHECKPOINT_EVERY", EVERY)
    reg = make_keys(tmp_path)
    t = store(tmp_path, reg).table("process/series")
    for i in range(10):
        t.write(series(4, 5, prefix=f"c{i:02d}"))  # 4 runs a commit: several buckets
    return tmp_path, reg, t


def _count_applied(monkeypatch):
    applied = []
    real = OrgTable._apply

    def counting(self, state, data, end, skip=False):
        applied.append(data[:end].count(b"\n"))
        return real(self, state, data, end, skip)

    monkeypatch.setattr(OrgTable, "_apply", counting)
    return applied


def test_format1_checkpoints_are_still_read_and_verified(env, monkeypatch):
    tmp, reg, t = env
    for writer in ("constructed", "store"):
        if writer == "constructed":
            _write_format1(t, t._load())  # at commit 10
        else:
            monkeypatch.setattr(store_log, "CHECKPOINT_FORMAT", 1)
            t.write(series(1, 5, prefix=f"old{writer}"))
            t._write_checkpoint(t._load())
        doc = json.loads(_ckpt(t).read_bytes())
        assert doc["v"] == 1 and "files_sha256" not in doc
        applied = _count_applied(monkeypatch)
        fresh = _fresh(tmp, reg)
        want = t.read()
        assert fresh.read().num_rows == want.num_rows
        assert fresh.read(run_ids=["c03-0002"]).num_rows == 5
        assert sum(applied) == 0  # started from the checkpoint, no line re-read
        fresh.verify(deep=True)
        monkeypatch.undo()
        monkeypatch.setattr(store_log, "CHECKPOINT_EVERY", EVERY)
    # an edited format-1 checkpoint is refused as before
    doc = json.loads(_ckpt(t).read_bytes())
    doc["offset"] = 0
    _ckpt(t).write_bytes(_canon(doc))
    with pytest.raises(IntegrityError, match="checkpoint failed its signature"):
        _fresh(tmp, reg).read()
    # the migration path: the writer's next checkpoint is format 2, readers move on to it
    t._write_checkpoint(t._load())
    for i in range(EVERY):
        t.write(series(1, 5, prefix=f"new{i}"))
    doc = json.loads(_ckpt(t).read_bytes())
    assert doc["v"] == 2 and doc["seq"] == t.head()[0]
    fresh = _fresh(tmp, reg)
    assert fresh.read().num_rows == t.read().num_rows
    fresh.verify(deep=True)


def test_one_run_query_parses_only_its_bucket(env):
    tmp, reg, t = env
    doc = json.loads(_ckpt(t).read_bytes())
    assert doc["v"] == 2 and doc["seq"] == 8
    fresh = _fresh(tmp, reg)
    got = fresh.read(run_ids=["c05-0001"])
    assert got.num_rows == 5 and set(got.column("run_id").to_pylist()) == {"c05-0001"}
    state = fresh._load()
    assert state.files.unparsed >= 2  # other buckets' entries were never parsed
    listed = fresh.files()  # the whole list when asked for it
    assert state.files.unparsed == 0
    assert sorted(e["path"] for e in listed) == sorted(e["path"] for e in t.files())
    assert fresh.read().num_rows == 200
    fresh.verify(deep=True)
    # the sealed list names no run in plaintext
    assert b"c05-0001" not in _ckpt(t).read_bytes()


def _signed_format2(t, state, plain):
    kv = t.crypto.version
    doc = {
        "v": 2,
        "seq": state.seq,
        "digest": state.digest,
        "offset": state.size,
        "key_version": kv,
        "kfp": t.crypto.fingerprint(kv),
        "sv": t.crypto.sign_version,
        "files": base64.b64encode(
            t.crypto.seal(
                "commit-log-checkpoint/process/series",
                kv,
                plain,
                f"a/process/series/checkpoint/{state.seq}".encode(),
            )
        ).decode(),
    }
    _, sig = t.crypto.sign(
        _sign_message("a", "process/series", "checkpoint", store_log._ckpt_signed(doc))
    )
    _ckpt(t).write_bytes(_canon(dict(doc, sig=base64.b64encode(sig).decode())))


def test_format2_list_with_entries_in_the_wrong_bucket_is_refused(env):
    """Even signed with the org's key: a group holding another bucket's file would hide it
    from one-run queries, so it is refused when parsed."""
    tmp, reg, t = env
    state = t._load()
    plain = filemap.encode(state.files.values())
    head, body = plain.split(b"\n", 1)
    index = json.loads(head)
    a, b = index["groups"][0], index["groups"][1]
    a[0], b[0] = b[0], a[0]  # swap the buckets of two groups
    _signed_format2(t, state, json.dumps(index).encode() + b"\n" + body)
    run = next(
        r
        for r in (f"c{i:02d}-{k:04d}" for i in range(10) for k in range(4))
        if filemap.group_of(next(e["path"] for e in t.files() if r in (e.get("run_ids") or [])))
        == a[0]
    )
    with pytest.raises(IntegrityError, match="file list is corrupt"):
        _fresh(tmp, reg).read(run_ids=[run])
    with pytest.raises(IntegrityError, match="file list is corrupt"):
        _fresh(tmp, reg).read()


def test_edited_format2_checkpoint_is_refused(env):
    tmp, reg, t = env
    doc = json.loads(_ckpt(t).read_bytes())
    blob = bytearray(base64.b64decode(doc["files"]))
    blob[len(blob) // 2] ^= 1
    doc["files"] = base64.b64encode(bytes(blob)).decode()
    _ckpt(t).write_bytes(_canon(doc))
    with pytest.raises(IntegrityError, match="checkpoint failed its signature"):
        _fresh(tmp, reg).read()
    # the digest the signature covers cannot be swapped in for another list either
    doc = json.loads(_ckpt(t).read_bytes())
    doc["files_sha256"] = hashlib.sha256(bytes(blob)).hexdigest()
    _ckpt(t).write_bytes(_canon(doc))
    with pytest.raises(IntegrityError, match="checkpoint"):
        _fresh(tmp, reg).read()


@pytest.fixture
def plain_log(tmp_path, monkeypatch):
    """Ten commits and no checkpoint: a fresh reader reads every line."""
    monkeypatch.setattr(store_log, "CHECKPOINT_EVERY", 0)
    reg = make_keys(tmp_path)
    t = store(tmp_path, reg).table("process/series")
    for i in range(10):
        t.write(series(2, 5, prefix=f"p{i}"))
    return tmp_path, reg, t


def _count_verify(monkeypatch):
    calls = []
    real = OrgCrypto.verify_signature

    def counting(self, version, message, signature):
        calls.append(message)
        return real(self, version, message, signature)

    monkeypatch.setattr(OrgCrypto, "verify_signature", counting)
    return calls


def test_only_the_newest_signature_of_new_lines_is_checked(plain_log, monkeypatch):
    tmp, reg, t = plain_log
    calls = _count_verify(monkeypatch)
    fresh = _fresh(tmp, reg)
    assert fresh.read().num_rows == 100
    assert len(calls) == 1 and b'"seq":10' in calls[0]
    for i in range(3):
        t.write(series(1, 5, prefix=f"q{i}"))
    calls.clear()
    assert fresh.read().num_rows == 115  # three new lines, one signature
    assert len(calls) == 1 and b'"seq":13' in calls[0]
    fresh.verify()


def _rewrite(t, lines):
    (t.path / "_log" / "commits.jsonl").write_bytes(b"\n".join(lines) + b"\n")


def test_a_bad_signature_in_the_middle_is_named(plain_log):
    tmp, reg, t = plain_log
    lines = _lines(t)
    doc = json.loads(lines[4])
    doc["sig"] = json.loads(lines[5])["sig"]  # line 5 with another line's signature
    lines[4] = _canon(doc)
    _rewrite(t, lines)
    with pytest.raises(IntegrityError, match="line 5 failed its signature check"):
        _fresh(tmp, reg, heads=False).read()


def test_an_edited_middle_line_with_a_repaired_chain_is_refused(plain_log):
    """Editing line 5 and fixing every later ``prev`` keeps the chain, but the newest line's
    signature no longer covers it: refused, and the first bad line is named."""
    tmp, reg, t = plain_log
    lines = _lines(t)
    doc = json.loads(lines[4])
    doc["removed"] = []
    doc["op"] = "replace"
    lines[4] = _canon(doc)
    for k in range(5, len(lines)):
        d = json.loads(lines[k])
        d["prev"] = hashlib.sha256(lines[k - 1]).hexdigest()
        lines[k] = _canon(d)
    _rewrite(t, lines)
    with pytest.raises(IntegrityError, match="line 5 failed its signature check"):
        _fresh(tmp, reg, heads=False).read(run_ids=["p4-0000"])


def test_a_fresh_reader_writes_no_head_the_store_already_has(plain_log, monkeypatch):
    tmp, reg, t = plain_log
    from atomscale_lab.vault.store import DatabaseHeadStore

    advanced = []
    real = DatabaseHeadStore.advance

    def counting(self, org, table, seq, digest):
        advanced.append(seq)
        return real(self, org, table, seq, digest)

    monkeypatch.setattr(DatabaseHeadStore, "advance", counting)
    _fresh(tmp, reg).read()
    assert advanced == [10] or advanced == []  # the writer may have recorded it already
    advanced.clear()
    store_log._HIGH_WATER.clear()
    assert _fresh(tmp, reg).read().num_rows == 100
    assert advanced == []  # the store holds commit 10 with the same digest: nothing to write
    # a rolled-back log is still refused by that recorded head
    log = t.path / "_log" / "commits.jsonl"
    log.write_bytes(b"\n".join(log.read_bytes().splitlines()[:9]) + b"\n")
    store_log._HIGH_WATER.clear()
    with pytest.raises(IntegrityError, match="rolled back"):
        _fresh(tmp, reg).read()


def test_verify_checks_every_line_signature(plain_log, monkeypatch):
    tmp, reg, t = plain_log
    calls = _count_verify(monkeypatch)
    _fresh(tmp, reg).verify()
    assert len([c for c in calls if b"\0line\0" in c]) >= 10


def test_commit_objects_on_s3_one_signature_and_a_bad_one_named(tmp_path, s3, monkeypatch):
    """On object storage the new commit objects are checked as one run of lines as well."""
    monkeypatch.setattr(store_log, "CHECKPOINT_EVERY", 0)
    reg = make_keys(tmp_path)
    root = s3.root()
    t = store(tmp_path, reg, root=root).table("process/series")
    for i in range(5):
        t.write(series(2, 5, prefix=f"s{i}"))
    calls = _count_verify(monkeypatch)
    fresh = store(tmp_path, reg, root=root, heads=False).table("process/series")
    assert fresh.read(run_ids=["s2-0001"]).num_rows == 5
    assert len(calls) == 1 and b'"seq":5' in calls[0]
    keys = sorted(k for k in s3.keys(root, "a/process/series/_log/") if k[-6].isdigit())
    third = json.loads(s3.get(root, keys[2]))
    third["sig"] = json.loads(s3.get(root, keys[3]))["sig"]
    s3.put(root, keys[2], _canon(third))
    with pytest.raises(IntegrityError, match="line 3 failed its signature check"):
        store(tmp_path, reg, root=root, heads=False).table("process/series").read()
