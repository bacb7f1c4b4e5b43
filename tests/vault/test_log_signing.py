"""Commit-log lines are signed with the org's Ed25519 writer key; the data key alone forges nothing.

Attacks are made as a holder of the data key without the signing key (a viewer who once got the
data key): an HMAC-only line of the old format with ``actor=acme-admin``, a line in the new format
signed with a key of the attacker's own, a new log for an empty table. Every reader refuses each:
``OrgTable.read``, the dataset/DuckDB path and deep verification in a child process, ``org verify``
and ``org verify --deep``.
"""

import base64
import hashlib
import json
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from atomscale_lab.cli import demo
from atomscale_lab.cli import main as cli
from atomscale_lab.errors import IntegrityError, KeyUnavailable, PermissionDenied
from atomscale_lab.schema import CONTEXT, SERIES, TABLES
from atomscale_lab.vault.crypto import OrgCrypto, OrgKeys
from atomscale_lab.vault.facade import Vault
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.registry import KeyRegistry
from atomscale_lab.vault.settings import Settings
from atomscale_lab.vault.store import OrgStore, OrgTable, SqliteHeadStore
from atomscale_lab.vault.store.log import _canon, _sign_message
from tests.support.legacy_log import data_key_only, last_line, legacy_line, legacy_write
from tests.support.vault import make_keys, run_reader, series, store

INTEGRITY = 5


def _vault(tmp_path, key_text: str | None = None) -> Vault:
    home = tmp_path / "home"
    return Vault(
        Settings(home=home, data_root=home / "data", context_root=home / "context"),
        kms=LocalKms(key_text or generate_root_key()),
    )


def _planted_file(table: OrgTable, crypto: OrgCrypto) -> dict:
    """An encrypted file with the data key, as the attacker can make it (rows of a fake run)."""
    forger = OrgTable(table.root, table.org, table.spec, crypto)
    return forger._write_file(None if not table.spec.bucketed else 3, series(1, 5, prefix="forged"))


def _forge_hmac_line(table: OrgTable, keys: OrgKeys) -> None:
    crypto = data_key_only(keys)
    seq, digest, _ = last_line(table)
    line = legacy_line(
        crypto, table.spec.name, seq + 1, digest, [_planted_file(table, crypto)], [], "acme-admin"
    )
    with open(table._log_path, "ab") as f:
        f.write(line)


def _forge_signed_line(table: OrgTable, keys: OrgKeys) -> None:
    """The new format, complete with sealed statistics, signed with the attacker's own key."""
    crypto = data_key_only(keys)
    entry = _planted_file(table, crypto)
    seq, digest, _ = last_line(table)
    kv = crypto.version
    stats = {
        "actor": "acme-admin",
        "files": {
            entry["path"]: {
                k: entry[k] for k in ("rows", "tmin", "tmax", "run_ids", "run_min", "run_max")
            }
        },
    }
    body = {
        "seq": seq + 1,
        "prev": digest,
        "ts": "2026-12-01T00:00:00+00:00",
        "op": "add",
        "added": [{k: entry[k] for k in ("path", "size", "fp", "kv", "bucket")}],
        "removed": [],
        "key_version": kv,
        "kfp": crypto.fingerprint(kv),
        "sv": max(keys.verify),
        "ck": 0,
        "stats": base64.b64encode(
            crypto.seal(
                f"commit-log-stats/{table.spec.name}",
                kv,
                _canon(stats),
                f"{table.org}/{table.spec.name}/line/{seq + 1}".encode(),
            )
        ).decode(),
    }
    sig = Ed25519PrivateKey.generate().sign(_sign_message(table.org, table.spec.name, "line", body))
    with open(table._log_path, "ab") as f:
        f.write(_canon(dict(body, sig=base64.b64encode(sig).decode())) + b"\n")


def _refused(proc, *needles):
    out = proc.stdout + proc.stderr
    assert proc.returncode == INTEGRITY, (proc.returncode, out[-2000:])
    for n in needles:
        assert n in out, out


