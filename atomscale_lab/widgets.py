"""The notebook widgets under their former name: ``from atomscale_lab.widgets import RunBrowser``
keeps working in notebooks written before the widgets moved to :mod:`atomscale_lab.client.widgets`.
"""

from atomscale_lab.client.widgets import *  # noqa: F403
from atomscale_lab.client.widgets import __all__  # noqa: F401
