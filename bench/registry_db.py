"""The deployment database, SQLite (embedded default) vs PostgreSQL, side by side: prints
``name: value`` lines.

- ``audit_append_per_s_{sqlite,postgres}``: ``AuditLog.record`` one after another (JSONL + fsync
  + SQLite head, vs one PostgreSQL transaction with the head), events per second;
- ``audit_append_4threads_per_s_{...}``: four threads recording at once (group commit);
- ``head_advance_ms_p50_{...}`` / ``_p99_``: ``DatabaseHeadStore.advance`` (compare-and-swap);
- ``key_lookup_ms_p50_{...}``: ``KeyRegistry.key`` (one row, unwrapped by the local root key);
- ``audit_page_ms_p50_{...}``: the newest 50 events of a 5,000-event log.

Held equal: one process, the same events and keys; PostgreSQL is a private cluster on
127.0.0.1 with fsync on (as in production), started here and stopped by process id; the SQLite
files are on the same disk. Needs ``make setup`` (and root, or a user that may run ``initdb``).
Run: ``.venv/bin/python bench/registry_db.py [--events N]``.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from atomscale_lab.vault.audit import AuditHeads, AuditLog  # noqa: E402
from atomscale_lab.vault.db import Database, close_pools  # noqa: E402
from atomscale_lab.vault.kms import LocalKms, generate_root_key  # noqa: E402
from atomscale_lab.vault.migrations import upgrade  # noqa: E402
from atomscale_lab.vault.registry import KeyRegistry  # noqa: E402
from atomscale_lab.vault.store import DatabaseHeadStore  # noqa: E402
from tests.support.postgres import PgCluster  # noqa: E402


def _log(target, tmp: Path, org: str) -> AuditLog:
    key = secrets.token_bytes(32)
    path = tmp / "audit" / f"{org}.jsonl"
    if isinstance(target, str):
        return AuditLog(path, org, key, heads=AuditHeads(target), db=Database(target))
    return AuditLog(path, org, key, heads=AuditHeads(target))


def _ms(samples: list[float], q: float) -> float:
    samples = sorted(samples)
    return 1000 * samples[min(len(samples) - 1, int(q * len(samples)))]


def measure(name: str, target, tmp: Path, events: int) -> None:
    """Print the figures of one backend."""
    lg = _log(target, tmp, "seq")
    t0 = time.perf_counter()
    for i in range(events):
        lg.record("ann", "data.read", table="process/series", i=i)
    print(f"audit_append_per_s_{name}: {events / (time.perf_counter() - t0):.0f}")

    lg = _log(target, tmp, "threads")
    per = events // 4

    def work(w):
        for i in range(per):
            lg.record(f"u{w}", "data.read", i=i)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"audit_append_4threads_per_s_{name}: {4 * per / (time.perf_counter() - t0):.0f}")
    assert lg.verify() == 4 * per

    store = DatabaseHeadStore(target)
    lat = []
    for seq in range(1, events + 1):
        t0 = time.perf_counter()
        store.advance("acme", "process/series@1", seq, secrets.token_hex(32))
        lat.append(time.perf_counter() - t0)
    print(f"head_advance_ms_p50_{name}: {_ms(lat, 0.5):.2f}")
    print(f"head_advance_ms_p99_{name}: {_ms(lat, 0.99):.2f}")

    reg = KeyRegistry(target, LocalKms(generate_root_key()))
    reg.create_org("acme")
    lat = []
    for _ in range(200):
        t0 = time.perf_counter()
        reg.key("acme", "data")
        lat.append(time.perf_counter() - t0)
    print(f"key_lookup_ms_p50_{name}: {_ms(lat, 0.5):.2f}")

    big = _log(target, tmp, "big")
    for i in range(5000 // 50):
        threads = [
            threading.Thread(target=big.record, args=("ann", "data.read"), kwargs={"i": i * 50 + j})
            for j in range(50)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lat = []
    for _ in range(50):
        t0 = time.perf_counter()
        page = big.events(limit=50)
        lat.append(time.perf_counter() - t0)
    assert len(page) == 50
    print(f"audit_page_ms_p50_{name}: {_ms(lat, 0.5):.2f}")


def main() -> None:
    """Run both backends and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sq = Path(tmp) / "sqlite"
        sq.mkdir()
        registry = sq / "registry.sqlite"
        upgrade(Database(registry))
        measure("sqlite", registry, sq, args.events)
        cluster = PgCluster().start(durable=True)
        try:
            url = cluster.url()
            upgrade(Database(url))
            pg = Path(tmp) / "pg"
            pg.mkdir()
            measure("postgres", url, pg, args.events)
        finally:
            close_pools()
            cluster.stop()


if __name__ == "__main__":
    main()
