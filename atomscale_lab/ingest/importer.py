"""Import a tool log (CSV or Parquet) into one org's store, all or nothing.

Every row is validated against the category's schema before anything is written; the first bad
value is reported with its line (CSV, header = line 1) or row (Parquet) and its column, and then
nothing is stored. A good file is written in one commit, and the run gets a run record if it has
none yet (or an updated one when metadata is given).

Importing is idempotent: rows are compared with what the run already holds in that table. A file
whose rows are all stored already is skipped (``skipped: True``, nothing written); a file that
overlaps the stored rows only in part is refused with :class:`AlreadyImported`, so rows are never
stored twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from atomscale_lab import schema
from atomscale_lab.errors import NotFound, ValidationError
from atomscale_lab.ingest.core import CATEGORY_TABLE, check_id

CSV_BLOCK = 4 << 20


class MalformedFile(ValidationError):
    """A malformed file: the message names the line (or row) and the column."""


class AlreadyImported(ValidationError):
    """Part of the file's rows are already stored for the run: importing would double them."""


RUN_METADATA = ("project", "sample", "method", "operator")
"""Run-record fields ``import_file(metadata=...)`` can set."""


def _keys(table: pa.Table) -> Counter:
    cols = [c for c in table.column_names if c != "updated_at"]
    rows = zip(*(table.column(c).to_pylist() for c in cols), strict=True)
    return Counter(tuple(tuple(v) if isinstance(v, list) else v for v in r) for r in rows)


def overlap(stored: pa.Table, data: pa.Table) -> int:
    """How many rows of ``data`` are already in ``stored`` (counting duplicates)."""
    if stored.num_rows == 0:
        return 0
    have = _keys(stored.select(data.column_names))
    want = _keys(data)
    return sum(min(n, have[k]) for k, n in want.items())


def _where(fmt: str, index: int) -> str:
    # CSV: line 1 is the header, so data row i (from 0) is on line i + 2.
    return f"line {index + 2}" if fmt == "csv" else f"row {index + 1}"


