"""Benchmark of writing from a notebook: ``Workspace.write_metrology`` and the org configuration.

Builds a throw-away deployment (``--runs`` runs with metrology), starts a real ``jupyter server``
with the extension on 127.0.0.1, and prints ``name: value`` lines:

- ``write_<n>_rows_p50_ms`` / ``_min_ms``: ``write_metrology`` of an n-row frame of derived
  results (validation, encrypted file, commit, audit event, metrology index refresh), measured at
  the client, over ``--repeat`` writes;
- ``config_get_ms`` / ``config_patch_ms``: ``Workspace.config()`` / ``set_config()``, mean of 20.

Usage: ``python bench/write.py [--runs 200] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: tests.support

from tests.support import labdata  # noqa: E402
from tests.support.nbserver import start_server, stop_server  # noqa: E402


def main() -> None:
    """Run the benchmark and print its figures."""
    from atomscale_lab.client.workspace import Workspace
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.kms import generate_root_key
    from atomscale_lab.vault.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        home = base / "home"
        home.mkdir()
        key = generate_root_key()
        os.environ["ATOMSCALE_ROOT_KEY"] = key
        vault = Vault(Settings.load(home))
        vault.create_org("acme", "us")
        labdata.fill_org(vault, "acme", runs=args.runs, points=60)
        vault.close()
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTERHUB_"))
        }
        env.update(
            {
                "ATOMSCALE_HOME": str(home),
                "ATOMSCALE_ROOT_KEY": key,
                "JUPYTER_RUNTIME_DIR": str(base / ".runtime"),
            }
        )
        proc, url, token = start_server(env, base, "acme", base / "server.log")
        try:
            ws = Workspace(url=url, token=token)
            for n in (1, 100, 10_000):
                times = []
                for _ in range(args.repeat):
                    frame = pd.DataFrame(
                        {
                            "technique": ["RHEED-fit"] * n,
                            "result_name": ["oscillation_period"] * n,
                            "result_value": np.arange(n, dtype=float),
                            "result_unit": ["s"] * n,
                        }
                    )
                    t0 = time.perf_counter()
                    ws.write_metrology(frame, run=labdata.run_id(5))
                    times.append(time.perf_counter() - t0)
                print(f"write_{n}_rows_p50_ms: {statistics.median(times) * 1000:.1f}")
                print(f"write_{n}_rows_min_ms: {min(times) * 1000:.1f}")
            t0 = time.perf_counter()
            for _ in range(20):
                ws.config()
            print(f"config_get_ms: {(time.perf_counter() - t0) / 20 * 1000:.1f}")
            t0 = time.perf_counter()
            for i in range(20):
                ws.set_config(sidebar_page_size=10 + i)
            print(f"config_patch_ms: {(time.perf_counter() - t0) / 20 * 1000:.1f}")
        finally:
            stop_server(proc)


if __name__ == "__main__":
    main()
