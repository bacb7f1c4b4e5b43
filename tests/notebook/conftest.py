"""Fixtures of the notebook-experience suite.

- ``lab_data`` (session): an ATOMSCALE_HOME with org ``acme`` (30 runs with series, tool state,
  metrology and labels from ``labdata``) and org ``beta`` (3 runs), plus its root key.
- ``lab_env``: exports ``lab_data`` (home and root key) into the environment for one test.
- ``jp_server_config``: pytest-jupyter's in-process server with the extension on for ``acme`` and
  unauthenticated access refused.
- ``demo_server`` (session): a real ``jupyter server`` over the packaged demo data (org ``acme``,
  24 runs) plus one imported tool-log run without process data. Yields ``{url, token, home, dir}``.
- ``sparse_server`` (session): the same for org ``sparse``, whose only run is such a tool log.
- ``live_server`` (module): a real ``jupyter server`` subprocess on 127.0.0.1 with a token, serving
  ``acme``; stopped by pid. Yields ``{url, token, env, root_dir}``.

pytest-jupyter's fixtures and its coroutine-test hooks are imported here (not registered as a
plugin for the whole repository) so they apply to this folder only; pytest-asyncio is not needed.
"""

import os
import shutil
import subprocess

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403

from tests.support import labdata
from tests.support.nbserver import start_server, stop_server
from tests.support.vault import use_deployment

ORG = "acme"


@pytest.fixture(scope="session")
def lab_data(tmp_path_factory):
    """A deployment home with demo orgs; returns ``{home, root_key}``."""
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.kms import generate_root_key
    from atomscale_lab.vault.settings import Settings

    home = tmp_path_factory.mktemp("atomscale-home")
    key = generate_root_key()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATOMSCALE_ROOT_KEY", key)
        mp.delenv("ATOMSCALE_ROOT_KEY_FILE", raising=False)
        vault = Vault(Settings.load(home))
        vault.create_org(ORG, "us")
        labdata.fill_org(vault, ORG, runs=30)
        vault.create_org("beta", "us")
        labdata.fill_org(vault, "beta", runs=3, detail_runs=0)
        vault.close()
    return {"home": home, "root_key": key}


@pytest.fixture
def lab_env(lab_data, monkeypatch):
    """The demo home and root key in the environment of this test."""
    use_deployment(monkeypatch, lab_data["home"], lab_data["root_key"])
    return lab_data


@pytest.fixture
def jp_server_config(lab_env):
    """The extension enabled for ``acme``; anonymous requests refused."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"atomscale_lab": True},
            "allow_unauthenticated_access": False,
        },
        "AtomscaleLab": {"org": ORG, "scrub_root_key": False, "export_url": False},
    }


@pytest.fixture(scope="module")
def live_server(lab_data, tmp_path_factory):
    """A real jupyter server subprocess serving ``acme``."""
    root = tmp_path_factory.mktemp("lab-root")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTERHUB_"))}
    env.update(
        {
            "ATOMSCALE_HOME": str(lab_data["home"]),
            "ATOMSCALE_ROOT_KEY": lab_data["root_key"],
            "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
            "JUPYTER_CONFIG_DIR": str(root / ".config"),
            "JUPYTER_DATA_DIR": str(root / ".data"),
        }
    )
    proc, url, token = start_server(env, root, ORG, root / "server.log")
    try:
        yield {
            "url": url,
            "token": token,
            "root_dir": root,
            "proc": proc,
            "log": root / "server.log",
        }
    finally:
        stop_server(proc)
        shutil.rmtree(root / ".runtime", ignore_errors=True)


def _fresh_home(tmp_path_factory, name: str):
    """A new folder and an environment with its own home, root key and Jupyter folders (nothing
    of the test process's atomscale or hub settings)."""
    from atomscale_lab.vault.kms import generate_root_key

    base = tmp_path_factory.mktemp(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTERHUB"))}
    env.update(
        {
            "ATOMSCALE_HOME": str(base / "home"),
            "ATOMSCALE_ROOT_KEY": generate_root_key(),
            "JUPYTER_RUNTIME_DIR": str(base / "rt"),
            "JUPYTER_CONFIG_DIR": str(base / "cfg"),
            "JUPYTER_DATA_DIR": str(base / "data"),
        }
    )
    return base, env


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory, venv_bin):
    """A home with org acme holding the packaged demo data (24 runs), served by a jupyter
    server; also holds a run imported from a tool-state CSV (no process data)."""
    base, env = _fresh_home(tmp_path_factory, "demo")
    cli = str(venv_bin / "atomscale-lab")
    csv = base / "tool-log.csv"
    csv.write_text(
        "time,channel,value,setpoint,unit\n"
        "2026-03-01T10:00:00Z,chamber_pressure,2e-10,,Torr\n"
        "2026-03-01T10:01:00Z,chamber_pressure,3e-10,,Torr\n"
    )
    for cmd in (
        ["org", "create", "acme", "--region", "us"],
        ["demo-data", "acme", "--runs", "24"],
        [
            "ingest",
            "import",
            "acme",
            str(csv),
            "--category",
            "tool_state",
            "--run",
            "A-0000-toollog",
            "--tool",
            "MBE-1",
            "--project",
            "aurora",
        ],
    ):
        subprocess.run([cli, *cmd], env=env, check=True, capture_output=True, timeout=300)
    proc, url, token = start_server(env, base, "acme", base / "server.log")
    try:
        yield {"url": url, "token": token, "home": base / "home", "dir": base}
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def sparse_server(tmp_path_factory, venv_bin):
    """A jupyter server for org ``sparse``, whose only run was imported from a tool-state CSV (no
    process data, no metrology, no labels): the notebooks must run on it too."""
    base, env = _fresh_home(tmp_path_factory, "sparse")
    cli = str(venv_bin / "atomscale-lab")
    csv = base / "tool-log.csv"
    csv.write_text(
        "time,channel,value,setpoint,unit\n2026-03-01T10:00:00Z,chamber_pressure,2e-10,,Torr\n"
    )
    for cmd in (
        ["org", "create", "sparse", "--region", "us"],
        [
            "ingest",
            "import",
            "sparse",
            str(csv),
            "--category",
            "tool_state",
            "--run",
            "T-1",
            "--tool",
            "MBE-1",
        ],
    ):
        subprocess.run([cli, *cmd], env=env, check=True, capture_output=True, timeout=300)
    proc, url, token = start_server(env, base, "sparse", base / "server.log")
    try:
        yield {"url": url, "token": token, "home": base / "home", "dir": base}
    finally:
        stop_server(proc)
