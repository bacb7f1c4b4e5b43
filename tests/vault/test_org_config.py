"""The org configuration in the vault registry: validated, persistent, per org, never in the data
root."""

import pytest

from atomscale_lab import orgconfig
from atomscale_lab.errors import TooLarge, UnknownOrg, ValidationError
from atomscale_lab.vault.facade import Vault
from atomscale_lab.vault.settings import Settings


def test_configuration_persists_per_org_outside_the_data_root(vault, home):
    vault.create_org("acme", "us")
    vault.create_org("beta", "us")
    assert vault.org_config("acme") == {"config": orgconfig.defaults(), "updated": None}

    def roots():
        return {
            p: p.stat().st_mtime_ns
            for root in ("data", "context")
            for p in (home / root).rglob("*")
        }

    before = roots()
    stored = vault.set_org_config(
        "acme", {"sidebar_page_size": 20, "instrument_names": {"mbe-1": "MBE one"}}
    )
    assert stored["updated"] and stored["config"]["sidebar_page_size"] == 20
    vault.close()
    again = Vault(Settings.load(home))
    assert again.org_config("acme")["config"]["instrument_names"] == {"mbe-1": "MBE one"}
    assert again.org_config("beta")["config"] == orgconfig.defaults()
    assert roots() == before  # nothing in the data or context roots was written
    with pytest.raises(UnknownOrg):
        again.org_config("gamma")
    again.close()


def test_bad_configuration_is_refused_and_the_old_one_kept(vault):
    vault.create_org("acme", "us")
    vault.set_org_config("acme", {"sidebar_page_size": 20})
    with pytest.raises(ValidationError, match="sidebar_page_size"):
        vault.set_org_config("acme", {"sidebar_page_size": 9})
    with pytest.raises(ValidationError, match="colour"):
        vault.set_org_config("acme", {"colour": "blue"})
    with pytest.raises(TooLarge):
        vault.set_org_config(
            "acme",
            {"default_project": "x", "instrument_names": {f"i{n}": "y" * 80 for n in range(200)}},
        )
    assert vault.org_config("acme")["config"]["sidebar_page_size"] == 20


def test_merge_and_changed_keys():
    old = orgconfig.validate({"sidebar_page_size": 20, "default_project": "gaas-qw"})
    new = orgconfig.merge(old, {"default_project": None, "units": {"pressure": "Pa"}})
    assert new["sidebar_page_size"] == 20 and new["default_project"] is None
    assert new["units"] == {"temperature": "degC", "pressure": "Pa", "thickness": "nm"}
    assert orgconfig.changed_keys(old, new) == ["default_project", "units"]
