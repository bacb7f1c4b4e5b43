"""``atomscale-lab ingest import``: CSV and Parquet tool logs, all or nothing."""

import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atomscale_lab.errors import NotFound, ValidationError
from atomscale_lab.ingest.importer import import_file

CSV = """time,channel,value,setpoint,unit
2026-03-01T10:00:00Z,cell_ga,905.1,905,C
2026-03-01T10:00:01Z,cell_ga,905.3,905,C
2026-03-01 10:00:02,shutter_ga,1,,
2026-03-01T10:00:03+01:00,pressure,2.5e-9,,Torr
"""


def _rows(deployment, table, run=None):
    try:
        return deployment.rows("acme", table, run)
    except NotFound:
        return pa.table({})


def test_cli_imports_csv_and_creates_the_run(deployment, tmp_path, venv_bin):
    f = tmp_path / "mbe1-tool.csv"
    f.write_text(CSV)
    out = subprocess.run(
        [
            str(venv_bin / "atomscale-lab"),
            "ingest",
            "import",
            str(f),
            "--org",
            "acme",
            "--category",
            "tool_state",
            "--run",
            "G-0301",
            "--tool",
            "mbe1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "imported 4 rows" in out.stdout
    t = _rows(deployment, "tool_state/readings", "G-0301")
    assert t.num_rows == 4
    assert set(t.column("tool").to_pylist()) == {"mbe1"}
    times = sorted(v.isoformat() for v in t.column("time").to_pylist())
    assert times[0] == "2026-03-01T09:00:03+00:00"  # +01:00 converted to UTC
    assert "2026-03-01T10:00:02+00:00" in times  # no offset: --timezone (UTC)
    run = _rows(deployment, "process/runs", "G-0301").to_pylist()[0]
    assert run["status"] == "complete" and run["instrument"] == "mbe1"
    ev = deployment.vault.audit("acme").events(action="data.import")
    assert ev and ev[0]["detail"]["rows"] == 4


def test_malformed_row_names_line_and_column_and_stores_nothing(deployment, tmp_path):
    f = tmp_path / "bad.csv"
    lines = CSV.splitlines()
    lines[3] = "2026-03-01T10:00:02Z,shutter_ga,open,,"  # line 4: value is not a number
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError, match=r"line 4, column 'value': 'open'") as ei:
        import_file(deployment.vault, f, "acme", "tool_state", "G-1", tool="mbe1")
    assert ei.value.field == "value"
    f.write_text(CSV.replace("2026-03-01T10:00:01Z", "yesterday"))
    with pytest.raises(ValidationError, match=r"line 3, column 'time'"):
        import_file(deployment.vault, f, "acme", "tool_state", "G-1", tool="mbe1")
    f.write_text(CSV.replace("cell_ga,905.3", ",905.3"))
    with pytest.raises(ValidationError, match=r"line 3, column 'channel': a value is required"):
        import_file(deployment.vault, f, "acme", "tool_state", "G-1", tool="mbe1")
    header, *data = CSV.splitlines()
    f.write_text("\n".join([header + ",colour"] + [d + ",red" for d in data]) + "\n")
    with pytest.raises(ValidationError, match="unknown column 'colour'"):
        import_file(deployment.vault, f, "acme", "tool_state", "G-1", tool="mbe1")
    f.write_text(CSV + "2026-03-01T10:00:04Z,cell_ga,1,2,C,extra\n")
    with pytest.raises(ValidationError, match="Expected 5 columns, got 6"):
        import_file(deployment.vault, f, "acme", "tool_state", "G-1", tool="mbe1")
    assert _rows(deployment, "tool_state/readings").num_rows == 0
    assert _rows(deployment, "process/runs").num_rows == 0


def test_cli_error_is_one_line_with_exit_code(deployment, tmp_path, venv_bin):
    f = tmp_path / "bad.csv"
    f.write_text(CSV.replace("905.3", "n/a"))
    out = subprocess.run(
        [
            str(venv_bin / "atomscale-lab"),
            "ingest",
            "import",
            str(f),
            "--org",
            "acme",
            "--category",
            "tool_state",
            "--run",
            "G-2",
            "--tool",
            "mbe1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("atomscale-lab: error: line 3, column")
    assert _rows(deployment, "tool_state/readings").num_rows == 0


def test_parquet_import_and_run_mismatch(deployment, tmp_path):
    n = 5000
    t = pa.table(
        {
            "time": pa.array(range(n), pa.int64()).cast(pa.timestamp("s", tz="UTC")),
            "channel": ["rheed_intensity"] * n,
            "value": [float(i) for i in range(n)],
            "run_id": ["G-9"] * n,
        }
    )
    f = tmp_path / "series.parquet"
    pq.write_table(t, f)
    summary = import_file(deployment.vault, f, "acme", "process", "G-9")
    assert summary["rows"] == n and summary["new_run"]
    assert _rows(deployment, "process/series", "G-9").num_rows == n
    with pytest.raises(ValidationError, match=r"row 1, column 'run_id'"):
        import_file(deployment.vault, f, "acme", "process", "G-10")
    assert _rows(deployment, "process/series").num_rows == n


def test_reimport_is_skipped_and_a_partial_overlap_refused(deployment, tmp_path, venv_bin):
    f = tmp_path / "log.csv"
    f.write_text(CSV)
    cli = [str(venv_bin / "atomscale-lab"), "ingest", "import", "acme"]
    args = ["--category", "tool_state", "--run", "G-0400", "--tool", "mbe1"]
    first = subprocess.run([*cli, str(f), *args], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([*cli, str(f), *args], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert _rows(deployment, "tool_state/readings", "G-0400").num_rows == 4  # not 8
    events = deployment.vault.audit("acme").events(action="data.import")
    assert events[0]["detail"]["skipped"] == "already imported" and events[0]["detail"]["rows"] == 0
    # a file holding the old rows plus new ones would double the old: refused, nothing stored
    more = tmp_path / "more.csv"
    more.write_text(CSV + "2026-03-01T10:00:09Z,cell_ga,906.0,905,C\n")
    with pytest.raises(ValidationError, match="3 of the 5 rows|4 of the 5 rows"):
        import_file(deployment.vault, more, "acme", "tool_state", "G-0400", tool="mbe1")
    assert _rows(deployment, "tool_state/readings", "G-0400").num_rows == 4
    denied = deployment.vault.audit("acme").events(action="data.import")[0]
    assert denied["outcome"] == "denied"
    # the same rows for another run are a different import
    import_file(deployment.vault, f, "acme", "tool_state", "G-0401", tool="mbe1")
    assert _rows(deployment, "tool_state/readings", "G-0401").num_rows == 4


def test_import_sets_run_metadata_and_the_old_org_spelling_still_works(
    deployment, tmp_path, venv_bin
):
    f = tmp_path / "log.csv"
    f.write_text(CSV)
    out = subprocess.run(
        [
            str(venv_bin / "atomscale-lab"),
            "ingest",
            "import",
            str(f),
            "--org",
            "acme",
            "--category",
            "tool_state",
            "--run",
            "G-0500",
            "--tool",
            "mbe1",
            "--project",
            "aurora",
            "--sample",
            "S-77",
            "--method",
            "MBE",
            "--operator",
            "akim",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    run = _rows(deployment, "process/runs", "G-0500").to_pylist()[-1]
    assert (run["project"], run["sample"], run["method"], run["operator"]) == (
        "aurora",
        "S-77",
        "MBE",
        "akim",
    )
    # re-importing with other metadata stores no rows but updates the record
    summary = import_file(
        deployment.vault,
        f,
        "acme",
        "tool_state",
        "G-0500",
        tool="mbe1",
        metadata={"project": "borealis"},
    )
    assert summary["skipped"]
    rec = deployment.vault.store("acme").table("process/runs").read(run_ids=["G-0500"])
    assert rec.num_rows == 1 and rec.column("project").to_pylist() == ["borealis"]
    assert rec.column("sample").to_pylist() == ["S-77"]
    with pytest.raises(ValidationError, match="cannot set 'status'"):
        import_file(
            deployment.vault, f, "acme", "tool_state", "G-0501", metadata={"status": "complete"}
        )
    # the org named twice is a usage error (exit 2)
    out = subprocess.run(
        [
            str(venv_bin / "atomscale-lab"),
            "ingest",
            "import",
            "acme",
            str(f),
            "--org",
            "acme",
            "--category",
            "tool_state",
            "--run",
            "G-0502",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
