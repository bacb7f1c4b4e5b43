"""Fixtures of the JupyterLab extension suite.

- ``labext``: the ``labextension/`` folder; fails with a hint when its Node packages are missing.
- ``artifacts``: ``artifacts/labext/`` at the top of the repository (screenshots, reports).
- ``lab`` (module): a real JupyterLab started by ``atomscale-lab lab acme`` on 127.0.0.1 (free
  port, random token) in local single-user mode, with demo data in a temporary ATOMSCALE_HOME
  and user settings that set the panel's page size to ``PAGE_SIZE``; stopped by pid (its
  process group).
  Yields ``{url, token, home, log, settings_dir, page_size, max_points, runs}``.
- ``viewer_lab`` (module): the same, but through ``labdata.RoleAccess`` with the viewer role's
  permissions (``data:read`` only), for what a viewer may not see.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
LABEXT = ROOT / "labextension"
ORG = "acme"
RUNS = 40
PAGE_SIZE = 15
MAX_POINTS = 120


@pytest.fixture(scope="session")
def labext():
    """The extension's source folder, with its Node packages installed."""
    if not (LABEXT / "node_modules" / ".bin" / "vitest").exists():
        pytest.fail(
            "labextension/node_modules is missing: run `make setup` "
            "(scripts/setup.d/60-labextension.sh installs the Node packages)"
        )
    return LABEXT


@pytest.fixture(scope="session")
def artifacts():
    """Folder for screenshots and reports (gitignored)."""
    d = ROOT / "artifacts" / "labext"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _stop(proc: subprocess.Popen) -> None:
    # The server runs in its own process group (with the kernels it started): stop that group.
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def _write_settings(settings_dir: Path) -> None:
    def put(plugin: str, doc: dict) -> None:
        pkg, _, name = plugin.partition(":")
        f = settings_dir / pkg / f"{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(doc))

    put("atomscale-lab:plugin", {"pageSize": PAGE_SIZE, "maxPoints": MAX_POINTS})
    # No news or update checks from a test browser (there is no internet to ask anyway).
    put(
        "@jupyterlab/apputils-extension:notification",
        {"fetchNews": "false", "checkForUpdates": False},
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running ``jupyter lab`` serving org ``acme`` with demo data."""
    yield from _lab(tmp_path_factory)


@pytest.fixture(scope="module")
def viewer_lab(tmp_path_factory):
    """The same lab, but its user holds the viewer role's permissions (no ``context:join``)."""
    yield from _lab(tmp_path_factory, role="viewer")


def _lab(tmp_path_factory, role: str | None = None):
    from atomscale_lab.vault.kms import generate_root_key

    base = tmp_path_factory.mktemp("lab" if role is None else f"lab-{role}")
    home = base / "atomscale"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTER"))}
    env.update(
        {
            "ATOMSCALE_HOME": str(home),
            "ATOMSCALE_ROOT_KEY": generate_root_key(),
            "HOME": str(base),
            "JUPYTER_CONFIG_DIR": str(base / "jupyter-config"),
            "JUPYTER_DATA_DIR": str(base / "jupyter-data"),
            "JUPYTER_RUNTIME_DIR": str(base / "jupyter-runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(base / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(base / "lab-workspaces"),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    if role is not None:  # the tests' role access class: one role's permissions, real stores
        env["ATOMSCALE_TEST_ROLE"] = role
        env["PYTHONPATH"] = str(ROOT)  # the repository: tests.support.labdata
    bindir = Path(sys.executable).parent
    cli = str(bindir / "atomscale-lab")
    subprocess.run(
        [cli, "org", "create", ORG, "--region", "us"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        [cli, "demo-data", ORG, "--runs", str(RUNS), "--points", "300"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    _write_settings(base / "lab-settings")
    notebooks = base / "notebooks"
    notebooks.mkdir()

    port = free_port()
    token = secrets.token_hex(24)
    log_path = base / "lab.log"
    with open(log_path, "wb") as logf:
        # `atomscale-lab lab ORG` replaces itself with jupyter lab: the pid stays the server's.
        extra = [
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ]
        argv = [
            cli,
            "lab",
            ORG,
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-browser",
            "--allow-root",
            "--root-dir",
            str(notebooks),
        ] + [f"--jupyter-option={opt}" for opt in extra]
        if role is not None:
            # the same command line as `atomscale-lab lab`, with the role access class instead
            # of the owner's (a second access_class option would be refused, not override)
            from atomscale_lab.cli.lab import lab_command

            argv = [
                a
                if not a.startswith("--AtomscaleLab.access_class=")
                else "--AtomscaleLab.access_class=tests.support.labdata.RoleAccess"
                for a in lab_command(
                    ORG,
                    port=port,
                    ip="127.0.0.1",
                    no_browser=True,
                    root_dir=str(notebooks),
                    extra=[*extra, "--allow-root"],
                )
            ]
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=notebooks,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"jupyter lab exited ({proc.returncode}):\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            try:
                r = requests.get(
                    url + "atomscale/api/v1/status",
                    headers={"Authorization": f"token {token}"},
                    timeout=5,
                )
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    "jupyter lab did not answer within 90 s:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.5)
        yield {
            "url": url,
            "token": token,
            "home": home,
            "log": log_path,
            "settings_dir": base / "lab-settings",
            "page_size": PAGE_SIZE,
            "max_points": MAX_POINTS,
            "runs": RUNS,
        }
    finally:
        _stop(proc)


class Api:
    """The REST API of the lab fixture, for expected values."""

    def __init__(self, lab):
        self.base = lab["url"] + "atomscale/api/v1/"
        self.s = requests.Session()
        self.s.trust_env = False
        self.s.headers["Authorization"] = f"token {lab['token']}"

    def get(self, path, **params):
        """GET and parse JSON; fails on a non-200 answer."""
        r = self.s.get(self.base + path, params=params, timeout=30)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        return r.json()


@pytest.fixture(scope="module")
def api(lab):
    """A client of the lab's REST API."""
    return Api(lab)


@pytest.fixture(scope="module")
def viewer_api(viewer_lab):
    """A client of the viewer lab's REST API."""
    return Api(viewer_lab)
