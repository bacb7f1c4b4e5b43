"""Scale-out benchmarks: the store at 1M-100M rows, a long commit log, S3, ingest state.

Each case prints rows of one table at the end (min / median / max over the repetitions of the
queries; data generation is never repeated):

- ``local``: for each ``--rows`` size, one table written in chunks of ``--chunk-rows`` rows through
  ``OrgTable.write`` (the store's public write path: conform, sort, bucket, Parquet modular
  encryption, signed commit log, head store) and, from the same chunks, plaintext twins of its
  files (``files.prepare`` + ``files.write_parquet``: the same conforming, sorting, buckets, row
  groups and zstd, no encryption). Synthetic process data of ``bench/vault.py`` (16 columns,
  ``RUN_ROWS`` rows per run, so every size queries runs of the same length). Then, the two sides
  interleaved (order alternating), both reading through one memory pool (the store's
  ``READ_POOL``) from dataset fragments whose footers were opened once and kept:

  - ``scan``: every row and column of the table streamed in record batches and dropped
    (``OrgTable.dataset().to_batches()`` vs the same call on a dataset of the plaintext twins);
    nothing is held, so 100M rows fit in memory;
  - ``one_run``: every column of one run (``OrgTable.read(run_ids=[r])``: the store's log
    lookup, its checks of the file, decryption) vs the run's plaintext twin file read with the
    same filter; different runs per repetition, the same runs on both sides; each result is
    checked to hold exactly the run's rows, and both sides to be equal; apart, the store's
    file selection from its log (``select_files``), the part that could grow with the table;
  - ``one_run_cold``: the same in a fresh process (``bench/vault.py``'s ``cold_read``; imports
    excluded): the store parses and checks its commit log (or its checkpoint), checks the file and
    unwraps the key. The page cache is dropped before each read only with ``--drop-caches``.

- ``log``: ``bench/log.py``'s one-run query after ``--commits`` commits to one table, cold (fresh
  reader) and warm (a writer appended one more commit).
- ``s3``: the ``local`` case with both sides in an S3 bucket of a moto server on 127.0.0.1
  (``tests/support/s3.py``; objects in the server's memory), at ``--s3-rows``. Skipped with a note
  where this tree has no S3 support.
- ``ingest``: ingest rows/s with SQLite state vs PostgreSQL state (``bench/ingest_state.py``'s
  ``measure``). Skipped with a note where this tree has no such benchmark.

Every table lives in a temp dir (``--dir``) deleted at the end; nothing is written into the
repository. ``--quick`` runs every case small (a smoke check of the benchmark itself).

Defaults: ``--rows 1e6,1e7``, ``--s3-rows 1e7``, ``--commits 1e5``; the 100M-row figure is
``--rows 1e6,1e7,1e8`` (≈ 5 GB of temp files, ≈ 16 min here). ``--only`` may be repeated.

Usage: ``python bench/scale.py [--rows 1e6,1e7] [--s3-rows 1e7] [--commits 1e5] [--quick]
[--only local|s3|log|ingest] [--json FILE]``
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository: tests.support

import log as log_bench  # noqa: E402  (bench/log.py)
import vault as vault_bench  # noqa: E402  (bench/vault.py)
from vault import BENCH, make_data  # noqa: E402

from atomscale_lab.vault.crypto import OrgCrypto  # noqa: E402
from atomscale_lab.vault.kms import LocalKms, generate_root_key  # noqa: E402
from atomscale_lab.vault.registry import KeyRegistry  # noqa: E402
from atomscale_lab.vault.store import (  # noqa: E402
    COMPRESSION,
    READ_POOL,
    OrgTable,
    SqliteHeadStore,
    bucket_of,
    prepare,
    write_parquet,
)
from atomscale_lab.vault.store.files import row_group_rows  # noqa: E402

RUN_ROWS = 10_000
"""Rows per run at every size (1,000 runs at 10M rows, as in bench/vault.py)."""
ORG = "bench"  # bench/vault.py's cold reader opens this org


@dataclass
class Result:
    """One line of the output table: a measure of both sides (seconds per repetition)."""

    case: str
    rows: int
    measure: str
    plain: list[float] = field(default_factory=list)
    enc: list[float] = field(default_factory=list)
    note: str = ""
    cpu_plain: list[float] = field(default_factory=list)
    cpu_enc: list[float] = field(default_factory=list)
    """CPU seconds of this process (all threads) per repetition: steadier than wall time when
    other jobs share the machine."""


RESULTS: list[Result] = []
FACTS: list[tuple[str, str]] = []
"""Other figures: ``(name, value)``."""
CHECKS: dict[str, dict[str, list]] = {}
"""What the queries returned, per ``case/rows/measure``: row counts of each side and whether
both sides were equal (for ``--json`` and the smoke test)."""


def checked(key: str, **values) -> None:
    """Append one repetition's outcome to ``CHECKS[key]``."""
    for k, v in values.items():
        CHECKS.setdefault(key, {}).setdefault(k, []).append(v)


