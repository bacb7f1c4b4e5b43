"""The scale benchmark itself (``bench/scale.py --quick``): its queries return what they claim,
so its figures compare like with like. Timings are not checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


def test_quick_local_case_reads_exactly_each_run_on_both_sides(tmp_path):
    out = tmp_path / "scale.json"
    subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "local", "--cold-reps", "0"]
        + ["--json", str(out), "--dir", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    doc = json.loads(out.read_text())
    rows, run_rows = 40_000, doc["run_rows"]
    one = doc["checks"][f"local/{rows}/one_run"]
    assert len(one["run"]) == 4
    assert one["plain"] == one["enc"] == [run_rows] * 4
    assert one["runs_plain"] == one["runs_enc"] == [[r] for r in one["run"]]
    assert all(one["equal"])
    scan = doc["checks"][f"local/{rows}/scan"]
    assert scan["plain"] == scan["enc"] == [rows] * 2
    measures = {r["measure"] for r in doc["results"] if r["case"] == "local"}
    assert any(m.startswith("one-run query") for m in measures)
    assert any(m.startswith("full scan") for m in measures)
    assert list(tmp_path.iterdir()) == [out]  # the bench's work folder is gone
