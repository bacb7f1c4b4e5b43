"""The tables an org has, their Arrow schemas, and validation of incoming rows.

A *table* is addressed as ``"<category>/<name>"``; its files live under
``data_root/<org>/<category>/<name>/``. Context labels have their own schema here but are only ever
stored under the separate context root.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from atomscale_lab.errors import ValidationError

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableSpec:
    """How one table is stored: its schema, time column, sort order and whether it is bucketed."""

    name: str
    schema: pa.Schema
    time_column: str
    sort_by: tuple[str, ...]
    bucketed: bool = True
    """Bucketed tables are split into ``bucket=<hash(run_id) % N>`` files so one run touches few."""
    key: tuple[str, ...] = ()
    """Columns identifying a row version; the row with the latest ``updated_at`` wins on read."""

    @property
    def category(self) -> str:
        """The category part of the name (``process``, ``tool_state``, ``metrology``)."""
        return self.name.split("/", 1)[0]


RUNS = TableSpec(
    "process/runs",
    pa.schema(
        [
            ("run_id", pa.string()),
            ("project", pa.string()),
            ("sample", pa.string()),
            ("instrument", pa.string()),
            ("method", pa.string()),
            ("operator", pa.string()),
            ("start", TS),
            ("end", TS),
            ("status", pa.string()),
            ("updated_at", TS),
        ]
    ),
    time_column="start",
    sort_by=("run_id",),
    bucketed=False,
    key=("run_id",),
)
SERIES = TableSpec(
    "process/series",
    pa.schema(
        [
            ("run_id", pa.string()),
            ("time", TS),
            ("channel", pa.string()),
            ("value", pa.float64()),
            ("unit", pa.string()),
        ]
    ),
    time_column="time",
    sort_by=("run_id", "channel", "time"),
)
TOOL_STATE = TableSpec(
    "tool_state/readings",
    pa.schema(
        [
            ("run_id", pa.string()),
            ("tool", pa.string()),
            ("time", TS),
            ("channel", pa.string()),
            ("value", pa.float64()),
            ("setpoint", pa.float64()),
            ("unit", pa.string()),
        ]
    ),
    time_column="time",
    sort_by=("run_id", "channel", "time"),
)
METROLOGY = TableSpec(
    "metrology/items",
    pa.schema(
        [
            ("item_id", pa.string()),
            ("run_id", pa.string()),
            ("sample", pa.string()),
            ("technique", pa.string()),
            ("time", TS),
            ("x", pa.list_(pa.float64())),
            ("y", pa.list_(pa.float64())),
            ("x_unit", pa.string()),
            ("y_unit", pa.string()),
            ("peaks", pa.list_(pa.float64())),
            ("result_name", pa.string()),
            ("result_value", pa.float64()),
            ("result_unit", pa.string()),
        ]
    ),
    time_column="time",
    sort_by=("run_id", "time"),
)
CONTEXT = TableSpec(
    "context/labels",
    pa.schema(
        [
            ("run_id", pa.string()),
            ("sample", pa.string()),
            ("material_system", pa.string()),
            ("film", pa.string()),
            ("substrate", pa.string()),
            ("layer_stack", pa.list_(pa.string())),
            ("target_formula", pa.string()),
            ("tags", pa.list_(pa.string())),
            ("notes", pa.string()),
            ("updated_at", TS),
        ]
    ),
    time_column="updated_at",
    sort_by=("run_id",),
    bucketed=False,
    key=("run_id",),
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (RUNS, SERIES, TOOL_STATE, METROLOGY)}
"""The raw-data tables (context is deliberately not in this mapping)."""

ARROW_STREAM = "application/vnd.apache.arrow.stream"
"""Media type of an Arrow IPC stream (request and response bodies of tables)."""

RUN_COLUMNS = (
    "run_id",
    "project",
    "sample",
    "instrument",
    "method",
    "operator",
    "start",
    "end",
    "status",
)
"""Columns of a run record as the API shows it (``updated_at`` is internal)."""

METROLOGY_SCALARS = (
    "item_id",
    "run_id",
    "sample",
    "technique",
    "time",
    "result_name",
    "result_value",
    "result_unit",
)
"""The metrology columns listed in pages (spectra are fetched per item or on request)."""

CATEGORY_TABLES = {
    "process": "process/series",
    "tool_state": "tool_state/readings",
    "metrology": "metrology/items",
}
"""The table each raw-data category's measurements go to (ingest streams, ``export``)."""

