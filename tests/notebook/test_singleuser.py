"""`atomscale-lab lab ORG`: JupyterLab for one org, token auth, root key kept from kernels."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from atomscale_lab.cli.lab import lab_command
from tests.support.nbserver import free_port, stop_server


def test_lab_command_line():
    cmd = lab_command("acme", port=9999, no_browser=True, extra=["--allow-root"])
    assert cmd[1:3] == ["-m", "jupyterlab"]
    assert "--AtomscaleLab.org=acme" in cmd and "--no-browser" in cmd
    assert "--ServerApp.jpserver_extensions={'atomscale_lab': True}" in cmd
    assert cmd[-1] == "--allow-root"
    assert lab_command("acme", app="server")[2] == "jupyter_server"


def test_lab_refuses_unknown_org_and_missing_root_key(lab_data, venv_bin, tmp_path):
    env = {**os.environ, "ATOMSCALE_HOME": str(lab_data["home"])}
    env.pop("ATOMSCALE_ROOT_KEY", None)
    env.pop("ATOMSCALE_ROOT_KEY_FILE", None)
    r = subprocess.run(
        [str(venv_bin / "atomscale-lab"), "lab", "nope", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3 and "unknown org 'nope'" in r.stderr
    r = subprocess.run(
        [str(venv_bin / "atomscale-lab"), "lab", "acme", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "ATOMSCALE_ROOT_KEY" in r.stderr
    r = subprocess.run(
        [str(venv_bin / "atomscale-lab"), "lab", "acme", "--port", "0", "--dry-run"],
        env={**env, "ATOMSCALE_ROOT_KEY": lab_data["root_key"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "--port" in r.stderr


def test_lab_serves_the_org_with_token_auth(lab_data, venv_bin, tmp_path):
    port, token = free_port(), "t" + os.urandom(12).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTERHUB"))}
    env.update(
        {
            "ATOMSCALE_HOME": str(lab_data["home"]),
            "ATOMSCALE_ROOT_KEY": lab_data["root_key"],
            "JUPYTER_TOKEN": token,
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
        }
    )
    extra = ["--allow-root"] if os.geteuid() == 0 else []
    cmd = [
        str(venv_bin / "atomscale-lab"),
        "lab",
        "acme",
        "--port",
        str(port),
        "--no-browser",
        "--root-dir",
        str(tmp_path),
        *extra,
    ]
    with open(tmp_path / "lab.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline, r = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = requests.get(
                    base + "atomscale/api/v1/status",
                    headers={"Authorization": f"token {token}"},
                    timeout=2,
                )
                break
            except requests.ConnectionError:
                time.sleep(0.3)
        assert r is not None and r.status_code == 200, (tmp_path / "lab.log").read_text()[-2000:]
        assert r.json()["org"] == "acme" and r.json()["role"] == "org-admin"
        anon = requests.get(base + "atomscale/api/v1/runs", timeout=5)
        assert anon.status_code == 403
        lab = requests.get(base + "lab", params={"token": token}, timeout=10)
        assert lab.status_code == 200 and "JupyterLab" in lab.text
    finally:
        stop_server(proc)


@pytest.fixture
def jp_server_config(lab_env):
    return {
        "ServerApp": {
            "jpserver_extensions": {"atomscale_lab": True},
            "allow_unauthenticated_access": False,
        },
        "AtomscaleLab": {"org": "acme"},
    }


def _environ_of(pid: int) -> dict[str, str]:
    """The environment a process was started with (as the kernel sees it)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


async def test_root_key_is_removed_from_the_environment_kernels_inherit(
    jp_fetch, jp_serverapp, lab_env
):
    r = await jp_fetch("atomscale", "api", "v1", "status")
    assert r.code == 200
    # A real kernel started by the server, its environment read from /proc.
    r = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
    kid = json.loads(r.body)["id"]
    try:
        km = jp_serverapp.kernel_manager.get_kernel(kid)
        env = _environ_of(km.provisioner.pid)
        # Only variable names in the assertions: a failure must not print the key.
        assert not {"ATOMSCALE_ROOT_KEY", "ATOMSCALE_ROOT_KEY_FILE"} & set(env)
        assert [k for k, v in env.items() if lab_env["root_key"] in v] == []
        assert env["ATOMSCALE_LAB_URL"].startswith("http://")
        assert env["ATOMSCALE_HOME"] == str(lab_env["home"])  # it did inherit the server's env
    finally:
        await jp_fetch("api", "kernels", kid, method="DELETE")
