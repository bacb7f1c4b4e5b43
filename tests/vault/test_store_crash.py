"""A writer killed with SIGKILL at chosen points of a commit leaves the last committed state intact.

Each round starts a writer child that commits batches of rows (and compacts every fifth batch),
stops itself at a chosen point — between commits, with an encrypted file half-way in ``_tmp/``,
with all files in place but no log line, with the log line written but the head store not yet
advanced, in a batch's commit or in a compaction — and is killed there. Then this process checks:
every batch the child reported as committed is there, every batch that is there is complete (no
partial rows), the batch in flight is there exactly when its log line was written, the log
verifies, and gc removes exactly the leftovers the point leaves.
"""

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc

from atomscale_lab.schema import SERIES
from atomscale_lab.vault.crypto import OrgCrypto
from atomscale_lab.vault.store import OrgTable, SqliteHeadStore
from tests.support.vault import make_keys

WRITER = "tests.vault._vault_writer"
ROOT = Path(__file__).resolve().parents[2]
BATCH_ROWS = 8 * 300
# (point, occurrence): where each round's writer is killed (see _vault_writer.py).
SCHEDULE = [
    ("committed", 1),
    ("write.tmp", 1),
    ("write.placed", 1),
    ("write.logged", 1),
    ("write.tmp", 6),
    ("compact.tmp", 1),
    ("compact.placed", 1),
    ("compact.logged", 1),
    ("write.placed", 3),
    ("write.logged", 5),
    ("committed", 6),
    ("write.tmp", 13),
]


def _batches(table: OrgTable) -> Counter:
    runs = table.read(columns=["run_id"]).column("run_id")
    prefix = pc.utf8_slice_codeunits(runs, 0, 7)  # "b000123"
    vc = pc.value_counts(prefix)
    return Counter({v["values"].as_py(): v["counts"].as_py() for v in vc})


def test_kill_minus_nine_at_chosen_points(tmp_path):
    reg = make_keys(tmp_path, orgs=("a",))
    keys = reg.org_keys("a")
    head_db = tmp_path / "registry.sqlite"
    committed: set[int] = set()
    landed = Counter()
    for rnd, (point, n) in enumerate(SCHEDULE):
        first = rnd * 1000
        p = subprocess.Popen(
            [
                sys.executable,
                "-m",
                WRITER,
                str(tmp_path / "data"),
                str(head_db),
                str(first),
                point,
                str(n),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
        )
        p.stdin.write(json.dumps(keys.to_json()))
        p.stdin.close()
        out = []
        for line in p.stdout:  # until the writer stops itself at the chosen point
            out.append(line.split())
            if out[-1][0] == "at":
                break
        else:
            raise AssertionError(f"writer ended before {point} #{n}: {p.stderr.read()[-2000:]}")
        assert out[0] == ["ready"]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        assert p.returncode == -signal.SIGKILL
        p.stdout.close()
        p.stderr.close()
        assert out[-1][1] == point
        landed[point.split(".")[-1]] += 1
        in_flight = int(out[-1][2])
        reported = {int(w[1]) for w in out if w[0] == "committed"}

        t = OrgTable(tmp_path / "data", "a", SERIES, OrgCrypto(keys), SqliteHeadStore(head_db))
        t.verify()
        present = _batches(t)
        for name, count in present.items():
            assert count == BATCH_ROWS, f"batch {name} is partial ({count} rows) at {point}"
        have = {int(name[1:]) for name in present}
        assert committed | reported <= have, f"lost: {sorted((committed | reported) - have)}"
        # The batch in flight is committed exactly when its log line was written.
        expected = committed | reported
        if point in ("write.logged", "committed"):
            expected = expected | {in_flight}
        assert have == expected, (point, sorted(have ^ expected))
        committed = have
        assert t.num_rows() == len(have) * BATCH_ROWS
        leftovers = t.gc()
        if point.endswith((".tmp", ".placed")) or point == "compact.logged":
            assert leftovers > 0, f"a kill at {point} left nothing to clean up"
        else:
            assert leftovers == 0, f"a kill at {point} left {leftovers} unlisted files"
        assert not list((t.path / "_tmp").glob("*"))
        assert {f["path"] for f in t.files()} == {
            q.relative_to(t.path).as_posix() for q in t.path.rglob("part-*.parquet")
        }
    # Every kill landed where it was aimed: 10 in the middle of a write, 2 between commits.
    assert landed == Counter(committed=2, tmp=4, placed=3, logged=3)
    assert sum(v for k, v in landed.items() if k != "committed") == 10
    t.gc()
    t.verify(deep=True)
    assert _batches(t) == Counter({f"b{k:06d}": BATCH_ROWS for k in committed})
