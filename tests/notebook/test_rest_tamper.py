"""A tampered data file is refused through the REST API with a clear error; the server lives on.

Run against a server subprocess: a corrupt encrypted file has crashed Arrow processes before.
"""

import os
from pathlib import Path

import pytest
import requests

from tests.support import labdata
from tests.support.nbserver import start_server, stop_server


@pytest.fixture
def tamper_server(tmp_path, monkeypatch):
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.kms import generate_root_key
    from atomscale_lab.vault.settings import Settings

    key = generate_root_key()
    home = tmp_path / "home"
    home.mkdir()
    with monkeypatch.context() as mp:
        mp.setenv("ATOMSCALE_ROOT_KEY", key)
        vault = Vault(Settings.load(home))
        vault.create_org("acme", "us")
        labdata.fill_org(vault, "acme", runs=6, points=60)
        vault.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTERHUB"))}
    env.update(
        {
            "ATOMSCALE_HOME": str(home),
            "ATOMSCALE_ROOT_KEY": key,
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
        }
    )
    proc, url, token = start_server(env, tmp_path, "acme", tmp_path / "server.log")
    try:
        yield {"url": url, "token": token, "home": home, "proc": proc}
    finally:
        stop_server(proc)


def test_flipped_byte_is_a_clear_500_and_the_server_survives(tamper_server):
    s = requests.Session()
    s.trust_env = False
    s.headers["Authorization"] = f"token {tamper_server['token']}"
    api = tamper_server["url"] + "atomscale/api/v1/"
    assert s.get(api + "runs/R-00001/process", timeout=30).status_code == 200
    files = sorted(
        Path(tamper_server["home"], "data", "acme", "process", "series").rglob("*.parquet")
    )
    assert files
    for f in files:  # flip one byte in the middle of every series file
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01
        f.write_bytes(bytes(data))
    r = s.get(api + "runs/R-00001/process", params={"format": "arrow"}, timeout=30)
    assert r.status_code == 500
    assert "tamper" in r.json()["message"] or "fingerprint" in r.json()["message"]
    r = s.get(api + "tables/process/series", timeout=30)
    assert r.status_code == 500
    assert tamper_server["proc"].poll() is None
    ok = s.get(api + "runs", params={"per_page": "2"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["total"] == 6  # other tables still served