def test_org_keys_carry_verify_and_signing_keys(tmp_path):
    reg = make_keys(tmp_path)
    keys = reg.org_keys("a")
    assert keys.writer and set(keys.verify) == {1} and keys.signing[0] == 1
    doc = keys.to_json()
    assert set(doc) == {"org", "keys", "verify", "sign"}
    assert OrgKeys.from_json(doc) == keys
    reader = keys.reader()
    assert not reader.writer and "sign" not in reader.to_json()
    assert OrgKeys.from_json(reader.to_json()) == reader
    text = repr(keys) + str(keys)
    for raw in [*keys.keys.values(), *keys.verify.values(), keys.signing[1]]:
        for form in (raw.hex(), base64.urlsafe_b64encode(raw).decode().rstrip("=")):
            assert form not in text
    # a signing key that is not the one its verify key names is refused
    bad = dict(doc, sign={"version": 1, "key": doc["keys"]["1"]})
    with pytest.raises(KeyUnavailable, match="does not match"):
        OrgKeys.from_json(bad)
    # rotation adds a version; the registry hands out only the newest signing key
    reg.rotate("a", "sign")
    keys2 = reg.org_keys("a")
    assert set(keys2.verify) == {1, 2} and keys2.signing[0] == 2
    assert keys2.verify[1] == keys.verify[1]
    assert reg.org_keys("a", signing=False).signing is None


def test_reader_without_signing_key_cannot_write(tmp_path):
    reg = make_keys(tmp_path)
    t = store(tmp_path, reg).table("process/series")
    t.write(series(2, 10))
    viewer = OrgTable(t.root, "a", SERIES, OrgCrypto(reg.org_keys("a").reader()))
    assert viewer.read().num_rows == 20
    for attempt in (
        lambda: viewer.write(series(1, 5, prefix="v")),
        viewer.compact,
        viewer.rewrite,
        viewer.seal,
    ):
        with pytest.raises(PermissionDenied, match="signing key"):
            attempt()
    assert t.read().num_rows == 20
    assert not list((t.path / "_tmp").glob("*"))


@pytest.mark.parametrize("forge", [_forge_hmac_line, _forge_signed_line])
def test_forged_line_is_refused_by_every_reader(tmp_path, forge):
    v = _vault(tmp_path)
    v.create_org("acme", "us")
    demo.generate(v, "acme", runs=3, seed=1, points_per_run=60)
    assert v.verify_org("acme", deep=True)["tables"]
    keys = v.org_keys("acme")
    t = v.store("acme").table("process/series")
    rows = t.read().num_rows
    forge(t, keys)

    data_root = v.settings.data_root
    (tmp_path / "data").symlink_to(data_root)
    for mode in ("read", "dataset", "verify"):
        _refused(run_reader(tmp_path, keys.reader(), org="acme", mode=mode, heads=False), "line")
    for deep in (False, True):
        with pytest.raises(IntegrityError, match="process/series: commit log line"):
            v.verify_org("acme", deep=deep)
    events = v.audit("acme").events(action="org.verify")
    assert events[0]["outcome"] == "error"
    # a fresh in-process reader too, and nothing of the forged run is ever returned
    with pytest.raises(IntegrityError):
        OrgTable(data_root, "acme", SERIES, OrgCrypto(keys)).read()
    assert rows > 0


def test_forged_log_for_an_empty_table_is_refused(tmp_path):
    reg = make_keys(tmp_path)
    st = store(tmp_path, reg)
    st.table("process/series").write(series(1, 10))
    empty = st.table("tool_state/readings")
    assert empty.read().num_rows == 0
    _forge_hmac_line(st.table("process/series"), reg.org_keys("a"))
    victim = OrgTable(tmp_path / "data", "a", SERIES, OrgCrypto(reg.org_keys("a")))
    with pytest.raises(IntegrityError, match="not signed"):
        victim.read()
    # a whole new log, made with the data key alone, for a table nobody wrote yet
    other = OrgStore(tmp_path / "data", "a", OrgCrypto(reg.org_keys("a"))).table("metrology/items")
    crypto = data_key_only(reg.org_keys("a"))
    line = legacy_line(crypto, other.spec.name, 1, "0" * 64, [], [], "acme-admin")
    other._log_path.parent.mkdir(parents=True)
    other._log_path.write_bytes(line)
    with pytest.raises(IntegrityError, match="line 1 is not signed"):
        other.read()


def test_signatures_survive_rotation_rewrite_compaction_and_gc(tmp_path):
    v = _vault(tmp_path)
    v.create_org("acme", "us")
    demo.generate(v, "acme", runs=3, seed=4, points_per_run=60)
    st = v.store("acme")
    t = st.table("process/series")
    t.write(series(3, 10, prefix="extra"))
    before = {x.spec.name: x.read().num_rows for x in st.tables()}
    old = v.org_keys("acme")
    v.rotate_data_key("acme", rewrite=True)
    new = v.org_keys("acme")
    assert new.signing[0] == 2 and set(new.verify) == {1, 2}
    st = v.store("acme")
    t = st.table("process/series")
    assert t.compact(min_rows=10**9) is not None
    assert t.gc() >= 0
    assert {x.spec.name: x.read().num_rows for x in st.tables()} == before
    v.verify_org("acme", deep=True)
    lines = [json.loads(x) for x in t._log_path.read_bytes().splitlines()]
    assert all("sig" in x and "mac" not in x for x in lines)
    assert lines[-1]["sv"] == 2
    # a writer still holding the retired signing key cannot append any more
    stale = OrgTable(
        t.root, "acme", SERIES, OrgCrypto(OrgKeys("acme", new.keys, new.verify, old.signing))
    )
    with pytest.raises(KeyUnavailable, match="rotated"):
        stale.write(series(1, 5, prefix="stale"))
    # and a line it signed by hand is refused (retired key)
    _forge_hmac_line(t, new)
    with pytest.raises(IntegrityError):
        OrgTable(t.root, "acme", SERIES, OrgCrypto(new.reader())).read()


