"""Notebook widgets over a :class:`~atomscale_lab.client.Workspace`.

``RunBrowser`` (find and inspect runs, paged on the server), ``MetrologyViewer`` (overlay spectra
with peaks) and ``LiveRun`` (follow a run while it streams in). Figures are drawn with matplotlib;
see :mod:`atomscale_lab.widgets.plots`.
"""

from .browser import RunBrowser
from .live import LiveRun
from .metrology import MetrologyViewer

__all__ = ["LiveRun", "MetrologyViewer", "RunBrowser"]
