"""One org's data service, without HTTP: :class:`OrgService` holds the org key (in memory only),
the ``OrgStore``, the in-memory run catalogue and the permission and audit rules, and answers
what the routes of :mod:`atomscale_lab.server.handlers` ask, one typed method per question.

It is hosted by the jupyter-server extension (:mod:`atomscale_lab.server.app`, single-user mode)
and by an org's data server on JupyterHub (:mod:`atomscale_lab.hub.services.data`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from atomscale_lab import CATEGORIES, __version__, orgconfig
from atomscale_lab.errors import (
    Conflict,
    NotFound,
    PermissionDenied,
    TooLarge,
    ValidationError,
)
from atomscale_lab.permissions import role_of
from atomscale_lab.schema import (
    ARROW_STREAM,
    METROLOGY,
    METROLOGY_SCALARS,
    RUNS,
    SERIES,
    TABLES,
    TOOL_STATE,
    conform,
)
from atomscale_lab.server.access import OrgAccess
from atomscale_lab.server.catalog import (
    MAX_PER_PAGE,
    Refreshing,
    RunCatalog,
    RunQuery,
    downsample,
    page_of,
    rows_to_records,
    sorted_by_channel_time,
)
from atomscale_lab.server.params import (
    check_params,
    parse_bool,
    parse_float,
    parse_int,
    parse_list,
    parse_time,
)
from atomscale_lab.vault.store import READ_POOL

log = logging.getLogger(__name__)


MAX_POINTS = 1_000_000
STREAM_BATCH = 131_072
MAX_JOIN_RUNS = 10_000
CONTEXT_FACETS = ("material_system",)
"""Context labels offered as run facets (counted and filtered through an audited join)."""
MAX_WRITE_BYTES = 32 << 20
"""Largest Arrow body ``POST metrology`` accepts."""
MAX_WRITE_ROWS = 100_000


class OrgService:
    """One org's data as the server extension serves it (no HTTP here).

    Keys are fetched once, at construction, and kept in memory only. Every read goes through the
    commit-log-verified ``OrgStore``; every data read is audited with table, run ids and rows.
    """

    def __init__(self, access: OrgAccess, *, refresh_interval: float = 1.0):
        from atomscale_lab.vault.crypto import OrgCrypto
        from atomscale_lab.vault.store import OrgStore
        from atomscale_lab.vault.store.media import as_root
        from atomscale_lab.vault.store.objects import S3Root, check_root

        if isinstance(as_root(access.data_root), S3Root):
            check_root(as_root(access.data_root), access.region)

        self.access = access
        self.org = access.org
        keys = access.org_keys()
        # ``refresh``: after ``org rotate-key`` the first unseen key version re-fetches the keys
        # (rate-limited), so a running server keeps serving without a restart.
        self.store = OrgStore(
            as_root(access.data_root),
            access.org,
            OrgCrypto(keys, refresh=access.org_keys),
            access.heads(),
        )
        del keys  # the CryptoFactory holds what it needs; drop our own reference
        self._write_lock = threading.Lock()
        self.runs = Refreshing(
            self._build_catalog, lambda: self._log_version(RUNS.name), refresh_interval
        )
        self.metrology_index = Refreshing(
            self._build_metrology_index, lambda: self._log_version(METROLOGY.name), refresh_interval
        )

    @property
    def key_version(self) -> int:
        """The data-key version new writes use (follows rotations)."""
        return self.store.crypto.version

    @property
    def key_fingerprint(self) -> str:
        """Fingerprint of that version."""
        return self.store.crypto.fingerprint()

    # --- caches ---------------------------------------------------------------------------

    def _log_version(self, table: str):
        return self.store.table(table).log_version()

    def _build_catalog(self) -> RunCatalog:
        t0 = time.perf_counter()
        cat = RunCatalog(self.store.table(RUNS.name).read()).warm()
        log.info(
            "run catalogue of %s: %s runs in %.2f s", self.org, len(cat), time.perf_counter() - t0
        )
        return cat

    def _build_metrology_index(self) -> pa.Table:
        t = self.store.table(METROLOGY.name).read(columns=list(METROLOGY_SCALARS))
        return t.sort_by([("time", "descending"), ("item_id", "ascending")])

    # --- permissions and audit ------------------------------------------------------------

    def actor(self, user: str) -> str:
        """Name used in audit events for ``user``."""
        return self.access.actor(user)

    def permissions(self, user: str) -> set[str]:
        """The user's permissions in this org."""
        return set(self.access.permissions(user))

    def require(self, user: str, permission: str, action: str, **detail) -> None:
        """Raise ``PermissionDenied`` (and audit the denial) unless ``user`` has ``permission``."""
        if permission not in self.permissions(user):
            self.access.audit().record(
                self.actor(user), action, "denied", permission=permission, **detail
            )
            raise PermissionDenied(
                f"{permission} permission in org {self.org!r} is needed for this request"
            )

    def audited_read(
        self, user: str, table: str, run_ids: Sequence[str] | None, rows: int, **detail
    ) -> None:
        """Record one ``data.read`` event."""
        ids = list(run_ids) if run_ids is not None else None
        if ids is not None and len(ids) > 100:  # keep events small; the count stays exact
            detail["run_count"] = len(ids)
            ids = ids[:100]
        self.access.audit().record(
            self.actor(user), "data.read", table=table, run_ids=ids, rows=int(rows), **detail
        )

    # --- answers --------------------------------------------------------------------------

    def status(self, user: str) -> dict:
        """Org, user, role, key version/fingerprint and (with data:read) row counts per table.

        Members only: someone without a role in the org learns nothing about it here.
        """
        perms = self.permissions(user)
        if not perms:
            self.require_member(user, "status.read")
        doc = {
            "org": self.org,
            "region": self.access.region,
            "user": user,
            "actor": self.actor(user),
            "role": role_of(perms),
            "permissions": sorted(perms),
            "version": __version__,
            "key": {"version": self.key_version, "fingerprint": self.key_fingerprint},
        }
        if "data:read" in perms:
            cats: dict = {c: {"rows": 0, "tables": {}} for c in CATEGORIES}
            for name in TABLES:
                cat, short = name.split("/", 1)
                n = self.store.table(name).num_rows()
                cats[cat]["tables"][short] = n
                cats[cat]["rows"] += n
            doc["categories"] = cats
        return doc

    def runs_page(self, user: str, params: dict) -> tuple[dict, pa.Table]:
        """A page of the run catalogue: ``({total, page, per_page}, rows)``.

        ``material_system`` (with ``purpose``) narrows to runs carrying that context label: it
        needs ``context:join`` too and is answered through one audited join.
        """
        self.require(user, "data:read", "data.read", table=RUNS.name)
        params = dict(params)
        systems = parse_list(params.pop("material_system", None))
        purpose = params.pop("purpose", None)
        q = RunQuery.from_params(params)
        cat = self.runs.get()
        among = None
        if systems:
            labels = self._context_labels(user, cat, "material_system", purpose)
            wanted = set(systems)
            among = [r for r, v in labels if v in wanted]
        elif purpose is not None:
            raise ValidationError(
                "purpose only goes with a context filter (material_system)", field="purpose"
            )
        total, rows = cat.page_table(q, among)
        self.audited_read(
            user, RUNS.name, rows.column("run_id").to_pylist(), rows.num_rows, query="runs"
        )
        return {"total": total, "page": q.page, "per_page": q.per_page}, rows

    def facets(self, user: str) -> dict:
        """Distinct values of the categorical run columns, for filter pickers."""
        self.require(user, "data:read", "data.read", table=RUNS.name)
        cat = self.runs.get()
        doc = {c: cat.values(c) for c in ("project", "instrument", "method", "operator", "status")}
        doc["total"] = len(cat)
        self.audited_read(user, RUNS.name, None, 0, query="facets")
        return doc

    def context_facets(self, user: str, params: dict) -> dict:
        """Runs per value of a context label (``material_system``), for a facet picker.

        Needs ``context:join`` and a ``purpose``; answered through one audited ``context.join``
        over every run of the org (each request is audited; nothing is cached).
        """
        check_params(params, {"field", "purpose"})
        name = params.get("field") or "material_system"
        cat = self.runs.get()
        labels = self._context_labels(user, cat, name, params.get("purpose"))
        counts: dict[str, int] = {}
        for _, v in labels:
            if v is not None:
                counts[v] = counts.get(v, 0) + 1
        return {
            "field": name,
            "total": len(cat),
            "unlabelled": len(cat) - sum(counts.values()),
            "values": [{"value": v, "runs": counts[v]} for v in sorted(counts)],
        }

    def _context_labels(
        self, user: str, cat: RunCatalog, name: str, purpose
    ) -> list[tuple[str, str | None]]:
        """``(run_id, label)`` of every run in ``cat``, through one audited context join."""
        self.require(user, "context:join", "context.join", fields=[name])
        if name not in CONTEXT_FACETS:
            raise ValidationError(
                f"field {name!r} is no context facet; choose one of {', '.join(CONTEXT_FACETS)}",
                field="field",
            )
        if not isinstance(purpose, str) or not purpose.strip():
            raise ValidationError(
                "purpose is required: say why the labels are needed", field="purpose"
            )
        ids = cat.run_ids()
        frame = self.access.context_join(ids, [name], purpose.strip(), self.actor(user))
        found = (
            dict(zip(frame["run_id"].astype(str), frame[name], strict=True)) if len(frame) else {}
        )
        return [(r, _label(found.get(r))) for r in ids]

    def _known_run(self, run_id: str) -> dict:
        self._check_run(run_id)
        return self.runs.get().get(run_id) or self.runs.get(wait=True).get(run_id)

    def _check_run(self, run_id: str) -> None:
        # Membership only: building the record costs more than the lookup on hot paths.
        if run_id in self.runs.get():
            return
        if run_id not in self.runs.get(wait=True):  # a run committed a moment ago is no error
            raise NotFound(f"no run {run_id!r} in org {self.org!r}")

    def run(self, user: str, run_id: str) -> dict:
        """A run record with its channels, metrology items and row counts."""
        self.require(user, "data:read", "data.read", table=RUNS.name, run_ids=[run_id])
        rec = dict(self._known_run(run_id))
        series = self.store.table(SERIES.name).read(run_ids=[run_id], columns=["channel"])
        tools = self.store.table(TOOL_STATE.name).read(run_ids=[run_id], columns=["channel"])
        met = self.metrology_index.get()
        met = met.filter(pc.equal(met.column("run_id"), run_id))
        rec["channels"] = {
            "process": sorted(pc.unique(series.column("channel")).to_pylist()),
            "tool_state": sorted(pc.unique(tools.column("channel")).to_pylist()),
        }
        rec["metrology"] = rows_to_records(met.select(["item_id", "technique", "time"]))
        rec["rows"] = {
            "process": series.num_rows,
            "tool_state": tools.num_rows,
            "metrology": met.num_rows,
        }
        self.audited_read(user, RUNS.name, [run_id], 1, query="run")
        return rec

    def series(self, user: str, run_id: str, category: str, params: dict) -> pa.Table:
        """Process or tool-state time series of one run (long frame), optionally downsampled."""
        spec = SERIES if category == "process" else TOOL_STATE
        self.require(user, "data:read", "data.read", table=spec.name, run_ids=[run_id])
        check_params(params, {"channels", "start", "end", "max_points", "format"})
        channels = parse_list(params.get("channels"))
        start = parse_time(params.get("start"), "start")
        end = parse_time(params.get("end"), "end")
        max_points = (
            parse_int(params.get("max_points"), "max_points", 0, 2, MAX_POINTS)
            if params.get("max_points")
            else 0
        )
        self._check_run(run_id)
        flt = pc.field("channel").isin(list(channels)) if channels else None
        t = self.store.table(spec.name).read(run_ids=[run_id], start=start, end=end, filter=flt)
        t = t.select(list(spec.schema.names))
        if max_points:
            t = downsample(t, max_points)
        elif not sorted_by_channel_time(t):  # one file per run is already in this order
            t = t.sort_by([("channel", "ascending"), ("time", "ascending")])
        self.audited_read(user, spec.name, [run_id], t.num_rows, channels=list(channels) or None)
        return t

    def metrology(self, user: str, params: dict) -> tuple[dict, pa.Table]:
        """A page of metrology items (scalar results; spectra too with ``spectra=true``)."""
        self.require(user, "data:read", "data.read", table=METROLOGY.name)
        check_params(params, {"run_id", "technique", "page", "per_page", "spectra", "format"})
        run_ids = parse_list(params.get("run_id"))
        techniques = parse_list(params.get("technique"))
        page = parse_int(params.get("page"), "page", 1)
        per_page = parse_int(params.get("per_page"), "per_page", 50, 1, MAX_PER_PAGE)
        spectra = parse_bool(params.get("spectra"), "spectra")
        for rid in run_ids:
            self._check_run(rid)
        idx = self.metrology_index.get()
        mask = None
        if run_ids:
            mask = pc.is_in(idx.column("run_id"), value_set=pa.array(run_ids))
        if techniques:
            m2 = pc.is_in(
                pc.utf8_lower(idx.column("technique")),
                value_set=pa.array([t.lower() for t in techniques]),
            )
            mask = m2 if mask is None else pc.and_(mask, m2)
        hits = idx if mask is None else idx.filter(mask)
        rows = page_of(hits, page, per_page)
        if spectra and rows.num_rows:
            ids = rows.column("item_id").to_pylist()
            full = self.store.table(METROLOGY.name).read(
                run_ids=sorted(set(rows.column("run_id").to_pylist())),
                filter=pc.field("item_id").isin(ids),
            )
            pos = pc.index_in(full.column("item_id"), value_set=pa.array(ids))
            full = full.append_column("_pos", pos).sort_by("_pos").drop_columns(["_pos"])
            rows = full.select(list(METROLOGY.schema.names))
        meta = {"total": hits.num_rows, "page": page, "per_page": per_page}
        self.audited_read(
            user,
            METROLOGY.name,
            sorted(set(rows.column("run_id").to_pylist())),
            rows.num_rows,
            query="metrology",
            spectra=spectra,
        )
        return meta, rows

    def metrology_item(self, user: str, item_id: str) -> pa.Table:
        """One metrology item with its spectrum (a one-row frame)."""
        self.require(user, "data:read", "data.read", table=METROLOGY.name)
        idx = self.metrology_index.get()
        hit = idx.filter(pc.equal(idx.column("item_id"), item_id))
        if hit.num_rows == 0:
            idx = self.metrology_index.get(wait=True)
            hit = idx.filter(pc.equal(idx.column("item_id"), item_id))
        if hit.num_rows == 0:
            raise NotFound(f"no metrology item {item_id!r} in org {self.org!r}")
        run_id = hit.column("run_id")[0].as_py()
        t = self.store.table(METROLOGY.name).read(
            run_ids=[run_id], filter=pc.field("item_id") == item_id
        )
        t = t.filter(pc.equal(t.column("item_id"), item_id)).slice(0, 1)
        self.audited_read(user, METROLOGY.name, [run_id], t.num_rows, item_id=item_id)
        return t.select(list(METROLOGY.schema.names))

    def table(self, user: str, name: str, params: dict):
        """A whole raw-data table (optionally some runs, columns or a time window), as
        ``(schema, batches, failed)``: an iterator of record batches to stream, and
        ``failed(rows, error)`` to call if streaming breaks off.

        The read is audited before the first batch leaves, with the exact row count (from the
        read, or for a whole table from its verified commit log).
        """
        spec = _table_spec(name)
        self.require(user, "data:read", "data.read", table=spec.name)
        check_params(params, {"run_id", "columns", "start", "end", "format"})
        run_ids = parse_list(params.get("run_id")) or None
        columns = list(parse_list(params.get("columns"))) or None
        if columns:
            bad = [c for c in columns if c not in spec.schema.names]
            if bad:
                raise ValidationError(
                    f"table {spec.name} has no column {bad[0]!r}; it has "
                    f"{', '.join(spec.schema.names)}",
                    field="columns",
                )
        elif spec.name == RUNS.name:
            columns = [c for c in spec.schema.names if c != "updated_at"]
        start = parse_time(params.get("start"), "start")
        end = parse_time(params.get("end"), "end")
        table = self.store.table(spec.name)
        names = columns or list(spec.schema.names)
        schema = pa.schema([spec.schema.field(c) for c in names])
        if spec.key or run_ids or start or end:
            # filtered or versioned reads go through the store's pruning read
            t = table.read(run_ids=run_ids, start=start, end=end, columns=names)
            rows = t.num_rows
            batches = iter(t.to_batches(max_chunksize=STREAM_BATCH))
        else:
            # a whole append-only table: decrypt batch by batch while earlier ones are sent
            dataset = table.dataset()
            rows = sum(int(e["rows"]) for e in table.files())
            batches = dataset.to_batches(
                columns=names, batch_size=STREAM_BATCH, memory_pool=READ_POOL
            )
        self.audited_read(user, spec.name, run_ids, rows, query="table")

        def failed(sent: int, error: BaseException) -> None:
            self.access.audit().record(
                self.actor(user),
                "data.read",
                "error",
                table=spec.name,
                rows=int(sent),
                error=type(error).__name__,
            )

        return schema, batches, failed

    def audit_events(self, user: str, params: dict) -> dict:
        """Audit events: all of them with ``audit:all``, the user's own with ``audit:read``.

        ``actor=`` narrows the events to one actor; asking for someone else's without
        ``audit:all`` is refused (and audited). Reading the log is itself an ``audit.read`` event.
        """
        perms = self.permissions(user)
        if "audit:read" not in perms and "audit:all" not in perms:
            self.require(user, "audit:read", "audit.read")
        check_params(params, {"limit", "offset", "action", "actor"})
        limit = parse_int(params.get("limit"), "limit", 100, 1, 1000)
        offset = parse_int(params.get("offset"), "offset", 0, 0)
        own = self.actor(user)
        wanted = params.get("actor") or None
        if "audit:all" in perms:
            actor = wanted
        elif wanted is None or wanted == own:
            actor = own
        else:
            self.require(user, "audit:all", "audit.read", requested_actor=wanted)
        events = self.access.audit_events(
            actor=actor, action=params.get("action") or None, limit=limit, offset=offset
        )
        scope = "all" if "audit:all" in perms else "own"
        self.access.audit().record(
            own, "audit.read", scope=scope, actor_filter=actor, events=len(events)
        )
        return {"events": events, "limit": limit, "offset": offset, "scope": scope}

    def context_join(self, user: str, body) -> dict:
        """Labels of some runs from the context service (audited there as ``context.join``)."""
        if not isinstance(body, dict):
            raise ValidationError("the body must be a JSON object {run_ids, fields, purpose}")
        run_ids, fields, purpose = body.get("run_ids"), body.get("fields"), body.get("purpose")
        self.require(
            user,
            "context:join",
            "context.join",
            run_count=len(run_ids) if isinstance(run_ids, list) else None,
        )
        if not isinstance(run_ids, list) or not all(isinstance(r, str) for r in run_ids):
            raise ValidationError("run_ids must be a list of run ids", field="run_ids")
        if len(run_ids) > MAX_JOIN_RUNS:
            raise ValidationError(f"at most {MAX_JOIN_RUNS} run ids per join", field="run_ids")
        if (
            not isinstance(fields, list)
            or not fields
            or not all(isinstance(f, str) for f in fields)
        ):
            raise ValidationError("fields must be a non-empty list of label names", field="fields")
        if not isinstance(purpose, str) or not purpose.strip():
            raise ValidationError(
                "purpose is required: say why the labels are needed", field="purpose"
            )
        frame = self.access.context_join(run_ids, fields, purpose.strip(), self.actor(user))
        return {"labels": _frame_records(frame)}

    # --- membership, writes, configuration ------------------------------------------------

    def require_member(self, user: str, action: str, **detail) -> None:
        """Raise ``PermissionDenied`` (audited) unless ``user`` has some permission here."""
        if not self.permissions(user):
            self.access.audit().record(
                self.actor(user), action, "denied", permission="any", **detail
            )
            raise PermissionDenied(f"no permission in org {self.org!r}: you have no role there")

    def describe(self, user: str) -> None:
        """Allow members only to read the API description (a non-member learns nothing)."""
        self.require_member(user, "openapi.read")

    def write_metrology(
        self, user: str, params: dict, body: bytes, content_type: str | None
    ) -> dict:
        """Store derived metrology rows sent as an Arrow IPC stream (``data:write``).

        Every row must name a run of this org (``run_id`` fills rows that have none) and a new
        ``item_id``; ``sample`` defaults to the run's. Audited as ``data.write`` with the run
        ids and row count before the commit; nothing is written unless every row is valid.
        """
        self.require(user, "data:write", "data.write", table=METROLOGY.name)
        check_params(params, {"run_id"})
        frame = _read_ipc(body, content_type)
        run = params.get("run_id") or None
        if run is not None:
            frame = _with_run(frame, run)
        rows = conform(METROLOGY, frame)
        run_ids = sorted(set(rows.column("run_id").to_pylist()))
        for rid in run_ids:
            self._check_run(rid)
        item_ids = rows.column("item_id").to_pylist()
        seen: set[str] = set()
        for i in item_ids:
            if i in seen:
                raise ValidationError(f"item_id {i!r} appears twice in the frame", field="item_id")
            seen.add(i)
        rows = self._fill_sample(rows)
        with self._write_lock:
            idx = self.metrology_index.get(wait=True)
            taken = pc.is_in(idx.column("item_id"), value_set=pa.array(item_ids, pa.string()))
            if pc.any(taken).as_py():
                existing = set(idx.filter(taken).column("item_id").to_pylist())
                first = next(i for i in item_ids if i in existing)
                raise Conflict(
                    f"metrology item {first!r} already exists in org {self.org!r} "
                    f"({len(existing)} of the frame's item ids do); choose new ids"
                )
            actor = self.actor(user)
            extra = {"run_count": len(run_ids)} if len(run_ids) > 100 else {}
            self.access.audit().record(
                actor,
                "data.write",
                table=METROLOGY.name,
                run_ids=run_ids[:100],
                rows=rows.num_rows,
                **extra,
            )
            try:
                commit = self.store.table(METROLOGY.name).write(rows, actor=actor)
            except Exception as e:
                self.access.audit().record(
                    actor,
                    "data.write",
                    "error",
                    table=METROLOGY.name,
                    rows=0,
                    error=type(e).__name__,
                )
                raise
            self.metrology_index.get(wait=True)  # the writer's next read sees its rows
        return {
            "table": METROLOGY.name,
            "rows": commit.rows,
            "commit": commit.seq,
            "run_ids": run_ids,
            "item_ids": item_ids,
        }

    def _fill_sample(self, rows: pa.Table) -> pa.Table:
        col = rows.column("sample")
        if not col.null_count:
            return rows
        cat = self.runs.get()
        ids = rows.column("run_id")
        # one catalogue lookup per run: building a run record is the expensive part
        of_run = {r: (cat.get(r) or {}).get("sample") for r in pc.unique(ids).to_pylist()}
        samples = [
            s if s is not None else of_run[r]
            for s, r in zip(col.to_pylist(), ids.to_pylist(), strict=True)
        ]
        i = rows.schema.get_field_index("sample")
        return rows.set_column(i, "sample", pa.array(samples, pa.string()))

    def config(self, user: str) -> dict:
        """The org's workspace configuration (any role in the org may read it)."""
        self.require_member(user, "config.read")
        return self.access.org_config()

    def set_config(self, user: str, body, replace: bool = False) -> dict:
        """Change the org's configuration (``config``): all of it, or the settings given.

        Audited as ``config.change`` with the names of the changed settings (before storing).
        """
        self.require(user, "config", "config.change")
        if not isinstance(body, dict):
            raise ValidationError("the body must be a JSON object of settings")
        old = self.access.org_config()["config"]
        new = orgconfig.validate(body) if replace else orgconfig.merge(old, body)
        changed = orgconfig.changed_keys(old, new)
        self.access.audit().record(self.actor(user), "config.change", keys=changed, replace=replace)
        doc = self.access.set_org_config(new)
        return {**doc, "changed": changed}

    def rheed(self, user: str, run_id: str, params: dict) -> dict:
        """RHEED analysis of one run (:mod:`atomscale_lab.rheed`) with its trace for plotting."""
        from atomscale_lab import rheed as _rheed

        self.require(user, "data:read", "data.read", table=SERIES.name, run_ids=[run_id])
        check_params(params, {"max_points", "ml_nm"})
        max_points = parse_int(params.get("max_points"), "max_points", 2000, 2, MAX_POINTS)
        ml_nm = parse_float(params.get("ml_nm"), "ml_nm", 0.01, 10.0)
        self._check_run(run_id)
        # an analysis stays valid until the series or tool-state table gets a commit
        key = (
            run_id,
            max_points,
            ml_nm,
            self._log_version(SERIES.name),
            self._log_version(TOOL_STATE.name),
        )
        with _RHEED_LOCK:
            cache = self.__dict__.setdefault("_rheed_cache", OrderedDict())
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
        if hit is not None:
            doc, rows = hit
            self.audited_read(user, SERIES.name, [run_id], rows, query="rheed")
            return doc
        channels = [_rheed.RHEED_CHANNEL, "growth_rate"]
        proc = self.store.table(SERIES.name).read(
            run_ids=[run_id], filter=pc.field("channel").isin(channels)
        )
        tools = self.store.table(TOOL_STATE.name).read(
            run_ids=[run_id], filter=pc.starts_with(pc.field("channel"), "shutter_")
        )
        result = _rheed.analyze_frames(proc.to_pandas(), tools.to_pandas(), ml_nm=ml_nm)
        trace = proc.filter(pc.equal(proc.column("channel"), _rheed.RHEED_CHANNEL))
        trace = trace.sort_by("time")
        if trace.num_rows > max_points:
            trace = downsample(trace, max_points)
        doc = {
            "run_id": run_id,
            "windows": _frame_records(result.windows),
            "layers": _frame_records(result.layers),
            "onset": None if result.onset is None else result.onset.isoformat(),
            "trace": {
                "time": [t.isoformat() for t in trace.column("time").to_pylist()],
                "value": trace.column("value").to_pylist(),
            },
        }
        rows = proc.num_rows + tools.num_rows
        with _RHEED_LOCK:
            cache[key] = (doc, rows)
            while len(cache) > RHEED_CACHE_RUNS:
                cache.popitem(last=False)
        self.audited_read(user, SERIES.name, [run_id], rows, query="rheed")
        return doc


