"""Reading context labels from files and merging label updates (no I/O beyond reading the file).

Used by ``atomscale-lab context set`` / ``context import``; the writing itself (encrypted, audited)
is :meth:`atomscale_lab.vault.context.ContextStore.put`.

Label files are CSV, JSON (an array of objects) or Parquet with a ``run_id`` column and any of
:data:`~atomscale_lab.schema.CONTEXT_FIELDS`. In CSV, the list fields (``layer_stack``, ``tags``)
are a JSON array (``["GaAs buffer 200 nm", "AlGaAs 50 nm"]``) or ``;``-separated text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from atomscale_lab.errors import ValidationError
from atomscale_lab.schema import CONTEXT, CONTEXT_FIELDS

LIST_FIELDS = tuple(f.name for f in CONTEXT.schema if pa.types.is_list(f.type))


def split_list(value) -> list[str] | None:
    """A list field from a cell: a list, a JSON array, or ``;``-separated text."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    text = str(value).strip()
    if not text:
        return None
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [str(v) for v in parsed]
    return [part.strip() for part in text.split(";") if part.strip()]


def _rows_of(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValidationError(f"{path.name} is not valid JSON: {e}", field="file") from None
        if not isinstance(doc, list) or not all(isinstance(r, dict) for r in doc):
            raise ValidationError(f"{path.name}: expected a JSON array of objects", field="file")
        return doc
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowInvalid, OSError) as e:
            raise ValidationError(
                f"{path.name} is not a readable Parquet file: {e}", field="file"
            ) from None
    if suffix in (".csv", ".tsv"):
        import csv

        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            return [{k: (v if v != "" else None) for k, v in row.items()} for row in reader]
    raise ValidationError(
        f"{path.name}: label files are .csv, .tsv, .json or .parquet", field="file"
    )


def read_labels(path) -> list[dict]:
    """Validated label rows of a file; the first problem names its row (and line) and column."""
    path = Path(path)
    rows = _rows_of(path)
    if not rows:
        raise ValidationError(f"{path.name} has no label rows", field="file")
    out, seen = [], {}
    for i, row in enumerate(rows):
        where = f"line {i + 2}" if path.suffix.lower() in (".csv", ".tsv") else f"row {i + 1}"
        unknown = [k for k in row if k not in ("run_id", *CONTEXT_FIELDS)]
        if unknown:
            raise ValidationError(
                f"{path.name} {where}: unknown column {unknown[0]!r}; label "
                f"columns are run_id, {', '.join(CONTEXT_FIELDS)}",
                field=unknown[0],
                row=i,
            )
        run_id = row.get("run_id")
        if not run_id or not str(run_id).strip():
            raise ValidationError(f"{path.name} {where}: run_id is required", field="run_id", row=i)
        run_id = str(run_id).strip()
        if run_id in seen:
            raise ValidationError(
                f"{path.name} {where}: run {run_id!r} is listed twice (first at {seen[run_id]})",
                field="run_id",
                row=i,
            )
        seen[run_id] = where
        rec = {"run_id": run_id}
        for f in CONTEXT_FIELDS:
            if f in row:
                v = row[f]
                rec[f] = split_list(v) if f in LIST_FIELDS else (None if v is None else str(v))
        out.append(rec)
    return out


def _none_if_missing(v):
    # a label read back through pandas comes as NaN where it was never set
    return None if isinstance(v, float) and v != v else v


def merge(current: dict | None, updates: dict) -> dict:
    """The label row after ``updates``: fields not named keep their current value; an empty
    string clears a field."""
    rec = {f: None for f in CONTEXT_FIELDS}
    if current:
        rec.update({f: _none_if_missing(current.get(f)) for f in CONTEXT_FIELDS})
        for f in LIST_FIELDS:
            if rec[f] is not None:
                rec[f] = [str(v) for v in rec[f]]
    for f, v in updates.items():
        if f not in CONTEXT_FIELDS:
            raise ValidationError(f"unknown context field {f!r}", field=f)
        if v is None:
            continue
        if f in LIST_FIELDS:
            rec[f] = split_list(v) if v != "" else None
        else:
            rec[f] = v if v != "" else None
    return rec
