"""Shared builders for the vault tests (not a test module).

``make_keys`` gives a registry with orgs ``a`` and ``b``; ``series`` makes process time series with
a known number of rows per run; ``run_reader`` reads a table in a child process so that a crash of
the Parquet library on a tampered file counts as a failure rather than taking pytest down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from atomscale_lab.vault.crypto import OrgCrypto, OrgKeys
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.registry import KeyRegistry
from atomscale_lab.vault.store import OrgStore, SqliteHeadStore

READER = Path(__file__).parents[1] / "vault" / "_vault_read.py"
T0 = np.datetime64("2026-03-01T00:00:00", "us")


def make_keys(tmp: Path, orgs=("a", "b")) -> KeyRegistry:
    """A key registry with fresh keys for ``orgs`` under a new root key."""
    reg = KeyRegistry(tmp / "registry.sqlite", LocalKms(generate_root_key()))
    for org in orgs:
        reg.create_org(org)
    return reg


def store(tmp: Path, reg: KeyRegistry, org: str = "a", heads: bool = True, root=None) -> OrgStore:
    """The org's store under ``root`` (default ``tmp/data``; an ``S3Root`` for object storage),
    head store in the registry file when ``heads``."""
    hs = SqliteHeadStore(tmp / "registry.sqlite") if heads else None
    return OrgStore(tmp / "data" if root is None else root, org, OrgCrypto(reg.org_keys(org)), hs)


def wipe(root, org: str) -> None:
    """Remove everything of ``org`` under a data root (a folder or an ``s3://`` root)."""
    import shutil

    if isinstance(root, Path):
        shutil.rmtree(root / org, ignore_errors=True)
    else:
        from atomscale_lab.vault.store.objects import S3Medium

        S3Medium(root.child(org)).delete_all()


def series(
    n_runs: int, rows_per_run: int, *, prefix: str = "run", seed: int = 0, t_offset_s: int = 0
) -> pa.Table:
    """``n_runs × rows_per_run`` rows of process/series; run ``i`` starts at hour ``i``."""
    rng = np.random.default_rng(seed)
    n = n_runs * rows_per_run
    run_idx = np.repeat(np.arange(n_runs), rows_per_run)
    step = np.tile(np.arange(rows_per_run), n_runs)
    times = T0 + (run_idx * 3600 + step + t_offset_s).astype("timedelta64[s]")
    return pa.table(
        {
            "run_id": pa.array([f"{prefix}-{i:04d}" for i in run_idx]),
            "time": pa.array(times).cast(pa.timestamp("us", tz="UTC")),
            "channel": pa.array(np.where(step % 2 == 0, "substrate_T", "rheed_I")),
            "value": pa.array(rng.random(n)),
            "unit": pa.array(np.where(step % 2 == 0, "K", "a.u.")),
        }
    )


def run_reader(
    tmp: Path,
    keys: OrgKeys,
    org: str = "a",
    table: str = "process/series",
    mode: str = "read",
    heads: bool = True,
    timeout: float = 60,
    root=None,
    env: dict | None = None,
):
    """Read ``table`` of ``org`` in a child process; returns the CompletedProcess.

    The child prints ``rows: N`` and exits 0, or prints the error and exits with the error's
    ``exit_code`` (IntegrityError → 5, KeyUnavailable → 4). ``root`` defaults to ``tmp/data``
    (an ``s3://`` root needs the AWS variables in ``env``).
    """
    args = [
        sys.executable,
        str(READER),
        str(tmp / "data" if root is None else root),
        org,
        table,
        mode,
        str(tmp / "registry.sqlite") if heads else "-",
    ]
    return subprocess.run(
        args,
        input=json.dumps(keys.to_json()),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def use_deployment(monkeypatch, home, root_key: str) -> None:
    """Point this test's environment at the deployment ``home`` with ``root_key`` (and nothing
    else: no other root-key file, roots, region, server URL or org from the outer environment)."""
    monkeypatch.setenv("ATOMSCALE_HOME", str(home))
    monkeypatch.setenv("ATOMSCALE_ROOT_KEY", root_key)
    for var in (
        "ATOMSCALE_ROOT_KEY_FILE",
        "ATOMSCALE_DATA_ROOT",
        "ATOMSCALE_CONTEXT_ROOT",
        "ATOMSCALE_REGION",
        "ATOMSCALE_LAB_URL",
        "ATOMSCALE_ORG",
    ):
        monkeypatch.delenv(var, raising=False)
