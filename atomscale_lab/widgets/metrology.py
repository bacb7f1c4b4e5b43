"""``MetrologyViewer``: spectra of several runs overlaid with their peaks, per technique."""

from __future__ import annotations

import ipywidgets as W

from ..errors import AtomscaleError
from .plots import image_output, spectra_figure, text_output


class MetrologyViewer(W.VBox):
    """Overlay the spectra (XRD, XPS, Raman …) of some runs, with peak markers.

    ``MetrologyViewer(ws, run_ids=[...], technique="XRD")``. The technique picker lists the
    techniques those runs have; the run picker chooses which of them are overlaid.
    """

    def __init__(self, workspace=None, run_ids=None, technique: str | None = None, **kwargs):
        if workspace is None:
            from ..client import Workspace

            workspace = Workspace()
        self.ws = workspace
        run_ids = [run_ids] if isinstance(run_ids, str) else list(run_ids or [])
        if not run_ids:
            run_ids = list(self.ws.runs(limit=10)["run_id"])
        self.index = self.ws.metrology(run_id=run_ids)
        techniques = sorted(set(self.index["technique"])) if len(self.index) else []
        self.technique = W.Dropdown(options=techniques, description="Technique",
                                    value=_pick(technique, techniques))
        self.runs = W.SelectMultiple(options=run_ids, value=tuple(run_ids), rows=min(8, len(
            run_ids) or 1), description="Runs")
        self.log_y = W.Checkbox(value=False, description="log y")
        self.status = W.HTML()
        self.output = W.Output(layout=W.Layout(min_height="60px"))
        self.items = None
        for w in (self.technique, self.runs, self.log_y):
            w.observe(lambda _: self.refresh(), names="value")
        super().__init__(children=[W.HBox([self.technique, self.log_y]), self.runs, self.status,
                                   self.output], **kwargs)
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
        fig = spectra_figure(self.items, log_y=self.log_y.value,
                             title=f"{tech}: {len(self.items)} item(s) from {len(runs)} run(s)")
        self.output.outputs = (image_output(fig, f"<figure: {tech} spectra>"),)
        peaks = "; ".join(
            f"{r.run_id}: " + ", ".join(f"{p:.2f}" for p in (r.peaks if r.peaks is not None
                                                             else []))
            for r in self.items.itertuples())
        self.status.value = f"<small>peaks — {peaks}</small>" if peaks else ""


def _pick(wanted, options):
    if not options:
        return None
    if wanted:
        for o in options:
            if o.lower() == str(wanted).lower():
                return o
    return options[0]