TABLE_ALIASES = {
    "runs": "process/runs",
    "series": "process/series",
    **CATEGORY_TABLES,
    "readings": "tool_state/readings",
    "items": "metrology/items",
}
"""Short names of the tables (``Workspace.dataset``/``table``, ``atomscale-lab export``)."""

RUN_STATUSES = ("active", "interrupted", "finalizing", "complete", "error")
CONTEXT_FIELDS = tuple(n for n in CONTEXT.schema.names if n not in ("run_id", "updated_at"))
REQUIRED = {"run_id", "time", "start", "item_id", "channel", "tool", "technique"}
"""Columns that may never be null where a table has them."""


def spec(name: str) -> TableSpec:
    """Return the spec of a raw-data table, or raise ``ValidationError`` naming the valid ones."""
    if name == CONTEXT.name:
        return CONTEXT
    try:
        return TABLES[name]
    except KeyError:
        raise ValidationError(
            f"unknown table {name!r}; expected one of {', '.join(TABLES)}", field="table"
        ) from None


def conform(table_spec: TableSpec, data) -> pa.Table:
    """Coerce rows (a pyarrow Table, RecordBatch, pandas DataFrame or list of dicts) to the schema.

    Missing optional columns become nulls; unknown columns, wrong types and nulls in required
    columns raise :class:`ValidationError` naming the field (and the first bad row where known).
    """
    schema = table_spec.schema
    if isinstance(data, list):
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise ValidationError(f"row {i} is not an object", row=i)
            extra = set(row) - set(schema.names)
            if extra:
                name = sorted(extra)[0]
                raise ValidationError(f"unknown field {name!r} in row {i}", field=name, row=i)
        cols = {}
        for f in schema:
            values = [row.get(f.name) for row in data]
            cols[f.name] = _array(f, values)
        table = pa.table(cols, schema=schema)
    else:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        elif not isinstance(data, pa.Table):  # pandas
            data = pa.Table.from_pandas(data, preserve_index=False)
        extra = set(data.column_names) - set(schema.names)
        if extra:
            name = sorted(extra)[0]
            raise ValidationError(f"unknown field {name!r}", field=name)
        cols = {}
        for f in schema:
            if f.name in data.column_names:
                col = data.column(f.name)
                try:
                    cols[f.name] = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    raise ValidationError(
                        f"field {f.name!r} must be {f.type}, got {col.type}", field=f.name
                    ) from None
            else:
                cols[f.name] = pa.nulls(data.num_rows, f.type)
        table = pa.table(cols, schema=schema)
    for name in REQUIRED & set(schema.names):
        col = table.column(name)
        if col.null_count:
            row = col.is_null().index(True).as_py()
            raise ValidationError(
                f"field {name!r} is required (null in row {row})", field=name, row=row
            )
    return table


def _array(f: pa.Field, values: list) -> pa.Array:
    try:
        if pa.types.is_timestamp(f.type):
            return (
                pa.array(values, type=pa.string()).cast(f.type)
                if values and any(isinstance(v, str) for v in values)
                else pa.array(values, type=f.type)
            )
        return pa.array(values, type=f.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        for i, v in enumerate(values):
            try:
                pa.array(
                    [v],
                    type=f.type
                    if not isinstance(v, str) or not pa.types.is_timestamp(f.type)
                    else pa.string(),
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                raise ValidationError(
                    f"field {f.name!r} in row {i}: {v!r} is not a valid {f.type}",
                    field=f.name,
                    row=i,
                ) from None
        raise ValidationError(
            f"field {f.name!r} has values that are not {f.type}", field=f.name
        ) from None
