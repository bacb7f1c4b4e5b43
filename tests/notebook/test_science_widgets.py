"""Science views against a real server over demo data: RHEED analysis through the REST API,
interactive figures with their static images, the time-window explorer, run comparison."""

import base64

import numpy as np
import pandas as pd
import pytest

from atomscale_lab.client import compare
from atomscale_lab.client.widgets import RheedExplorer, overlay, plot_metrology, plot_rheed
from atomscale_lab.client.widgets.metrology import peaks_html
from atomscale_lab.client.workspace import Workspace

WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def ws(demo_server):
    return Workspace(url=demo_server["url"], token=demo_server["token"])


@pytest.fixture(scope="module")
def mbe_runs(ws):
    runs = ws.runs(instrument="MBE-1", status="complete")
    # (the imported tool log is an MBE-1 run too, without RHEED)
    ids = [r for r in runs.run_id if r != "A-0000-toollog"]
    assert len(ids) >= 4
    return ids


def png_size(bundle) -> int:
    data = base64.b64decode(bundle["image/png"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return len(data)


def test_rheed_frame_of_runs_with_and_without_rheed(ws, mbe_runs):
    df = ws.rheed([mbe_runs[0], "A-0000-toollog"], material="GaAs")
    mine = df[df.run_id == mbe_runs[0]]
    # MBE-1 grows GaAs, then AlGaAs with the Al shutter open, then GaAs again: three windows
    assert list(mine.shutters) == ["Ga", "Al+Ga", "Ga"]
    w = mine.iloc[0]
    assert w.status == "ok" and 0.5 < w.rate_ml_s < 1.3
    assert w.rate_nm_s == pytest.approx(w.rate_ml_s * 0.28267)
    logged = ws.process(mbe_runs[0], channels=["rheed_oscillation_period"]).value.median()
    assert w.period_s == pytest.approx(logged, rel=0.02)
    assert w.monolayers == pytest.approx(w.duration_s / w.period_s)
    other = df[df.run_id == "A-0000-toollog"]
    assert list(other.status) == ["no RHEED"]
    layers = ws.rheed(mbe_runs[0], layers=True)
    assert len(layers) == w.layers_observed and layers.layer.is_monotonic_increasing


def test_plots_are_interactive_with_a_static_image(ws, mbe_runs):
    p = plot_rheed(ws, mbe_runs[0], material="GaAs")
    bundle = p._repr_mimebundle_()
    assert WIDGET in bundle and png_size(bundle) > 20_000
    fig = p.figure
    trace = fig.data[0]
    assert "UTC" in trace.hovertemplate and fig.layout.xaxis.title.text == "time (UTC)"
    # the x range is the RHEED trace (about a minute), not the two-hour run
    lo, hi = (pd.Timestamp(x) for x in fig.layout.xaxis.range)
    assert (hi - lo).total_seconds() < 600
    assert "ML/s" in fig.layout.title.text and "nm/s" in fig.layout.title.text


def test_xrd_xps_afm_conventions(ws, mbe_runs):
    xrd = plot_metrology(ws, mbe_runs[:3], "XRD").figure
    assert xrd.layout.yaxis.type == "log" and xrd.layout.xaxis.title.text == "2θ (°)"
    lines = [t for t in xrd.data if t.mode == "lines"]
    assert len(lines) == 3
    # scans are offset by decades: the baselines differ by about 100x each
    base = [np.median(t.y) for t in lines]
    assert base[1] / base[0] > 30 and base[2] / base[1] > 30
    labels = [t for t in xrd.data if t.mode == "text"]
    for t in labels:  # close peaks share one label: no two labels of a scan within 5 % of the axis
        xs = sorted(t.x)
        assert all(b - a > 0.05 * 2.0 for a, b in zip(xs, xs[1:], strict=False))
    xps = plot_metrology(ws, mbe_runs[:2], "XPS").figure
    assert xps.layout.xaxis.autorange == "reversed"
    names = [s for t in xps.data if t.mode == "text" for s in t.text]
    assert {"Ga 3d", "As 3d", "C 1s", "O 1s"} <= set(names)
    afm = plot_metrology(ws, mbe_runs[:3], "AFM")
    bar = afm.figure.data[0]
    assert bar.type == "bar" and len(bar.y) == 3 and all(0 < v < 5 for v in bar.y)
    assert png_size(afm._repr_mimebundle_()) > 5_000  # roughness drawn, not "no spectra"


def test_explorer_analyses_the_zoomed_window(ws, mbe_runs):
    ex = RheedExplorer(ws, mbe_runs[0], material="GaAs")
    whole = ex.analysis.windows.iloc[0]
    t = pd.to_datetime(ex.full.trace.time, utc=True).sort_values()
    ex.window = (t.iloc[120], t.iloc[300])  # what a zoom in the browser sends
    part = ex.analysis.windows.iloc[0]
    assert ex.window[0] == t.iloc[120]
    assert part.layers_observed < whole.layers_observed
    assert part.period_s == pytest.approx(whole.period_s, rel=0.01)
    assert pd.Timestamp(part.rheed_start) >= t.iloc[120]
    assert "layers observed" in ex.table.value


def test_overlay_aligned_at_growth_start(ws, mbe_runs):
    p = overlay(ws, mbe_runs[:4], at="growth_start")
    lines = [t for t in p.figure.data if t.mode == "lines"]
    assert len(lines) == 4
    for t in lines:  # every run's intensity drops at t = 0 (growth start), not before
        x, y = np.asarray(t.x), np.asarray(t.y)
        assert np.median(y[x < -0.5]) > np.median(y[(x > 0.3) & (x < 3)]) * 1.1
    assert p.figure.layout.shapes  # the first run's layers shaded
    with pytest.raises(ValueError, match="align at one of"):
        overlay(ws, mbe_runs[:2], at="lunch")


def test_side_by_side_and_similar_runs(ws, mbe_runs):
    feats = compare.run_features(ws, mbe_runs[:4])
    table = compare.side_by_side(feats)
    assert list(table.columns) == mbe_runs[:4]
    for row in (
        "cell_Ga_temperature setpoint [°C]",
        "substrate temperature [°C]",
        "RHEED rate [ML/s]",
        "XRD film_peak_fwhm [°]",
        "AFM rms_roughness [nm]",
    ):
        assert row in table.index and table.loc[row].notna().all(), row
    d = compare.distances(feats, mbe_runs[0])
    assert mbe_runs[0] not in d.index and (d >= 0).all() and d.is_monotonic_increasing
    like = compare.similar_runs(ws, mbe_runs[0], k=2)
    assert list(like.run_id) == list(d.index[:2]) or len(like) == 2
    assert set(like.instrument) == {"MBE-1"}


def test_metrology_viewer_escapes_run_ids():
    items = pd.DataFrame(
        {"run_id": ["<img src=x onerror=alert(1)>", "R-1"], "peaks": [[31.5], [32.0]]}
    )
    out = peaks_html(items)
    assert "<img" not in out and "&lt;img src=x onerror=alert(1)&gt;: 31.50" in out
    assert "R-1: 32.00" in out


def test_rest_rheed_route(demo_server, mbe_runs):
    import requests

    s = requests.Session()
    s.trust_env = False
    s.headers["Authorization"] = f"token {demo_server['token']}"
    base = demo_server["url"] + "atomscale/api/v1/runs/"
    r = s.get(
        base + mbe_runs[0] + "/rheed", params={"max_points": 100, "ml_nm": 0.28267}, timeout=30
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    w = doc["windows"][0]
    assert w["status"] == "ok" and w["rate_nm_s"] == pytest.approx(w["rate_ml_s"] * 0.28267)
    assert len(doc["layers"]) == w["layers_observed"]
    assert 50 <= len(doc["trace"]["time"]) <= 110 and len(doc["trace"]["value"]) == len(
        doc["trace"]["time"]
    )
    assert doc["trace"]["time"] == sorted(doc["trace"]["time"])
    assert (
        s.get(base + "A-0000-toollog/rheed", timeout=30).json()["windows"][0]["status"]
        == "no RHEED"
    )
    assert s.get(base + "nope/rheed", timeout=30).status_code == 404
    assert (
        s.get(base + mbe_runs[0] + "/rheed", params={"ml_nm": "x"}, timeout=30).status_code == 400
    )
    assert s.get(base + mbe_runs[0] + "/rheed", params={"bogus": 1}, timeout=30).status_code == 400
    assert requests.get(base + mbe_runs[0] + "/rheed", timeout=30).status_code in (401, 403)
    # a repeated request is answered from the server's cache, and is audited all the same
    ws = Workspace(url=demo_server["url"], token=demo_server["token"])

    def rheed_reads():
        ev = ws.audit(action="data.read", limit=500)
        return sum(
            1 for d in ev.detail if d.get("query") == "rheed" and d.get("run_ids") == [mbe_runs[1]]
        )

    before = rheed_reads()
    first = s.get(base + mbe_runs[1] + "/rheed", timeout=30).json()
    again = s.get(base + mbe_runs[1] + "/rheed", timeout=30).json()
    assert first == again and rheed_reads() == before + 2


def test_an_empty_table_streams_as_arrow(sparse_server):
    # an org without process data: the table is an Arrow stream of no rows, not a JSON answer
    ws = Workspace(url=sparse_server["url"], token=sparse_server["token"])
    t = ws.table("process/series", columns=["run_id", "channel", "value"])
    assert t.num_rows == 0 and t.schema.names == ["run_id", "channel", "value"]
    assert ws.rheed("T-1").status.tolist() == ["no RHEED"]


def test_metrology_viewer_shows_afm_roughness_and_xrd_on_a_log_axis(ws, mbe_runs):
    from atomscale_lab.client.widgets import MetrologyViewer

    v = MetrologyViewer(ws, run_ids=mbe_runs[:3], technique="AFM")
    bar = v.plot.figure.data[0]
    assert bar.type == "bar" and len(bar.y) == 3
    values = ws.metrology(run_id=mbe_runs[:3], technique="AFM").set_index("run_id")
    assert sorted(bar.y) == sorted(values.result_value)
    outputs = v.output.outputs
    assert len(outputs) == 1 and "image/png" in outputs[0]["data"]
    v.technique.value = "XRD"  # XRD switches to a log axis
    assert v.log_y.value is True and v.plot.figure.layout.yaxis.type == "log"
    v.log_y.value = False
    assert v.plot.figure.layout.yaxis.type == "linear"
