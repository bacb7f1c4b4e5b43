"""atomscale-lab: an encrypted, org-isolated data workspace for materials-growth labs."""

__version__ = "0.1.0"

CATEGORIES = ("process", "tool_state", "metrology")
"""The raw-data categories. Context labels live in a separate store, never in these."""


def __getattr__(name):
    # Lazy so that `import atomscale_lab` stays cheap for the CLI and hub processes.
    if name == "Workspace":
        from .client import Workspace

        return Workspace
    raise AttributeError(name)
