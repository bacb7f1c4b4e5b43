"""The Vault façade: org registry, info, key rotation, root-key rotation, crypto-shredding."""

import base64
import json

import pytest

from atomscale_lab.cli import demo
from atomscale_lab.errors import (
    KeyUnavailable,
    OrgExists,
    RootKeyError,
    UnknownOrg,
    ValidationError,
)
from atomscale_lab.schema import TABLES
from atomscale_lab.vault.facade import Vault
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.registry import KeyRegistry
from atomscale_lab.vault.settings import Settings


def settings(tmp_path, database_url=None):
    home = tmp_path / "home"
    return Settings(
        home=home,
        data_root=home / "data",
        context_root=home / "context",
        database_url=database_url,
    )


@pytest.fixture
def v(tmp_path, database):
    """A Vault with demo data, once with the SQLite registry and once on PostgreSQL."""
    url = database if isinstance(database, str) else None
    vault = Vault(settings(tmp_path, url), kms=LocalKms(generate_root_key()))
    vault.create_org("acme", "us")
    demo.generate(vault, "acme", runs=6, seed=2, points_per_run=120)
    return vault


def counts(vault, org="acme"):
    return {t.spec.name: t.read().num_rows for t in vault.store(org).tables()}


def key_forms(key: bytes):
    return [
        key.hex(),
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
    ]


def test_names_and_duplicates(tmp_path, v):
    for bad in ("A", "a", "1abc", "ab_c", "a" * 33, "-ab", "ab c", ""):
        with pytest.raises(ValidationError, match="invalid org name"):
            v.create_org(bad, "us")
    with pytest.raises(OrgExists):
        v.create_org("acme", "us")
    with pytest.raises(ValidationError, match="unknown region"):
        v.create_org("beta", "mars")
    v.create_org("b2-lab", "us")
    assert [o["name"] for o in v.orgs()] == ["acme", "b2-lab"]


def test_org_info_has_sizes_and_no_key_material(v):
    info = v.org_info("acme")
    assert info["region"] == "us"
    assert set(info["tables"]) == {*TABLES, "context/labels"}
    assert info["tables"]["process/runs"]["rows"] == 6
    assert all(t["bytes"] > 0 and t["files"] > 0 for t in info["tables"].values())
    assert info["keys"]["data"][0]["fingerprint"] == v.org_keys("acme").fingerprint(1)
    text = json.dumps(info)
    for purpose in ("data", "context", "audit"):
        _, key = v.keys.key("acme", purpose)
        for form in key_forms(key):
            assert form not in text
    with pytest.raises(UnknownOrg):
        v.org_info("nope")


def test_rotate_data_key_keeps_rows(v):
    before = counts(v)
    assert v.rotate_data_key("acme") == 2
    assert counts(v) == before
    # New writes use v2, old files stay under v1.
    v.store("acme").table("process/runs").write(
        demo.build(1, seed=99, points_per_run=60).runs, actor="t"
    )
    kvs = {f["kv"] for f in v.store("acme").table("process/runs").files()}
    assert kvs == {1, 2}
    seen = []
    assert v.rotate_data_key("acme", rewrite=True, progress=lambda *a: seen.append(a)) == 3
    for t in v.store("acme").tables():
        assert {f["kv"] for f in t.files()} <= {3}, t.spec.name
    after = counts(v)
    assert after["process/series"] == before["process/series"]
    assert after["process/runs"] == before["process/runs"] + 1
    assert any(a[0] == "process/series" and a[1] == a[2] for a in seen)
    events = v.audit("acme").events(limit=20)
    actions = [e["action"] for e in events]
    # each rotation adds a data-key and a signing-key version
    assert sorted(e["detail"]["purpose"] for e in events if e["action"] == "key.rotate") == [
        "data",
        "data",
        "sign",
        "sign",
    ]
    assert "key.rewrite" in actions
    assert v.audit("acme").verify() >= 5


def test_rotate_root_key(tmp_path, v):
    before = counts(v)
    new_key_text = generate_root_key()
    n = v.rotate_root_key(LocalKms(new_key_text))
    assert n >= 6  # acme and the deployment log: data, context, audit
    again = Vault(v.settings, kms=LocalKms(new_key_text))
    assert counts(again) == before
    assert again.audit("acme").events(limit=1)[0]["action"] == "key.rotate_root"
    stale = Vault(v.settings, kms=LocalKms(generate_root_key()))
    with pytest.raises(RootKeyError):
        stale.org_keys("acme")


def test_wrong_root_key_cannot_create_orgs(tmp_path, v):
    stale = Vault(v.settings, kms=LocalKms(generate_root_key()))
    with pytest.raises(RootKeyError):
        stale.create_org("beta", "us")
    assert [o["name"] for o in v.orgs()] == ["acme"]
    with pytest.raises(UnknownOrg):
        v.keys.versions("beta")


def test_delete_with_shred(tmp_path, v):
    blobs = [bytes(r[0]) for r in v._db.sql("SELECT wrapped FROM org_keys WHERE org='acme'")]
    assert len(blobs) == 4  # data, context, audit, sign
    data_dir = v.settings.data_root / "acme"
    assert any(data_dir.rglob("*.parquet"))
    v.delete_org("acme", shred=True, actor="admin")
    for call in (
        lambda: v.store("acme"),
        lambda: v.context("acme"),
        lambda: v.audit("acme"),
        lambda: v.org_info("acme"),
        lambda: v.org_keys("acme"),
    ):
        with pytest.raises(UnknownOrg, match="deleted"):
            call()
    reg = KeyRegistry(v.settings.database, v.kms)
    with pytest.raises(KeyUnavailable, match="destroyed"):
        reg.org_keys("acme")
    assert v._db.sql("SELECT COUNT(*) FROM org_keys WHERE org='acme'")[0][0] == 0
    # The wrapped keys are gone from the registry files themselves, not only from its tables
    # (PostgreSQL has no secure_delete: there the rows are deleted and vacuumed, see the docs).
    for path in v.settings.home.glob("registry.sqlite*"):
        raw = path.read_bytes()
        for blob in blobs:
            assert blob[-32:] not in raw, path.name
    assert not data_dir.exists()
    assert v.orgs() == []
    with pytest.raises(OrgExists, match="cannot be reused"):
        v.create_org("acme", "us")
    last = v.system_audit().events(limit=1)[0]
    assert last["action"] == "org.delete" and last["detail"] == {"org_name": "acme", "shred": True}
    assert v.system_audit().verify() >= 2


def test_delete_without_shred_keeps_keys(v):
    v.delete_org("acme", shred=False)
    with pytest.raises(UnknownOrg):
        v.store("acme")
    assert v.keys.versions("acme")["data"] == [1]


def test_interrupted_shred_can_be_completed(v):
    v.keys.shred("acme")  # as if a deletion stopped right after destroying the keys
    with pytest.raises(KeyUnavailable):
        v.store("acme")
    v.delete_org("acme", shred=True)
    assert v.orgs() == []
    assert not (v.settings.data_root / "acme").exists()
