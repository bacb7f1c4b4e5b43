"""Benchmark of the notebook experience: REST transfer vs direct store reads, catalogue latency,
RunBrowser first render.

Builds a throw-away deployment (100k runs; process series of 50 runs, 1M rows), starts a real
``jupyter server`` with the extension on 127.0.0.1, and prints ``name: value`` lines:

- ``arrow_one_run_*``: one run's process series as an Arrow table through
  ``runs/{id}/process?format=arrow`` vs ``OrgTable.read(run_ids=[id])`` in this process, medians
  of 7 with REST and direct interleaved (order alternating); ratio = direct / REST (goal ≥ 0.5);
- ``frame_one_run_*``: the same as pandas DataFrames (``Workspace.process`` vs
  ``read().to_pandas()``);
- ``arrow_1m_*``: the whole 1M-row series table through ``tables/process/series`` vs ``read()``;
- ``catalog_page_p50_ms`` / ``_p99_ms``: ``runs`` pages (mixed filters, sorts, pages) over 100k
  runs, measured at the client (goal p99 < 100 ms); every page asked for exists (an untimed
  one-row request learns each filter's total first; filters matching nothing are redrawn);
- ``runbrowser_first_render_cold_s``: the first ``RunBrowser`` (facets + first page) of a fresh
  client process, imports done, against a server that has built its catalogue but never served
  facets (goal < 1 s); ``runbrowser_render_warm_s``: median of 3 later renders in this process.
- ``rheed_one_run_ms``: RHEED analysis of one run in the kernel (frames in memory), median;
  ``rheed_one_run_rest_ms``: ``Workspace.rheed`` of one run through the REST API (3 requests);
  ``rheed_1000_runs_s``: the analysis of ``--rheed-runs`` generated runs, one after the other;
- ``overlay_10_runs_first_render_s``: ``overlay(ws, 10 runs)`` fetched, analysed, aligned and
  rendered as a plotly widget, the first figure of the process (goal < 1 s), in an org of
  ``--runs`` runs; ``_warm_interactive_s`` the same again, ``_warm_with_png_s`` with the static
  PNG for exports added (medians of 3).

Usage: ``python bench/notebook.py [--runs 100000] [--rows 1000000] [--requests 400]
[--rheed-runs 1000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: tests.support

from tests.support import labdata  # noqa: E402
from tests.support.nbserver import start_server, stop_server  # noqa: E402

TS = pa.timestamp("us", tz="UTC")
DEMO_RUNS = 40


def series_rows(n_rows: int, n_runs: int) -> pa.Table:
    """``n_rows`` process points spread over ``n_runs`` runs, 4 channels, 1 s apart."""
    per_run = n_rows // n_runs
    per_ch = per_run // 4
    run_idx = np.repeat(np.arange(n_runs), per_ch * 4)
    ch_idx = np.tile(np.repeat(np.arange(4), per_ch), n_runs)
    k = np.tile(np.arange(per_ch), 4 * n_runs)
    t0 = int(labdata.T0.timestamp() * 1e6)
    times = t0 + run_idx * 6 * 3600 * 1_000_000 + k * 1_000_000
    names = np.array(["rheed_intensity", "substrate_temp", "growth_rate", "pressure"])
    units = np.array(["a.u.", "degC", "nm/min", "Torr"])
    values = np.sin(k / 50.0) * 100 + ch_idx * 10 + run_idx
    return pa.table(
        {
            "run_id": pa.array([labdata.run_id(i) for i in range(n_runs)]).take(pa.array(run_idx)),
            "time": pa.array(times, pa.int64()).cast(TS),
            "channel": pa.array(names[ch_idx]),
            "value": pa.array(values, pa.float64()),
            "unit": pa.array(units[ch_idx]),
        }
    )


def timed(fn, repeat: int = 7) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls (after one warm-up), and the last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def interleaved(direct, rest, repeat: int = 7) -> tuple[float, float, object, object]:
    """Median wall times of ``direct()`` and ``rest()`` over ``repeat`` rounds after one warm-up
    each, the order alternating per round (load from other processes hits both alike); and the
    last results."""
    d_out, r_out = direct(), rest()
    d_times, r_times = [], []
    for i in range(repeat):
        pair = [(direct, d_times), (rest, r_times)]
        for fn, acc in pair if i % 2 == 0 else pair[::-1]:
            t0 = time.perf_counter()
            out = fn()
            acc.append(time.perf_counter() - t0)
            if fn is direct:
                d_out = out
            else:
                r_out = out
    return statistics.median(d_times), statistics.median(r_times), d_out, r_out


# The first RunBrowser of a fresh kernel-like process: imports before the clock starts.
COLD_RENDER = r"""
import json, sys, time
from atomscale_lab.client.workspace import Workspace
from atomscale_lab.client.widgets import RunBrowser
ws = Workspace(url=sys.argv[1], token=sys.argv[2])
t0 = time.perf_counter()
b = RunBrowser(ws, per_page=25)
print(json.dumps({"s": time.perf_counter() - t0, "total": b.total}))
"""


def main() -> None:
    """Build the deployment, start the server, measure, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--rheed-runs", type=int, default=1000)
    args = ap.parse_args()

    from atomscale_lab.client.widgets import RunBrowser
    from atomscale_lab.client.workspace import Workspace
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.kms import generate_root_key
    from atomscale_lab.vault.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="atomscale-bench-"))
    home = tmp / "home"
    home.mkdir()
    os.environ["ATOMSCALE_HOME"] = str(home)
    os.environ["ATOMSCALE_ROOT_KEY"] = generate_root_key()
    for v in ("ATOMSCALE_ROOT_KEY_FILE", "ATOMSCALE_DATA_ROOT", "ATOMSCALE_CONTEXT_ROOT"):
        os.environ.pop(v, None)

    t0 = time.perf_counter()
    vault = Vault(Settings.load(home))
    vault.create_org("bench", "us")
    store = vault.store("bench")
    store.table("process/runs").write(labdata.runs_table(args.runs), actor="bench")
    n_series_runs = 50
    store.table("process/series").write(series_rows(args.rows, n_series_runs), actor="bench")
    from atomscale_lab.cli import demo

    # growth runs with RHEED traces for the science figures (beside the catalogue's runs)
    demo.generate((store, vault.context("bench")), runs=DEMO_RUNS, seed=5, actor="bench")
    print(f"setup_s: {time.perf_counter() - t0:.1f}")
    series = store.table("process/series")
    total_rows = series.num_rows()
    print(f"series_rows: {total_rows}")

    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB")}
    env.update({"JUPYTER_RUNTIME_DIR": str(tmp / "rt"), "JUPYTER_CONFIG_DIR": str(tmp / "cfg")})
    proc, url, token = start_server(
        env, tmp, "bench", tmp / "server.log", extra=["--ServerApp.log_level=WARN"]
    )
    try:
        ws = Workspace(url=url, token=token)

        # catalogue: the first request builds it (read + index 100k runs)
        t_build = time.perf_counter()
        ws.runs_page(per_page=50)
        print(f"catalog_first_request_s: {time.perf_counter() - t_build:.2f}")

        # RunBrowser first render, cold: fresh client process, first facets request
        p = subprocess.run(
            [sys.executable, "-c", COLD_RENDER, url, token],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        cold = json.loads(p.stdout.strip().splitlines()[-1])
        assert cold["total"] == args.runs

        print(
            "held_equal: REST and direct interleaved (order alternating), same run and "
            "columns, one warm-up each; catalogue pages all exist"
        )
        # one run: REST vs direct
        rid = labdata.run_id(7)
        direct_s, rest_s, t_direct, t_rest = interleaved(
            lambda: series.read(run_ids=[rid]), lambda: ws._arrow(f"runs/{rid}/process")[0]
        )
        assert t_rest.num_rows == t_direct.num_rows, (t_rest.num_rows, t_direct.num_rows)
        print(f"arrow_one_run_rows: {t_direct.num_rows}")
        print(f"arrow_one_run_direct_ms: {direct_s * 1000:.1f}")
        print(f"arrow_one_run_rest_ms: {rest_s * 1000:.1f}")
        print(f"arrow_one_run_ratio: {direct_s / rest_s:.2f}")
        direct_s, rest_s, f_direct, f_rest = interleaved(
            lambda: series.read(run_ids=[rid]).to_pandas(), lambda: ws.process(rid)
        )
        assert len(f_rest) == len(f_direct)
        print(f"frame_one_run_direct_ms: {direct_s * 1000:.1f}")
        print(f"frame_one_run_rest_ms: {rest_s * 1000:.1f}")
        print(f"frame_one_run_ratio: {direct_s / rest_s:.2f}")

        # the 1M-row frame: REST (Arrow table stream) vs direct
        direct_s, rest_s, t_direct, t_rest = interleaved(
            lambda: series.read(), lambda: ws.table("process/series")
        )
        assert t_rest.num_rows == t_direct.num_rows == total_rows
        mb = sum(b.size for c in t_rest.columns for ch in c.chunks for b in ch.buffers() if b)
        print(f"arrow_1m_rows: {t_rest.num_rows}")
        print(f"arrow_1m_mb: {mb / 1e6:.1f}")
        print(f"arrow_1m_direct_s: {direct_s:.3f}")
        print(f"arrow_1m_rest_s: {rest_s:.3f}")
        print(f"arrow_1m_rest_mb_per_s: {mb / 1e6 / rest_s:.0f}")
        print(f"arrow_1m_ratio: {direct_s / rest_s:.2f}")

        # catalogue page latency: a mix of what a browser asks for
        rng = np.random.default_rng(1)
        sess = requests.Session()
        sess.trust_env = False
        sess.headers["Authorization"] = f"token {token}"
        sorts = ["start", "run_id", "sample", "project", "status", "end"]
        t_start = labdata.T0
        lat, redrawn = [], 0
        for i in range(args.requests):
            while True:
                p = {
                    "per_page": "50",
                    "sort": sorts[i % len(sorts)],
                    "order": "asc" if i % 2 else "desc",
                }
                kind = i % 5
                if kind == 1:
                    p["project"] = labdata.PROJECTS[i % 3]
                elif kind == 2:
                    p["q"] = f"s-{int(rng.integers(0, 99999)):05d}"[:6]
                elif kind == 3:
                    a = t_start + timedelta(days=int(rng.integers(0, 20000)))
                    p["start"] = a.isoformat()
                    p["end"] = (a + timedelta(days=90)).isoformat()
                elif kind == 4:
                    p.update(instrument="pld-2", status="complete,error")
                probe = sess.get(
                    url + "atomscale/api/v1/runs",
                    params={**p, "per_page": "1", "page": "1"},
                    timeout=30,
                )
                assert probe.status_code == 200, probe.text
                total = probe.json()["total"]
                if total:
                    break
                redrawn += 1
                assert redrawn < 10 * args.requests, f"filters keep matching nothing: {p}"
            pages = -(-total // 50)
            p["page"] = str(int(rng.integers(1, min(pages, 200) + 1)))
            t0 = time.perf_counter()
            r = sess.get(url + "atomscale/api/v1/runs", params=p, timeout=30)
            lat.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
            assert r.json()["runs"], p  # the page exists
        lat.sort()
        base = []
        for _ in range(100):  # the floor: authentication, routing, JSON, no data
            t0 = time.perf_counter()
            sess.get(url + "atomscale/api/v1/openapi.json", timeout=30)
            base.append((time.perf_counter() - t0) * 1000)
        print(f"request_floor_p50_ms: {statistics.median(base):.1f}")
        audit, alat = vault.audit("bench"), []
        for _ in range(100):  # each data request writes one event before answering
            t0 = time.perf_counter()
            audit.record("bench", "data.read", table="process/runs", rows=0)
            alat.append((time.perf_counter() - t0) * 1000)
        alat.sort()
        print(f"audit_event_p50_ms: {statistics.median(alat):.1f}")
        print(f"audit_event_p99_ms: {alat[98]:.1f}")
        print(f"catalog_runs: {args.runs}")
        print(f"catalog_page_requests: {len(lat)}")
        print(f"catalog_filters_redrawn_empty: {redrawn}")
        print(f"catalog_page_p50_ms: {statistics.median(lat):.1f}")
        print(f"catalog_page_p99_ms: {lat[int(len(lat) * 0.99) - 1]:.1f}")
        print(f"catalog_page_max_ms: {lat[-1]:.1f}")

        # RunBrowser renders (facets + first page) with 100k runs: cold above, warm here
        renders = []
        for _ in range(3):
            t0 = time.perf_counter()
            b = RunBrowser(ws, per_page=25)
            renders.append(time.perf_counter() - t0)
        assert b.total == args.runs + DEMO_RUNS and len(b.table.options) == 25
        print(f"runbrowser_first_render_cold_s: {cold['s']:.3f}")
        print(f"runbrowser_render_warm_s: {statistics.median(renders):.3f}")
        t0 = time.perf_counter()
        b.go(b.pages // 2)
        print(f"runbrowser_page_change_s: {time.perf_counter() - t0:.3f}")
        science(ws, args)
        print(f"load_average_1m: {os.getloadavg()[0]:.1f}")
        print(f"measured_at: {datetime.now(UTC).isoformat(timespec='seconds')}")
    finally:
        stop_server(proc)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def science(ws, args) -> None:
    """RHEED analysis (one run, many runs) and the first render of a 10-run overlay."""
    from atomscale_lab import rheed
    from atomscale_lab.cli import demo
    from atomscale_lab.client.widgets import overlay

    mbe = [r for r in ws.runs(instrument="MBE-1", status="complete").run_id]
    rid = mbe[0]
    proc, tools = ws.process(rid), ws.tool_state(rid)
    one_s, _ = timed(lambda: rheed.analyze_frames(proc, tools), repeat=15)
    print(f"rheed_one_run_ms: {one_s * 1000:.1f}")
    rest_s, df = timed(lambda: ws.rheed(rid))
    assert df.status.iloc[0] == "ok"
    print(f"rheed_one_run_rest_ms: {rest_s * 1000:.1f}")

    data = demo.build(args.rheed_runs, seed=9, points_per_run=600)
    series = dict(iter(data.series.to_pandas().groupby("run_id")))
    states = dict(iter(data.tool_state.to_pandas().groupby("run_id")))
    t0, ok = time.perf_counter(), 0
    for run_id in data.truth:
        if run_id in series:
            r = rheed.analyze_frames(series[run_id], states.get(run_id))
            ok += int((r.windows["status"] == "ok").any())
    print(f"rheed_runs_analysed: {len(data.truth)} ({ok} with oscillations)")
    print(f"rheed_1000_runs_s: {time.perf_counter() - t0:.2f}")

    ten = (mbe + [r for r in ws.runs(instrument="PLD-2").run_id])[:10]

    def render(static: bool) -> float:
        t0 = time.perf_counter()
        plot = overlay(ws, ten, at="growth_start", static=static)
        bundle = plot._repr_mimebundle_()
        took = time.perf_counter() - t0
        assert ("image/png" in bundle) == static and len(plot.figure.data) >= 10
        return took

    # the first figure of a fresh kernel also pays for plotly's first use (~1 s)
    print(f"overlay_10_runs_first_render_s: {render(static=False):.3f}")
    warm = statistics.median(render(False) for _ in range(3))
    print(f"overlay_10_runs_warm_interactive_s: {warm:.3f}")
    with_png = statistics.median(render(True) for _ in range(3))
    print(f"overlay_10_runs_warm_with_png_s: {with_png:.3f}")


if __name__ == "__main__":
    main()
