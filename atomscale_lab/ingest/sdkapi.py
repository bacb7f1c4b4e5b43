"""The hosted Atomscale platform's data model, mapped onto an org's store (no HTTP here).

``compat.py`` is the thin Tornado layer; the mapping is described in ``docs/atomscale-sdk.md``:

- a run is one ``tool_state`` data item (its data id is the run id): its process series and
  tool-state readings, one property per channel;
- a metrology item is one data item (``mt~<item_id>``) whose type is its technique (``xrd``,
  ``xps``, ``raman``, ``photoluminescence``, else the technique's name in lower case);
- a run's ``sample`` is a physical sample (id: a UUID derived from org and name), its ``project``
  a project (likewise); physical samples created through the API before any run names them, tags
  and links live in the ingest service's state database (``sdk.sqlite``);
- a stream opened by ``TimeseriesStreamer`` is an ingest stream (category ``tool_state``) of a new
  run, so its points take the same path as native ingest: validation, the fsynced WAL, the flusher,
  the encrypted store.

The org always comes from the API key; every read and write is audited as the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema
from ..errors import NotFound, PermissionDenied, ValidationError
from .core import BatchConflict, NotYetStored
from .sealed import RegistrySeal

log = logging.getLogger(__name__)

METROLOGY_PREFIX = "mt~"
"""Data id prefix of a metrology item; a run's data id is its run id (which never has ``~``), the
same id ``Workspace.search`` shows."""
STATUS = {"complete": "success", "active": "stream_active", "interrupted": "stream_interrupted",
          "finalizing": "stream_finalizing", "error": "stream_error"}
"""Run status → the hosted platform's ``pipeline_status``."""
TECHNIQUE_TYPE = {"xrd": "xrd", "xps": "xps", "raman": "raman", "pl": "photoluminescence",
                  "photoluminescence": "photoluminescence"}
"""Metrology technique (lower case) → data type; other techniques keep their own name."""
SPECTRUM_TYPES = ("xrd", "xps", "raman", "photoluminescence")
READ_SCOPES = ("read:process", "read:tool_state", "read:metrology")
INGEST_SCOPES = ("ingest:process", "ingest:tool_state", "ingest:metrology")
_NS = uuid.UUID("0b6f3d2e-5a51-4c4e-9d4b-6f1d0e6c2a10")
_META_COLUMNS = ["item_id", "run_id", "sample", "technique", "time"]
FINALIZE_QUIET = 0.2
"""Seconds without a chunk of the stream before finalize closes it (the SDK's push is
fire-and-forget, so its last chunks may still be on their way when finalize arrives)."""
FINALIZE_GRACE = 10.0
"""At most this many seconds are spent waiting for such chunks."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    org TEXT NOT NULL, data_id TEXT NOT NULL, run_id TEXT NOT NULL, stream_id TEXT NOT NULL,
    created TEXT NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (org, data_id));
CREATE TABLE IF NOT EXISTS chunks (
    org TEXT NOT NULL, data_id TEXT NOT NULL, channel TEXT NOT NULL, chunk_index INTEGER NOT NULL,
    digest TEXT NOT NULL, points INTEGER NOT NULL,
    PRIMARY KEY (org, data_id, chunk_index, channel));
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, name TEXT NOT NULL, created TEXT NOT NULL,
    created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tags (
    id TEXT PRIMARY KEY, org TEXT NOT NULL, name TEXT NOT NULL, created TEXT NOT NULL,
    created_by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS item_tags (
    org TEXT NOT NULL, data_id TEXT NOT NULL, tag_id TEXT NOT NULL,
    PRIMARY KEY (org, data_id, tag_id));
CREATE TABLE IF NOT EXISTS tracking (
    org TEXT NOT NULL, project_id TEXT NOT NULL, sample_id TEXT NOT NULL, active INTEGER NOT NULL,
    updated TEXT NOT NULL, PRIMARY KEY (org, project_id, sample_id));
"""
# Nothing identifying at rest: data ids (run ids) are stored as keyed hashes (``sealed.py``),
# run ids, sample names and tag names sealed with the org's key; channel names, counts and
# digests stay as they are.


def entity_id(org: str, kind: str, name: str) -> str:
    """The stable UUID of a named sample or project of ``org`` (case-insensitive name)."""
    return str(uuid.uuid5(_NS, f"{org}\x00{kind}\x00{name.strip().lower()}"))


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(f"{name}={value!r} is not an ISO 8601 time", field=name) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:100]
    return s or "sdk-stream"


