"""One-run query time against the length of a table's commit log.

Builds one table whose log has N commits (default 1k, 10k, 100k) the way a streaming run makes
them: each commit adds one small file of a streaming run, and every ``--compact-every`` commits a
compaction replaces those files by one. The queried run has one real encrypted file written
first; the streamed files are listed in the log only (they are in other buckets, so a one-run
query never opens them — what is measured is the log). Then times ``OrgTable.read(run_ids=[run])``:

- ``cold``: a fresh reader (new ``OrgTable`` and ``OrgCrypto``) — what a data server does after a
  restart, or any process opening the table for the first time;
- ``warm``: a long-running reader after a writer (another ``OrgTable``) appended one more commit —
  what a data server does while an instrument streams;
- ``fresh``: the first one-run query of a new Python process (imports done, nothing read yet);
  the reader's keys reach it through a pipe.

Wall times spread widely on a shared machine; the ``*_cpu_ms`` figures (CPU time of the reading
process, all threads) are the steadier ones.

``--live N`` builds a table of N live files instead (N commits, no compaction): the size of the
checkpoint a fresh reader opens grows with it. Also prints the checkpoint's size in bytes.

Run with this tree's ``atomscale_lab`` it builds the log through the store's own append path
(signed lines, sealed statistics, checkpoints; fsync switched off while building only, to keep
100k commits affordable); ``--no-checkpoints`` sets ``CHECKPOINT_EVERY = 0``. Run with an older
tree on ``PYTHONPATH`` (one without ``CHECKPOINT_EVERY``) it writes that tree's HMAC-only lines in
bulk, for a before/after comparison. Prints ``name: value`` lines.

Usage: ``python bench/log.py [--commits 1000,10000,100000] [--live 3200] [--reps 5]
[--no-checkpoints]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from atomscale_lab.schema import SERIES
from atomscale_lab.vault.crypto import OrgCrypto
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.registry import KeyRegistry
from atomscale_lab.vault.store import OrgTable, SqliteHeadStore, bucket_of
from atomscale_lab.vault.store import log as store

SIGNED = hasattr(store, "CHECKPOINT_EVERY")
QUERY_RUN = "query-run-0001"
T0 = 1_780_000_000_000_000


def query_rows(n: int = 2000) -> pa.Table:
    """The queried run: ``n`` rows of process/series."""
    times = np.datetime64("2026-06-01T00:00:00", "us") + np.arange(n).astype("timedelta64[s]")
    return pa.table(
        {
            "run_id": pa.array([QUERY_RUN] * n),
            "time": pa.array(times).cast(pa.timestamp("us", tz="UTC")),
            "channel": pa.array(["rheed_I"] * n),
            "value": np.random.default_rng(1).random(n),
            "unit": pa.array(["a.u."] * n),
        }
    )


def stream_run() -> str:
    """A streaming run whose bucket differs from the queried run's."""
    i = 0
    while bucket_of(f"stream-{i:04d}") == bucket_of(QUERY_RUN):
        i += 1
    return f"stream-{i:04d}"


def entry(run: str, seq: int, kv: int, rows: int = 50) -> dict:
    """A listed file of ``rows`` rows of ``run`` (never opened by a one-run query)."""
    b = bucket_of(run)
    return {
        "path": f"bucket={b:02d}/part-{uuid.uuid4().hex}.parquet",
        "rows": rows,
        "size": 3000,
        "bucket": b,
        "tmin": T0 + seq * 500_000,
        "tmax": T0 + seq * 500_000 + 400_000,
        "fp": hashlib.sha256(str(seq).encode()).hexdigest(),
        "kv": kv,
        "run_ids": [run],
        "run_min": run,
        "run_max": run,
    }