def test_registry_keys_are_rewrapped_and_shredded(tmp_path):
    v = _vault(tmp_path)
    v.create_org("acme", "us")
    keys = v.org_keys("acme")
    new_kms = LocalKms(generate_root_key())
    v.rotate_root_key(new_kms)
    assert KeyRegistry(v.settings.registry_path, new_kms).org_keys("acme") == keys
    v.delete_org("acme", shred=True)
    db = sqlite3.connect(str(v.settings.registry_path))
    assert db.execute("SELECT COUNT(*) FROM org_keys WHERE org='acme'").fetchone()[0] == 0


# -- migration from HMAC-only logs --------------------------------------------------------------


def _legacy_deployment(tmp_path, key_text: str | None = None):
    """A deployment as it was before signing: no ``sign`` keys, HMAC-only logs, plaintext stats."""
    v = _vault(tmp_path, key_text)
    v.create_org("acme", "us")
    db = sqlite3.connect(str(v.settings.registry_path))
    db.execute("DELETE FROM org_keys WHERE purpose='sign'")
    db.commit()
    db.close()
    v = Vault(v.settings, kms=v.kms)
    keys = v.keys.org_keys("acme")
    assert not keys.verify and not keys.writer
    data = demo.build(runs=3, seed=5, points_per_run=60)
    crypto = OrgCrypto(keys)
    for name, table in data.tables().items():
        t = OrgTable(v.settings.data_root, "acme", TABLES[name], crypto)
        legacy_write(t, table)
        legacy_write(t, table.slice(0, 1))  # a second line: a chain, not a single line
    ctx_keys = OrgKeys("acme", dict([v.keys.key("acme", "context", 1)]))
    legacy_write(
        OrgTable(v.settings.context_root, "acme", CONTEXT, OrgCrypto(ctx_keys, purpose="context")),
        data.labels,
    )
    run_ids = data.runs.column("run_id").to_pylist()
    return v, data, run_ids


def _expected(data) -> dict:
    out = {}
    for name, table in data.tables().items():
        out[name] = table.num_rows + min(1, table.num_rows)
    return out


def test_migration_keeps_every_row_and_then_refuses_unsigned_lines(tmp_path):
    v, data, run_ids = _legacy_deployment(tmp_path)
    # before migration, the HMAC-only logs are what they were: readable, run ids in plaintext
    logs = sorted(v.settings.data_root.rglob("commits.jsonl"))
    assert logs and any(run_ids[0].encode() in p.read_bytes() for p in logs)

    result = v.migrate_org("acme", actor="admin")
    assert result["created_key"] is True
    assert set(result["sealed"]) >= {n for n, tb in data.tables().items() if tb.num_rows}
    assert CONTEXT.name in result["sealed"]
    assert v.migrate_org("acme") == {"created_key": False, "sealed": [], "failed": {}}
    keys = v.org_keys("acme")
    assert keys.writer
    st = v.store("acme")
    counts = {n: st.table(n).num_rows() for n in TABLES}
    assert counts == _expected(data)
    for n, tb in data.tables().items():
        assert st.table(n).read().num_rows >= tb.num_rows
    assert v.context("acme").get(actor="t").shape[0] == data.labels.num_rows
    v.verify_org("acme", deep=True)
    # the lines with plaintext statistics are gone; the checkpoint carries the history
    for p in v.settings.data_root.rglob("*"):
        if p.is_file():
            assert not any(r.encode() in p.read_bytes() for r in run_ids), p
    assert len(v.audit("acme").events(action="org.migrate")) == 1

    # after migration an unsigned line is refused, and a signed write works
    t = st.table("process/series")
    _forge_hmac_line(t, keys)
    with pytest.raises(IntegrityError, match="not signed"):
        OrgTable(t.root, "acme", SERIES, OrgCrypto(keys.reader())).read()


