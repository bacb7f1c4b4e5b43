"""``atomscale-lab export``: decrypt one table of an org into plaintext CSV, Parquet or JSON
(audited), with spreadsheet formulas neutralised in CSV unless ``--raw-csv``."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from atomscale_lab.cli.common import (
    CliError,
    actor,
    add_format_option,
    add_org_argument,
    open_vault,
    progress,
    warn,
)
from atomscale_lab.errors import AtomscaleError, NotFound, ValidationError
from atomscale_lab.schema import TABLE_ALIASES

EXPORT_TABLES = {
    k: TABLE_ALIASES[k] for k in ("runs", "process", "series", "tool_state", "metrology")
}
"""``export --category`` names and the tables they export (full table names work as well)."""


def _export_table_name(category: str) -> str:
    from atomscale_lab.schema import TABLES

    name = EXPORT_TABLES.get(category, category)
    if name not in TABLES:
        raise ValidationError(
            f"unknown category {category!r}; choose one of {', '.join(EXPORT_TABLES)} "
            f"(or a table: {', '.join(TABLES)})",
            field="category",
        )
    return name


def _frame_for_text(table):
    """A pandas frame whose list columns are JSON text and times ISO 8601 (CSV-safe)."""
    import pyarrow as pa

    df = table.to_pandas()
    for f in table.schema:
        if pa.types.is_list(f.type):
            df[f.name] = [
                None if v is None else json.dumps(list(v)) for v in table.column(f.name).to_pylist()
            ]
        elif pa.types.is_timestamp(f.type):
            df[f.name] = [
                None if v is None else v.isoformat() for v in table.column(f.name).to_pylist()
            ]
    return df


def _nan_to_null(table):
    """Float NaN becomes null (JSON has no NaN)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, f in enumerate(table.schema):
        if pa.types.is_floating(f.type):
            col = table.column(i)
            table = table.set_column(i, f, pc.if_else(pc.is_nan(col), None, col))
    return table


CSV_FORMULA_HEADS = ("=", "+", "-", "@", "\t", "\r")
"""A cell starting with one of these is run as a formula by spreadsheet programs."""


def csv_neutralise(df):
    """Prefix text cells that a spreadsheet would run as a formula with ``'`` (kept as text).

    Only text (object/string) columns are touched: a negative number stays a number.
    """
    import pandas as pd

    for col in df.columns:
        if pd.api.types.is_object_dtype(df[col]) or pd.api.types.is_string_dtype(df[col]):
            df[col] = [
                ("'" + v) if isinstance(v, str) and v.startswith(CSV_FORMULA_HEADS) else v
                for v in df[col]
            ]
    return df


def _write_export(table, fmt: str, out, args) -> None:
    import pyarrow.parquet as pq

    n = table.num_rows
    batch = 20_000
    with progress(args, total=n, desc=f"exporting {fmt}", unit="row") as bar:
        if fmt == "parquet":
            pq.write_table(table, out, compression="zstd")
            bar.update(n)
            return
        if fmt == "csv":
            header = True
            for start in range(0, max(n, 1), batch):
                chunk = _frame_for_text(table.slice(start, batch))
                if not getattr(args, "raw_csv", False):
                    chunk = csv_neutralise(chunk)
                # CRLF rows (RFC 4180): the csv writer then quotes any cell holding a CR, which
                # would otherwise start a new row (and a formula) in a spreadsheet.
                out.write(chunk.to_csv(index=False, header=header, lineterminator="\r\n"))
                header = False
                bar.update(min(batch, n - start))
            return
        table = _nan_to_null(table)
        out.write("[")
        first = True
        for start in range(0, n, batch):
            for row in table.slice(start, batch).to_pylist():
                out.write(
                    ("\n" if first else ",\n")
                    + json.dumps(row, default=_json_default, allow_nan=False)
                )
                first = False
            bar.update(min(batch, n - start))
        out.write("\n]\n")


def _json_default(v):
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, float):
        return None
    raise TypeError(f"cannot export {type(v).__name__}")


def cmd_export(args) -> int:
    """Export one table (optionally one run) as plaintext CSV, Parquet or JSON."""
    name = _export_table_name(args.category)
    vault = open_vault(args)
    who = actor(args)
    audit = vault.audit(args.name)
    store = vault.store(args.name)
    run_ids = None
    if args.run:
        if (
            args.run not in store.table("process/runs").run_ids()
            and args.run not in store.table(name).run_ids()
        ):
            raise NotFound(f"run {args.run!r} not found in org {args.name!r}")
        run_ids = [args.run]
    fmt = args.format
    out_path = Path(args.output) if args.output else None
    if out_path is None and fmt == "parquet" and sys.stdout.isatty():
        raise CliError("Parquet is binary: pass --output PATH or redirect stdout")
    if out_path is not None and out_path.exists() and not args.force:
        raise CliError(f"{out_path} exists; pass --force to overwrite it")
    try:
        table = store.table(name).read(run_ids=run_ids)
    except AtomscaleError as e:
        audit.record(
            who,
            "data.export",
            "error",
            table=name,
            run=args.run,
            format=fmt,
            error=type(e).__name__,
        )
        raise
    warn(
        f"the export is NOT encrypted ({table.num_rows:,} rows of {name} as plaintext {fmt}); "
        "keep it inside the organization's boundary and delete it when done"
    )
    if out_path is None:
        if fmt == "parquet":
            _write_export(table, fmt, sys.stdout.buffer, args)
            sys.stdout.buffer.flush()
        else:
            _write_export(table, fmt, sys.stdout, args)
            sys.stdout.flush()
    else:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.")
        try:
            with os.fdopen(fd, "wb" if fmt == "parquet" else "w", newline=None) as f:
                _write_export(table, fmt, f, args)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out_path)  # mkstemp made it 0600: the export stays private
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    audit.record(
        who,
        "data.export",
        table=name,
        run=args.run,
        format=fmt,
        rows=table.num_rows,
        output=str(out_path) if out_path else "stdout",
    )
    if out_path is not None:
        print(f"exported {table.num_rows:,} rows of {name} to {out_path}")
    return 0


def add_export_parser(sub) -> None:
    """Add ``export`` to the admin command."""
    ex = sub.add_parser(
        "export",
        help="export a table as plaintext CSV/Parquet/JSON",
        description="Decrypt and export one table of an org (audited). The "
        "output is NOT encrypted. Categories: "
        + ", ".join(f"{k} ({v})" for k, v in EXPORT_TABLES.items())
        + ".",
    )
    add_org_argument(ex)
    ex.add_argument("--category", required=True, help="runs, process, tool_state or metrology")
    ex.add_argument("--run", metavar="RUN_ID", help="only this run")
    add_format_option(
        ex,
        choices=("csv", "parquet", "json"),
        required=True,
        alias=False,
        help="csv (list columns as JSON text), parquet, or json (an array of rows)",
    )
    ex.add_argument("--output", "-o", metavar="PATH", help="file to write (default: stdout)")
    ex.add_argument("--force", action="store_true", help="overwrite an existing output file")
    ex.add_argument(
        "--raw-csv",
        action="store_true",
        help="write text cells as stored: by default a cell starting with =, +, -, "
        "@, tab or CR gets a leading ' so spreadsheets show it as text instead "
        "of running it as a formula",
    )
    ex.set_defaults(func=cmd_export)
