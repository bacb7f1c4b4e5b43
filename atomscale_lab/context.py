"""The context store: materials-system labels, under their own root and their own key.

CONTRACT (filled in by the vault work): labels are a ``store.Table`` of ``schema.CONTEXT`` rooted at
``context_root`` and encrypted with the org's *context* key (a separate ``OrgCrypto``). Raw-data reads
never include labels; :meth:`ContextStore.join` is the one way to combine them, and it audits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .audit import AuditSink


class ContextStore:
    """Labels of one org, keyed by run id."""

    def __init__(self, context_root: Path, org: str, context_key: tuple[int, bytes],
                 audit: AuditSink, heads=None):
        raise NotImplementedError

    def put(self, labels, *, actor: str) -> int:
        """Upsert labels (list of dicts / DataFrame / Table with ``run_id``); audited."""
        raise NotImplementedError

    def get(self, run_ids: Sequence[str] | None = None, *, actor: str,
            fields: Sequence[str] | None = None, purpose: str = ""):
        """Labels as a DataFrame; audited as ``context.read``."""
        raise NotImplementedError

    def join(self, frame, *, fields: Sequence[str], purpose: str, actor: str, on: str = "run_id"):
        """Left-join ``fields`` of the labels onto a pandas DataFrame; audited as ``context.join``.

        ``purpose`` is required (a non-empty statement of why); unknown fields raise ValidationError.
        """
        raise NotImplementedError
