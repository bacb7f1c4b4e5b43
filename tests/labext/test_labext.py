"""The JupyterLab extension: its unit tests, its installation, and the panel in a real browser.

The browser test drives ``labextension/ui-tests/run.mjs`` (playwright-core + Debian's chromium)
against the ``lab`` fixture and checks what the page showed against the REST API's answers.
Screenshots go to ``artifacts/labext/``.
"""

import colorsys
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def snippet(run_id: str) -> str:
    """The cell "Open in notebook" must insert (kept in step with src/snippet.ts)."""
    return "\n".join(
        [
            "from atomscale_lab import Workspace",
            "from atomscale_lab.client.widgets import plot_rheed, plot_run",
            "",
            "ws = Workspace()",
            f"run_id = {json.dumps(run_id)}",
            "display(plot_run(ws, run_id))",
            'display(ws.rheed(run_id)[["run_id", "window", "shutters", "period_s", "period_err_s",',
            '                         "rate_ml_s", "layers_observed", "drift", "status"]])',
            "plot_rheed(ws, run_id)",
        ]
    )


def test_unit_tests_pass(labext, artifacts):
    """vitest: API client URLs and errors, paging state, debounce, sparkline paths, snippet."""
    report = artifacts / "vitest.json"
    report.unlink(missing_ok=True)
    r = subprocess.run(
        [
            str(labext / "node_modules" / ".bin" / "vitest"),
            "run",
            "--reporter=json",
            f"--outputFile={report}",
        ],
        cwd=labext,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert report.exists(), r.stdout[-2000:] + r.stderr[-2000:]
    doc = json.loads(report.read_text())
    failed = [
        f"{t['fullName']}: {t.get('failureMessages')}"
        for suite in doc["testResults"]
        for t in suite["assertionResults"]
        if t["status"] != "passed"
    ]
    assert not failed, "\n".join(failed)
    assert r.returncode == 0, r.stderr[-2000:]
    assert doc["numPassedTests"] >= 40
    files = {Path(s["name"]).name for s in doc["testResults"]}
    assert {
        "client.test.ts",
        "paging.test.ts",
        "sparkline.test.ts",
        "snippet.test.ts",
        "rheedplot.test.ts",
    } <= files


def test_typescript_type_checks(labext):
    """The sources compile under the strict tsconfig."""
    r = subprocess.run(
        [str(labext / "node_modules" / ".bin" / "tsc"), "--noEmit"],
        cwd=labext,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-3000:]


def _newest(paths):
    return max(
        (
            f.stat().st_mtime
            for p in paths
            for f in ([p] if p.is_file() else p.rglob("*"))
            if f.is_file()
        ),
        default=0,
    )


def test_extension_is_installed_and_current(labext):
    """`jupyter labextension list` shows it enabled, and what is installed is the current build."""
    root = labext.parent
    built = root / "atomscale_lab" / "labextension"
    assert (built / "package.json").exists(), "not built: run `make setup`"
    sources = [labext / "src", labext / "style", labext / "schema", labext / "package.json"]
    assert _newest([built]) >= _newest(sources), (
        "the build is older than labextension/ sources: run `make setup` "
        "(or `npm run build` in labextension/ and `pip install -e .`)"
    )

    r = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", r.stdout + r.stderr)
    line = next((ln for ln in out.splitlines() if ln.strip().startswith("atomscale-lab ")), "")
    assert "enabled" in line and "OK" in line, out

    installed = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "atomscale-lab"
    assert json.loads((installed / "package.json").read_text()) == json.loads(
        (built / "package.json").read_text()
    ), "the installed extension is not the current build"
    assert (installed / "install.json").exists()
    schema = json.loads((installed / "schemas" / "atomscale-lab" / "plugin.json").read_text())
    assert {"pageSize", "defaultSort", "plottedChannel"} <= set(schema["properties"])


def _luminance(css_color: str) -> float:
    nums = [float(x) for x in re.findall(r"[\d.]+", css_color)[:3]]
    assert len(nums) == 3, css_color
    return colorsys.rgb_to_hls(*(n / 255 for n in nums))[1]


@pytest.mark.browser
@pytest.mark.slow
def test_panel_in_browser(labext, artifacts, lab, api, tmp_path):
    """Open the panel, page, search, select a run, open it in a notebook, dark theme."""
    PAGE_SIZE, MAX_POINTS, RUNS = lab["page_size"], lab["max_points"], lab["runs"]  # noqa: N806
    assert Path(CHROMIUM).exists(), "chromium is missing: run `make setup` (30-browser.sh)"
    status = api.get("status")
    first = api.get("runs", sort="start", order="desc", page=1, per_page=PAGE_SIZE)
    second = api.get("runs", sort="start", order="desc", page=2, per_page=PAGE_SIZE)
    query = first["runs"][0]["project"]
    found = api.get("runs", q=query, sort="start", order="desc", page=1, per_page=PAGE_SIZE)
    assert first["total"] == RUNS and 0 < found["total"] < RUNS

    # expected material systems from the labels themselves (POST context/join over every run)
    every = [x["run_id"] for x in api.get("runs", per_page=500)["runs"]]
    labels = _material_systems(api, every)
    counts = Counter(v for v in labels.values() if v)
    material = min(counts, key=lambda v: (abs(counts[v] - RUNS / 2), v))  # some runs, not all
    assert 0 < counts[material] < RUNS

    for old in artifacts.glob("*.png"):
        old.unlink()
    out = tmp_path / "observations.json"
    env = {
        "LAB_URL": lab["url"],
        "LAB_TOKEN": lab["token"],
        "SEARCH_Q": query,
        "FACET_INSTRUMENT": "MBE-1",
        "MATERIAL_SYSTEM": material,
        "ARTIFACTS": str(artifacts),
        "OUT": str(out),
        "CHROMIUM": CHROMIUM,
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    r = subprocess.run(
        ["node", "ui-tests/run.mjs"],
        cwd=labext,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    obs = json.loads(out.read_text()) if out.exists() else {}
    (artifacts / "observations.json").write_text(json.dumps(obs, indent=2))
    assert r.returncode == 0, (
        f"browser run failed at {obs.get('failedStep')!r}: {obs.get('error', '')[:1500]}\n"
        f"{r.stdout[-1500:]}\n{r.stderr[-1500:]}\nserver log:\n"
        + lab["log"].read_text(errors="replace")[-2000:]
    )
    assert obs["steps"][-1] == "done"

    # header: org, residency, key version + fingerprint; categories with row counts
    assert obs["org"]["jp-AtomscalePanel-org"] == "acme"
    assert obs["org"]["jp-AtomscalePanel-region"] == status["region"].upper()
    key = status["key"]
    assert obs["org"]["jp-AtomscalePanel-key"] == f"v{key['version']} · {key['fingerprint']}"
    cats = {c["name"]: c["text"] for c in obs["categories"]}
    assert set(cats) == {"process", "tool_state", "metrology"}
    for name, cat in status["categories"].items():
        assert f"{cat['rows']:,} rows" in cats[name]

    # the list is one server page at a time, sized by the user setting
    assert obs["firstPage"] == [x["run_id"] for x in first["runs"]]
    assert obs["total"] == RUNS
    assert obs["range"] == f"1–{PAGE_SIZE} of {RUNS}"
    assert obs["secondPage"] == [x["run_id"] for x in second["runs"]]
    assert obs["secondRange"] == f"{PAGE_SIZE + 1}–{2 * PAGE_SIZE} of {RUNS}"
    sent = [parse_qs(urlparse(x["url"]).query) for x in obs["runsRequests"]]
    assert sent and all(q["per_page"] == [str(PAGE_SIZE)] for q in sent)

    # search narrows the list with one debounced request
    assert obs["searchRuns"] == [x["run_id"] for x in found["runs"]]
    assert obs["searchTotal"] == found["total"] < RUNS
    searches = [q["q"][0] for q in sent[: obs["requestsUntilSearch"]] if "q" in q]
    assert searches == [query], searches
    assert all(q.get("page") == ["1"] for q in sent if "q" in q)

    # the selected run's summary matches the API, with a sparkline of a downsampled channel
    target = found["runs"][0]["run_id"]
    detail = api.get(f"runs/{target}")
    d = obs["detail"]
    assert d["runId"] == d["title"] == target
    assert d["selected"] == [target]
    assert d["fields"]["Instrument"] == detail["instrument"]
    assert d["fields"]["Sample"] == detail["sample"]
    assert d["fields"]["Operator"] == detail["operator"]
    assert d["fields"]["Start"].startswith(detail["start"][:10])
    assert d["process"] == detail["channels"]["process"]
    assert d["toolState"] == detail["channels"]["tool_state"]
    assert d["metrology"] == [m["item_id"] for m in detail["metrology"]]
    assert d["plotChannel"] in detail["channels"]["process"]
    assert 2 <= d["plotPoints"] <= MAX_POINTS + 10
    assert d["path"].startswith("M")
    assert len(re.findall(r"[ML]", d["path"])) >= d["plotPoints"] - 1

    # "Open in notebook": with no notebook open it creates one holding the cell ...
    assert obs["notebookBefore"] is None
    nb = obs["newNotebook"]
    assert nb["path"].endswith(".ipynb")
    assert snippet(target) in nb["cells"]
    # the inserted cell runs as it is: the kernel plots the run and shows its RHEED analysis
    out = obs["cellOutput"]
    assert "Traceback" not in out and "Error" not in out, out[:2000]
    assert target in out and "period_s" in out, out[:2000]
    assert obs["cellImages"] and obs["cellImages"][0] > 400  # the run's channels, as a PNG
    assert obs["cellPlotly"] >= 1  # the RHEED figure drawn by plotly in the browser
    # ... and with one active it inserts the next run's cell into that same notebook
    act = obs["activeNotebook"]
    assert act["id"] == nb["id"]
    assert snippet(obs["secondRun"]) in act["cells"]
    assert snippet(target) in act["cells"]
    assert (Path(lab["home"]).parent / "notebooks" / nb["path"]).exists()

    # an API error is shown as a readable message
    assert obs["errorText"] == "the key service did not answer (HTTP 503)"
    assert "does not run the atomscale_lab server extension (HTTP 404)" in obs["statusErrorText"]
    assert "<" not in obs["statusErrorText"]

    # facets come from the API and narrow the list on the server
    facets = api.get("facets")
    for name in ("project", "instrument", "method", "status"):
        assert obs["facetOptions"][name] == ["", *facets[name]], name
    mbe = api.get(
        "runs", instrument="MBE-1", sort="start", order="desc", page=1, per_page=PAGE_SIZE
    )
    assert obs["unfilteredTotal"] == RUNS
    assert obs["facetTotal"] == mbe["total"] < RUNS
    assert obs["facetRuns"] == [x["run_id"] for x in mbe["runs"]]
    assert parse_qs(urlparse(obs["facetRequest"]).query)["instrument"] == ["MBE-1"]

    # the owner may join context: a material-system facet with runs per label, which narrows
    # the list (through the runs filter, stating the sidebar's purpose) to the labelled runs
    assert "context:join" in status["permissions"]
    assert obs["materialOptions"][0]["value"] == ""
    assert {o["value"]: o["text"] for o in obs["materialOptions"][1:]} == {
        v: f"{v} ({n})" for v, n in sorted(counts.items())
    }
    by_label = api.get(
        "runs",
        material_system=material,
        purpose="expected values",
        sort="start",
        order="desc",
        page=1,
        per_page=PAGE_SIZE,
    )
    assert obs["materialTotal"] == by_label["total"] == counts[material]
    assert obs["materialRuns"] == [x["run_id"] for x in by_label["runs"]]
    assert obs["materialRuns"] and all(labels[r] == material for r in obs["materialRuns"])
    sent = parse_qs(urlparse(obs["materialRequest"]).query)
    assert sent["material_system"] == [material] and sent["purpose"] == ["sidebar facet"]
    assert obs["materialClearedTotal"] == RUNS
    joins = api.get("audit", action="context.join", limit=100)["events"]
    sidebar = [e for e in joins if e["detail"].get("purpose") == "sidebar facet"]
    assert sidebar and all(e["outcome"] == "allowed" for e in sidebar)

    # the RHEED plot of the selected run shows the server's analysis; zoom narrows the window
    rh = obs["rheed"]
    doc = api.get(f"runs/{rh['runId']}/rheed", max_points=4 * MAX_POINTS)
    times = [t for t in doc["trace"]["time"]]
    before, zoomed, reset = rh["before"], rh["zoomed"], rh["reset"]
    assert before["points"] == len(times) >= 50 and before["path"].startswith("M")
    assert abs(before["lo"] - _ms(times[0])) <= 1 and abs(before["hi"] - _ms(times[-1])) <= 1
    assert before["layers"] == len(doc["layers"]) > 3
    assert "UTC" in before["label"]
    w = doc["windows"][0]
    assert f"{w['period_s']:.3f}" in rh["summary"] and f"{w['rate_ml_s']:.3f}" in rh["summary"]
    span0, span1 = before["hi"] - before["lo"], zoomed["hi"] - zoomed["lo"]
    assert span1 < 0.8 * span0  # two wheel steps in
    assert before["lo"] <= zoomed["lo"] and zoomed["hi"] <= before["hi"]
    assert zoomed["points"] < before["points"] and zoomed["layers"] < before["layers"]
    assert (reset["lo"], reset["hi"]) == (before["lo"], before["hi"])

    # dark theme: the panel follows the theme variables
    theme = obs["theme"]
    assert _luminance(theme["lightBg"]) > 0.7
    assert _luminance(theme["darkBg"]) < 0.3
    assert _luminance(theme["darkText"]) > 0.5

    for name in (
        "panel-light.png",
        "panel-search.png",
        "run-summary.png",
        "open-in-notebook.png",
        "rheed-zoomed.png",
        "panel-dark.png",
    ):
        png = artifacts / name
        assert png.exists() and png.stat().st_size > 10_000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ours = [e for e in obs["consoleErrors"] if "atomscale" in e.lower()]
    assert not ours, ours


def _material_systems(api, run_ids: list[str]) -> dict[str, str | None]:
    r = api.s.post(
        api.base + "context/join",
        timeout=30,
        json={"run_ids": run_ids, "fields": ["material_system"], "purpose": "expected values"},
    )
    assert r.status_code == 200, r.text[:300]
    found = {x["run_id"]: x.get("material_system") for x in r.json()["labels"]}
    return {rid: found.get(rid) for rid in run_ids}


@pytest.mark.browser
@pytest.mark.slow
def test_viewer_sees_no_material_system_facet(labext, artifacts, viewer_lab, viewer_api, tmp_path):
    """A viewer (data:read, no context:join) gets the plain facets only; the server refuses."""
    lab, api = viewer_lab, viewer_api
    status = api.get("status")
    assert status["role"] == "viewer" and "context:join" not in status["permissions"]
    facets = api.get("facets")
    out = tmp_path / "observations.json"
    env = {
        "LAB_URL": lab["url"],
        "LAB_TOKEN": lab["token"],
        "SEARCH_Q": "x",
        "FACET_INSTRUMENT": "MBE-1",
        "MODE": "viewer",
        "ARTIFACTS": str(artifacts),
        "OUT": str(out),
        "CHROMIUM": CHROMIUM,
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    r = subprocess.run(
        ["node", "ui-tests/run.mjs"],
        cwd=labext,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    obs = json.loads(out.read_text()) if out.exists() else {}
    assert r.returncode == 0, (
        f"browser run failed at {obs.get('failedStep')!r}: {obs.get('error', '')[:1500]}\n"
        f"{r.stdout[-1500:]}\n{r.stderr[-1500:]}\nserver log:\n"
        + lab["log"].read_text(errors="replace")[-2000:]
    )
    assert obs["steps"][-1] == "done"
    assert obs["role"] == "viewer"
    assert obs["viewerFacets"] == ["project", "instrument", "method", "status"]
    assert obs["viewerTotal"] == lab["runs"] == facets["total"]
    assert obs["panelContextRequests"] == 0  # the panel did not even ask
    assert obs["viewerContextStatus"] == 403
    audit = lab["home"] / "audit" / "acme.jsonl"
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    denied = [e for e in events if e["action"] == "context.join"]
    assert denied and all(
        e["outcome"] == "denied"
        and e["actor"] == "viewer-user"
        and e["detail"]["permission"] == "context:join"
        for e in denied
    )


def _ms(iso: str) -> int:
    """Milliseconds since the epoch of an ISO time (as the browser's Date.parse gives them)."""
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000)