def _digest(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _floats(values, field: str, *, allow_null: bool) -> np.ndarray:
    if not isinstance(values, list):
        raise ValidationError(f"{field} must be a list of numbers", field=field)
    try:
        arr = np.array([np.nan if (v is None and allow_null) else v for v in values],
                       dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError(f"{field} must be a list of numbers", field=field) from None
    if any(isinstance(v, bool | str) for v in values):
        raise ValidationError(f"{field} must be a list of numbers", field=field)
    return arr


class _TagIndex:
    """Tag names per data item, looked up by data id (the registry holds keyed hashes)."""

    def __init__(self, by_tag: dict[str, list[str]], did):
        self._by_tag, self._did = by_tag, did

    def get(self, data_id: str, default=None):
        """The tag names of ``data_id`` (``default`` if it has none)."""
        if not self._by_tag:
            return default
        return self._by_tag.get(self._did(data_id), default)


class SdkState:
    """The compatibility layer's own records in ``sdk.sqlite`` beside the ingest state."""

    def __init__(self, path):
        self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        self._lock = threading.RLock()

    def sql(self, query: str, args=()) -> list:
        """Run one statement; returns all rows."""
        with self._lock:
            return self._db.execute(query, args).fetchall()

    @contextlib.contextmanager
    def tx(self):
        """One transaction (holding the connection's lock throughout)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


class SdkApi:
    """What the Atomscale-compatible endpoints do, for one ingest service (every org)."""

    def __init__(self, core):
        self.core = core
        self.state = SdkState(core.state_dir / "sdk.sqlite")
        self._seal = RegistrySeal(core._keys, "sdk")
        self._init_lock = threading.Lock()
        self._cond = threading.Condition()
        self._inflight: dict[tuple[str, str], int] = defaultdict(int)
        self._last_chunk: dict[tuple[str, str], float] = {}
        self._stores: dict[str, object] = {}

    # -- plumbing -----------------------------------------------------------------------------
    def _store(self, org: str):
        if org not in self._stores:
            self._stores[org] = self.core.vault.store(org, actor="ingest")
        return self._stores[org]

    def _read(self, org: str, table: str, **kw) -> pa.Table:
        try:
            return self._store(org).table(table).read(**kw)
        except NotFound:
            return schema.spec(table).schema.empty_table() if "columns" not in kw else \
                schema.spec(table).schema.empty_table().select(kw["columns"])

    def audit(self, key, action: str, outcome: str = "allowed", **detail) -> None:
        """One event in the key's org's audit log, as the key (a read that cannot be audited
        fails)."""
        self.core.vault.audit(key.org).record(key.actor, action, outcome, api="atomscale",
                                              **detail)

    def require_any(self, key, scopes, action: str) -> list[str]:
        """The subset of ``scopes`` the key holds; ``PermissionDenied`` (audited) if none."""
        held = [s for s in scopes if s in key.scopes]
        if not held:
            self.audit(key, action, "denied", reason=f"needs one of {', '.join(scopes)}")
            raise PermissionDenied(f"API key {key.prefix} needs one of the scopes "
                                   f"{', '.join(scopes)}")
        return held

    # -- catalogue ----------------------------------------------------------------------------
    def _runs(self, org: str) -> list[dict]:
        return self._read(org, "process/runs").to_pylist()

    def _did(self, org: str, data_id: str) -> str:
        """What the registry stores for a data id: its keyed hash."""
        return self._seal.tag(org, "data", data_id)

    def _tags_by_item(self, org: str) -> _TagIndex:
        out: dict[str, list[str]] = defaultdict(list)
        for did, tid, box in self.state.sql(
                "SELECT i.data_id, t.id, t.name FROM item_tags i JOIN tags t ON t.id=i.tag_id "
                "WHERE i.org=?", (org,)):
            out[did].append(self._seal.unseal(org, box, f"{org}/{tid}/tag"))
        for names in out.values():
            names.sort()
        return _TagIndex(out, lambda data_id: self._did(org, data_id))

    def catalogue(self, org: str, scopes) -> list[dict]:
        """Every data item of ``org`` the scopes may see, as catalogue rows."""
        runs = {r["run_id"]: r for r in self._runs(org)}
        tags = self._tags_by_item(org)
        rows = []
        if "read:process" in scopes or "read:tool_state" in scopes:
            for r in runs.values():
                rows.append(self._run_row(org, r, tags))
        if "read:metrology" in scopes:
            met = self._read(org, "metrology/items", columns=_META_COLUMNS)
            seen = set()
            for m in met.to_pylist():
                if m["item_id"] in seen:
                    continue
                seen.add(m["item_id"])
                rows.append(self._item_row(org, m, runs.get(m["run_id"]), tags))
        return rows

    @staticmethod
    def _links(org: str, sample, project) -> dict:
        return {
            "physical_sample_id": entity_id(org, "sample", sample) if sample else None,
            "physical_sample_name": sample,
            "sample_name": sample,
            "projects": ([{"id": entity_id(org, "project", project), "name": project}]
                         if project else []),
        }

    def _run_row(self, org: str, r: dict, tags) -> dict:
        data_id = r["run_id"]
        length = ((r["end"] - r["start"]).total_seconds()
                  if r.get("end") and r.get("start") else None)
        return {
            "data_id": data_id, "char_source_type": "tool_state", "raw_name": r["run_id"],
            "pipeline_status": STATUS.get(r["status"], r["status"]),
            "upload_datetime": _iso(r.get("start")), "collected_datetime": _iso(r.get("start")),
            "last_updated": _iso(r.get("updated_at") or r.get("start")),
            "source_name": r.get("instrument"), "growth_length": length,
            "tags": tags.get(data_id, []), "run_id": r["run_id"],
            "file_metadata": {k: r.get(k) for k in ("method", "operator") if r.get(k)},
            **self._links(org, r.get("sample"), r.get("project")),
        }

    def _item_row(self, org: str, m: dict, run: dict | None, tags) -> dict:
        data_id = METROLOGY_PREFIX + m["item_id"]
        technique = (m.get("technique") or "").lower()
        run = run or {}
        return {
            "data_id": data_id, "char_source_type": TECHNIQUE_TYPE.get(technique, technique),
            "raw_name": m["item_id"], "pipeline_status": "success",
            "upload_datetime": _iso(m.get("time")), "collected_datetime": _iso(m.get("time")),
            "last_updated": _iso(m.get("time")), "source_name": run.get("instrument"),
            "growth_length": None, "tags": tags.get(data_id, []), "run_id": m.get("run_id"),
            "file_metadata": {"technique": m.get("technique")},
            **self._links(org, m.get("sample") or run.get("sample"), run.get("project")),
        }

    def search(self, key, params: dict[str, list[str]]) -> list[dict]:
        """``GET data_entries/``: the catalogue rows matching the SDK's filters (audited)."""
        held = self.require_any(key, READ_SCOPES, "sdk.search")
        rows = self.catalogue(key.org, held)

        def one(name):
            v = params.get(name) or []
            return v[-1] if v else None

        ids = params.get("data_ids") or []
        if ids:
            wanted = set(ids)
            rows = [r for r in rows if r["data_id"] in wanted]
        dtype = one("data_type")
        if dtype and dtype != "all":
            dtype = {"pl": "photoluminescence", "metrology": "tool_state"}.get(dtype, dtype)
            rows = [r for r in rows if r["char_source_type"] == dtype]
        status = one("status")
        if status and status != "all":
            want = {"running": {"stream_active", "stream_finalizing"}}.get(status, {status})
            rows = [r for r in rows if r["pipeline_status"] in want]
        for name, field in (("physical_sample_ids", "physical_sample_id"),):
            if params.get(name):
                wanted = set(params[name])
                rows = [r for r in rows if r[field] in wanted]
        if params.get("project_ids"):
            wanted = set(params["project_ids"])
            rows = [r for r in rows if any(p["id"] in wanted for p in r["projects"])]
        for field in ("upload_datetime", "last_updated"):
            lo, hi = (_parse_time(one(f"{field}_{b}"), f"{field}_{b}") for b in ("min", "max"))
            if lo or hi:
                rows = [r for r in rows if r[field]
                        and (not lo or _parse_time(r[field], field) >= lo)
                        and (not hi or _parse_time(r[field], field) <= hi)]
        for b, op in (("min", float.__ge__), ("max", float.__le__)):
            v = one(f"growth_length_{b}")
            if v:
                try:
                    bound = float(v)
                except ValueError:
                    raise ValidationError(f"growth_length_{b} must be a number",
                                          field=f"growth_length_{b}") from None
                rows = [r for r in rows if r["growth_length"] is not None
                        and op(float(r["growth_length"]), bound)]
        for word in params.get("keywords") or []:
            w = word.strip().lower()
            if w:
                rows = [r for r in rows if w in self._text(r)]
        rows.sort(key=lambda r: r["upload_datetime"] or "", reverse=True)
        self.audit(key, "sdk.search", items=len(rows),
                   data_ids=[r["data_id"] for r in rows[:50]])
        return rows

    @staticmethod
    def _text(row: dict) -> str:
        parts = [row.get(k) for k in ("data_id", "raw_name", "char_source_type", "source_name",
                                      "sample_name", "pipeline_status", "run_id")]
        parts += [p["name"] for p in row["projects"]] + list(row["tags"])
        parts += [str(v) for v in row["file_metadata"].values()]
        return " ".join(str(p) for p in parts if p).lower()

    # -- results ------------------------------------------------------------------------------
    def timeseries(self, key, data_id: str) -> dict:
        """``GET tool-state/{id}/timeseries/``: a run's channels as properties (audited)."""
        held = self.require_any(key, ("read:process", "read:tool_state"), "sdk.timeseries")
        run_id = None if data_id.startswith(METROLOGY_PREFIX) else data_id
        if not run_id or not self._read(key.org, "process/runs", run_ids=[run_id]).num_rows:
            self.audit(key, "sdk.timeseries", "denied", data_id=data_id, reason="not found")
            raise NotFound(f"no tool_state data item {data_id!r}")
        parts = []
        if "read:process" in held:
            t = self._read(key.org, "process/series", run_ids=[run_id])
            parts.append(t.select(["time", "channel", "value", "unit"]))
        if "read:tool_state" in held:
            t = self._read(key.org, "tool_state/readings", run_ids=[run_id])
            names = pc.binary_join_element_wise(t.column("tool"), t.column("channel"), ":")
            taken = set(parts[0].column("channel").unique().to_pylist()) if parts else set()
            tools_per = defaultdict(set)
            pairs = t.select(["tool", "channel"]).group_by(["tool", "channel"]).aggregate([])
            for tool, ch in zip(pairs.column("tool").to_pylist(),
                                pairs.column("channel").to_pylist(), strict=True):
                tools_per[ch].add(tool)
            clash = [ch for ch, tools in tools_per.items() if len(tools) > 1 or ch in taken]
            if clash:  # the same channel name from two sources: name it "<tool>:<channel>"
                is_clash = pc.is_in(t.column("channel"), pa.array(clash, pa.string()))
                t = t.set_column(t.column_names.index("channel"), "channel",
                                 pc.if_else(is_clash, names, t.column("channel")))
            parts.append(t.select(["time", "channel", "value", "unit"]))
        data = pa.concat_tables(parts) if parts else None
        props = self._properties(data) if data is not None and data.num_rows else {}
        points = sum(len(p["values"]) for p in props.values())
        self.audit(key, "sdk.timeseries", data_id=data_id, run_id=run_id, channels=len(props),
                   points=points)
        return {"data_id": data_id, "properties": props}

    @staticmethod
    def _properties(data: pa.Table) -> dict:
        """One property per channel, as numpy arrays (encoded by the handler without copies)."""
        data = data.sort_by([("channel", "ascending"), ("time", "ascending")])
        us = data.column("time").cast(pa.int64()).to_numpy()
        t0 = int(us.min())
        chan = data.column("channel").to_numpy(zero_copy_only=False)
        values = data.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
        units = data.column("unit")
        bounds = [0, *(np.flatnonzero(chan[1:] != chan[:-1]) + 1).tolist(), len(chan)]
        whole_ms = not np.any(us % 1000)
        props = {}
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            seg = us[a:b]
            unit = pc.drop_null(units.slice(a, b - a))
            props[str(chan[a])] = {
                "unix_timestamp_ms": seg // 1000 if whole_ms else seg / 1000.0,
                "values": values[a:b],  # NaN (a missing value) is sent as null
                "relative_time_seconds": (seg - t0) / 1e6,
                "units": unit[0].as_py() if len(unit) else None,
            }
        return props

    def spectrum(self, key, kind: str, data_id: str) -> dict:
        """``GET {xrd|xps|raman|photoluminescence}/{id}``: one metrology item (audited)."""
        item_id = data_id[len(METROLOGY_PREFIX):] if data_id.startswith(METROLOGY_PREFIX) \
            else None
        rows = []
        if item_id:
            rows = self._read(key.org, "metrology/items",
                              filter=pc.field("item_id") == item_id).to_pylist()
        rows = [r for r in rows
                if TECHNIQUE_TYPE.get((r["technique"] or "").lower()) == kind]
        if not rows:
            self.audit(key, "sdk.spectrum", "denied", data_id=data_id, reason="not found")
            raise NotFound(f"no {kind} data item {data_id!r}")
        m = next((r for r in rows if r["x"] is not None), rows[0])
        x, y, peaks = m["x"] or [], m["y"] or [], m["peaks"] or []
        meta = {"x_unit": m["x_unit"], "y_unit": m["y_unit"], "run_id": m["run_id"],
                "sample": m["sample"], "technique": m["technique"]}
        results = {r["result_name"]: {"value": r["result_value"], "unit": r["result_unit"]}
                   for r in rows if r["result_name"]}
        doc = {"id": item_id, "intensities": y, "last_updated": _iso(m["time"]),
               "spectral_metadata": meta, "results": results}
        if kind == "xrd":
            doc.update(two_theta=x, two_theta_unit="degrees",
                       detected_peaks=[{"two_theta": p} for p in peaks])
        elif kind == "xps":
            doc.update(xps_id=item_id, binding_energies=x, predicted_composition={},
                       set_elements=False,
                       detected_peaks=[{"binding_energy": p} for p in peaks])
        elif kind == "raman":
            doc.update(raman_id=item_id, wavenumbers=x,
                       detected_peaks=[{"raman_shift": p} for p in peaks])
        else:
            doc.update(photoluminescence_id=item_id, energies=x,
                       detected_peaks=[{"energy": p} for p in peaks])
        self.audit(key, "sdk.spectrum", data_id=data_id, points=len(y))
        return doc

    # -- samples, projects, tags --------------------------------------------------------------
    def samples(self, key) -> list[dict]:
        """``GET physical_samples/``: named samples of the org's runs and created ones."""
        self.require_any(key, READ_SCOPES + INGEST_SCOPES, "sdk.samples")
        runs = self._runs(key.org)
        out: dict[str, dict] = {}
        for sid, box, created in self.state.sql(
                "SELECT id, name, created FROM samples WHERE org=?", (key.org,)):
            name = self._seal.unseal(key.org, box, f"{key.org}/{sid}/sample")
            out[sid] = {"id": sid, "name": name, "created_datetime": created,
                        "num_data_items": 0, "projects": []}
        for r in runs:
            if not r.get("sample"):
                continue
            sid = entity_id(key.org, "sample", r["sample"])
            s = out.setdefault(sid, {"id": sid, "name": r["sample"],
                                     "created_datetime": _iso(r.get("start")),
                                     "num_data_items": 0, "projects": []})
            s["num_data_items"] += 1
            if r.get("project") and not any(p["name"] == r["project"] for p in s["projects"]):
                s["projects"].append({"id": entity_id(key.org, "project", r["project"]),
                                      "name": r["project"]})
        self.audit(key, "sdk.samples", items=len(out))
        return sorted(out.values(), key=lambda s: s["name"].lower())

    def create_sample(self, key, body: dict) -> tuple[bool, dict]:
        """``POST physical_samples/``; returns ``(created, sample)`` (an existing name: False)."""
        self.require_any(key, INGEST_SCOPES, "sdk.sample_create")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValidationError("name must be 1-200 characters", field="name")
        name = name.strip()
        sid = entity_id(key.org, "sample", name)
        known = {s["id"]: s for s in self.samples(key)}
        if sid in known:
            return False, {"physical_sample_id": sid, "id": sid, "name": known[sid]["name"]}
        self.state.sql("INSERT OR IGNORE INTO samples VALUES (?,?,?,?,?)",
                       (sid, key.org, self._seal.seal(key.org, name, f"{key.org}/{sid}/sample"),
                        _now(), key.actor))
        self.audit(key, "sdk.sample_create", sample_id=sid)
        return True, {"physical_sample_id": sid, "id": sid, "name": name}

    def _sample_name(self, key, sample_id) -> str:
        for s in self.samples(key):
            if s["id"] == sample_id:
                return s["name"]
        raise NotFound(f"no physical sample {sample_id!r}")

    def link_sample(self, key, body: dict) -> dict:
        """``POST data_entries/physical_sample``: runs of ``data_ids`` get that sample."""
        self.require_any(key, INGEST_SCOPES, "sdk.link_sample")
        ids = body.get("data_ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValidationError("data_ids must be a list of data ids", field="data_ids")
        name = self._sample_name(key, body.get("physical_sample_id"))
        runs = {r["run_id"]: r for r in self._runs(key.org)}
        for data_id in ids:
            if data_id not in runs:
                raise NotFound(f"no tool_state data item {data_id!r} (a metrology item takes "
                               "the sample of its run)")
        for data_id in ids:
            run = runs[data_id]
            self.core._update_run(key.org, run["run_id"], run["status"], actor=key.actor,
                                  sample=name)
        self.audit(key, "sdk.link_sample", data_ids=ids, sample_id=body.get("physical_sample_id"))
        return {"data_ids": ids, "physical_sample_id": body.get("physical_sample_id")}

    def projects(self, key) -> list[dict]:
        """``GET projects/``: the projects named by the org's runs."""
        self.require_any(key, READ_SCOPES + INGEST_SCOPES, "sdk.projects")
        out: dict[str, dict] = {}
        samples: dict[str, set] = defaultdict(set)
        for r in self._runs(key.org):
            if not r.get("project"):
                continue
            pid = entity_id(key.org, "project", r["project"])
            p = out.setdefault(pid, {"id": pid, "name": r["project"], "last_updated": None})
            upd = _iso(r.get("updated_at"))
            if upd and (p["last_updated"] is None or upd > p["last_updated"]):
                p["last_updated"] = upd
            if r.get("sample"):
                samples[pid].add(r["sample"].lower())
        for p in out.values():
            p["physical_sample_count"] = len(samples[p["id"]])
            act = self.state.sql("SELECT sample_id FROM tracking WHERE org=? AND project_id=? "
                                 "AND active=1", (key.org, p["id"]))
            p["tracking_physical_sample_id"] = act[0][0] if act else None
        self.audit(key, "sdk.projects", items=len(out))
        return sorted(out.values(), key=lambda p: p["name"].lower())

    def _project_name(self, key, project_id) -> str:
        for p in self.projects(key):
            if p["id"] == project_id:
                return p["name"]
        raise NotFound(f"no project {project_id!r}")

    def track_sample(self, key, project_id: str, body: dict) -> dict:
        """``POST projects/{id}/configuration/tracking_samples``: record the tracked sample."""
        self.require_any(key, INGEST_SCOPES, "sdk.tracking")
        self._project_name(key, project_id)
        sid = body.get("physical_sample_id")
        self._sample_name(key, sid)
        active = bool(body.get("set_active", False))
        if active:
            self.state.sql("UPDATE tracking SET active=0 WHERE org=? AND project_id=?",
                           (key.org, project_id))
        self.state.sql("INSERT OR REPLACE INTO tracking VALUES (?,?,?,?,?)",
                       (key.org, project_id, sid, int(active), _now()))
        self.audit(key, "sdk.tracking", project_id=project_id, sample_id=sid, active=active)
        return {"project_id": project_id, "physical_sample_id": sid, "active": active}

    def tags(self, key) -> list[dict]:
        """``GET tags/``: the org's tags."""
        self.require_any(key, READ_SCOPES + INGEST_SCOPES, "sdk.tags")
        rows = [(i, self._seal.unseal(key.org, box, f"{key.org}/{i}/tag"), c)
                for i, box, c in self.state.sql("SELECT id, name, created FROM tags WHERE org=?",
                                                (key.org,))]
        rows.sort(key=lambda r: r[1])
        self.audit(key, "sdk.tags", items=len(rows))
        return [{"id": i, "name": n, "created_datetime": c} for i, n, c in rows]

    def create_tag(self, key, body: dict) -> dict:
        """``POST tags/``: a new tag (an existing name, case-insensitive, is returned)."""
        self.require_any(key, INGEST_SCOPES, "sdk.tag_create")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise ValidationError("name must be 1-100 characters", field="name")
        name = name.strip()
        tid = entity_id(key.org, "tag", name)
        if not self.state.sql("SELECT 1 FROM tags WHERE id=?", (tid,)):
            self.state.sql("INSERT OR IGNORE INTO tags VALUES (?,?,?,?,?)",
                           (tid, key.org, self._seal.seal(key.org, name, f"{key.org}/{tid}/tag"),
                            _now(), key.actor))
            self.audit(key, "sdk.tag_create", tag_id=tid)
        return {"id": tid, "name": name}

    def attach_tags(self, key, body: dict) -> dict:
        """``POST tags/data-items/``: attach tags to data items of the org."""
        self.require_any(key, INGEST_SCOPES, "sdk.tag_attach")
        ids, tag_ids = body.get("data_ids"), body.get("tag_ids")
        for name, v in (("data_ids", ids), ("tag_ids", tag_ids)):
            if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
                raise ValidationError(f"{name} must be a list of ids", field=name)
        known = {r["data_id"] for r in self.catalogue(key.org, READ_SCOPES)}
        for i in ids:
            if i not in known and not self.state.sql(
                    "SELECT 1 FROM items WHERE org=? AND data_id=?",
                    (key.org, self._did(key.org, i))):
                raise NotFound(f"no data item {i!r}")
        for t in tag_ids:
            if not self.state.sql("SELECT 1 FROM tags WHERE id=? AND org=?", (t, key.org)):
                raise NotFound(f"no tag {t!r}")
        for i in ids:
            for t in tag_ids:
                self.state.sql("INSERT OR IGNORE INTO item_tags VALUES (?,?,?)",
                               (key.org, self._did(key.org, i), t))
        self.audit(key, "sdk.tag_attach", data_ids=ids, tag_ids=tag_ids)
        return {"data_ids": ids, "tag_ids": tag_ids}

    # -- streaming ----------------------------------------------------------------------------
    def initialize(self, key, body: dict) -> dict:
        """``POST tool-state/stream/initialize``: a new run and its tool_state ingest stream."""
        name = body.get("stream_name")
        if name is not None and not isinstance(name, str):
            raise ValidationError("stream_name must be text", field="stream_name")
        name = (name or "").strip() or \
            f"sdk-stream-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
        source = body.get("synth_source_id")
        if source is not None and (not isinstance(source, int) or isinstance(source, bool)):
            raise ValidationError("synth_source_id must be an integer", field="synth_source_id")
        tool = f"instrument-{source}" if source is not None else "sdk"
        project = None
        if body.get("project_id"):
            project = self._project_name(key, body["project_id"])
        with self._init_lock:
            taken = {r["run_id"] for r in self._runs(key.org)}
            taken |= {self._seal.unseal(key.org, box, f"{key.org}/{did}/run")
                      for did, box in self.state.sql(
                          "SELECT data_id, run_id FROM items WHERE org=?", (key.org,))}
            base = _slug(name)
            run_id, n = base, 1
            while run_id in taken:
                n += 1
                run_id = f"{base}-{n}"
            st = self.core.open_stream(key, run_id, tool, "tool_state", project=project)
            data_id = run_id
            did = self._did(key.org, data_id)
            self.state.sql("INSERT INTO items VALUES (?,?,?,?,?,?)",
                           (key.org, did, self._seal.seal(key.org, run_id, f"{key.org}/{did}/run"),
                            st["id"], _now(), key.actor))
        self.audit(key, "sdk.stream_initialize", data_id=data_id, run_id=run_id,
                   stream=st["id"])
        return {"data_id": data_id, "processed_data_id": data_id}

    def _item(self, key, data_id) -> tuple[str, str]:
        if not isinstance(data_id, str):
            raise ValidationError("data_id must be text", field="data_id")
        did = self._did(key.org, data_id)
        row = self.state.sql("SELECT run_id, stream_id FROM items WHERE org=? AND data_id=?",
                             (key.org, did))
        if not row:
            raise NotFound(f"no stream {data_id!r}")
        return self._seal.unseal(key.org, row[0][0], f"{key.org}/{did}/run"), row[0][1]

    def chunk(self, key, body: dict, *, multi: bool) -> dict:
        """``POST tool-state/stream/chunk[/multi]``: points through the ingest WAL, once each.

        A retried ``(data_id, channel, chunk_index)`` is acknowledged without storing it again;
        the same triple with other points is refused (409).
        """
        data_id = body.get("data_id")
        _, stream_id = self._item(key, data_id)
        idx = body.get("chunk_index")
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise ValidationError("chunk_index must be an integer >= 0", field="chunk_index")
        if multi:
            chans = body.get("channels")
            if not isinstance(chans, dict) or not chans:
                raise ValidationError("channels must be a non-empty object", field="channels")
        else:
            chans = {body.get("channel_name"): {k: body.get(k)
                                                for k in ("timestamps", "values", "units")}}
        parsed = {}
        for name, ch in chans.items():
            if not isinstance(name, str) or not name.strip() or len(name) > 200:
                raise ValidationError("a channel name must be 1-200 characters",
                                      field="channel_name")
            if not isinstance(ch, dict):
                raise ValidationError(f"channel {name!r} must be an object", field="channels")
            ts = _floats(ch.get("timestamps"), "timestamps", allow_null=False)
            vs = _floats(ch.get("values"), "values", allow_null=True)
            if len(ts) != len(vs):
                raise ValidationError(f"channel {name!r}: timestamps and values differ in "
                                      "length", field="values")
            if not len(ts):
                raise ValidationError(f"channel {name!r} has no points", field="timestamps")
            if not np.isfinite(ts).all() or (np.abs(ts) > 1e11).any():
                raise ValidationError(f"channel {name!r}: timestamps must be Unix seconds",
                                      field="timestamps")
            units = ch.get("units")
            if units is not None and not isinstance(units, str):
                raise ValidationError("units must be text", field="units")
            parsed[name] = (ts, vs, units, _digest([ch.get("timestamps"), ch.get("values"),
                                                    units]))
        ident = (key.org, data_id)
        with self._cond:
            self._inflight[ident] += 1
            self._last_chunk[ident] = time.monotonic()
        try:
            return self._store_chunk(key, data_id, stream_id, idx, parsed)
        finally:
            with self._cond:
                self._inflight[ident] -= 1
                self._last_chunk[ident] = time.monotonic()
                self._cond.notify_all()

    def _store_chunk(self, key, data_id, stream_id, idx, parsed) -> dict:
        marks = ",".join("?" * len(parsed))
        known = dict(self.state.sql(
            f"SELECT channel, digest FROM chunks WHERE org=? AND data_id=? AND chunk_index=? "  # noqa: S608 - placeholders only
            f"AND channel IN ({marks})", (key.org, self._did(key.org, data_id), idx, *parsed)))
        for name, (*_, digest) in parsed.items():
            if name in known and known[name] != digest:
                raise BatchConflict(f"chunk {idx} of channel {name!r} was already received "
                                    "with other points")
        pending = sorted(n for n in parsed if n not in known)
        if not pending:
            return {"data_id": data_id, "chunk_index": idx, "points": 0, "duplicate": True}
        us = np.concatenate([np.round(parsed[n][0] * 1e6).astype(np.int64) for n in pending])
        table = pa.table({
            "time": pa.array(us, pa.int64()).cast(schema.TS),
            "channel": pa.array([n for n in pending for _ in range(len(parsed[n][0]))],
                                pa.string()),
            "value": pa.array(np.concatenate([parsed[n][1] for n in pending]),
                              pa.float64(), from_pandas=True),
            "unit": pa.array([parsed[n][2] for n in pending for _ in range(len(parsed[n][0]))],
                             pa.string()),
        })
        tag = hashlib.sha256("\x00".join(pending).encode()).hexdigest()[:16]
        ack = self.core.add_batch(key, stream_id, f"sdk.{idx}.{tag}", table)
        with self.state.tx() as db:
            db.executemany("INSERT OR IGNORE INTO chunks VALUES (?,?,?,?,?,?)",
                           [(key.org, self._did(key.org, data_id), n, idx, parsed[n][3],
                             len(parsed[n][0])) for n in pending])
        return {"data_id": data_id, "chunk_index": idx, "points": table.num_rows,
                "duplicate": ack["duplicate"]}

    def finalize(self, key, data_id: str, *, timeout: float = 30.0) -> dict:
        """``POST tool-state/stream/{id}/finalize``: wait for chunks in flight, then close."""
        run_id, stream_id = self._item(key, data_id)
        ident = (key.org, data_id)
        deadline = time.monotonic() + FINALIZE_GRACE
        with self._cond:
            while time.monotonic() < deadline:
                quiet = time.monotonic() - self._last_chunk.get(ident, 0.0)
                if not self._inflight.get(ident) and quiet >= FINALIZE_QUIET:
                    break
                self._cond.wait(max(0.01, min(FINALIZE_QUIET - quiet, deadline - time.monotonic())))
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.core.finalize(key, stream_id)
                break
            except NotYetStored:
                if time.monotonic() > deadline:
                    raise
        self.audit(key, "sdk.stream_finalize", data_id=data_id, run_id=run_id,
                   points=st["rows"])
        return {"data_id": data_id, "status": STATUS.get(st["status"], st["status"]),
                "points": st["rows"]}

    def close(self) -> None:
        """Close the state database."""
        self.state.close()
