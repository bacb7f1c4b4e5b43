"""Widget state against a running server: children, server-side paging, selection → image."""

import base64

import pytest

from atomscale_lab.client.widgets import MetrologyViewer, RunBrowser
from atomscale_lab.client.workspace import Workspace


@pytest.fixture(scope="module")
def ws(live_server):
    return Workspace(url=live_server["url"], token=live_server["token"])


def png_of(output_widget):
    images = [o for o in output_widget.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1
    data = base64.b64decode(images[0]["data"]["image/png"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return data


def test_run_browser_children_and_paging(ws):
    b = RunBrowser(ws, per_page=8)
    assert b.output in b.children and b.table in b.children
    assert b.project.options == ("(all)", "gaas-qw", "ito-films", "sto-buffer")
    assert b.total == 30 and b.pages == 4 and len(b.table.options) == 8
    assert b.table.options[0][1] == "R-00029"  # newest first
    assert b.prev_button.disabled and not b.next_button.disabled
    b.next_button.click()
    assert b.page == 2 and b.table.options[0][1] == "R-00021"
    b.go(99)
    assert b.page == 4 and len(b.table.options) == 30 - 3 * 8 and b.next_button.disabled
    assert "page 4 of 4" in b.page_label.value
    b.project.value = "ito-films"  # a filter goes back to page 1, filtered on the server
    assert b.page == 1 and b.total == 10
    assert all("ito-films" in label for label, _ in b.table.options)
    b.search.value = "S-0000"
    assert b.total == 3  # R-00001, R-00004, R-00007
    b.sort.value = ("run_id", "asc")
    assert [v for _, v in b.table.options] == ["R-00001", "R-00004", "R-00007"]
    b.search.value = "nothing-matches"
    assert b.total == 0 and b.table.options == () and "page 1 of 1" in b.page_label.value
    assert b.progress.layout.visibility == "hidden"


def test_run_browser_selection_draws_the_run(ws):
    b = RunBrowser(ws, per_page=5)
    assert b.output.outputs == ()
    b.select(b.table.options[2][1])
    run_id = b.table.options[2][1]
    assert b.selected["run_id"] == run_id
    assert run_id in b.detail.value and "XRD" in b.detail.value
    png = png_of(b.output)
    assert len(png) > 10_000  # five panels of lines, not an empty canvas
    b.status.value = "error"
    assert b.selected["run_id"] == run_id  # the figure stays until another selection


def test_metrology_viewer_overlays_runs(ws):
    v = MetrologyViewer(ws, run_ids=["R-00003", "R-00004", "R-00006"], technique="xrd")
    assert v.technique.options == ("XPS", "XRD") and v.technique.value == "XRD"
    assert sorted(v.items.run_id) == ["R-00003", "R-00004", "R-00006"]
    assert [list(p) for p in v.items.sort_values("run_id").peaks] == [[31.5], [32.0], [33.0]]
    first = png_of(v.output)
    assert "31.50" in v.status.value
    v.technique.value = "XPS"
    assert sorted(v.items.run_id) == ["R-00003", "R-00006"]
    v.runs.value = ("R-00004",)  # no XPS on that run
    assert v.items.empty
    v.runs.value = ("R-00003", "R-00004")
    v.technique.value = "XRD"
    v.log_y.value = True
    assert png_of(v.output) != first
