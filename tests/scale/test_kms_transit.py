"""The root key in OpenBao transit (``VaultTransitKms``) against a real ``bao server -dev``."""

import base64
import json
import sqlite3

import hvac
import pytest

from atomscale_lab.cli import demo
from atomscale_lab.cli.main import main
from atomscale_lab.errors import ConfigError, RootKeyError
from atomscale_lab.vault.facade import Vault
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.kms.transit import VaultTransitKms
from atomscale_lab.vault.registry import KeyRegistry
from atomscale_lab.vault.settings import Settings


def rows(vault, org="acme"):
    return vault.store(org).table("process/runs").read().num_rows


def write_runs(vault, n, org="acme", seed=1):
    vault.store(org).table("process/runs").write(
        demo.build(n, seed=seed, points_per_run=60).runs, actor="t"
    )


def stored(home):
    db = sqlite3.connect(str(home / "registry.sqlite"))
    try:
        return db.execute(
            "SELECT org, purpose, version, wrapped, kms_key_id FROM org_keys "
            "ORDER BY org, purpose, version"
        ).fetchall()
    finally:
        db.close()


def forms(key: bytes):
    return [
        key,
        key.hex().encode(),
        base64.b64encode(key),
        base64.urlsafe_b64encode(key).rstrip(b"="),
    ]


