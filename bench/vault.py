"""Cost of the encrypted vault against plaintext Parquet with the same layout.

Writes the same synthetic process data (default 10M rows × 16 columns, 1,000 runs) twice: once as
plaintext Parquet and once through ``store.OrgTable`` (Parquet modular encryption + commit log),
with the same conforming, sorting, bucketing, row groups and zstd. Then times, median of several
reps with the two sides interleaved:

- warm, in this process: ``scan`` (every row and column), ``projection`` (every row of two
  columns), ``one_run`` (every column of one run; different runs per rep, same runs on both
  sides). Both sides read from the same memory pool (the store's ``READ_POOL``) through dataset
  fragments whose footers were opened once and kept (the store caches its fragments; the
  plaintext side keeps its own). What the vault still does per read: a stat of its commit log,
  a stat of each file it reads (compared with the signature recorded when the file's
  fingerprint was checked), decryption of pages. Fingerprints and footers are not checked again.
- cold, ``one_run_cold_*``: each read in a fresh process (imports excluded from the time), after
  dropping the page cache (``/proc/sys/vm/drop_caches``, root only; the output says whether it
  was dropped). The vault's figure includes parsing and MAC-checking the whole commit log, the
  head check, the fingerprint of every file it reads, footer decryption and the key unwrap; the
  plaintext figure opens the same bucket's file.

The plaintext reads open the same files the vault picks (bucket of the run). Prints
``name: value`` lines, first what was held equal.

Usage: ``python bench/vault.py [--rows N] [--runs R] [--reps K] [--write-reps W] [--cold-reps C]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from atomscale_lab.schema import TS, TableSpec
from atomscale_lab.vault.crypto import OrgCrypto
from atomscale_lab.vault.kms import LocalKms, generate_root_key
from atomscale_lab.vault.registry import KeyRegistry
from atomscale_lab.vault.store import (
    READ_POOL,
    OrgTable,
    SqliteHeadStore,
    bucket_of,
    prepare,
    write_parquet,
)
from atomscale_lab.vault.store import files as store

BENCH = TableSpec(
    "process/bench_wide",
    pa.schema(
        [
            ("run_id", pa.string()),
            ("time", TS),
            ("channel", pa.string()),
            ("unit", pa.string()),
            ("substrate_t", pa.float64()),
            ("cell_t_ga", pa.float64()),
            ("cell_t_as", pa.float64()),
            ("pressure", pa.float64()),
            ("rheed_i", pa.float64()),
            ("rheed_period", pa.float64()),
            ("growth_rate", pa.float64()),
            ("setpoint", pa.float64()),
            ("shutter", pa.bool_()),
            ("step", pa.int32()),
            ("layer", pa.int16()),
            ("quality", pa.float32()),
        ]
    ),
    time_column="time",
    sort_by=("run_id", "channel", "time"),
)


def make_data(rows: int, runs: int, seed: int = 7, first_run: int = 0) -> pa.Table:
    """Synthetic growth runs: smooth temperatures, noisy RHEED, stepwise setpoints.

    ``first_run`` numbers the runs from there on, so a large table can be made in chunks.
    """
    rng = np.random.default_rng(seed)
    per = rows // runs
    rows = per * runs
    run = np.repeat(np.arange(first_run, first_run + runs, dtype=np.int32), per)
    k = np.tile(np.arange(per, dtype=np.int64), runs)
    t0 = np.datetime64("2026-01-01T00:00:00", "us") + run.astype("timedelta64[h]") * 6
    times = t0 + (k * 100_000).astype("timedelta64[us]")
    run_names = pa.array([f"run-{i:05d}" for i in range(first_run, first_run + runs)])
    channels = pa.array(["rheed", "thermo", "gauge", "cell"])
    units = pa.array(["a.u.", "K", "Torr", "K"])
    ch = (k % 4).astype(np.int32)
    phase = k / 50.0
    cols = {
        "run_id": pa.DictionaryArray.from_arrays(pa.array(run - first_run), run_names).cast(
            pa.string()
        ),
        "time": pa.array(times).cast(TS),
        "channel": pa.DictionaryArray.from_arrays(pa.array(ch), channels).cast(pa.string()),
        "unit": pa.DictionaryArray.from_arrays(pa.array(ch), units).cast(pa.string()),
        "substrate_t": np.round(850 + 0.001 * k + rng.normal(0, 0.05, rows), 2),
        "cell_t_ga": np.round(np.full(rows, 950.0) + (run % 7), 1),
        "cell_t_as": np.round(np.full(rows, 330.0) + (run % 3), 1),
        "pressure": np.round(1e-7 * (1 + 0.1 * np.sin(phase)), 12),
        "rheed_i": rng.random(rows),  # incompressible: the worst case for the ratio
        "rheed_period": np.round(2.0 + 0.01 * np.sin(phase / 10), 4),
        "growth_rate": np.round(0.5 + rng.normal(0, 0.01, rows), 3),
        "setpoint": np.floor(k / 1000) * 5.0 + 500,
        "shutter": (k // 500) % 2 == 0,
        "step": (k // 1000).astype(np.int32),
        "layer": (k // 5000).astype(np.int16),
        "quality": rng.random(rows).astype(np.float32),
    }
    return pa.table(cols, schema=BENCH.schema)


def write_plain(root: Path, data: pa.Table) -> list[Path]:
    """The same conform/sort/bucket/row-group/zstd layout as the vault, without encryption."""
    paths = []
    for bucket, part in prepare(BENCH, data):
        d = root / f"bucket={bucket:02d}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / "part-0.parquet"
        write_parquet(path, part, None)
        paths.append(path)
    return paths


def drop_page_cache() -> bool:
    """Write back and drop the kernel's page cache (root only); False if not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# Run in a fresh interpreter per cold read: imports happen before the clock starts.
