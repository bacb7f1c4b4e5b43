"""Instrument ingest: org API keys, the HTTPS ingest service, the streamer, file import.

``Streamer`` is imported lazily so that ``import atomscale_lab.ingest`` stays cheap on a tool PC.
"""

from atomscale_lab.ingest import migrations as _migrations  # noqa: F401 - registers the schema

__all__ = ["Streamer"]


def __getattr__(name):
    if name == "Streamer":
        from atomscale_lab.ingest.streamer import Streamer

        return Streamer
    raise AttributeError(name)