def fact(name: str, value) -> None:
    """Record and print one figure."""
    FACTS.append((name, str(value)))
    print(f"{name}: {value}", flush=True)


def mmm(xs: list[float], scale: float = 1000.0) -> str:
    """``min / median / max`` of seconds, in ms (``scale``)."""
    if not xs:
        return "—"
    med = statistics.median(xs) * scale
    d = 0 if med >= 100 else 1 if med >= 1 else 2
    return " / ".join(f"{x * scale:.{d}f}" for x in (min(xs), statistics.median(xs), max(xs)))


# -- one table, twice -------------------------------------------------------------------------


def _write_plain(fs: pafs.FileSystem, path: str, part) -> None:
    """A plaintext twin: the store's own writer locally (incl. fsync), the same options on S3."""
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_parquet(Path(path), part, None)
        return
    with pq.ParquetWriter(
        path, part.schema, filesystem=fs, compression=COMPRESSION, write_statistics=True
    ) as w:
        w.write_table(part, row_group_size=row_group_rows(part))


class Twins:
    """The same rows twice: an encrypted ``OrgTable`` and plaintext twins of its files."""

    def __init__(self, table: OrgTable, fs: pafs.FileSystem, plain_base: str):
        self.table = table
        self.fs = fs
        self.plain_base = plain_base.rstrip("/")
        self.fmt = ds.ParquetFileFormat()
        self.plain_of_run: dict[str, str] = {}
        self.frags: dict[str, ds.Fragment] = {}
        self.rows = 0
        self.runs = 0
        self.write_s = {"plain": 0.0, "enc": 0.0}

    def build(self, rows: int, chunk_rows: int) -> None:
        """Write ``rows`` rows in chunks (one commit per chunk), never holding more than one."""
        per_chunk = max(1, chunk_rows // RUN_ROWS)
        total_runs = max(1, rows // RUN_ROWS)
        for chunk, first in enumerate(range(0, total_runs, per_chunk)):
            n = min(per_chunk, total_runs - first)
            data = make_data(n * RUN_ROWS, n, seed=7 + first, first_run=first)
            t = time.perf_counter()
            commit = self.table.write(data, actor="bench")
            self.write_s["enc"] += time.perf_counter() - t
            assert commit.rows == data.num_rows
            t = time.perf_counter()
            for bucket, part in prepare(BENCH, data):
                path = f"{self.plain_base}/bucket={bucket:02d}/part-{chunk:05d}.parquet"
                _write_plain(self.fs, path, part)
            self.write_s["plain"] += time.perf_counter() - t
            for i in range(first, first + n):
                run = f"run-{i:05d}"
                b = bucket_of(run)
                self.plain_of_run[run] = (
                    f"{self.plain_base}/bucket={b:02d}/part-{chunk:05d}.parquet"
                )
            self.rows += data.num_rows
            self.runs += n
            del data
            gc.collect()

    def _frag(self, path: str) -> ds.Fragment:
        """A plaintext fragment with its footer opened once and kept (as the store keeps its)."""
        frag = self.frags.get(path)
        if frag is None:
            frag = self.fmt.make_fragment(path, filesystem=self.fs)
            frag.ensure_complete_metadata()
            self.frags[path] = frag
        return frag

    def plain_dataset(self, paths) -> ds.Dataset:
        """A dataset of plaintext twins."""
        return ds.FileSystemDataset([self._frag(p) for p in paths], BENCH.schema, self.fmt, self.fs)

    def all_plain_paths(self) -> list[str]:
        """Every plaintext twin, once."""
        return sorted(set(self.plain_of_run.values()))

    # -- the measured calls ---------------------------------------------------------------

    def scan_plain(self) -> int:
        """Stream every row and column of the plaintext twins; returns the row count."""
        d = self.plain_dataset(self.all_plain_paths())
        return sum(b.num_rows for b in d.to_batches(memory_pool=READ_POOL))

    def scan_enc(self) -> int:
        """Stream every row and column through the store's decrypting dataset."""
        d = self.table.dataset()
        return sum(b.num_rows for b in d.to_batches(memory_pool=READ_POOL))

    def one_run_plain(self, run: str):
        """Every column of one run from its plaintext twin, with the store's filter."""
        d = self.plain_dataset([self.plain_of_run[run]])
        return d.to_table(filter=ds.field("run_id").isin([run]), memory_pool=READ_POOL)

    def one_run_enc(self, run: str):
        """``OrgTable.read(run_ids=[run])``."""
        return self.table.read(run_ids=[run])

    def sizes(self) -> tuple[int, int]:
        """Bytes of the plaintext twins and of the encrypted files."""
        plain = sum(self.fs.get_file_info(p).size for p in self.all_plain_paths())
        return plain, sum(e["size"] for e in self.table.files())


def interleaved(case: str, rows: int, measure: str, plain, enc, reps: int, check=None) -> Result:
    """Wall and CPU seconds of ``plain(i)`` and ``enc(i)`` for ``i < reps``, the order
    alternating per rep; ``check(i, plain_result, enc_result)`` runs outside the clock."""
    r = Result(case, rows, measure)
    for i in range(reps):
        out = {}
        pair = (("p", plain, r.plain, r.cpu_plain), ("e", enc, r.enc, r.cpu_enc))
        for side, fn, acc, cpu in pair if i % 2 == 0 else pair[::-1]:
            c = time.process_time()
            t = time.perf_counter()
            out[side] = fn(i)
            acc.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        if check is not None:
            check(i, out["p"], out["e"])
    RESULTS.append(r)
    return r


def measure_twins(case: str, tw: Twins, reps: int, scan_reps: int, cold_reps: int, cold_ctx=None):
    """Scan, warm one-run and (locally) cold one-run of both sides into ``RESULTS``."""
    n = tw.rows

    def check_scan(_i, p, e):
        checked(f"{case}/{n}/scan", plain=p, enc=e)
        assert p == e == n, (p, e, n)

    # The first scan of each side opens every footer (kept afterwards): timed apart.
    t = time.perf_counter()
    assert tw.scan_plain() == n
    first_plain = time.perf_counter() - t
    t = time.perf_counter()
    assert tw.scan_enc() == n
    first_enc = time.perf_counter() - t
    RESULTS.append(Result(case, n, "first scan (opens every footer)", [first_plain], [first_enc]))
    interleaved(
        case,
        n,
        "full scan (all rows, 16 cols, streamed)",
        lambda i: tw.scan_plain(),
        lambda i: tw.scan_enc(),
        scan_reps,
        check_scan,
    )

    rng = np.random.default_rng(1)
    picks = [f"run-{i:05d}" for i in rng.choice(tw.runs, size=min(reps, tw.runs), replace=False)]
    while len(picks) < reps:
        picks += picks[: reps - len(picks)]

    def check_run(i, p, e):
        checked(
            f"{case}/{n}/one_run",
            run=picks[i],
            plain=p.num_rows,
            enc=e.num_rows,
            runs_plain=sorted(p.column("run_id").unique().to_pylist()),
            runs_enc=sorted(e.column("run_id").unique().to_pylist()),
            equal=p.equals(e),
        )
        for t in (p, e):
            assert t.num_rows == RUN_ROWS, (picks[i], t.num_rows)
            assert set(t.column("run_id").unique().to_pylist()) == {picks[i]}
        assert p.equals(e), picks[i]

    interleaved(
        case,
        n,
        f"one-run query ({RUN_ROWS:,} rows, 16 cols)",
        lambda i: tw.one_run_plain(picks[i]),
        lambda i: tw.one_run_enc(picks[i]),
        reps,
        check_run,
    )
    fact(f"{case}_{n}_one_run_files_opened", len(tw.table.last_read_files))
    # The part of a one-run query that grows with the table: picking its files from the log.
    sel = []
    for r in picks:
        t = time.perf_counter()
        tw.table.select_files(run_ids=[r])
        sel.append(time.perf_counter() - t)
    RESULTS.append(
        Result(case, n, "  of which: file selection from the log", [], sel, note="encrypted only")
    )

    if cold_ctx is not None and cold_reps:
        heads_db, keys, drop = cold_ctx
        cp, ce, dropped = [], [], True
        for i, r in enumerate(picks[-cold_reps:]):
            order = (("plain", cp), ("vault", ce))
            for side, acc in order if i % 2 == 0 else order[::-1]:
                if drop:
                    dropped &= vault_bench.drop_page_cache()
                acc.append(
                    vault_bench.cold_read(side, tw.table, heads_db, r, tw.plain_of_run[r], keys)
                )
        cache = ("dropped" if dropped else "NOT dropped (not root)") if drop else "warm"
        RESULTS.append(
            Result(case, n, f"one-run query, fresh process (page cache {cache})", cp, ce)
        )
    plain_b, enc_b = tw.sizes()
    fact(f"{case}_{n}_size_plain_mb", f"{plain_b / 1e6:.0f}")
    fact(f"{case}_{n}_size_enc_mb", f"{enc_b / 1e6:.0f}")
    fact(f"{case}_{n}_files", len(tw.table.files()))


def new_registry(work: Path) -> KeyRegistry:
    """A key registry with the bench org (local root key)."""
    reg = KeyRegistry(work / "registry.sqlite", LocalKms(generate_root_key()))
    reg.create_org(ORG)
    return reg


# -- cases ------------------------------------------------------------------------------------


def case_local(work: Path, args) -> None:
    """The ``local`` case at each ``--rows`` size."""
    reg = new_registry(work)
    for rows in args.rows:
        base = work / f"local-{rows}"
        base.mkdir()
        heads_db = base / "heads.sqlite"
        table = OrgTable(
            base / "data", ORG, BENCH, OrgCrypto(reg.org_keys(ORG)), SqliteHeadStore(heads_db)
        )
        tw = Twins(table, pafs.LocalFileSystem(), str(base / "plain"))
        t0 = time.perf_counter()
        tw.build(rows, args.chunk_rows)
        fact(f"local_{rows}_generate_s", f"{time.perf_counter() - t0:.0f}")
        for side in ("plain", "enc"):
            fact(f"local_{rows}_write_{side}_rows_per_s", f"{tw.rows / tw.write_s[side]:,.0f}")
        measure_twins(
            "local",
            tw,
            args.reps,
            args.scan_reps,
            args.cold_reps,
            (heads_db, reg.org_keys(ORG), args.drop_caches),
        )
        fact(f"local_{rows}_wall_s", f"{time.perf_counter() - t0:.0f}")
        fact(
            f"local_{rows}_max_rss_mb",
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
        )
        del tw, table
        shutil.rmtree(base)
        gc.collect()


def case_log(work: Path, args) -> None:
    """``bench/log.py``'s measure at ``--commits`` commits."""
    reg = new_registry(work)
    for n in args.commits:
        t0 = time.perf_counter()
        out = log_bench.measure(work, reg, n, args.log_reps, 1000)
        for kind in ("cold", "warm", "fresh"):
            if f"{kind}_ms" not in out:  # an older bench/log.py
                continue
            lo, hi = (float(x) for x in out[f"{kind}_min_max_ms"].split(" / "))
            med = float(out[f"{kind}_ms"])
            RESULTS.append(
                Result(
                    "log",
                    n,
                    f"one-run query after {n:,} commits, "
                    + ("fresh process" if kind == "fresh" else kind),
                    [],
                    [lo / 1000, med / 1000, hi / 1000],
                    note="encrypted only, bench/log.py",
                )
            )
        fact(f"log_{n}_build_s", out["build_s"])
        fact(f"log_{n}_log_mb", out["log_mb"])
        if "ckpt_bytes" in out:
            fact(f"log_{n}_checkpoint_bytes", out["ckpt_bytes"])
        fact(f"log_{n}_wall_s", f"{time.perf_counter() - t0:.0f}")


def _load_optional(name: str):
    """``bench/<name>.py`` as a module, or None when this tree has none."""
    path = HERE / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def case_s3(work: Path, args) -> None:
    """The ``local`` case in an S3 bucket of a moto server (needs the tree's S3 support)."""
    try:
        from tests.support import s3 as s3_support  # noqa: F401
    except ImportError:
        fact("s3", "skipped: this tree has no tests/support/s3.py (S3 support not merged)")
        return
    run_s3(work, args, s3_support)


def _children_rss_mb() -> float:
    """Resident memory of this process's direct children (the moto server), in MB."""
    me, total = str(os.getpid()), 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if fields.get("PPid", "").strip() == me and "VmRSS" in fields:
            total += int(fields["VmRSS"].split()[0])
    return total / 1024


def run_s3(work: Path, args, s3_support) -> None:
    """Both sides in one bucket of a moto server: the store under an ``s3://`` root, the
    plaintext twins under another prefix, written and read through ``pyarrow.fs.S3FileSystem``."""
    reg = new_registry(work)
    with s3_support.s3_server(work) as s3:
        cfg = s3.config
        fs = pafs.S3FileSystem(
            endpoint_override=cfg.endpoint_url,
            scheme="http" if cfg.endpoint_url.startswith("http:") else "https",
            access_key=cfg.access_key_id,
            secret_key=cfg.secret_access_key,
            region=cfg.region,
        )
        for rows in args.s3_rows:
            root = s3.root("bench-data", f"enc-{rows}")
            table = OrgTable(
                root,
                ORG,
                BENCH,
                OrgCrypto(reg.org_keys(ORG)),
                SqliteHeadStore(work / f"heads-{rows}.sqlite"),
            )
            tw = Twins(table, fs, f"bench-data/plain-{rows}")
            t0 = time.perf_counter()
            tw.build(rows, args.chunk_rows)
            fact(f"s3_{rows}_generate_s", f"{time.perf_counter() - t0:.0f}")
            for side in ("plain", "enc"):
                fact(f"s3_{rows}_write_{side}_rows_per_s", f"{tw.rows / tw.write_s[side]:,.0f}")
            fact(f"s3_{rows}_moto_rss_mb", f"{_children_rss_mb():.0f}")
            measure_twins("s3", tw, args.reps, args.scan_reps, 0)
            fact(f"s3_{rows}_wall_s", f"{time.perf_counter() - t0:.0f}")
            fact(f"s3_{rows}_moto_rss_mb_after_reads", f"{_children_rss_mb():.0f}")
            fact(
                f"s3_{rows}_max_rss_mb",
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}",
            )
            del tw, table
            gc.collect()


def case_ingest(work: Path, args) -> None:
    """Ingest rows/s with SQLite vs PostgreSQL state: ``bench/ingest_state.py``'s ``measure``."""
    mod = _load_optional("ingest_state")
    fn = getattr(mod, "measure", None)
    if fn is None:
        fact("ingest", "skipped: this tree has no bench/ingest_state.py with measure()")
        return
    kw = {"batches": 40, "repeat": 1, "kills": 1} if args.quick else {}
    accepted = inspect.signature(fn).parameters
    t0 = time.perf_counter()
    out = fn(**{k: v for k, v in kw.items() if k in accepted})
    for k, v in out.items():
        fact(f"ingest_{k}", v)
    fact("ingest_wall_s", f"{time.perf_counter() - t0:.0f}")


CASES = {"local": case_local, "log": case_log, "s3": case_s3, "ingest": case_ingest}


def print_table() -> None:
    """The timed comparisons as one Markdown table (if any), then the other figures."""
    if RESULTS:
        print()
        print(
            "| case | rows | measure | plaintext ms (min / median / max) | encrypted ms "
            "(min / median / max) | enc ÷ plain (median) | CPU ms plain / enc (median) |"
        )
        print("|---|---|---|---|---|---|---|")

    def ratio(a, b):
        return f"{statistics.median(b) / statistics.median(a):.2f}" if a and b else "—"

    for r in RESULTS:
        reps = max(len(r.plain), len(r.enc))
        what = f"{r.measure} ({r.note})" if r.note else f"{r.measure} ×{reps}"
        cpu = (
            f"{statistics.median(r.cpu_plain) * 1000:.0f} / "
            f"{statistics.median(r.cpu_enc) * 1000:.0f} ({ratio(r.cpu_plain, r.cpu_enc)})"
            if r.cpu_plain and r.cpu_enc
            else "—"
        )
        print(
            f"| {r.case} | {r.rows:,} | {what} | {mmm(r.plain)} | {mmm(r.enc)} "
            f"| {ratio(r.plain, r.enc)} | {cpu} |"
        )
    print()
    print("| figure | value |")
    print("|---|---|")
    for name, value in FACTS:
        print(f"| {name} | {value} |")


def _ints(s: str) -> list[int]:
    return [int(float(x)) for x in s.split(",") if x]


def main() -> None:
    """Parse the options, run the cases, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--rows", type=_ints, default=None, help="sizes of the local case, e.g. 1e6,1e7"
    )
    ap.add_argument("--s3-rows", type=_ints, default=None, help="sizes of the s3 case")
    ap.add_argument("--commits", type=_ints, default=None, help="commit counts of the log case")
    ap.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows per write (commit)")
    ap.add_argument("--reps", type=int, default=20, help="one-run queries per side (warm)")
    ap.add_argument("--scan-reps", type=int, default=3, help="full scans per side")
    ap.add_argument("--cold-reps", type=int, default=5, help="fresh-process reads per side")
    ap.add_argument("--log-reps", type=int, default=5, help="log.py's reps per commit count")
    ap.add_argument(
        "--drop-caches", action="store_true", help="drop the page cache before cold reads (root)"
    )
    ap.add_argument("--quick", action="store_true", help="every case small: a smoke check")
    ap.add_argument("--only", choices=sorted(CASES), action="append", help="run only this case")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.rows = args.rows or [40_000]
        args.s3_rows = args.s3_rows or [40_000]
        args.commits = args.commits or [1000]
        args.chunk_rows = min(args.chunk_rows, 2 * RUN_ROWS)
        args.reps, args.scan_reps, args.cold_reps, args.log_reps = 4, 2, 1, 2
    args.rows = args.rows or [1_000_000, 10_000_000]
    args.s3_rows = args.s3_rows or [10_000_000]
    args.commits = args.commits or [100_000]
    work = Path(tempfile.mkdtemp(prefix="scale-bench-", dir=args.dir))
    t0 = time.perf_counter()
    try:
        for name in args.only or ["local", "log", "s3", "ingest"]:
            (work / name).mkdir()
            CASES[name](work / name, args)
            shutil.rmtree(work / name, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fact("total_wall_s", f"{time.perf_counter() - t0:.0f}")
    print_table()
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "results": [r.__dict__ for r in RESULTS],
                    "facts": dict(FACTS),
                    "checks": CHECKS,
                    "run_rows": RUN_ROWS,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
