"""Data residency: storage roots declare a region; orgs of another region are refused."""

import json

import pytest

from atomscale_lab.errors import ConfigError, ResidencyError, UnknownOrg
from atomscale_lab.vault.facade import MARKER, Vault, read_marker
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.settings import Settings


def make(tmp_path, region="us", **kw):
    home = tmp_path / "home"
    s = Settings(
        home=home,
        data_root=kw.get("data_root", home / "data"),
        context_root=kw.get("context_root", home / "context"),
        region=region,
    )
    return Vault(s, kms=LocalKms(kw.get("key") or generate_root_key()))


def test_markers_written_on_first_use(tmp_path):
    v = make(tmp_path)
    v.create_org("acme", "us")
    assert read_marker(v.settings.data_root)["kind"] == "data"
    assert read_marker(v.settings.context_root) == {
        **read_marker(v.settings.context_root),
        "region": "us",
        "kind": "context",
    }


def test_other_region_refused(tmp_path):
    v = make(tmp_path)
    with pytest.raises(ResidencyError, match="cannot create org 'euro' in region 'eu'.*'us'"):
        v.create_org("euro", "eu")
    assert v.orgs() == []
    with pytest.raises(UnknownOrg):
        v.keys.versions("euro")
    assert not (v.settings.data_root / "euro").exists()
    denied = v.system_audit().events(action="org.create", limit=1)[0]
    assert denied["outcome"] == "denied" and denied["detail"]["org_name"] == "euro"


def test_eu_roots_take_eu_orgs_only(tmp_path):
    v = make(tmp_path, region="eu")
    assert v.create_org("euro", "eu")["region"] == "eu"
    with pytest.raises(ResidencyError):
        v.create_org("yank", "us")


def test_existing_marker_wins_over_settings(tmp_path):
    key = generate_root_key()
    make(tmp_path, region="us", key=key).create_org("acme", "us")
    # Same roots, but someone now claims they are in the EU: the roots' marker decides.
    v = make(tmp_path, region="eu", key=key)
    with pytest.raises(ResidencyError):
        v.create_org("euro", "eu")


def test_disagreeing_markers_refused(tmp_path):
    v = make(tmp_path)
    v.create_org("acme", "us")
    m = v.settings.context_root / MARKER
    m.write_text(json.dumps({"region": "eu", "kind": "context"}))
    with pytest.raises(ResidencyError, match="different regions"):
        v.create_org("beta", "us")
    with pytest.raises(ResidencyError):
        v.store("acme")


def test_moved_root_refuses_open(tmp_path):
    v = make(tmp_path)
    v.create_org("acme", "us")
    for root in (v.settings.data_root, v.settings.context_root):
        doc = read_marker(root)
        (root / MARKER).write_text(json.dumps({**doc, "region": "jp"}))
    with pytest.raises(ResidencyError, match="'acme' must stay in region 'us'"):
        v.store("acme")
    with pytest.raises(ResidencyError):
        v.context("acme")


def test_swapped_roots_refused(tmp_path):
    key = generate_root_key()
    v = make(tmp_path, key=key)
    v.create_org("acme", "us")
    home = tmp_path / "home"
    swapped = make(tmp_path, key=key, data_root=home / "context", context_root=home / "data")
    with pytest.raises(ConfigError, match="marked as a context root"):
        swapped.store("acme")


@pytest.mark.parametrize("ctx", ["data", "data/inner", "."])
def test_overlapping_roots_refused(tmp_path, ctx, monkeypatch):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    monkeypatch.setenv("ATOMSCALE_DATA_ROOT", str(home / "data"))
    monkeypatch.setenv(
        "ATOMSCALE_CONTEXT_ROOT", str((home / "data" / ctx).resolve() if ctx != "." else home)
    )
    with pytest.raises(ConfigError, match="must be separate"):
        Settings.load(home)
    s = Settings(home=home, data_root=home / "data", context_root=home / "data" / "c")
    with pytest.raises(ConfigError):
        Vault(s, kms=LocalKms(generate_root_key()))