def _first_bad(values: pa.Array, cast: Callable[[pa.Array], pa.Array]) -> int:
    """Index of the first value that ``cast`` refuses (found by bisection)."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            cast(values.slice(lo, mid - lo))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            hi = mid
    return lo


def _cast_time(col: pa.Array, typ: pa.DataType, tz: str) -> pa.Array:
    if not pa.types.is_string(col.type):
        return col.cast(typ)
    # Times with an offset (``Z``, ``+01:00``) keep it; times without one are in ``tz``.
    has_tz = pc.fill_null(pc.match_substring_regex(col, r"(Z|[+-]\d\d:?\d\d)$"), True)
    aware = pc.if_else(has_tz, col, pa.scalar(None, pa.string())).cast(typ)
    naive = pc.if_else(has_tz, pa.scalar(None, pa.string()), col).cast(pa.timestamp(typ.unit))
    return pc.coalesce(aware, pc.assume_timezone(naive, tz).cast(typ))


def conform_block(
    spec: schema.TableSpec, block: pa.Table, *, fmt: str, offset: int, fill: dict, tz: str = "UTC"
) -> pa.Table:
    """Cast one block of a file to ``spec``; errors name the line/row and column."""
    names = spec.schema.names
    extra = [c for c in block.column_names if c not in names]
    if extra:
        raise MalformedFile(
            f"unknown column {extra[0]!r}; {spec.name} has {', '.join(names)}", field=extra[0]
        )
    cols = {}
    for f in spec.schema:
        if f.name in block.column_names:
            col = block.column(f.name).combine_chunks()
        else:
            col = pa.nulls(block.num_rows, f.type)
        if f.name in fill:
            v = fill[f.name]
            as_text = col.cast(pa.string()) if not pa.types.is_null(col.type) else col
            bad = pc.and_(pc.is_valid(as_text), pc.not_equal(as_text, v))
            if not pa.types.is_null(col.type) and pc.any(bad).as_py():
                i = pc.index(bad, True).as_py()
                raise MalformedFile(
                    f"{_where(fmt, offset + i)}, column {f.name!r}: {as_text[i].as_py()!r} "
                    f"differs from the {f.name} given on the command line ({v!r})",
                    field=f.name,
                    row=offset + i,
                )
            col = pa.array([v] * block.num_rows, pa.string())

        def cast(a, f=f):
            if pa.types.is_timestamp(f.type):
                return _cast_time(a, f.type, tz)
            return a.cast(f.type)

        try:
            out = cast(col)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            i = _first_bad(col, cast)
            raise MalformedFile(
                f"{_where(fmt, offset + i)}, column {f.name!r}: {col[i].as_py()!r} is not a "
                f"valid {f.type}",
                field=f.name,
                row=offset + i,
            ) from None
        if f.name in schema.REQUIRED and out.null_count:
            i = pc.index(pc.is_null(out), True).as_py()
            raise MalformedFile(
                f"{_where(fmt, offset + i)}, column {f.name!r}: a value is required",
                field=f.name,
                row=offset + i,
            )
        cols[f.name] = out
    return pa.table(cols, schema=spec.schema)


def read_file(
    path: Path,
    spec: schema.TableSpec,
    *,
    fill: dict,
    tz: str = "UTC",
    progress: Callable[[int], None] | None = None,
) -> pa.Table:
    """Read and validate a whole CSV or Parquet file into one table of ``spec``."""
    path = Path(path)
    suffix = path.suffix.lower()
    parts, offset = [], 0
    if suffix in (".parquet", ".pq"):
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise MalformedFile(
                f"{path.name} is not a readable Parquet file: {e}", field="file"
            ) from None
        for batch in pf.iter_batches(batch_size=65_536):
            block = pa.Table.from_batches([batch])
            parts.append(conform_block(spec, block, fmt="parquet", offset=offset, fill=fill, tz=tz))
            offset += block.num_rows
            if progress:
                progress(block.num_rows)
    elif suffix in (".csv", ".txt", ".tsv"):
        with open(path, "rb") as fh:
            header = fh.readline().decode("utf-8", "replace").strip()
        delim = "\t" if suffix == ".tsv" else ","
        cols = [c.strip().strip('"') for c in header.split(delim)]
        if not header or not all(cols):
            raise MalformedFile(
                f"line 1 of {path.name}: a header row with column names is required", field="header"
            )
        try:
            reader = pcsv.open_csv(
                path,
                read_options=pcsv.ReadOptions(block_size=CSV_BLOCK),
                parse_options=pcsv.ParseOptions(delimiter=delim),
                convert_options=pcsv.ConvertOptions(
                    column_types={c: pa.string() for c in cols},
                    strings_can_be_null=True,
                    null_values=[""],
                ),
            )
        except pa.ArrowInvalid as e:
            raise MalformedFile(f"{path.name}: {e}", field="file") from None
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                # e.g. "CSV parse error: Expected 3 columns, got 4: ..." (Arrow names the row)
                raise MalformedFile(
                    f"{path.name} after line {offset + 1}: {e}", field="file"
                ) from None
            block = pa.Table.from_batches([batch])
            parts.append(conform_block(spec, block, fmt="csv", offset=offset, fill=fill, tz=tz))
            offset += block.num_rows
            if progress:
                progress(block.num_rows)
    else:
        raise MalformedFile(
            f"{path.name}: only .csv, .tsv and .parquet files can be imported", field="file"
        )
    if not parts or offset == 0:
        raise MalformedFile(f"{path.name} has no rows", field="file")
    return pa.concat_tables(parts)


def import_file(
    vault,
    path: Path,
    org: str,
    category: str,
    run_id: str,
    *,
    tool: str | None = None,
    tz: str = "UTC",
    actor: str = "admin",
    progress: Callable[[int], None] | None = None,
    metadata: dict | None = None,
) -> dict:
    """Validate the whole file, then write it to ``org`` in one commit; returns a summary.

    ``metadata`` sets the run record's ``project``, ``sample``, ``method``, ``operator`` (None
    values are left alone). A re-import of rows already stored is skipped or refused (see the
    module docstring).
    """
    metadata = {k: v for k, v in (metadata or {}).items() if v is not None}
    bad = [k for k in metadata if k not in RUN_METADATA]
    if bad:
        raise ValidationError(
            f"cannot set {bad[0]!r} of a run; settable: {', '.join(RUN_METADATA)}", field=bad[0]
        )
    for k, v in metadata.items():
        if not isinstance(v, str) or not v.strip() or len(v) > 200:
            raise ValidationError(f"{k} must be 1-200 characters", field=k)
    check_id(run_id, "run")
    if category not in CATEGORY_TABLE:
        raise ValidationError(
            f"category must be one of {', '.join(CATEGORY_TABLE)}", field="category"
        )
    spec = schema.spec(CATEGORY_TABLE[category])
    fill = {"run_id": run_id}
    if tool is not None:
        check_id(tool, "tool")
        if "tool" in spec.schema.names:
            fill["tool"] = tool
    store = vault.store(org, actor=actor)
    data = read_file(Path(path), spec, fill=fill, tz=tz, progress=progress)
    table = store.table(spec.name)
    times = data.column(spec.time_column)
    tmin, tmax = pc.min(times).as_py(), pc.max(times).as_py()
    summary = {
        "org": org,
        "table": spec.name,
        "run_id": run_id,
        "rows": data.num_rows,
        "start": tmin.isoformat() if tmin else None,
        "end": tmax.isoformat() if tmax else None,
        "new_run": False,
        "skipped": False,
    }
    audit = vault.audit(org)
    try:
        stored = table.read(run_ids=[run_id])
    except NotFound:
        stored = spec.schema.empty_table()
    dup = overlap(stored, data)
    if dup == data.num_rows:
        audit.record(
            actor,
            "data.import",
            table=spec.name,
            run_id=run_id,
            rows=0,
            file=Path(path).name,
            skipped="already imported",
            metadata=sorted(metadata) or None,
        )
        summary["skipped"] = True
        _set_metadata(store, run_id, metadata, actor)
        return summary
    if dup:
        audit.record(
            actor,
            "data.import",
            "denied",
            table=spec.name,
            run_id=run_id,
            rows=data.num_rows,
            file=Path(path).name,
            reason="partly imported",
        )
        raise AlreadyImported(
            f"{dup} of the {data.num_rows} rows of {Path(path).name} are already stored for run "
            f"{run_id!r} in {spec.name}; nothing was imported (import only the new rows)",
            field="file",
        )
    commit = table.write(data, actor=actor)
    runs = store.table("process/runs")
    try:
        known = runs.read(run_ids=[run_id]).num_rows > 0
    except NotFound:
        known = False
    if not known:
        runs.write(
            [
                {
                    "run_id": run_id,
                    "instrument": tool,
                    "start": tmin,
                    "end": tmax,
                    "status": "complete",
                    "updated_at": datetime.now(UTC),
                    **metadata,
                }
            ],
            actor=actor,
        )
    else:
        _set_metadata(store, run_id, metadata, actor)
    audit.record(
        actor,
        "data.import",
        table=spec.name,
        run_id=run_id,
        rows=data.num_rows,
        file=Path(path).name,
        commit=commit.seq,
        metadata=sorted(metadata) or None,
    )
    summary["new_run"] = not known
    return summary


def _set_metadata(store, run_id: str, metadata: dict, actor: str) -> None:
    """A new version of the run record with ``metadata`` (the latest ``updated_at`` wins)."""
    if not metadata:
        return
    runs = store.table("process/runs")
    try:
        cur = runs.read(run_ids=[run_id]).to_pylist()
    except NotFound:
        cur = []
    if not cur:
        return
    rec = dict(cur[-1])
    if all(rec.get(k) == v for k, v in metadata.items()):
        return
    now = datetime.now(UTC)
    prev = rec.get("updated_at")
    if prev is not None and prev >= now:
        now = prev + timedelta(microseconds=1)
    rec.update(metadata, updated_at=now)
    runs.write([rec], actor=actor)