COLD_CHILD = r"""
import json, sys, time
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from atomscale_lab.vault.crypto import OrgCrypto, OrgKeys
from atomscale_lab.vault.store import READ_POOL, SqliteHeadStore, OrgTable
sys.path.insert(0, sys.argv[1])
from vault import BENCH
side, root, heads, run, path = sys.argv[2:7]
keys = OrgKeys.from_json(json.loads(sys.stdin.read()))
t = time.perf_counter()
if side == "plain":  # the calls the store makes, without decryption and log checks
    fmt, fs = ds.ParquetFileFormat(), pafs.LocalFileSystem()
    frag = fmt.make_fragment(path, filesystem=fs)
    frag.ensure_complete_metadata()
    d = ds.FileSystemDataset([frag], BENCH.schema, fmt, fs)
    n = d.to_table(filter=ds.field("run_id").isin([run]), memory_pool=READ_POOL).num_rows
else:
    n = OrgTable(root, "bench", BENCH, OrgCrypto(keys), SqliteHeadStore(heads)).read(
        run_ids=[run]).num_rows
print(json.dumps({"s": time.perf_counter() - t, "rows": n}))
"""


def cold_read(side: str, table: OrgTable, heads_db: Path, run: str, path: str, keys) -> float:
    """Seconds of one read of ``run`` in a fresh process (see ``COLD_CHILD``)."""
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            COLD_CHILD,
            str(Path(__file__).parent),
            side,
            str(table.root),
            str(heads_db),
            run,
            path,
        ],
        input=json.dumps(keys.to_json()),
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(p.stdout)
    assert doc["rows"] > 0
    return doc["s"]


def plain_fragments(paths: list[Path]) -> dict[str, ds.Fragment]:
    """Plaintext fragments with their footers opened once and kept (as the store keeps its)."""
    fmt, fs = ds.ParquetFileFormat(), pafs.LocalFileSystem()
    frags = {}
    for p in paths:
        frag = fmt.make_fragment(str(p), filesystem=fs)
        frag.ensure_complete_metadata()
        frags[str(p)] = frag
    return frags


CPU = {}
"""Median CPU seconds (all threads) per measured pair name: robust when other jobs share the CPU."""


