"""The hosted platform's own Python SDK (``atomscale`` from PyPI) against the ingest service.

The SDK lives in its own virtual environment (``.venv-sdk``, made by ``scripts/setup.d``) and runs
in a subprocess (``_sdk_driver.py``); the service runs in plain-HTTP mode on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import requests

from atomscale_lab.ingest.sdkapi import entity_id
from tests.support.ingest import Service
from tests.support.nbserver import start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]

SDK_PYTHON = ROOT / ".venv-sdk" / "bin" / "python"
DRIVER = Path(__file__).with_name("_sdk_driver.py")
TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class HttpService(Service):
    """The ingest service in ``--http`` mode (loopback only)."""

    def __init__(self, home, root_key):
        super().__init__(home, root_key, extra_args=["--http", "--ip", "127.0.0.1"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.sdk_url = self.url + "/sdk/"

    def wait_ready(self, timeout=30.0):
        """Poll /health over plain HTTP until it answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("service exited: " + (self.home / "service-0.log").read_text())
            try:
                self.http.get(self.url + "/health", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.05)
        raise RuntimeError("the ingest service did not become ready")


@pytest.fixture
def http_service(deployment, root_key):
    """The service over plain HTTP on 127.0.0.1, stopped by pid afterwards."""
    svc = HttpService(deployment.home, root_key)
    svc.start()
    yield svc
    svc.stop()
    svc.http.close()


