"""``RunBrowser``: find runs with server-side filtering and paging, look at one run's data.

A composite widget in the ipywidgets manner: it builds its children, observes ``value`` changes and
writes results into an ``Output``. Only one page of runs is ever in the kernel (the server filters,
sorts and pages its in-memory catalogue), so it opens as fast on 100k runs as on ten.
"""

from __future__ import annotations

import math

import ipywidgets as W

from atomscale_lab.client.widgets.plots import image_output, series_figure, text_output
from atomscale_lab.errors import AtomscaleError

ALL = "(all)"
SORTS = [
    ("newest first", ("start", "desc")),
    ("oldest first", ("start", "asc")),
    ("run id", ("run_id", "asc")),
    ("sample", ("sample", "asc")),
    ("project", ("project", "asc")),
    ("status", ("status", "asc")),
]
_COLS = [
    ("run_id", 8),
    ("project", 8),
    ("sample", 8),
    ("instrument", 10),
    ("start", 16),
    ("status", 8),
]
"""Columns of the run table and their minimum widths (a page widens them to fit, up to 28)."""


def _cell(run: dict, name: str) -> str:
    v = run.get(name) or ""
    if name == "start" and v:
        v = v[:16].replace("T", " ")
    return str(v)


def _widths(runs: list[dict]) -> list[int]:
    return [min(28, max([w, len(n)] + [len(_cell(r, n)) for r in runs])) for n, w in _COLS]


def _row_label(run: dict, widths: list[int]) -> str:
    return "  ".join(_cell(run, n)[:w].ljust(w) for (n, _), w in zip(_COLS, widths, strict=True))


def _header(widths: list[int]) -> str:
    names = "  ".join(n.ljust(w) for (n, _), w in zip(_COLS, widths, strict=True))
    # the select list pads its options by a few pixels; the header follows
    return f"<pre style='margin:0 0 0 4px;font-size:12px'>{names}</pre>"