def ab(plain, vault, reps: int, name: str) -> tuple[float, float]:
    """Median seconds of ``plain()`` and ``vault()``, interleaved (order alternating per rep)
    after one warm-up call each, so that load from other processes hits both sides alike."""
    plain(), vault()
    tp, tv, cp, cv = [], [], [], []
    for i in range(reps):
        pair = ((plain, tp, cp), (vault, tv, cv))
        for fn, acc, cpu in pair if i % 2 == 0 else pair[::-1]:
            c = time.process_time()
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    CPU[name] = statistics.median(cv) / statistics.median(cp)
    return statistics.median(tp), statistics.median(tv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--write-reps", type=int, default=3)
    ap.add_argument(
        "--row-group",
        type=int,
        default=None,
        help="rows per row group on both sides (default: the store's)",
    )
    ap.add_argument(
        "--cold-reps",
        type=int,
        default=5,
        help="fresh-process reads per side for the cold one-run figure",
    )
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    args = ap.parse_args()

    if args.row_group:
        store.ROW_GROUP_ROWS = args.row_group
    work = Path(tempfile.mkdtemp(prefix="vault-bench-", dir=args.dir))
    try:
        data = make_data(args.rows, args.runs)
        reg = KeyRegistry(work / "registry.sqlite", LocalKms(generate_root_key()))
        reg.create_org("bench")
        crypto = OrgCrypto(reg.org_keys("bench"))

        # Writes alternate too; every rep writes into fresh folders, the last ones are read.
        wp, wv = [], []
        for i in range(args.write_reps):
            plain_root = work / f"plain{i}"
            heads = SqliteHeadStore(work / f"heads{i}.sqlite")
            table = OrgTable(work / f"data{i}", "bench", BENCH, crypto, heads)

            def plain(plain_root=plain_root, data=data):
                return write_plain(plain_root, data)

            def vault(table=table, data=data):
                return table.write(data, actor="bench")

            order = ((plain, wp), (vault, wv))
            for fn, acc in order if i % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                out = fn()
                acc.append(time.perf_counter() - t)
                if fn is plain:
                    plain_paths = out
                else:
                    commit = out
            if i:
                shutil.rmtree(work / f"plain{i - 1}")
                shutil.rmtree(work / f"data{i - 1}")
        write_plain_s, write_enc_s = statistics.median(wp), statistics.median(wv)
        assert commit.rows == data.num_rows
        del data

        fmt = ds.ParquetFileFormat()
        frags = plain_fragments(plain_paths)
        plain_ds = ds.FileSystemDataset(
            list(frags.values()), BENCH.schema, fmt, pafs.LocalFileSystem()
        )
        plain_by_bucket = {int(p.parent.name.split("=")[1]): str(p) for p in plain_paths}

        print(
            "held_equal: data, layout, row groups, zstd; memory pool (READ_POOL, "
            f"{READ_POOL.backend_name}) both sides; footers opened once and kept both sides "
            "(warm); fresh process + page cache dropped both sides (cold); sides interleaved"
        )
        assert plain_ds.count_rows() == table.read(columns=["step"]).num_rows
        scan_plain, scan_enc = ab(
            lambda: plain_ds.to_table(memory_pool=READ_POOL), table.read, args.reps, "scan"
        )
        cols = ["time", "rheed_i"]
        proj_plain, proj_enc = ab(
            lambda: plain_ds.to_table(columns=cols, memory_pool=READ_POOL),
            lambda: table.read(columns=cols),
            args.reps,
            "projection",
        )

        rng = np.random.default_rng(1)
        picks = [
            f"run-{i:05d}"
            for i in rng.choice(args.runs, size=max(args.reps * 4, 20), replace=False)
        ]
        one_plain, one_enc, files_opened, cpu_plain, cpu_enc = [], [], [], [], []
        for i, r in enumerate(picks):

            def plain(r=r):
                d = ds.FileSystemDataset(
                    [frags[plain_by_bucket[bucket_of(r)]]],
                    BENCH.schema,
                    fmt,
                    pafs.LocalFileSystem(),
                )
                return d.to_table(filter=ds.field("run_id").isin([r]), memory_pool=READ_POOL)

            def vault(r=r):
                return table.read(run_ids=[r])

            order = ((plain, one_plain, cpu_plain), (vault, one_enc, cpu_enc))
            for fn, acc, cpu in order if i % 2 == 0 else order[::-1]:
                c = time.process_time()
                t = time.perf_counter()
                out = fn()
                acc.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                assert out.num_rows > 0
            files_opened.append(len(table.last_read_files))
        CPU["one_run"] = statistics.median(cpu_enc) / statistics.median(cpu_plain)
        one_plain_s, one_enc_s = statistics.median(one_plain), statistics.median(one_enc)

        # Cold: a fresh process per read and the page cache dropped before each, interleaved.
        cold_plain, cold_enc, dropped = [], [], True
        cold_picks = picks[-max(args.cold_reps, 1) :]
        heads_db = work / f"heads{args.write_reps - 1}.sqlite"
        for i, r in enumerate(cold_picks):
            order = (("plain", cold_plain), ("vault", cold_enc))
            for side, acc in order if i % 2 == 0 else order[::-1]:
                dropped &= drop_page_cache()
                acc.append(
                    cold_read(
                        side,
                        table,
                        heads_db,
                        r,
                        plain_by_bucket[bucket_of(r)],
                        reg.org_keys("bench"),
                    )
                )
        cold_one_ms = statistics.median(cold_enc) * 1000
        cold_plain_ms = statistics.median(cold_plain) * 1000

        enc_bytes = sum(f["size"] for f in table.files())
        plain_bytes = sum(p.stat().st_size for p in plain_paths)
        lines = {
            "rows": commit.rows,
            "columns": len(BENCH.schema),
            "files": commit.files,
            "write_plain_s": f"{write_plain_s:.2f}",
            "write_vault_s": f"{write_enc_s:.2f}",
            "write_ratio": f"{write_enc_s / write_plain_s:.3f}",
            "scan_plain_s": f"{scan_plain:.3f}",
            "scan_vault_s": f"{scan_enc:.3f}",
            "scan_ratio": f"{scan_enc / scan_plain:.3f}",
            "projection_ratio": f"{proj_enc / proj_plain:.3f}",
            "one_run_plain_ms": f"{one_plain_s * 1000:.1f}",
            "one_run_ms": f"{one_enc_s * 1000:.1f}",
            "one_run_ratio": f"{one_enc_s / one_plain_s:.3f}",
            "one_run_files_opened": max(files_opened),
            "one_run_cold_plain_ms": f"{cold_plain_ms:.1f}",
            "one_run_cold_ms": f"{cold_one_ms:.1f}",
            "one_run_cold_ratio": f"{cold_one_ms / cold_plain_ms:.3f}",
            "one_run_cold_reps": len(cold_enc),
            "page_cache_dropped": "yes" if dropped else "no (not root)",
            "size_ratio": f"{enc_bytes / plain_bytes:.4f}",
            "row_group_rows": store.ROW_GROUP_ROWS,
        }
        lines.update({f"{k}_cpu_ratio": f"{v:.3f}" for k, v in CPU.items()})
        for k, v in lines.items():
            print(f"{k}: {v}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
