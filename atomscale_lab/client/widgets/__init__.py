"""Notebook widgets over a :class:`~atomscale_lab.client.workspace.Workspace`.

``RunBrowser`` (find and inspect runs, paged on the server), ``MetrologyViewer`` (overlay spectra
with peaks), ``LiveRun`` (follow a run while it streams in), ``RheedExplorer`` (zoom a RHEED trace,
analyse the visible window) and the plot functions ``plot_rheed``, ``overlay`` and
``plot_metrology``. Interactive figures are plotly (:mod:`.figures`), with a matplotlib image of
the same figure for exports; the run browser's and live view's panels are matplotlib
(:mod:`.plots`).
"""

from atomscale_lab.client.widgets.browser import RunBrowser
from atomscale_lab.client.widgets.figures import Plot
from atomscale_lab.client.widgets.live import LiveRun
from atomscale_lab.client.widgets.metrology import MetrologyViewer
from atomscale_lab.client.widgets.science import (
    RheedExplorer,
    overlay,
    plot_metrology,
    plot_rheed,
    plot_run,
)

__all__ = [
    "LiveRun",
    "MetrologyViewer",
    "Plot",
    "RheedExplorer",
    "RunBrowser",
    "overlay",
    "plot_metrology",
    "plot_rheed",
    "plot_run",
]