def _read_ipc(body: bytes, content_type: str | None) -> pa.Table:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != ARROW_STREAM:
        raise ValidationError(
            f"send the frame as an Arrow IPC stream (Content-Type: "
            f"{ARROW_STREAM}), not {media or 'no content type'}"
        )
    if len(body) > MAX_WRITE_BYTES:
        raise TooLarge(f"the frame is {len(body)} bytes; at most {MAX_WRITE_BYTES} per request")
    try:
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, OSError):
        raise ValidationError("the body is not a readable Arrow IPC stream") from None
    if table.num_rows == 0:
        raise ValidationError("the frame has no rows")
    if table.num_rows > MAX_WRITE_ROWS:
        raise TooLarge(f"the frame has {table.num_rows} rows; at most {MAX_WRITE_ROWS} per request")
    return table


def _with_run(frame: pa.Table, run: str) -> pa.Table:
    # rows without a run id belong to ``run``; a row naming another run is a mistake
    if "run_id" not in frame.column_names:
        return frame.append_column("run_id", pa.array([run] * frame.num_rows, pa.string()))
    ids = frame.column("run_id")
    if (
        not pa.types.is_string(ids.type)
        and not pa.types.is_large_string(ids.type)
        and not pa.types.is_null(ids.type)
    ):
        raise ValidationError("field 'run_id' must be a string", field="run_id")
    other = {r for r in ids.to_pylist() if r is not None and r != run}
    if other:
        raise ValidationError(
            f"the frame has rows of run {sorted(other)[0]!r}, not {run!r}", field="run_id"
        )
    filled = pa.array([r if r is not None else run for r in ids.to_pylist()], pa.string())
    return frame.set_column(frame.schema.get_field_index("run_id"), "run_id", filled)


RHEED_CACHE_RUNS = 512
"""RHEED analyses kept per org service (each a few tens of KB)."""
_RHEED_LOCK = threading.Lock()


def _frame_records(frame) -> list[dict]:
    return rows_to_records(pa.Table.from_pandas(frame, preserve_index=False))


def _label(value) -> str | None:
    """A context label as a string, or None when missing (NaN/None/empty)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def _table_spec(name: str):
    if name not in TABLES:
        raise NotFound(f"no table {name!r}; the tables are {', '.join(TABLES)}")
    return TABLES[name]