def sdk(service, key, doc, clock_sync=False):
    """Run one SDK operation in the SDK's virtual environment; returns its JSON answer."""
    assert SDK_PYTHON.exists(), "the SDK's virtual environment is missing: run `make setup`"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMSCALE_")}
    env.update(AS_API_KEY=key, AS_API_ENDPOINT=service.sdk_url, MPLBACKEND="Agg")
    if not clock_sync:
        env["ATOMSCALE_SKIP_CLOCK_SYNC"] = "1"
    proc = subprocess.run(
        [str(SDK_PYTHON), str(DRIVER), json.dumps(doc)],
        env=env,
        capture_output=True,
        timeout=120,
        cwd=str(service.home),
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return json.loads(proc.stdout)


def seed(vault, org, run_id, *, sample, project, points=5, base=20.0):
    """One run with two process channels, one tool-state channel, an XRD and an XPS item."""
    store = vault.store(org)
    store.table("process/runs").write(
        pa.table(
            {
                "run_id": [run_id],
                "project": [project],
                "sample": [sample],
                "instrument": ["mbe-1"],
                "method": ["MBE"],
                "operator": ["ana"],
                "start": pa.array([T0], TS),
                "end": pa.array([T0 + timedelta(hours=1)], TS),
                "status": ["complete"],
                "updated_at": pa.array([T0], TS),
            }
        )
    )
    times = [T0 + timedelta(seconds=10 * i) for i in range(points)]
    store.table("process/series").write(
        pa.table(
            {
                "run_id": [run_id] * 2 * points,
                "time": pa.array(times + times, TS),
                "channel": ["substrate_temp"] * points + ["growth_rate"] * points,
                "value": [base + i for i in range(points)] + [0.5 * i for i in range(points)],
                "unit": ["degC"] * points + ["nm/min"] * points,
            }
        )
    )
    store.table("tool_state/readings").write(
        pa.table(
            {
                "run_id": [run_id] * points,
                "tool": ["mbe-1"] * points,
                "time": pa.array([t + timedelta(milliseconds=250) for t in times], TS),
                "channel": ["cell_temp"] * points,
                "value": [800.0 + i for i in range(points)],
                "setpoint": [800.0] * points,
                "unit": ["degC"] * points,
            }
        )
    )
    spectra = {
        "XRD": ([30.0, 30.5, 31.0], [10.0, 900.0, 12.0], "deg 2theta"),
        "XPS": ([285.0, 284.0, 283.0], [5.0, 50.0, 7.0], "eV binding energy"),
    }
    store.table("metrology/items").write(
        pa.table(
            {
                "item_id": [f"{run_id}-xrd", f"{run_id}-xps"],
                "run_id": [run_id] * 2,
                "sample": [sample] * 2,
                "technique": ["XRD", "XPS"],
                "time": pa.array([T0 + timedelta(hours=2)] * 2, TS),
                "x": [spectra["XRD"][0], spectra["XPS"][0]],
                "y": [spectra["XRD"][1], spectra["XPS"][1]],
                "x_unit": [spectra["XRD"][2], spectra["XPS"][2]],
                "y_unit": ["counts", "counts/s"],
                "peaks": [[30.5], [284.0]],
                "result_name": [None, None],
                "result_value": [None, None],
                "result_unit": [None, None],
            }
        )
    )


def events(deployment, org, action=None):
    """The org's audit events (optionally of one action)."""
    return deployment.vault.audit(org).events(action=action, limit=1000)


READ = "read:process,read:tool_state,read:metrology"


def test_search_and_get_return_own_org_only(deployment, http_service):
    seed(deployment.vault, "acme", "A-1", sample="GaAs-001", project="qw")
    seed(deployment.vault, "beta", "B-1", sample="STO-9", project="buffer", base=99.0)
    key = deployment.key("acme", READ, name="notebook")
    everything, narrowed, other, exact, got = sdk(
        http_service,
        key,
        [
            {"op": "search"},
            {"op": "search", "kwargs": {"keywords": "gaas", "data_type": "xrd"}},
            {"op": "search", "kwargs": {"keywords": "STO-9"}},  # another org's sample
            {"op": "search", "kwargs": {"data_ids": ["mt~A-1-xps"]}},
            {"op": "get", "ids": ["A-1", "mt~A-1-xrd", "mt~A-1-xps"]},
        ],
    )
    rows = everything["rows"]
    assert {r["Data ID"] for r in rows} == {"A-1", "mt~A-1-xrd", "mt~A-1-xps"}
    by_id = {r["Data ID"]: r for r in rows}
    assert by_id["A-1"]["Type"] == "tool_state" and by_id["A-1"]["Status"] == "success"
    assert by_id["A-1"]["Physical Sample Name"] == "GaAs-001"
    assert by_id["A-1"]["Project Name"] == "qw"
    assert by_id["mt~A-1-xrd"]["Type"] == "xrd"
    assert [r["Data ID"] for r in narrowed["rows"]] == ["mt~A-1-xrd"]
    assert other["rows"] == []
    assert [r["Data ID"] for r in exact["rows"]] == ["mt~A-1-xps"]
    ts, xrd, xps = got["results"]
    assert ts["type"] == "ToolStateResult" and ts["data_id"] == "A-1"
    frame = ts["frame"]["data"]
    assert set(ts["frame"]["columns"]) == {
        "UNIX Timestamp",
        "Time",
        "substrate_temp",
        "growth_rate",
        "cell_temp",
    }
    t0_ms = int(T0.timestamp() * 1000)
    stamps = frame["UNIX Timestamp"]
    # process points every 10 s, tool-state readings 250 ms later: the SDK's outer join
    expected = sorted(
        [t0_ms + 10_000 * i for i in range(5)] + [t0_ms + 10_000 * i + 250 for i in range(5)]
    )
    assert stamps == expected
    at = {t: i for i, t in enumerate(stamps)}
    for i in range(5):
        assert frame["substrate_temp"][at[t0_ms + 10_000 * i]] == 20.0 + i
        assert frame["growth_rate"][at[t0_ms + 10_000 * i]] == 0.5 * i
        assert frame["cell_temp"][at[t0_ms + 10_000 * i + 250]] == 800.0 + i
    assert xrd["type"] == "XRDResult" and xrd["x"] == [30.0, 30.5, 31.0]
    assert xrd["y"] == [10.0, 900.0, 12.0]
    assert xps["type"] == "XPSResult" and xps["x"] == [285.0, 284.0, 283.0]
    assert xps["y"] == [5.0, 50.0, 7.0]
    # the reads are in acme's audit log as the key; beta's log has none of them
    reads = events(deployment, "acme", "sdk.timeseries")
    assert any(e["actor"].startswith("apikey:") and e["outcome"] == "allowed" for e in reads)
    assert events(deployment, "acme", "sdk.search")
    assert not events(deployment, "beta", "sdk.timeseries")


def test_other_org_revoked_and_unscoped_keys_refused_and_audited(deployment, http_service):
    seed(deployment.vault, "acme", "A-1", sample="GaAs-001", project="qw")
    beta = deployment.key("beta", READ)
    revoked = deployment.key("acme", READ)
    deployment.keys.revoke("acme", revoked.split("_")[1])
    no_met = deployment.key("acme", "read:process")
    # beta's key sees only beta (empty): acme's items do not exist for it
    b_search, b_get, r_search, m_search = sdk(
        http_service,
        beta,
        [
            {"op": "search"},
            {"op": "get", "ids": ["A-1"]},
            {"op": "search", "key": revoked},
            {"op": "search", "key": no_met},
        ],
    )
    assert b_search["rows"] == [] and b_get.get("results", []) == []
    r = requests.get(
        http_service.sdk_url + "tool-state/A-1/timeseries/", headers={"X-API-KEY": beta}, timeout=10
    )
    assert r.status_code == 404 and "detail" in r.json()
    denied = events(deployment, "beta", "sdk.timeseries")
    assert denied and denied[0]["outcome"] == "denied"
    assert not events(deployment, "acme", "sdk.timeseries")

    r = requests.get(
        http_service.sdk_url + "data_entries/", headers={"X-API-KEY": revoked}, timeout=10
    )
    assert r.status_code == 401
    assert r_search["error"] == "ClientError" and "401" in r_search["message"]
    r = requests.post(
        http_service.sdk_url + "tool-state/stream/chunk",
        json={
            "data_id": "A-1",
            "chunk_index": 0,
            "channel_name": "T",
            "timestamps": [1.0],
            "values": [1.0],
        },
        headers={"X-API-KEY": revoked},
        timeout=10,
    )
    assert r.status_code == 401
    assert deployment.rows("acme", "process/runs").num_rows == 1
    uses = [e for e in events(deployment, "acme", "apikey.use") if e["outcome"] == "denied"]
    assert any(e["detail"].get("reason") == "API key revoked" for e in uses)
    # read:process alone: runs yes, metrology no
    assert {r["Data ID"] for r in m_search["rows"]} == {"A-1"}
    ingest_only = deployment.key("acme", "ingest:tool_state")
    r = requests.get(
        http_service.sdk_url + "data_entries/", headers={"X-API-KEY": ingest_only}, timeout=10
    )
    assert r.status_code == 403
    r = requests.get(
        http_service.sdk_url + "xrd/mt~A-1-xrd", headers={"X-API-KEY": no_met}, timeout=10
    )
    assert r.status_code == 403
    denied = [
        e
        for e in events(deployment, "acme")
        if e["outcome"] == "denied" and e["action"] in ("sdk.search", "apikey.use")
    ]
    prefixes = {e["detail"].get("prefix") or e["actor"].split(":")[-1] for e in denied}
    assert ingest_only.split("_")[1] in prefixes and no_met.split("_")[1] in prefixes


@pytest.fixture
def lab_server(deployment, root_key, http_service, tmp_path):
    """A single-user ``jupyter server`` for acme on the same deployment (a ``Workspace``)."""
    from atomscale_lab.client.workspace import Workspace

    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB")}
    env.update(
        ATOMSCALE_HOME=str(deployment.home),
        ATOMSCALE_ROOT_KEY=root_key,
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
    )
    proc, url, token = start_server(
        env, tmp_path, "acme", tmp_path / "server.log", extra=["--ServerApp.log_level=WARN"]
    )
    yield Workspace(url=url, token=token)
    stop_server(proc)


def wait_for(fn, timeout=20.0):
    """Poll ``fn`` until it returns something other than None/False (or fail at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = fn()
        if out is not None and out is not False:
            return out
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def test_timeseries_streamer_lands_once_and_reads_back(deployment, http_service, lab_server):
    from atomscale_lab.client.widgets import LiveRun

    ws = lab_server
    key = deployment.key("acme", "ingest:tool_state," + READ, name="tool-pc")
    t0 = T0.timestamp()
    chunk0 = {
        "channel_name": "pressure",
        "timestamps": [t0 + 0.1 * i for i in range(10)],
        "values": [1e-7 * (i + 1) for i in range(10)],
        "units": "Torr",
    }
    steps = [
        {"do": "push", "chunk_index": 0, **chunk0},
        {"do": "push", "chunk_index": 0, **chunk0},  # a retried chunk
        {
            "do": "push_multi",
            "chunk_index": 1,
            "channels": {
                "pressure": {
                    "timestamps": [t0 + 1.0 + 0.1 * i for i in range(10)],
                    "values": [2e-7] * 10,
                    "units": "Torr",
                },
                "cell_temp": {
                    "timestamps": [t0 + 1.0 + 0.1 * i for i in range(10)],
                    "values": [900.0 + i for i in range(10)],
                    "units": "degC",
                },
            },
        },
        {
            "do": "run",
            "channel_name": "shutter",
            "units": "open",
            "chunks": [
                [[t0 + 2.0 + k + 0.5 * i for i in range(2)], [float(k), float(k)]] for k in range(3)
            ],
        },
    ]
    out = sdk(
        http_service,
        key,
        {
            "op": "stream",
            "init": {"stream_name": "Growth Run 7"},
            "steps": steps,
            "finalize": False,
        },
    )
    assert "error" not in out, out
    data_id = out["data_id"]
    assert data_id == "Growth-Run-7"
    run_id = "Growth-Run-7"

    # live: the run is active in the catalogue the sidebar pages, and LiveRun follows it
    frame = wait_for(lambda: (lambda f: f if len(f) == 36 else None)(ws.tool_state(run_id)))
    assert set(ws.runs(status="active")["run_id"]) == {run_id}
    live = LiveRun(ws, run_id, category="tool_state", autostart=False)
    assert live.poll() == 36 and live.status == "active"
    # through Workspace: every point exactly once
    counts = frame.groupby("channel").size().to_dict()
    assert counts == {"pressure": 20, "cell_temp": 10, "shutter": 6}
    p = frame[frame["channel"] == "pressure"].sort_values("time")
    assert [int(t.timestamp() * 1000) for t in p["time"][:10]] == [
        round(t0 * 1000) + 100 * i for i in range(10)
    ]
    assert p["value"].tolist()[:10] == pytest.approx([1e-7 * (i + 1) for i in range(10)])

    # a retry of the same chunk over HTTP is acknowledged, not stored; other points are refused
    body = {"data_id": data_id, "chunk_index": 0, **chunk0}
    r = requests.post(
        http_service.sdk_url + "tool-state/stream/chunk",
        json=body,
        headers={"X-API-KEY": key},
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["duplicate"] is True
    r = requests.post(
        http_service.sdk_url + "tool-state/stream/chunk",
        json={**body, "values": [0.0] * 10},
        headers={"X-API-KEY": key},
        timeout=10,
    )
    assert r.status_code == 409
    # bad input: a clear 400 naming the field, and nothing stored
    r = requests.post(
        http_service.sdk_url + "tool-state/stream/chunk",
        json={**body, "chunk_index": 5, "values": [1.0]},
        headers={"X-API-KEY": key},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["field"] == "values"
    r = requests.post(
        http_service.sdk_url + "tool-state/stream/chunk/multi",
        data=b"{nope",
        headers={"X-API-KEY": key},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = requests.post(
        http_service.sdk_url + f"tool-state/stream/{data_id}/finalize",
        headers={"X-API-KEY": key},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["status"] == "success"
    # after finalize: a retry is still acknowledged, a new chunk is refused
    r = requests.post(
        http_service.sdk_url + "tool-state/stream/chunk",
        json=body,
        headers={"X-API-KEY": key},
        timeout=10,
    )
    assert r.status_code == 200 and r.json()["duplicate"] is True
    r = requests.post(
        http_service.sdk_url + "tool-state/stream/chunk",
        json={**body, "chunk_index": 99},
        headers={"X-API-KEY": key},
        timeout=10,
    )
    assert r.status_code == 409
    # the data server refreshes its catalogue from the runs table's log in the background
    assert wait_for(lambda: live.poll() == 0 and live.status == "complete" or None)

    table = deployment.rows("acme", "tool_state/readings", run_id)
    assert table.num_rows == 36
    got, found = sdk(
        http_service,
        key,
        [{"op": "get", "ids": [data_id]}, {"op": "search", "kwargs": {"keywords": "Growth-Run-7"}}],
    )
    frame = got["results"][0]["frame"]["data"]
    stamps = frame["UNIX Timestamp"]
    assert len(stamps) == len(set(stamps)) == 20 + 6
    assert stamps[:10] == [round(t0 * 1000) + 100 * i for i in range(10)]
    assert frame["pressure"][:10] == pytest.approx([1e-7 * (i + 1) for i in range(10)])
    assert frame["cell_temp"][10:20] == [900.0 + i for i in range(10)]
    assert [(r["Data ID"], r["Status"]) for r in found["rows"]] == [(data_id, "success")]
    assert events(deployment, "acme", "sdk.stream_finalize")


@pytest.mark.parametrize("state_backend", ["sqlite", "postgres"], indirect=True)
def test_stream_links_sample_project_tags_and_clock(deployment, http_service):
    seed(deployment.vault, "acme", "A-1", sample="GaAs-001", project="qw")
    key = deployment.key("acme", "ingest:tool_state," + READ)
    project = entity_id("acme", "project", "qw")
    t0 = time.time()
    out = sdk(
        http_service,
        key,
        {
            "op": "stream",
            "init": {
                "stream_name": "run with links",
                "physical_sample": "GaN-17",
                "project_id": project,
                "tags": ["calibration"],
            },
            "steps": [
                {
                    "do": "push",
                    "chunk_index": 0,
                    "channel_name": "T",
                    "timestamps": [t0],
                    "values": [1.0],
                }
            ],
        },
        clock_sync=True,
    )
    assert "error" not in out, out
    assert abs(out["clock"]["offset_ms"]) < 1000
    found, samples = sdk(
        http_service,
        key,
        [{"op": "search", "kwargs": {"keywords": "calibration"}}, {"op": "samples"}],
    )
    row = found["rows"]
    assert [r["Data ID"] for r in row] == [out["data_id"]]
    assert row[0]["Physical Sample Name"] == "GaN-17" and row[0]["Project Name"] == "qw"
    names = {r["Physical Sample Name"] for r in samples["rows"]}
    assert {"GaAs-001", "GaN-17"} <= names
    assert events(deployment, "acme", "sdk.tag_attach")


def test_unavailable_endpoints_answer_404_json_and_http_serves_both_apis(deployment, http_service):
    key = deployment.key("acme", READ)
    for path in (
        "rheed/abc/timeseries/",
        "similarity/rheed/abc/matches/",
        "changepoints/",
        "summary/abc",
    ):
        r = requests.get(http_service.sdk_url + path, headers={"X-API-KEY": key}, timeout=10)
        assert r.status_code == 404 and r.json()["detail"]
    res = sdk(http_service, key, {"op": "raw", "path": "changepoints/"})
    assert res == {"value": None}
    r = requests.get(http_service.sdk_url + "gateway/time", timeout=10)
    doc = r.json()
    assert r.status_code == 200 and abs(doc["receivedAtUnixMs"] / 1000 - time.time()) < 60
    # --http serves the native ingest API too (with its bearer key)
    native = deployment.key("acme", "ingest:process")
    r = requests.post(
        http_service.url + "/streams",
        json={"run_id": "N-1", "tool": "mbe1", "category": "process"},
        headers={"Authorization": f"Bearer {native}"},
        timeout=10,
    )
    assert r.status_code == 201 and r.json()["status"] == "active"


def test_http_mode_refuses_non_loopback(deployment, root_key):
    env = dict(os.environ, ATOMSCALE_HOME=str(deployment.home), ATOMSCALE_ROOT_KEY=root_key)
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "atomscale-lab"),
            "ingest",
            "serve",
            "--http",
            "--ip",
            "0.0.0.0",
            "--port",
            "1",
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode != 0


def test_channels_split_by_scope_and_clashing_names_qualified(deployment, tmp_path):
    from atomscale_lab.errors import PermissionDenied
    from atomscale_lab.ingest.apikeys import ApiKeyInfo
    from atomscale_lab.ingest.core import IngestCore
    from atomscale_lab.ingest.sdkapi import SdkApi

    seed(deployment.vault, "acme", "A-1", sample="GaAs-001", project="qw")
    store = deployment.vault.store("acme")
    store.table("tool_state/readings").write(
        pa.table(
            {  # a second tool with the same channel
                "run_id": ["A-1"],
                "tool": ["pyro-2"],
                "time": pa.array([T0], TS),
                "channel": ["cell_temp"],
                "value": [42.0],
                "setpoint": [None],
                "unit": ["degC"],
            }
        )
    )
    core = IngestCore(deployment.vault, tmp_path / "ingest")
    api = SdkApi(core)
    try:
        both = ApiKeyInfo("0123456789", "acme", "", ("read:process", "read:tool_state"))
        props = api.timeseries(both, "A-1")["properties"]
        assert set(props) == {
            "substrate_temp",
            "growth_rate",
            "mbe-1:cell_temp",
            "pyro-2:cell_temp",
        }
        assert props["pyro-2:cell_temp"]["values"].tolist() == [42.0]
        assert props["mbe-1:cell_temp"]["values"].tolist() == [800.0 + i for i in range(5)]
        assert props["substrate_temp"]["units"] == "degC"
        assert props["growth_rate"]["relative_time_seconds"].tolist() == [
            10.0 * i for i in range(5)
        ]
        process_only = ApiKeyInfo("0123456789", "acme", "", ("read:process",))
        assert set(api.timeseries(process_only, "A-1")["properties"]) == {
            "substrate_temp",
            "growth_rate",
        }
        metrology_only = ApiKeyInfo("0123456789", "acme", "", ("read:metrology",))
        with pytest.raises(PermissionDenied):
            api.timeseries(metrology_only, "A-1")
        assert [r["data_id"] for r in api.search(metrology_only, {"data_type": ["xps"]})] == [
            "mt~A-1-xps"
        ]
    finally:
        api.close()
        core.close()


@pytest.mark.parametrize("state_backend", ["sqlite", "postgres"], indirect=True)
def test_sdk_chunks_survive_kill_and_retries_after_restart_store_once(deployment, root_key):
    svc = HttpService(deployment.home, root_key)
    svc.extra += ["--flush-interval", "60"]  # acknowledged chunks sit in the WAL when killed
    svc.start()
    try:
        key = deployment.key("acme", "ingest:tool_state,read:tool_state")
        url, h = svc.sdk_url, {"X-API-KEY": key}
        r = requests.post(
            url + "tool-state/stream/initialize",
            json={"stream_name": "crash", "points_per_chunk": 3, "project_id": None},
            headers=h,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        data_id = r.json()["data_id"]
        t0 = T0.timestamp()
        chunks = [
            {
                "data_id": data_id,
                "chunk_index": k,
                "channel_name": "T",
                "timestamps": [t0 + 3 * k + i for i in range(3)],
                "values": [float(3 * k + i) for i in range(3)],
                "units": "degC",
            }
            for k in range(4)
        ]
        for c in chunks:
            r = requests.post(url + "tool-state/stream/chunk", json=c, headers=h, timeout=10)
            assert r.status_code == 200 and r.json()["duplicate"] is False
        svc.kill()
        svc.start()
        # the client never saw the last acknowledgement: it sends that chunk again
        r = requests.post(url + "tool-state/stream/chunk", json=chunks[-1], headers=h, timeout=10)
        assert r.status_code == 200 and r.json()["duplicate"] is True
        r = requests.post(url + f"tool-state/stream/{data_id}/finalize", headers=h, timeout=30)
        assert r.status_code == 200 and r.json()["points"] == 12
        table = deployment.rows("acme", "tool_state/readings", data_id)
        assert sorted(table.column("value").to_pylist()) == [float(i) for i in range(12)]
    finally:
        svc.stop()
        svc.http.close()
