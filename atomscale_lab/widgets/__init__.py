"""Notebook widgets over a :class:`~atomscale_lab.client.Workspace`.

``RunBrowser`` (find and inspect runs, paged on the server) and ``MetrologyViewer`` (overlay
spectra with peaks). Figures are drawn with matplotlib; see :mod:`atomscale_lab.widgets.plots`.
"""

from .browser import RunBrowser
from .metrology import MetrologyViewer

__all__ = ["MetrologyViewer", "RunBrowser"]
