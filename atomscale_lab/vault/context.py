"""The context store: materials-system labels, under their own root and their own key.

Labels are a ``store.OrgTable`` of ``schema.CONTEXT`` rooted at
``context_root`` and encrypted with the org's *context* key (a separate ``OrgCrypto``). Raw-data
reads never include labels; :meth:`ContextStore.join` is the one way to combine them, and it audits.

Audit events name the fields, the purpose and how many runs were involved — never a label value,
so the audit log (which lives outside the context root) cannot leak what the labels say.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from atomscale_lab.errors import ValidationError
from atomscale_lab.labels import join_labels
from atomscale_lab.schema import CONTEXT, CONTEXT_FIELDS, conform
from atomscale_lab.vault.audit import AuditSink
from atomscale_lab.vault.crypto import OrgCrypto, OrgKeys

"""Suffix given to a joined field whose name the frame already uses (e.g. ``sample``)."""


def _context_keys(org: str, context_key) -> OrgKeys:
    """Accept ``(version, key)``, ``{version: key}`` or ``OrgKeys`` for the context key."""
    if isinstance(context_key, OrgKeys):
        return context_key
    if isinstance(context_key, dict):
        return OrgKeys(org, {int(v): bytes(k) for v, k in context_key.items()})
    version, key = context_key
    return OrgKeys(org, {int(version): bytes(key)})


def check_fields(fields) -> list[str]:
    """Normalise ``fields`` (a name or names) and refuse unknown ones, naming the valid ones."""
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",")]
    fields = [f for f in (fields or []) if f]
    if not fields:
        raise ValidationError(
            f"name at least one context field; valid fields: {', '.join(CONTEXT_FIELDS)}",
            field="fields",
        )
    unknown = [f for f in fields if f not in CONTEXT_FIELDS]
    if unknown:
        raise ValidationError(
            f"unknown context field {unknown[0]!r}; valid fields: {', '.join(CONTEXT_FIELDS)}",
            field="fields",
        )
    return list(dict.fromkeys(fields))


class ContextStore:
    """Labels of one org, keyed by run id.

    ``context_key`` is the org's context key as ``(version, bytes)`` (the contract form), or all
    its versions as ``{version: bytes}`` / :class:`~atomscale_lab.vault.crypto.OrgKeys` so that
    labels
    written before a context-key rotation stay readable.
    """

    def __init__(
        self,
        context_root,
        org: str,
        context_key: tuple[int, bytes],
        audit: AuditSink,
        heads=None,
    ):
        from atomscale_lab.vault.store import OrgTable
        from atomscale_lab.vault.store.media import as_root

        self.root = as_root(context_root)
        self.org = org
        self.audit = audit
        self._crypto = OrgCrypto(_context_keys(org, context_key), purpose="context")
        self.table = OrgTable(self.root, org, CONTEXT, self._crypto, heads)

    def __repr__(self) -> str:
        return f"ContextStore(org={self.org!r}, root={str(self.root)!r})"

    def put(self, labels, *, actor: str) -> int:
        """Upsert labels (list of dicts / DataFrame / Arrow table with ``run_id``); audited."""
        table = conform(CONTEXT, labels)
        if table.num_rows == 0:
            return 0
        stamp = table.column("updated_at")
        if stamp.null_count:
            now = pa.scalar(datetime.now(UTC), type=CONTEXT.schema.field("updated_at").type)
            filled = pc.fill_null(stamp, now)
            table = table.set_column(
                table.schema.get_field_index("updated_at"), "updated_at", filled
            )
        runs = len(set(table.column("run_id").to_pylist()))
        fields = [f for f in CONTEXT_FIELDS if table.column(f).null_count < table.num_rows]
        try:
            self.table.write(table, actor=actor)
        except Exception as e:
            self.audit.record(
                actor, "context.write", "error", runs=runs, fields=fields, error=type(e).__name__
            )
            raise
        self.audit.record(actor, "context.write", runs=runs, rows=table.num_rows, fields=fields)
        return table.num_rows

    def _read(self, run_ids, fields: list[str]):
        ids = None if run_ids is None else [str(r) for r in run_ids]
        if ids is not None and not ids:
            tbl = CONTEXT.schema.empty_table().select(["run_id", *fields])
        else:
            tbl = self.table.read(run_ids=ids).select(["run_id", *fields])
        return tbl.to_pandas()

    def get(
        self,
        run_ids: Sequence[str] | None = None,
        *,
        actor: str,
        fields: Sequence[str] | None = None,
        purpose: str = "",
    ):
        """Labels as a DataFrame; audited as ``context.read``."""
        fields = list(CONTEXT_FIELDS) if fields is None else check_fields(fields)
        try:
            frame = self._read(run_ids, fields)
        except Exception as e:
            self.audit.record(
                actor,
                "context.read",
                "error",
                fields=fields,
                purpose=purpose or None,
                error=type(e).__name__,
            )
            raise
        self.audit.record(
            actor, "context.read", fields=fields, purpose=purpose or None, runs=len(frame)
        )
        return frame

    def join(self, frame, *, fields: Sequence[str], purpose: str, actor: str, on: str = "run_id"):
        """Left-join ``fields`` of the labels onto a pandas DataFrame; audited as ``context.join``.

        ``purpose`` is required (a non-empty statement of why); unknown fields raise
        ValidationError. A field whose name ``frame`` already has (``sample``) gets the suffix
        ``_label``.
        """
        purpose = (purpose or "").strip()
        asked = [fields] if isinstance(fields, str) else [str(f) for f in (fields or [])]
        try:
            fields = check_fields(fields)
            if not purpose:
                raise ValidationError(
                    "a purpose is required to join context labels (say why "
                    "you need them; it is recorded in the audit log)",
                    field="purpose",
                )
            if on not in frame.columns:
                raise ValidationError(f"the frame has no {on!r} column to join on", field="on")
        except ValidationError as e:
            self.audit.record(
                actor,
                "context.join",
                "denied",
                reason=str(e),
                fields=asked,
                purpose=purpose or None,
            )
            raise
        run_ids = [str(r) for r in dict.fromkeys(frame[on].dropna().tolist())]
        try:
            labels = self._read(run_ids, fields)
        except Exception as e:
            self.audit.record(
                actor,
                "context.join",
                "error",
                fields=fields,
                purpose=purpose,
                runs=len(run_ids),
                error=type(e).__name__,
            )
            raise
        out = join_labels(frame, labels, fields, on)
        self.audit.record(
            actor,
            "context.join",
            fields=fields,
            purpose=purpose,
            runs=len(run_ids),
            labelled=len(labels),
        )
        return out
