"""The root key in AWS KMS (``AwsKms``) against moto's KMS server.

moto checks the EncryptionContext (it is the AES-GCM associated data of its ciphertexts) and that
a ``KeyId`` given to Decrypt is the key that made the ciphertext. Its ``RotateKeyOnDemand`` only
records the rotation (the key material stays the same), so what is tested for rotation is that
every stored key is re-encrypted by ReEncrypt and stays readable.
"""

import sqlite3

import boto3
import pytest

from atomscale_lab.cli import demo
from atomscale_lab.cli.main import main
from atomscale_lab.errors import RootKeyError
from atomscale_lab.vault.facade import Vault
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.kms.aws import AwsKms
from atomscale_lab.vault.registry import KeyRegistry
from atomscale_lab.vault.settings import Settings


def new_key(alias=None):
    kms = boto3.client("kms")
    meta = kms.create_key(Description="atomscale-lab test")["KeyMetadata"]
    if alias:
        kms.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    return meta["Arn"]


def stored(home):
    db = sqlite3.connect(str(home / "registry.sqlite"))
    try:
        return db.execute(
            "SELECT org, purpose, version, wrapped, kms_key_id FROM org_keys "
            "ORDER BY org, purpose, version"
        ).fetchall()
    finally:
        db.close()


def rows(vault, org="acme"):
    return vault.store(org).table("process/runs").read().num_rows


def test_org_lifecycle_rotate_and_rewrap(home, aws_env, monkeypatch):
    import secrets

    alias = f"alias/atomscale-{secrets.token_hex(3)}"
    arn = new_key(alias)
    monkeypatch.setenv("ATOMSCALE_AWS_KMS_KEY_ID", "alias/missing")
    assert main(["kms", "init"]) == 2  # a key that does not exist: a configuration error
    monkeypatch.setenv("ATOMSCALE_AWS_KMS_KEY_ID", alias)
    assert main(["kms", "init"]) == 0
    assert main(["org", "create", "acme", "--region", "us"]) == 0
    v = Vault(Settings.load(home))
    assert v.kms.key_id == f"aws-kms:{arn}"
    v.store("acme").table("process/runs").write(
        demo.build(3, seed=1, points_per_run=60).runs, actor="t"
    )
    keys = {p: v.keys.key("acme", p)[1] for p in ("data", "context", "audit")}
    v.close()
    before = stored(home)
    raw = b"".join(p.read_bytes() for p in home.glob("registry.sqlite*"))
    assert not any(k in raw or k.hex().encode() in raw for k in keys.values())

    assert main(["kms", "rotate"]) == 0
    after = stored(home)
    assert len(after) == len(before) >= 6
    assert all(a[3] != b[3] for a, b in zip(after, before, strict=True))  # re-encrypted
    rotations = boto3.client("kms").list_key_rotations(KeyId=arn)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]
    again = Vault(Settings.load(home))
    assert rows(again) == 3
    assert {p: again.keys.key("acme", p)[1] for p in keys} == keys
    assert again.audit("acme").events(limit=1)[0]["action"] == "key.rotate_root"


def test_encryption_context_binds_org_and_purpose(tmp_path, aws_env):
    kms = AwsKms(boto3.client("kms"), new_key())
    reg = KeyRegistry(tmp_path / "registry.sqlite", kms)
    reg.create_org("acme")
    reg.create_org("beta")
    blob = reg._db.execute(
        "SELECT wrapped FROM org_keys WHERE org='acme' AND purpose='data'"
    ).fetchone()[0]
    assert len(kms.unwrap(blob, b"atomscale-lab/org-key/acme/data/v1")) == 32
    for aad in (b"atomscale-lab/org-key/beta/data/v1", b"atomscale-lab/org-key/acme/context/v1"):
        with pytest.raises(RootKeyError, match="not bound to this org and purpose"):
            kms.unwrap(blob, aad)
        with pytest.raises(RootKeyError):
            kms.rewrap(blob, aad)
    reg._db.execute("UPDATE org_keys SET wrapped=? WHERE org='beta' AND purpose='data'", (blob,))
    with pytest.raises(RootKeyError):
        reg.org_keys("beta")
    # The registry file is useless with a local root key instead of the KMS.
    reg.close()
    other = KeyRegistry(tmp_path / "registry.sqlite", LocalKms(generate_root_key()))
    with pytest.raises(RootKeyError):
        other.org_keys("acme")
    other.close()


def test_planted_key_of_another_kms_key_is_refused_and_keys_move(home, aws_env, monkeypatch):
    first, second = new_key(), new_key()
    monkeypatch.setenv("ATOMSCALE_AWS_KMS_KEY_ID", first)
    assert main(["org", "create", "acme", "--region", "us"]) == 0
    v = Vault(Settings.load(home))
    data = v.org_keys("acme").keys[1]
    # An attacker who can write the registry and use some other KMS key plants a key it knows.
    planted = AwsKms(boto3.client("kms"), second).wrap(
        b"\x01" * 32, b"atomscale-lab/org-key/acme/data/v1"
    )
    good = v.keys._db.execute(
        "SELECT wrapped FROM org_keys WHERE org='acme' AND purpose='data'"
    ).fetchone()[0]
    v.keys._db.execute(
        "UPDATE org_keys SET wrapped=? WHERE org='acme' AND purpose='data'", (planted,)
    )
    with pytest.raises(RootKeyError, match="does not use"):
        v.keys.org_keys("acme")
    v.keys._db.execute("UPDATE org_keys SET wrapped=? WHERE org='acme' AND purpose='data'", (good,))
    v.close()

    # Moving to the second key: the first is accepted as "previous" while re-wrapping.
    monkeypatch.setenv("ATOMSCALE_AWS_KMS_KEY_ID", second)
    monkeypatch.setenv("ATOMSCALE_AWS_KMS_PREVIOUS_KEY_IDS", first)
    assert main(["kms", "rewrap"]) == 0
    assert {r[4] for r in stored(home)} == {f"aws-kms:{second}"}
    monkeypatch.delenv("ATOMSCALE_AWS_KMS_PREVIOUS_KEY_IDS")
    boto3.client("kms").disable_key(KeyId=first.rsplit("/", 1)[1])
    assert Vault(Settings.load(home)).org_keys("acme").keys[1] == data
