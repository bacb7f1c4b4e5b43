"""atomscale-lab: an encrypted, org-isolated data workspace for materials-growth labs."""

__version__ = "0.1.0"

CATEGORIES = ("process", "tool_state", "metrology")
"""The raw-data categories. Context labels live in a separate store, never in these."""


def _jupyter_server_extension_points():
    """The jupyter-server extension this package provides (the org data REST API)."""
    return [{"module": "atomscale_lab.server.app", "app": _app()}]


def _jupyter_labextension_paths():
    """The JupyterLab extension shipped in this package (built into ``labextension/``)."""
    return [{"src": "labextension", "dest": "atomscale-lab"}]


def _app():
    from atomscale_lab.server.app import AtomscaleLab

    return AtomscaleLab


def __getattr__(name):
    # Lazy so that `import atomscale_lab` stays cheap for the CLI and hub processes.
    if name == "Workspace":
        from atomscale_lab.client.workspace import Workspace

        return Workspace
    raise AttributeError(name)
