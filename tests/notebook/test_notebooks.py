"""The example notebooks, executed with nbclient against a running server over demo data.

The kernel gets only the server's URL and token (no root key, no data root): everything it reads
comes through the REST API.
"""

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from tests.support.nbserver import kernel_env

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def run_notebook(name, server, tmp_path, probe: str | None = None):
    """Execute a notebook; ``probe`` is a cell appended by the test that prints one JSON line of
    values computed from the notebook's variables (the test reads the science, not the prose)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{name} is committed with outputs"
    )
    if probe:
        nb.cells.append(
            nbformat.v4.new_code_cell(
                "import json as _json\nprint('PROBE ' + _json.dumps(" + probe + ", default=str))"
            )
        )
    env = kernel_env(server["url"], server["token"])
    env.pop("ATOMSCALE_HOME", None)
    client = NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=env)
    return nb


def probed(nb) -> dict:
    """The values the probe cell printed."""
    out = nb.cells[-1].outputs
    line = next(o["text"] for o in out if o.get("name") == "stdout" and "PROBE " in o["text"])
    return json.loads(line.split("PROBE ", 1)[1])


def outputs(nb, mime):
    return [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if mime in o.get("data", {})
    ]


def test_quickstart_on_an_org_with_a_run_without_process_data(demo_server, tmp_path):
    # the newest run was imported from a tool log and has no process data (it used to crash)
    nb = run_notebook(
        "quickstart.ipynb",
        demo_server,
        tmp_path,
        probe=(
            "{'status': status, 'first_run': runs.run_id.iloc[0], 'run_id': run_id, "
            "'channels': channels, 'rheed': analysis.to_dict('records') if has_rheed else None}"
        ),
    )
    got = probed(nb)
    assert got["status"]["org"] == "acme" and got["status"]["role"] == "org-admin"
    assert got["first_run"] == "A-0000-toollog"  # sorted first, and skipped for plotting
    assert got["run_id"] != "A-0000-toollog"
    assert "rheed_specular_intensity" in got["channels"]
    first = got["rheed"][0]
    assert first["status"] == "ok" and first["layers_observed"] >= 3
    # the growth rate is 1 / period, and nm/s used the film's monolayer from the context labels
    assert first["rate_ml_s"] == pytest.approx(1 / first["period_s"])
    assert 0.1 < first["rate_nm_s"] / first["rate_ml_s"] < 0.45
    assert len(outputs(nb, "image/png")) >= 2  # process channels, RHEED (+ setpoints on MBE)
    assert outputs(nb, "application/vnd.jupyter.widget-view+json")  # RunBrowser, plotly figure


def test_compare_runs_by_xrd_finds_the_temperature_correlation(demo_server, tmp_path):
    nb = run_notebook(
        "compare-runs-by-xrd.ipynb",
        demo_server,
        tmp_path,
        probe=(
            "{'instrument': instrument, 'r': r, 'n': len(mine), "
            "'widths': sorted(summary.fwhm.round(4).tolist()), "
            "'per_instrument': per_instrument.reset_index().to_dict('records')}"
        ),
    )
    got = probed(nb)
    # hotter growth within the window, fewer defects: a clear negative correlation on the MBE
    assert got["instrument"] == "MBE-1" and got["n"] >= 6
    assert -0.98 < got["r"] < -0.6, got["r"]
    assert len(set(got["widths"])) > 0.8 * len(got["widths"])  # widths vary, none clipped
    finite = [x for x in got["per_instrument"] if x["runs"] >= 4]
    assert finite and all(x["pearson_r"] == x["pearson_r"] for x in finite)  # no NaN
    assert len(outputs(nb, "image/png")) >= 2
    assert outputs(nb, "application/vnd.jupyter.widget-view+json")


def test_join_materials_context(demo_server, tmp_path):
    nb = run_notebook(
        "join-materials-context.ipynb",
        demo_server,
        tmp_path,
        probe=(
            "{'last': {'actor': last['actor'], 'action': last['action'], "
            "'outcome': last['outcome'], 'purpose': last['detail'].get('purpose')}, "
            "'groups': {k: [float(v) for v in g.result_value] "
            "for k, g in labelled.groupby('material_system')}}"
        ),
    )
    got = probed(nb)
    assert got["last"]["action"] == "context.join" and got["last"]["outcome"] == "allowed"
    assert got["last"]["purpose"] == "compare XRD peak widths across materials systems"
    groups = got["groups"]
    assert "GaAs/AlGaAs" in groups  # a label only the context store has
    # the boxes have spread, and GaN on sapphire is broader than lattice-matched AlGaAs/GaAs
    assert all(np.std(v) > 0 for v in groups.values() if len(v) > 1)
    assert np.median(groups["GaN/Al2O3"]) > 2 * np.median(groups["GaAs/AlGaAs"])
    log = (demo_server["home"] / "audit" / "acme.jsonl").read_text()
    assert "compare XRD peak widths across materials systems" in log


def test_rheed_and_compare_runs_recovers_the_periods(demo_server, tmp_path):
    nb = run_notebook(
        "rheed-and-compare-runs.ipynb",
        demo_server,
        tmp_path,
        probe=(
            "{'ok': ok[['run_id', 'period_s', 'period_err_s', 'logged_period_s', 'drift']]"
            ".to_dict('records'), 'n_rheed': len(rheed_runs), 'same': same, "
            "'features': features.columns.tolist(), 'like': like.run_id.tolist(), "
            "'window': [str(x) for x in (explorer.window or ())]}"
        ),
    )
    got = probed(nb)
    ok = got["ok"]
    assert len(ok) >= 12 and got["n_rheed"] >= len(ok)
    for row in ok:  # the controller's logged period, within 2 % (its own scatter is 0.6 %)
        assert row["period_s"] == pytest.approx(row["logged_period_s"], rel=0.02), row
        assert 0 < row["period_err_s"] < 0.02 * row["period_s"]
    assert any(row["drift"] for row in ok)  # the demo has drifting cells
    assert (
        "RHEED rate [ML/s]" in got["features"] and "substrate temperature [°C]" in got["features"]
    )
    assert len(got["like"]) == 3 and got["same"][0] not in got["like"]
    assert outputs(nb, "application/vnd.jupyter.widget-view+json")


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebooks_run_on_an_org_without_growth_data(sparse_server, tmp_path, name):
    # the only run has tool state and nothing else: every notebook still runs to its end
    nb = run_notebook(name, sparse_server, tmp_path, probe="{'done': True}")
    assert probed(nb) == {"done": True}