def test_org_lifecycle_rotate_rewrap_and_retire(home, vault_env, capsys):
    assert main(["kms", "init"]) == 0
    assert main(["org", "create", "acme", "--region", "us"]) == 0
    v = Vault(Settings.load(home))
    assert isinstance(v.kms, VaultTransitKms) and v.kms.key_id.endswith(":v1")
    write_runs(v, 3)
    assert rows(v) == 3
    data_v1 = v.org_keys("acme").keys[1]
    v.close()

    assert main(["kms", "rotate"]) == 0
    blobs = stored(home)
    assert {r[4] for r in blobs} == {v.kms.key_id.replace(":v1", ":v2")}
    assert all(r[3].startswith(b"VT1:vault:v2:") for r in blobs)
    capsys.readouterr()
    assert main(["kms", "status", "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["key_id"].endswith(":v2")
    assert status["stored_keys"] == {status["key_id"]: len(blobs)}

    # Old versions can no longer decrypt: only a complete re-wrap keeps every key readable.
    assert main(["kms", "rotate", "--retire"]) == 0
    client = hvac.Client(url=vault_env[0], token=vault_env[1])
    key = client.secrets.transit.read_key(name=v.kms.key, mount_point="transit")["data"]
    assert key["latest_version"] == 3 and key["min_decryption_version"] == 3

    again = Vault(Settings.load(home))
    assert rows(again) == 3
    assert again.org_keys("acme").keys[1] == data_v1
    write_runs(again, 2, seed=2)
    assert rows(again) == 5
    actions = [e["action"] for e in again.audit("acme").events(limit=10)]
    assert actions.count("key.rotate_root") == 2
    assert again.audit("acme").verify() >= 3
    assert again.system_audit().verify() >= 3


def test_wrong_org_or_purpose_context_is_refused(tmp_path, vault_env):
    kms = VaultTransitKms.from_env(check=False)
    kms.ensure_key()
    reg = KeyRegistry(tmp_path / "registry.sqlite", kms)
    reg.create_org("acme")
    reg.create_org("beta")
    acme_data = reg._db.execute(
        "SELECT wrapped FROM org_keys WHERE org='acme' AND purpose='data'"
    ).fetchone()[0]
    good = b"atomscale-lab/org-key/acme/data/v1"
    assert len(kms.unwrap(acme_data, good)) == 32
    for aad in (
        b"atomscale-lab/org-key/beta/data/v1",
        b"atomscale-lab/org-key/acme/audit/v1",
        b"atomscale-lab/org-key/acme/data/v2",
    ):
        with pytest.raises(RootKeyError, match="not bound to this org and purpose"):
            kms.unwrap(acme_data, aad)
    # Planting acme's wrapped data key into beta's row does not hand beta acme's key.
    reg._db.execute(
        "UPDATE org_keys SET wrapped=? WHERE org='beta' AND purpose='data'", (acme_data,)
    )
    with pytest.raises(RootKeyError):
        reg.org_keys("beta")
    assert len(reg.org_keys("acme").keys[1]) == 32
    # A batch re-wrap that meets the planted row changes nothing (all or nothing).
    before = reg._db.execute("SELECT wrapped FROM org_keys ORDER BY org, purpose").fetchall()
    kms.rotate()
    with pytest.raises(RootKeyError, match="re-wrap every stored key"):
        reg.rewrap_in_kms()
    assert (
        reg._db.execute("SELECT wrapped FROM org_keys ORDER BY org, purpose").fetchall() == before
    )
    # A re-wrap binds through the same context: it refuses the wrong one as well.
    with pytest.raises(RootKeyError):
        kms.rewrap(acme_data, b"atomscale-lab/org-key/beta/data/v1")
    reg.close()


def test_registry_alone_holds_no_usable_key(home, vault_env):
    assert main(["kms", "init"]) == 0
    v = Vault(Settings.load(home))
    v.create_org("acme", "us")
    keys = [v.keys.key("acme", p)[1] for p in ("data", "context", "audit")]
    v.close()
    raw = b"".join(p.read_bytes() for p in home.glob("registry.sqlite*"))
    for key in keys:
        for form in forms(key):
            assert form not in raw
    # Neither a local root key nor a Vault token without rights on the key opens it.
    reg = KeyRegistry(home / "registry.sqlite", LocalKms(generate_root_key()))
    with pytest.raises(RootKeyError):
        reg.org_keys("acme")
    reg.close()
    client = hvac.Client(url=vault_env[0], token=vault_env[1])
    weak = client.auth.token.create(policies=["default"], ttl="5m")["auth"]["client_token"]
    kms = VaultTransitKms(
        hvac.Client(url=vault_env[0], token=weak), key=VaultTransitKms.from_env().key
    )
    reg = KeyRegistry(home / "registry.sqlite", kms)
    with pytest.raises(RootKeyError, match="refused"):
        reg.org_keys("acme")
    reg.close()
    # The transit key itself cannot be exported: it never reaches the deployment.
    with pytest.raises(hvac.exceptions.VaultError):
        client.secrets.transit.export_key(
            name=kms.key, key_type="encryption-key", mount_point="transit"
        )


def test_unsafe_transit_keys_are_refused(vault_env):
    client = hvac.Client(url=vault_env[0], token=vault_env[1])
    client.secrets.transit.create_key(name="plain", mount_point="transit")
    client.secrets.transit.create_key(
        name="exportable", derived=True, exportable=True, mount_point="transit"
    )
    with pytest.raises(ConfigError, match="not a derived key"):
        VaultTransitKms(client, key="plain").refresh()
    with pytest.raises(ConfigError, match="can be exported"):
        VaultTransitKms(client, key="exportable").refresh()
    with pytest.raises(ConfigError, match="no transit key"):
        VaultTransitKms(client, key="missing").refresh()


def test_migrate_from_local_root_key_to_transit(home, vault_env, monkeypatch):
    root = generate_root_key()
    monkeypatch.setenv("ATOMSCALE_ROOT_KEY", root)
    monkeypatch.delenv("ATOMSCALE_KMS")
    local = Vault(Settings.load(home))
    local.create_org("acme", "us")
    write_runs(local, 4)
    local.close()
    VaultTransitKms.from_env(check=False).ensure_key()
    assert main(["kms", "migrate", "--to", "atomscale_lab.vault.kms.transit:VaultTransitKms"]) == 0
    assert all(r[3].startswith(b"VT1:") for r in stored(home))
    # The old root key opens nothing any more; the transit key opens everything.
    with pytest.raises(RootKeyError):
        Vault(Settings.load(home), kms=LocalKms(root)).org_keys("acme")
    monkeypatch.setenv("ATOMSCALE_KMS", "atomscale_lab.vault.kms.transit:VaultTransitKms")
    monkeypatch.delenv("ATOMSCALE_ROOT_KEY")
    v = Vault(Settings.load(home))
    assert rows(v) == 4
    assert v.audit("acme").events(limit=1)[0]["action"] == "key.rotate_root"
    # root-key rotate would move the keys back under a local key: refused with ATOMSCALE_KMS.
    monkeypatch.setenv("ATOMSCALE_NEW_ROOT_KEY", generate_root_key())
    assert main(["root-key", "rotate"]) == 2
    assert all(r[3].startswith(b"VT1:") for r in stored(home))


def test_vault_down_is_a_clear_error(home, vault_env, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["kms", "init"]) == 0
    assert main(["org", "create", "acme", "--region", "us"]) == 0
    monkeypatch.setenv("VAULT_ADDR", f"http://127.0.0.1:{port}")
    with pytest.raises(RootKeyError, match="unavailable"):
        Vault(Settings.load(home)).org_keys("acme")
