"""Joining context labels onto a frame: the one implementation behind
:meth:`ContextStore.join <atomscale_lab.vault.context.ContextStore.join>` (in the vault, audited
there) and :meth:`Workspace.join_context <atomscale_lab.client.workspace.Workspace.join_context>`
(in a kernel, on labels the server released)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

LABEL_SUFFIX = "_label"
"""Suffix of a label whose field name the frame already has (``sample`` → ``sample_label``)."""


def join_labels(
    frame: pd.DataFrame, labels: pd.DataFrame, fields: Sequence[str], on: str = "run_id"
) -> pd.DataFrame:
    """``frame`` left-joined with ``labels`` (``run_id`` + ``fields``) on ``frame[on]``.

    The result keeps ``frame``'s index and row order; rows without labels get nulls.
    """
    labels = labels.rename(
        columns={f: f + LABEL_SUFFIX for f in fields if f in frame.columns and f != on}
    )
    if on != "run_id":
        labels = labels.rename(columns={"run_id": on})
    keyed = frame.copy()
    keyed[on] = keyed[on].astype(object)
    labels[on] = labels[on].astype(object)
    out = keyed.merge(labels, how="left", on=on)
    out.index = frame.index
    return out