def test_first_use_migrates_automatically(tmp_path):
    v, data, run_ids = _legacy_deployment(tmp_path)
    t = v.store("acme").table("process/series")  # a writer's first use
    assert v.keys.org_keys("acme").writer
    t.write(series(1, 7, prefix="new"))
    assert t.num_rows() == _expected(data)["process/series"] + 7
    fresh = OrgTable(
        t.root,
        "acme",
        SERIES,
        OrgCrypto(v.org_keys("acme").reader()),
        SqliteHeadStore(v.settings.registry_path),
    )
    col = data.series.column("run_id").to_pylist()
    assert fresh.read(run_ids=[run_ids[0]]).num_rows == col.count(run_ids[0]) + (
        col[0] == run_ids[0]
    )


def test_legacy_reader_cannot_read_signed_logs(tmp_path):
    """A process given keys without verify keys never accepts a signed log unverified."""
    reg = make_keys(tmp_path)
    t = store(tmp_path, reg).table("process/series")
    t.write(series(1, 10))
    legacy = OrgTable(t.root, "a", SERIES, data_key_only(reg.org_keys("a")))
    with pytest.raises(KeyUnavailable, match="verify key"):
        legacy.read()


def test_hash_of_log_head_is_line_hash(tmp_path):
    reg = make_keys(tmp_path)
    t = store(tmp_path, reg).table("process/series")
    t.write(series(1, 10))
    seq, digest = t.head()
    assert (seq, digest) == last_line(t)[:2]
    assert digest == hashlib.sha256(t._log_path.read_bytes().splitlines()[-1]).hexdigest()


def test_org_migrate_command(tmp_path, monkeypatch):
    key = generate_root_key()
    v, data, run_ids = _legacy_deployment(tmp_path, key)
    monkeypatch.setenv("ATOMSCALE_HOME", str(v.settings.home))
    monkeypatch.setenv("ATOMSCALE_ROOT_KEY", key)
    for var in (
        "ATOMSCALE_ROOT_KEY_FILE",
        "ATOMSCALE_DATA_ROOT",
        "ATOMSCALE_CONTEXT_ROOT",
        "ATOMSCALE_REGION",
        "ATOMSCALE_KMS",
    ):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["org", "migrate", "acme"]) == 0
    assert v.keys.org_keys("acme").writer
    assert cli.main(["org", "migrate", "acme"]) == 0  # nothing left to do
    assert len(v.audit("acme").events(action="org.migrate")) == 1
    assert cli.main(["org", "verify", "acme", "--deep"]) == 0
    st = v.store("acme")
    assert {n: st.table(n).num_rows() for n in TABLES} == _expected(data)


def test_interrupted_scrub_is_finished_by_the_next_migration(tmp_path, monkeypatch):
    v, data, run_ids = _legacy_deployment(tmp_path)
    v.keys.ensure_signing_key("acme")
    t = OrgTable(v.settings.data_root, "acme", SERIES, OrgCrypto(v.keys.org_keys("acme")))

    def stop_after_checkpoint(self, state):
        self._write_checkpoint(state)
        raise OSError("killed")

    monkeypatch.setattr(OrgTable, "_scrub", stop_after_checkpoint)
    with pytest.raises(OSError):
        t.seal()
    monkeypatch.undo()
    assert run_ids[0].encode() in t._log_path.read_bytes()
    fresh = OrgTable(v.settings.data_root, "acme", SERIES, OrgCrypto(v.keys.org_keys("acme")))
    assert fresh.seal() is True
    assert not any(r.encode() in t._log_path.read_bytes() for r in run_ids)
    assert fresh.num_rows() == _expected(data)["process/series"]
    fresh.verify(deep=True)


def test_automatic_migration_leaves_a_bad_table_for_the_admin(tmp_path):
    """A table whose old log fails verification is not sealed on first use; the others are,
    reads of it are refused, and ``org migrate`` names it."""
    v, data, run_ids = _legacy_deployment(tmp_path)
    bad = v.settings.data_root / "acme" / "process" / "runs" / "_log" / "commits.jsonl"
    lines = bad.read_bytes().splitlines(keepends=True)
    bad.write_bytes(lines[0].replace(b'"op":"add"', b'"op":"adx"') + lines[1])
    st = v.store("acme")  # first use: migrates what it can
    assert st.table("process/series").num_rows() == _expected(data)["process/series"]
    with pytest.raises(IntegrityError, match="MAC"):
        st.table("process/runs").read()
    with pytest.raises(IntegrityError, match="MAC"):
        v.migrate_org("acme")
    events = v.audit("acme").events(action="org.migrate")
    assert [e["outcome"] for e in events] == ["error", "error"]
    assert events[1]["detail"]["failed"] == ["process/runs"]