class RunBrowser(W.VBox):
    """Filter, page through and select runs; the selected run's process channels and tool state
    are plotted on one shared time axis.

    ``RunBrowser(ws)`` with a :class:`~atomscale_lab.client.workspace.Workspace` (one is made if
    omitted).
    ``selected`` is the selected run's record; ``page``/``pages``/``total`` describe the listing.
    """

    def __init__(self, workspace=None, per_page: int = 20, max_points: int = 2000, **kwargs):
        if workspace is None:
            from atomscale_lab.client.workspace import Workspace

            workspace = Workspace()
        self.ws = workspace
        self.per_page = per_page
        self.max_points = max_points
        self.page = 1
        self.total = 0
        self.runs: list[dict] = []
        self.selected: dict | None = None
        self._quiet = False

        facets = self.ws.facets()
        self.search = W.Text(
            placeholder="search run, sample, project…",
            description="Search",
            continuous_update=False,
            layout=W.Layout(width="320px"),
        )
        self.project = W.Dropdown(options=[ALL, *facets["project"]], description="Project")
        self.instrument = W.Dropdown(options=[ALL, *facets["instrument"]], description="Instrument")
        self.status = W.Dropdown(options=[ALL, *facets["status"]], description="Status")
        self.sort = W.Dropdown(options=SORTS, value=SORTS[0][1], description="Sort")
        self.prev_button = W.Button(description="◀ prev", layout=W.Layout(width="80px"))
        self.next_button = W.Button(description="next ▶", layout=W.Layout(width="80px"))
        self.page_label = W.HTML()
        self.progress = W.IntProgress(
            value=0,
            min=0,
            max=1,
            bar_style="info",
            layout=W.Layout(width="160px", visibility="hidden"),
        )
        self.header = W.HTML(_header([w for _, w in _COLS]))
        self.table = W.Select(options=[], rows=per_page, layout=W.Layout(width="100%"))
        self.table.add_class("atomscale-run-table")
        self.detail = W.HTML()
        self.output = W.Output(layout=W.Layout(min_height="60px"))

        for w in (self.search, self.project, self.instrument, self.status, self.sort):
            w.observe(self._on_filter, names="value")
        self.prev_button.on_click(lambda _: self.go(self.page - 1))
        self.next_button.on_click(lambda _: self.go(self.page + 1))
        self.table.observe(self._on_select, names="value")

        style = W.HTML(
            "<style>.atomscale-run-table select{font-family:monospace;font-size:12px}</style>"
        )
        controls = W.VBox(
            [W.HBox([self.search, self.project]), W.HBox([self.instrument, self.status, self.sort])]
        )
        pager = W.HBox([self.prev_button, self.page_label, self.next_button, self.progress])
        super().__init__(
            children=[style, controls, pager, self.header, self.table, self.detail, self.output],
            **kwargs,
        )
        self.refresh()

    # --- listing ----------------------------------------------------------------------------

    @property
    def pages(self) -> int:
        """Number of pages for the current filters."""
        return max(1, math.ceil(self.total / self.per_page))

    def filters(self) -> dict:
        """The current filters as ``Workspace.runs_page`` keyword arguments."""
        sort, order = self.sort.value
        f = {"q": self.search.value.strip() or None, "sort": sort, "order": order}
        for name in ("project", "instrument", "status"):
            v = getattr(self, name).value
            if v != ALL:
                f[name] = v
        return f

    def _busy(self, on: bool, what: str = "") -> None:
        self.progress.layout.visibility = "visible" if on else "hidden"
        self.progress.bar_style = "info"
        self.progress.value = 0 if on else 1
        if on:
            self.page_label.value = f"<i>loading {what}…</i>"

    def _on_filter(self, change) -> None:
        if not self._quiet:
            self.go(1)

    def go(self, page: int) -> None:
        """Show page ``page`` (clamped to the available pages)."""
        self.page = max(1, min(page, self.pages)) if self.total else 1
        self.refresh()

    def refresh(self) -> None:
        """Fetch the current page from the server."""
        self._busy(True, "runs")
        try:
            doc = self.ws.runs_page(page=self.page, per_page=self.per_page, **self.filters())
        except AtomscaleError as e:
            self._busy(False)
            self.page_label.value = f"<span style='color:#b00'>{_esc(str(e))}</span>"
            return
        self.total = doc["total"]
        if doc["runs"] == [] and self.page > 1 and self.total:
            self.page = self.pages
            return self.refresh()
        self.runs = doc["runs"]
        self._quiet = True
        try:
            widths = _widths(self.runs)
            self.header.value = _header(widths)
            self.table.options = [(_row_label(r, widths), r["run_id"]) for r in self.runs]
            self.table.value = None
        finally:
            self._quiet = False
        self._busy(False)
        self.page_label.value = f"&nbsp;page {self.page} of {self.pages} ({self.total} runs)&nbsp;"
        self.prev_button.disabled = self.page <= 1
        self.next_button.disabled = self.page >= self.pages

    # --- selection --------------------------------------------------------------------------

    def select(self, run_id: str) -> None:
        """Select a run of the current page (as a click would)."""
        self.table.value = run_id

    def _on_select(self, change) -> None:
        if self._quiet or change["new"] is None:
            return
        self.show_run(change["new"])

    def show_run(self, run_id: str) -> None:
        """Load a run's process channels and tool state and plot them on one time axis."""
        self._busy(True, run_id)
        self.progress.max = 3
        try:
            rec = self.ws.run(run_id)
            self.progress.value = 1
            proc = self.ws.process(run_id, max_points=self.max_points)
            self.progress.value = 2
            tools = self.ws.tool_state(run_id, max_points=self.max_points)
            self.progress.value = 3
        except AtomscaleError as e:
            self._busy(False)
            self.output.outputs = (text_output(f"{run_id}: {e}"),)
            self.refresh_label()
            return
        self.selected = rec
        met = ", ".join(f"{m['technique']} {m['item_id']}" for m in rec.get("metrology", []))
        self.detail.value = (
            f"<b>{_esc(run_id)}</b> · {_esc(rec.get('sample'))} · {_esc(rec.get('instrument'))}"
            f" ({_esc(rec.get('method'))}) · {_esc(rec.get('operator'))} · "
            f"{_esc(rec.get('status'))}<br><small>metrology: {_esc(met) or 'none'}</small>"
        )
        fig = series_figure(proc, tools, title=f"{run_id} — {rec.get('sample') or ''}")
        self.output.outputs = (image_output(fig, f"<figure: {run_id}>"),)
        self._busy(False)
        self.refresh_label()

    def refresh_label(self) -> None:
        """Restore the page label after a load."""
        self.page_label.value = f"&nbsp;page {self.page} of {self.pages} ({self.total} runs)&nbsp;"


def _esc(v) -> str:
    import html

    return html.escape("" if v is None else str(v))
