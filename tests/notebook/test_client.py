"""``Workspace`` against a really running jupyter server (subprocess on 127.0.0.1 with a token)."""

import duckdb
import pandas as pd
import polars as pl
import pytest

from atomscale_lab.client.workspace import Workspace, discover
from atomscale_lab.errors import ConfigError, NotFound, PermissionDenied, ValidationError


@pytest.fixture(scope="module")
def ws(live_server):
    return Workspace(url=live_server["url"], token=live_server["token"])


def test_discovery_from_the_environment(live_server, monkeypatch):
    monkeypatch.setenv("ATOMSCALE_LAB_URL", live_server["url"].rstrip("/"))
    monkeypatch.setenv("ATOMSCALE_LAB_TOKEN", live_server["token"])
    assert discover() == (live_server["url"], live_server["token"])
    w = Workspace(org="acme")
    assert w.org == "acme"
    with pytest.raises(ConfigError, match="serves org 'acme', not 'beta'"):
        Workspace(org="beta")


def test_discovery_of_the_token_from_the_server_runtime_file(live_server, monkeypatch):
    # what a kernel started by the server sees: the URL the extension exported, no token
    for var in (
        "ATOMSCALE_LAB_TOKEN",
        "JUPYTERHUB_API_TOKEN",
        "JUPYTER_TOKEN",
        "JUPYTERHUB_SERVICE_URL",
        "JUPYTER_SERVER_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ATOMSCALE_LAB_URL", live_server["url"])
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(live_server["root_dir"] / ".runtime"))
    assert discover() == (live_server["url"], live_server["token"])
    monkeypatch.delenv("ATOMSCALE_LAB_URL")
    assert discover() == (live_server["url"], live_server["token"])  # the only running server


def test_wrong_token_is_refused(live_server):
    with pytest.raises(PermissionDenied, match="not authenticated"):
        Workspace(url=live_server["url"], token="wrong")


def test_runs_all_pages_and_limits(ws):
    df = ws.runs()
    assert len(df) == 30 and df.run_id.is_unique
    assert str(df.start.dt.tz) == "UTC"
    assert df.start.is_monotonic_decreasing
    for sort, order in (("start", "desc"), ("project", "asc"), ("status", "desc")):
        whole = ws.runs(sort=sort, order=order)  # one stream of the runs table
        paged = ws.runs(sort=sort, order=order, limit=10_000)  # server pages
        assert list(whole.run_id) == list(paged.run_id), (sort, order)
    assert list(ws.runs(limit=7, sort="run_id", order="asc").run_id) == [
        f"R-{i:05d}" for i in range(7)
    ]
    mbe = ws.runs(instrument=["mbe-1"], status="complete")
    assert set(mbe.instrument) == {"mbe-1"} and set(mbe.status) == {"complete"}
    assert len(ws.runs(start=pd.Timestamp("2025-01-13"), end="2025-01-14T00:00:00Z")) == 3
    assert ws.runs(project="nothing").empty
    with pytest.raises(ValidationError, match="sort"):
        ws.runs(sort="nope")


def test_run_process_and_tool_state(ws):
    rec = ws.run("R-00002")
    assert rec["channels"]["process"] == ["growth_rate", "rheed_intensity", "substrate_temp"]
    long = ws.process("R-00002")
    assert list(long.columns) == ["run_id", "time", "channel", "value", "unit"]
    assert len(long) == 720
    wide = ws.process("R-00002", channels=["substrate_temp", "growth_rate"], wide=True)
    assert list(wide.columns) == ["growth_rate", "substrate_temp"] and len(wide) == 240
    assert wide.substrate_temp.iloc[0] == pytest.approx(582.0)
    small = ws.process("R-00002", channels="rheed_intensity", max_points=50)
    assert len(small) <= 52
    tools = ws.tool_state("R-00002", wide=True)
    assert set(tools.columns) == {"cell_temp", "chamber_pressure"}
    with pytest.raises(NotFound, match="R-77777"):
        ws.process("R-77777")


def test_metrology(ws):
    xrd = ws.metrology(technique="XRD")
    assert len(xrd) == 30 and "x" not in xrd.columns
    spectra = ws.metrology(run_id=["R-00001", "R-00003"], with_spectra=True)
    assert sorted(spectra.item_id) == ["M-00001-xrd", "M-00003-xps", "M-00003-xrd"]
    assert len(spectra.x.iloc[0]) in (200, 400)
    item = ws.metrology_item("M-00006-xrd")
    assert item["peaks"] == [33.0]


def test_dataset_from_duckdb_and_polars(ws):
    data = ws.dataset("process/series", columns=["run_id", "channel", "value"])  # noqa: F841
    n = duckdb.sql("select count(*) from data where channel = 'growth_rate'").fetchall()[0][0]
    assert n == 30 * 240
    top = (
        pl.scan_pyarrow_dataset(ws.dataset("runs"))
        .filter(pl.col("project") == "ito-films")
        .collect()
    )
    assert top.height == 10
    assert ws.table("tool_state", run_ids=["R-00001"]).num_rows == 240


def test_join_context(ws):
    runs = ws.runs(project="gaas-qw", limit=3, sort="run_id", order="asc")
    joined = ws.join_context(runs, fields=["film", "sample"], purpose="group by film")
    assert list(joined.film) == ["GaAs"] * 3
    assert list(joined.sample_label) == list(joined["sample"])
    with pytest.raises(ValidationError, match="purpose"):
        ws.join_context(runs, fields=["film"], purpose="")
    events = ws.audit(action="context.join", limit=5)
    assert events.iloc[0]["detail"]["purpose"] == "group by film"


def test_search_and_get_facade(ws):
    found = ws.search(keywords=["pld", "ito"], status="complete", limit=3)
    assert len(found) == 3 and set(found.instrument) == {"pld-2"}
    items = ws.get(found["Data ID"].to_list()[:1])
    assert items[0].run_id == found["Data ID"][0]
    ts = items[0].timeseries_data
    assert {"rheed_intensity", "substrate_temp"} <= set(ts.columns)
    assert items[0].metrology.technique.iloc[0] in ("XRD", "XPS")


def test_workspace_asks_for_compressed_arrow_and_reads_it(ws):
    import pyarrow as pa

    t, r = ws._arrow("runs/R-00004/process")
    assert r.headers["X-Arrow-Compression"] == "zstd"
    plain = ws._session.get(
        f"{ws.url}atomscale/api/v1/runs/R-00004/process", params={"format": "arrow"}, timeout=60
    )
    assert "X-Arrow-Compression" not in plain.headers
    assert len(plain.content) > int(r.headers["Content-Length"])
    assert t.num_rows > 0 and t.equals(pa.ipc.open_stream(plain.content).read_all())
