"""Benchmark of the JupyterLab data browser on a large org, in headless Chromium.

Builds a throw-away deployment (100k runs; series, tool state and metrology for 20 of them),
starts ``atomscale-lab lab`` on 127.0.0.1, drives ``labextension/ui-tests/bench.mjs`` and prints
its ``name: value`` lines: time to the first page, next-page and search latency as seen in the
page (goal: each well under 1 s; search includes the 300 ms typing delay; the list only ever
holds one page), time to a run's summary and plot.

Usage: ``python bench/labext.py [--runs 100000]``. Needs ``make setup`` (Node packages, Chromium).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: tests.support

from tests.support import labdata  # noqa: E402
from tests.support.nbserver import free_port, stop_server, wait_ready  # noqa: E402


def main() -> None:
    """Build the deployment, start JupyterLab, measure in the browser, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    args = ap.parse_args()

    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.kms import generate_root_key
    from atomscale_lab.vault.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="atomscale-labext-bench-"))
    home = tmp / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTER"))}
    env.update(
        {
            "ATOMSCALE_HOME": str(home),
            "ATOMSCALE_ROOT_KEY": generate_root_key(),
            "HOME": str(tmp),
            "JUPYTER_CONFIG_DIR": str(tmp / "cfg"),
            "JUPYTER_DATA_DIR": str(tmp / "data"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "rt"),
            "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
        }
    )
    os.environ.update({k: env[k] for k in ("ATOMSCALE_HOME", "ATOMSCALE_ROOT_KEY")})

    t0 = time.perf_counter()
    vault = Vault(Settings.load(home))
    vault.create_org("bench", "us")
    labdata.fill_org(vault, "bench", runs=args.runs, detail_runs=20, actor="bench")
    vault.close()
    print(f"setup_s: {time.perf_counter() - t0:.1f}")

    port, token = free_port(), secrets.token_hex(16)
    cmd = [
        str(Path(sys.executable).parent / "atomscale-lab"),
        "lab",
        "bench",
        "--port",
        str(port),
        "--no-browser",
        "--root-dir",
        str(tmp),
        f"--jupyter-option=--IdentityProvider.token={token}",
        "--jupyter-option=--LabApp.expose_app_in_browser=True",
        "--jupyter-option=--LabApp.extension_manager=readonly",
        "--jupyter-option=--ServerApp.port_retries=0",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(tmp / "server.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(proc, url, token, tmp / "server.log", timeout=120)
        # a search that matches about one run in ten thousand
        node_env = {
            "LAB_URL": url,
            "LAB_TOKEN": token,
            "SEARCH_Q": "0999",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp),
        }
        subprocess.run(
            ["node", "ui-tests/bench.mjs"],
            cwd=ROOT / "labextension",
            env=node_env,
            check=True,
            timeout=600,
        )
    finally:
        stop_server(proc)


if __name__ == "__main__":
    main()
