"""Ingest with its state in SQLite (the embedded default) vs PostgreSQL, and the lease takeover.

- ``state_<backend>_<size>_rows_per_s``: batches accepted by :class:`IngestCore` in process
  (validation, encrypted WAL append with fsync, the batch claim and stream counters in the state
  database), then flushed into the encrypted store; small batches (state-bound) and large ones
  (store-bound). Both backends run the same code on the same data, interleaved, best of
  ``--repeat``; only ``ATOMSCALE_DATABASE_URL`` differs.
- ``lease_lock_released_s`` / ``lease_takeover_s``: two ingest service processes on one
  PostgreSQL; ``kill -9`` of the org's owner → its advisory lock gone from ``pg_locks`` / the
  other replica answers 201 to a stream open for the org (median of ``--kills``; the open itself
  writes the run record to the store).

PostgreSQL is a private cluster started here (as the tests do) on 127.0.0.1, stopped by pid.
``measure(...)`` returns the figures as a dict (for ``bench/scale.py``); ``main()`` prints
``name: value`` lines. Usage: ``python bench/ingest_state.py [--batches 400]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the repository: tests.support (PostgreSQL, service)

SIZES = {"small": 100, "large": 10_000}
"""Rows per batch of the two measurements."""


def _table(start: int, n: int) -> pa.Table:
    t0 = np.datetime64(datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None), "us")
    idx = np.arange(start, start + n)
    return pa.table(
        {
            "time": pa.array(t0 + idx * 1000, pa.timestamp("us", tz="UTC")),
            "channel": pa.array(np.array(["rheed", "temp", "rate"])[idx % 3]),
            "value": pa.array(np.sin(idx / 50.0) * 100),
        }
    )


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _deployment(tmp: Path, name: str, url: str | None):
    """A fresh vault (home ``tmp/name``) with org ``bench`` and an authenticated ingest key."""
    from atomscale_lab.ingest import apikeys
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.settings import Settings

    home = tmp / name
    home.mkdir()
    with _env(ATOMSCALE_HOME=str(home), ATOMSCALE_DATABASE_URL=url):
        vault = Vault(Settings.load(home))
        vault.create_org("bench", "us")
        store = apikeys.for_vault(vault)
        plain, _ = store.create("bench", "ingest:process", timedelta(days=1))
        key = store.authenticate(plain, client="bench")
    return home, vault, store, key, plain


def _rate(vault, key, url, batches: int, rows: int, tag: str) -> float:
    """Rows/s: ``batches`` batches of ``rows`` accepted, then flushed into the store."""
    from atomscale_lab.ingest.core import IngestCore

    data = [_table(b * rows, rows) for b in range(batches)]
    with _env(ATOMSCALE_DATABASE_URL=url):
        core = IngestCore(vault, flush_interval=3600)
        try:
            sid = core.open_stream(key, f"run-{tag}", "bench", "process")["id"]
            t0 = time.perf_counter()
            for b, t in enumerate(data):
                core.add_batch(key, sid, f"b{b}", t)
            core.flush()
            took = time.perf_counter() - t0
        finally:
            core.close()
    return batches * rows / took


def _advisory_pids(url: str) -> set[int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory'").fetchall()
    return {r[0] for r in rows}


def _takeover(home: Path, root_key: str, plain: str, url: str, kills: int) -> dict:
    """After ``kill -9`` of the owner: seconds until PostgreSQL has dropped its lock, and until
    the other replica accepts the org (a stream opened: 201)."""
    from tests.support.ingest import Service

    out: dict[str, list[float]] = {"released": [], "accepted": []}
    with _env(ATOMSCALE_DATABASE_URL=url):
        a = Service(home, root_key, [], home / "replica-a")
        b = Service(home, root_key, [], home / "replica-b")
        try:
            a.start()
            b.start()
            owner, other = a, b
            for i in range(kills):
                body = {"run_id": f"run-k{i}", "tool": "bench", "category": "process"}
                r = owner.request("POST", "/streams", plain, json=body)
                if r.status_code != 201:
                    raise RuntimeError(f"owner refused: {r.status_code} {r.text}")
                holders = _advisory_pids(url)
                owner.kill()
                t0 = time.perf_counter()
                while _advisory_pids(url) & holders:
                    if time.perf_counter() - t0 > 60:
                        raise RuntimeError("the lock outlived its owner by 60 s")
                    time.sleep(0.001)
                out["released"].append(time.perf_counter() - t0)
                while other.request("POST", "/streams", plain, json=body).status_code != 201:
                    if time.perf_counter() - t0 > 60:
                        raise RuntimeError("no takeover within 60 s")
                    time.sleep(0.005)
                out["accepted"].append(time.perf_counter() - t0)
                owner.start()
                owner, other = other, owner
        finally:
            for s in (a, b):
                s.stop()
                s.http.close()
    return out


def measure(batches: int = 400, repeat: int = 3, kills: int = 3) -> dict:
    """Run every measurement; returns ``{name: value}``."""
    import atomscale_lab.ingest  # noqa: F401 - registers the ingest migrations
    from atomscale_lab.vault.db import close_pools
    from atomscale_lab.vault.kms import generate_root_key
    from tests.support.postgres import PgCluster, upgraded

    tmp = Path(tempfile.mkdtemp(prefix="atomscale-bench-state-"))
    root_key = generate_root_key()
    cluster = PgCluster().start()
    # the tests' cluster runs without fsync; a fair comparison with SQLite (synchronous=FULL)
    # needs it on (a reload is enough for this setting)
    cluster.execute("ALTER SYSTEM SET fsync = on", "SELECT pg_reload_conf()")
    out: dict = {}
    try:
        with _env(ATOMSCALE_ROOT_KEY=root_key, ATOMSCALE_ROOT_KEY_FILE=None):
            url = upgraded(cluster.url(schema=cluster.new_schema("bench")))
            deps = {
                "sqlite": _deployment(tmp, "sqlite", None),
                "postgres": _deployment(tmp, "postgres", url),
            }
            urls = {"sqlite": None, "postgres": url}
            for size, rows in SIZES.items():
                n = batches if size == "small" else max(4, batches // 8)
                best = {b: 0.0 for b in deps}
                for r in range(repeat):
                    order = list(deps) if r % 2 == 0 else list(reversed(deps))
                    for b in order:
                        _, vault, _, key, _ = deps[b]
                        best[b] = max(best[b], _rate(vault, key, urls[b], n, rows, f"{size}{r}"))
                for b, v in best.items():
                    out[f"state_{b}_{size}_rows_per_s"] = round(v)
                out[f"state_{size}_batches"] = n
                out[f"state_{size}_pg_over_sqlite"] = round(best["postgres"] / best["sqlite"], 2)
            home, _, _, _, plain = deps["postgres"]
            times = _takeover(home, root_key, plain, url, kills)
            out["lease_lock_released_s"] = round(statistics.median(times["released"]), 4)
            out["lease_takeover_s"] = round(statistics.median(times["accepted"]), 3)
            out["lease_takeover_max_s"] = round(max(times["accepted"]), 3)
            out["held_equal"] = (
                "same IngestCore code, data, batch ids and flush; backends interleaved, best of "
                f"{repeat}; PostgreSQL on 127.0.0.1 with fsync on, SQLite synchronous=FULL"
            )
    finally:
        close_pools()
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    """Print the measurements as ``name: value`` lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=400, help="small batches per measurement")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kills", type=int, default=3)
    args = ap.parse_args(argv)
    for k, v in measure(args.batches, args.repeat, args.kills).items():
        print(f"{k}: {v:,}" if isinstance(v, int | float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
