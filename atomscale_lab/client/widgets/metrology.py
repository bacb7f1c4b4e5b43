"""``MetrologyViewer``: spectra of several runs overlaid with their peaks, per technique.

XRD on a log axis with the scans offset and peak labels grouped, XPS on a reversed
binding-energy axis with core levels named, AFM roughness as values — interactive in JupyterLab
(plotly), with the same figure as a PNG for exports (see :mod:`.figures`).
"""

from __future__ import annotations

import html

import ipywidgets as W

from atomscale_lab.client.widgets.figures import Plot, metrology_figure
from atomscale_lab.client.widgets.plots import text_output
from atomscale_lab.errors import AtomscaleError


def peaks_html(items) -> str:
    """The peak positions of each item as HTML (run ids and values escaped)."""
    if items is None or not len(items) or "peaks" not in items:
        return ""
    parts = []
    for r in items.itertuples():
        peaks = r.peaks if r.peaks is not None else []
        if not len(peaks):
            continue
        parts.append(f"{html.escape(str(r.run_id))}: " + ", ".join(f"{p:.2f}" for p in peaks))
    return f"<small>peaks — {'; '.join(parts)}</small>" if parts else ""


class MetrologyViewer(W.VBox):
    """Overlay the spectra (XRD, XPS, Raman …) of some runs, with peak markers.

    ``MetrologyViewer(ws, run_ids=[...], technique="XRD")``. The technique picker lists the
    techniques those runs have; the run picker chooses which of them are overlaid.
    """

    def __init__(self, workspace=None, run_ids=None, technique: str | None = None, **kwargs):
        if workspace is None:
            from atomscale_lab.client.workspace import Workspace

            workspace = Workspace()
        self.ws = workspace
        run_ids = [run_ids] if isinstance(run_ids, str) else list(run_ids or [])
        if not run_ids:
            run_ids = list(self.ws.runs(limit=10)["run_id"])
        self.index = self.ws.metrology(run_id=run_ids)
        techniques = sorted(set(self.index["technique"])) if len(self.index) else []
        self.technique = W.Dropdown(
            options=techniques, description="Technique", value=_pick(technique, techniques)
        )
        self.runs = W.SelectMultiple(
            options=run_ids,
            value=tuple(run_ids),
            rows=min(8, len(run_ids) or 1),
            description="Runs",
        )
        self.log_y = W.Checkbox(value=self.technique.value == "XRD", description="log y")
        self.status = W.HTML()
        self.output = W.Output(layout=W.Layout(min_height="60px"))
        self.items = None
        self.plot = None
        for w in (self.runs, self.log_y):
            w.observe(lambda _: self.refresh(), names="value")
        self.technique.observe(self._on_technique, names="value")
        super().__init__(
            children=[W.HBox([self.technique, self.log_y]), self.runs, self.status, self.output],
            **kwargs,
        )
        self.refresh()

    def _on_technique(self, change) -> None:
        # XRD is read on a log axis, the others on a linear one, unless the user says otherwise
        want = change["new"] == "XRD"
        if self.log_y.value != want:
            self.log_y.value = want  # its observer redraws
        else:
            self.refresh()

    def refresh(self) -> None:
        """Fetch the selected runs' spectra of the chosen technique and redraw."""
        runs, tech = list(self.runs.value), self.technique.value
        if not runs or not tech:
            self.items = None
            self.status.value = "<i>choose runs and a technique</i>"
            self.output.outputs = (text_output("nothing to show"),)
            return
        self.status.value = "<i>loading spectra…</i>"
        try:
            self.items = self.ws.metrology(run_id=runs, technique=tech, with_spectra=True)
        except AtomscaleError as e:
            self.status.value = ""
            self.output.outputs = (text_output(str(e)),)
            return
        title = f"{tech}: {len(self.items)} item(s) from {len(runs)} run(s)"
        fig = metrology_figure(self.items, tech, title=title)
        if tech != "XRD" and self.log_y.value and fig.data and fig.data[0].type != "bar":
            fig.update_yaxes(type="log")
        elif tech == "XRD" and not self.log_y.value:
            fig.update_yaxes(type="linear")
        self.plot = Plot(fig)
        self.output.outputs = (self.plot.output(),)
        if tech == "AFM" or "x" not in self.items or self.items["x"].isna().all():
            self.status.value = (
                "<small>"
                + "; ".join(
                    f"{html.escape(str(r.run_id))}: {r.result_name} {r.result_value:.3g} "
                    f"{html.escape(str(r.result_unit or ''))}"
                    for r in self.items.itertuples()
                    if r.result_value == r.result_value
                )
                + "</small>"
            )
            return
        self.status.value = peaks_html(self.items)


def _pick(wanted, options):
    if not options:
        return None
    if wanted:
        for o in options:
            if o.lower() == str(wanted).lower():
                return o
    return options[0]