def plan(commits: int, compact_every: int):
    """``(op, added, removed)`` of each commit after the first: streaming with compaction."""
    run, live, out = stream_run(), [], []
    for seq in range(2, commits + 1):
        if compact_every and len(live) >= compact_every:
            merged = entry(run, seq, 1, rows=50 * len(live))
            out.append(("replace", [merged], [e["path"] for e in live]))
            live = []
        else:
            e = entry(run, seq, 1)
            live.append(e)
            out.append(("add", [e], []))
    return out


def build_signed(table: OrgTable, steps) -> None:
    """Through the store's own append path (signed lines, checkpoints); fsync off meanwhile."""
    real = os.fsync
    os.fsync = lambda fd: None
    try:
        with table._locked():
            state = table._load()
            for op, added, removed in steps:
                state = table._append(state, op, "bench", added, removed)
    finally:
        os.fsync = real


def build_legacy(table: OrgTable, steps) -> None:
    """The older tree's HMAC-only lines, written in bulk (its append re-reads the whole log)."""
    state = table._load()
    seq, prev, kv = state.seq, state.digest, table.crypto.version
    kfp = table.crypto.fingerprint(kv)
    key = table.crypto.mac_key(f"commit-log/{table.spec.name}", kv)
    import hmac

    with open(table._log_path, "ab") as f:
        for op, added, removed in steps:
            seq += 1
            body = {
                "seq": seq,
                "prev": prev,
                "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
                "actor": "bench",
                "op": op,
                "added": added,
                "removed": removed,
                "key_version": kv,
                "kfp": kfp,
            }
            body["mac"] = hmac.new(key, store._canon(body), hashlib.sha256).hexdigest()
            line = store._canon(body)
            f.write(line + b"\n")
            prev = hashlib.sha256(line).hexdigest()


_FRESH = """
import pickle, sys, time
from pathlib import Path
from atomscale_lab.schema import SERIES
from atomscale_lab.vault.crypto import OrgCrypto
from atomscale_lab.vault.store import OrgTable, SqliteHeadStore
keys, root, heads, run = pickle.load(sys.stdin.buffer)
t, c = time.perf_counter(), time.process_time()
table = OrgTable(Path(root), "bench", SERIES, OrgCrypto(keys), SqliteHeadStore(Path(heads)))
n = table.read(run_ids=[run]).num_rows
print(f"{(time.perf_counter() - t) * 1000:.3f} {(time.process_time() - c) * 1000:.3f} {n}")
"""


