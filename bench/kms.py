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
from tests.support.procs import bao_server, moto_server  # noqa: E402


@contextmanager
def transit_client(tmp: Path):
    """An OpenBao dev server with transit; yields an authenticated hvac client."""
    import hvac

    with bao_server(tmp) as (addr, token):
        yield hvac.Client(url=addr, token=token)


@contextmanager
def kms_client(tmp: Path):
    """moto's server; yields a boto3 KMS client."""
    import boto3

    with moto_server(tmp) as url:
        yield boto3.client(
            "kms",
            endpoint_url=url,
            region_name="eu-central-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def measure(name: str, kms, home: Path, orgs: int, reps: int) -> None:
    """Create ``orgs`` orgs, time unwraps and one rotate + re-wrap; print the figures."""
    vault = Vault(
        Settings(home=home, data_root=home / "data", context_root=home / "context"), kms=kms
    )
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
    print(f"{name}.rotate_rewrap_s: {rotate:.3f} ({n} keys, {rotate / n * 1e3:.2f} ms per key)")


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
        with transit_client(tmp) as client:
            kms = VaultTransitKms(client, key="bench")
            kms.ensure_key()
            measure("transit", kms, tmp / "transit", a.orgs, a.reps)
        with kms_client(tmp) as client:
            arn = client.create_key()["KeyMetadata"]["Arn"]
            measure("aws_moto", AwsKms(client, arn), tmp / "aws", a.orgs, a.reps)


if __name__ == "__main__":
    main()
