"""A writer killed with SIGKILL at random points leaves the last committed state intact.

Each round starts a writer child that commits batches of rows in a loop, kills it after a random
delay, and then checks from this process: every batch the child reported as committed is there,
every batch that is there is complete (no partial rows), the log verifies, and gc cleans leftovers.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
from _vault_support import make_keys

from atomscale_lab.crypto import OrgCrypto
from atomscale_lab.schema import SERIES
from atomscale_lab.store import SqliteHeadStore, Table

WRITER = Path(__file__).with_name("_vault_writer.py")
ROUNDS = 22
BATCH_ROWS = 8 * 300


def _batches(table: Table) -> Counter:
    runs = table.read(columns=["run_id"]).column("run_id")
    prefix = pc.utf8_slice_codeunits(runs, 0, 7)  # "b000123"
    vc = pc.value_counts(prefix)
    return Counter({v["values"].as_py(): v["counts"].as_py() for v in vc})


def test_kill_minus_nine_at_random_points(tmp_path):
    rng = random.Random(1234)
    reg = make_keys(tmp_path, orgs=("a",))
    keys = reg.org_keys("a")
    head_db = tmp_path / "registry.sqlite"
    committed: set[int] = set()
    leftovers = 0
    for rnd in range(ROUNDS):
        first = rnd * 1000
        p = subprocess.Popen(
            [sys.executable, str(WRITER), str(tmp_path / "data"), str(head_db), str(first)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=str(WRITER.parent))
        p.stdin.write(json.dumps(keys.to_json()))
        p.stdin.close()
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        assert p.returncode == -signal.SIGKILL
        out = p.stdout.read().split()
        p.stdout.close()
        p.stderr.close()
        reported = {int(out[i + 1]) for i, w in enumerate(out) if w == "committed"}

        t = Table(tmp_path / "data", "a", SERIES, OrgCrypto(keys), SqliteHeadStore(head_db))
        t.verify()
        present = _batches(t)
        for name, n in present.items():
            assert n == BATCH_ROWS, f"batch {name} is partial ({n} rows) after round {rnd}"
        have = {int(name[1:]) for name in present}
        assert committed | reported <= have, f"lost: {sorted((committed | reported) - have)}"
        # the batch in flight at the kill may have committed without being reported
        unreported = have - committed - reported
        assert unreported <= {max(reported, default=first - 1) + 1}, unreported
        committed = have
        assert t.num_rows() == len(have) * BATCH_ROWS
        leftovers += t.gc()
        assert not list((t.path / "_tmp").glob("*"))
        assert {f["path"] for f in t.files()} == {
            q.relative_to(t.path).as_posix() for q in t.path.rglob("part-*.parquet")}
    assert leftovers > 0  # some kills landed in the middle of a write
    assert len(committed) >= ROUNDS  # the writer got work done in most rounds
    t.gc()
    t.verify(deep=True)
    assert _batches(t) == Counter({f"b{k:06d}": BATCH_ROWS for k in have})