def fresh_process(
    keys, root: Path, heads_db: Path, reps: int, expect: int
) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of the first one-run query in each of ``reps`` new processes."""
    out, cpu = [], []
    payload = pickle.dumps((keys, str(root), str(heads_db), QUERY_RUN))
    for _ in range(reps):
        got = subprocess.run(
            [sys.executable, "-c", _FRESH], input=payload, capture_output=True, check=True
        )
        ms, cpu_ms, n = got.stdout.split()
        assert int(n) == expect, (n, expect)
        out.append(float(ms) / 1000)
        cpu.append(float(cpu_ms) / 1000)
    return out, cpu


def _ckpt_bytes(table: OrgTable) -> int:
    path = getattr(table, "_ckpt_path", None)
    return path.stat().st_size if path is not None and path.exists() else 0


def measure(work: Path, reg: KeyRegistry, commits: int, reps: int, compact_every: int) -> dict:
    root = work / f"data-{commits}"
    heads_db = work / f"heads-{commits}.sqlite"
    keys = reg.org_keys("bench")
    # The writer keeps no head store: a head advance per commit would time SQLite's fsync.
    writer = OrgTable(root, "bench", SERIES, OrgCrypto(keys))
    expect = writer.write(query_rows()).rows
    steps = plan(commits, compact_every)
    t = time.perf_counter()
    (build_signed if SIGNED else build_legacy)(writer, steps)
    build_s = time.perf_counter() - t
    log_bytes = writer._log_path.stat().st_size

    cold, cold_cpu = [], []
    for _ in range(reps):
        store._HIGH_WATER.clear()
        t, c = time.perf_counter(), time.process_time()
        reader = OrgTable(
            root, "bench", SERIES, OrgCrypto(reg.org_keys("bench")), SqliteHeadStore(heads_db)
        )
        n = reader.read(run_ids=[QUERY_RUN]).num_rows
        cold.append(time.perf_counter() - t)
        cold_cpu.append(time.process_time() - c)
        assert n == expect, (n, expect)
    fresh, fresh_cpu = fresh_process(reg.org_keys("bench").reader(), root, heads_db, reps, expect)
    ckpt_bytes = _ckpt_bytes(writer)

    warm, warm_cpu = [], []
    reader.read(run_ids=[QUERY_RUN])
    run, seq = stream_run(), commits
    for _ in range(reps):
        seq += 1
        with writer._locked():
            st = writer._load()
            if SIGNED:
                writer._append(st, "add", "bench", [entry(run, seq, 1)], [])
            else:
                build_legacy(writer, [("add", [entry(run, seq, 1)], [])])
        t, c = time.perf_counter(), time.process_time()
        n = reader.read(run_ids=[QUERY_RUN]).num_rows
        warm.append(time.perf_counter() - t)
        warm_cpu.append(time.process_time() - c)
        assert n == expect
    shutil.rmtree(root, ignore_errors=True)
    return {
        "build_s": f"{build_s:.1f}",
        "log_mb": f"{log_bytes / 1e6:.1f}",
        "cold_ms": f"{statistics.median(cold) * 1000:.1f}",
        "warm_ms": f"{statistics.median(warm) * 1000:.1f}",
        "fresh_ms": f"{statistics.median(fresh) * 1000:.1f}",
        "cold_cpu_ms": f"{statistics.median(cold_cpu) * 1000:.1f}",
        "warm_cpu_ms": f"{statistics.median(warm_cpu) * 1000:.1f}",
        "fresh_cpu_ms": f"{statistics.median(fresh_cpu) * 1000:.1f}",
        "cold_min_max_ms": f"{min(cold) * 1000:.1f} / {max(cold) * 1000:.1f}",
        "warm_min_max_ms": f"{min(warm) * 1000:.1f} / {max(warm) * 1000:.1f}",
        "fresh_min_max_ms": f"{min(fresh) * 1000:.1f} / {max(fresh) * 1000:.1f}",
        "ckpt_bytes": str(ckpt_bytes),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", default="1000,10000,100000")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--compact-every",
        type=int,
        default=1000,
        help="commits between compactions of the streamed files (0: never)",
    )
    ap.add_argument(
        "--live",
        default="",
        help="also: tables of this many live files (commits without compaction), e.g. 3200",
    )
    ap.add_argument("--no-checkpoints", action="store_true")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    args = ap.parse_args()
    if args.no_checkpoints:
        if not SIGNED:
            raise SystemExit("--no-checkpoints needs a tree with checkpoints")
        store.CHECKPOINT_EVERY = 0
    mode = (
        (
            "signed, no checkpoints"
            if args.no_checkpoints
            else f"signed, checkpoint every {store.CHECKPOINT_EVERY}"
        )
        if SIGNED
        else "hmac-only (old)"
    )
    print(f"log_format: {mode}")
    work = Path(tempfile.mkdtemp(prefix="log-bench-", dir=args.dir))
    try:
        reg = KeyRegistry(work / "registry.sqlite", LocalKms(generate_root_key()))
        reg.create_org("bench")
        for n in (int(x) for x in args.commits.split(",") if x):
            for k, v in measure(work, reg, n, args.reps, args.compact_every).items():
                print(f"commits_{n}_{k}: {v}", flush=True)
        for n in (int(x) for x in args.live.split(",") if x):
            for k, v in measure(work, reg, n, args.reps, 0).items():
                print(f"live_{n}_{k}: {v}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
