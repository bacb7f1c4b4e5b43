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

import logging
import threading
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from atomscale_lab import schema
from atomscale_lab.errors import NotFound, PermissionDenied, ValidationError
from atomscale_lab.ingest import statedb
from atomscale_lab.ingest.sdkrecords import SdkRecords
from atomscale_lab.ingest.sdkstate import (
    _META_COLUMNS,
    METROLOGY_PREFIX,
    READ_SCOPES,
    SPECTRUM_TYPES,
    STATUS,
    TECHNIQUE_TYPE,
    SdkState,
    _iso,
    _parse_time,
    _TagIndex,
    entity_id,
)
from atomscale_lab.ingest.sdkstream import SdkStreaming
from atomscale_lab.ingest.sealed import RegistrySeal

log = logging.getLogger(__name__)

__all__ = ["SPECTRUM_TYPES", "SdkApi", "SdkState", "entity_id"]


class SdkApi(SdkRecords, SdkStreaming):
    """What the Atomscale-compatible endpoints do, for one ingest service (every org)."""

    def __init__(self, core):
        self.core = core
        self.state = SdkState(
            core.state_dir / "sdk.sqlite", database=statedb.shared(core.vault.settings)
        )
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
            return (
                schema.spec(table).schema.empty_table()
                if "columns" not in kw
                else schema.spec(table).schema.empty_table().select(kw["columns"])
            )

    def audit(self, key, action: str, outcome: str = "allowed", **detail) -> None:
        """One event in the key's org's audit log, as the key (a read that cannot be audited
        fails)."""
        self.core.vault.audit(key.org).record(key.actor, action, outcome, api="atomscale", **detail)

    def require_any(self, key, scopes, action: str) -> list[str]:
        """The subset of ``scopes`` the key holds; ``PermissionDenied`` (audited) if none."""
        held = [s for s in scopes if s in key.scopes]
        if not held:
            self.audit(key, action, "denied", reason=f"needs one of {', '.join(scopes)}")
            raise PermissionDenied(
                f"API key {key.prefix} needs one of the scopes {', '.join(scopes)}"
            )
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
            "WHERE i.org=?",
            (org,),
        ):
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
            "projects": (
                [{"id": entity_id(org, "project", project), "name": project}] if project else []
            ),
        }

    def _run_row(self, org: str, r: dict, tags) -> dict:
        data_id = r["run_id"]
        length = (
            (r["end"] - r["start"]).total_seconds() if r.get("end") and r.get("start") else None
        )
        return {
            "data_id": data_id,
            "char_source_type": "tool_state",
            "raw_name": r["run_id"],
            "pipeline_status": STATUS.get(r["status"], r["status"]),
            "upload_datetime": _iso(r.get("start")),
            "collected_datetime": _iso(r.get("start")),
            "last_updated": _iso(r.get("updated_at") or r.get("start")),
            "source_name": r.get("instrument"),
            "growth_length": length,
            "tags": tags.get(data_id, []),
            "run_id": r["run_id"],
            "file_metadata": {k: r.get(k) for k in ("method", "operator") if r.get(k)},
            **self._links(org, r.get("sample"), r.get("project")),
        }

    def _item_row(self, org: str, m: dict, run: dict | None, tags) -> dict:
        data_id = METROLOGY_PREFIX + m["item_id"]
        technique = (m.get("technique") or "").lower()
        run = run or {}
        return {
            "data_id": data_id,
            "char_source_type": TECHNIQUE_TYPE.get(technique, technique),
            "raw_name": m["item_id"],
            "pipeline_status": "success",
            "upload_datetime": _iso(m.get("time")),
            "collected_datetime": _iso(m.get("time")),
            "last_updated": _iso(m.get("time")),
            "source_name": run.get("instrument"),
            "growth_length": None,
            "tags": tags.get(data_id, []),
            "run_id": m.get("run_id"),
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
                rows = [
                    r
                    for r in rows
                    if r[field]
                    and (not lo or _parse_time(r[field], field) >= lo)
                    and (not hi or _parse_time(r[field], field) <= hi)
                ]
        for b, op in (("min", float.__ge__), ("max", float.__le__)):
            v = one(f"growth_length_{b}")
            if v:
                try:
                    bound = float(v)
                except ValueError:
                    raise ValidationError(
                        f"growth_length_{b} must be a number", field=f"growth_length_{b}"
                    ) from None
                rows = [
                    r
                    for r in rows
                    if r["growth_length"] is not None and op(float(r["growth_length"]), bound)
                ]
        for word in params.get("keywords") or []:
            w = word.strip().lower()
            if w:
                rows = [r for r in rows if w in self._text(r)]
        rows.sort(key=lambda r: r["upload_datetime"] or "", reverse=True)
        self.audit(key, "sdk.search", items=len(rows), data_ids=[r["data_id"] for r in rows[:50]])
        return rows

    @staticmethod
    def _text(row: dict) -> str:
        parts = [
            row.get(k)
            for k in (
                "data_id",
                "raw_name",
                "char_source_type",
                "source_name",
                "sample_name",
                "pipeline_status",
                "run_id",
            )
        ]
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
            for tool, ch in zip(
                pairs.column("tool").to_pylist(), pairs.column("channel").to_pylist(), strict=True
            ):
                tools_per[ch].add(tool)
            clash = [ch for ch, tools in tools_per.items() if len(tools) > 1 or ch in taken]
            if clash:  # the same channel name from two sources: name it "<tool>:<channel>"
                is_clash = pc.is_in(t.column("channel"), pa.array(clash, pa.string()))
                t = t.set_column(
                    t.column_names.index("channel"),
                    "channel",
                    pc.if_else(is_clash, names, t.column("channel")),
                )
            parts.append(t.select(["time", "channel", "value", "unit"]))
        data = pa.concat_tables(parts) if parts else None
        props = self._properties(data) if data is not None and data.num_rows else {}
        points = sum(len(p["values"]) for p in props.values())
        self.audit(
            key,
            "sdk.timeseries",
            data_id=data_id,
            run_id=run_id,
            channels=len(props),
            points=points,
        )
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
        item_id = data_id[len(METROLOGY_PREFIX) :] if data_id.startswith(METROLOGY_PREFIX) else None
        rows = []
        if item_id:
            rows = self._read(
                key.org, "metrology/items", filter=pc.field("item_id") == item_id
            ).to_pylist()
        rows = [r for r in rows if TECHNIQUE_TYPE.get((r["technique"] or "").lower()) == kind]
        if not rows:
            self.audit(key, "sdk.spectrum", "denied", data_id=data_id, reason="not found")
            raise NotFound(f"no {kind} data item {data_id!r}")
        m = next((r for r in rows if r["x"] is not None), rows[0])
        x, y, peaks = m["x"] or [], m["y"] or [], m["peaks"] or []
        meta = {
            "x_unit": m["x_unit"],
            "y_unit": m["y_unit"],
            "run_id": m["run_id"],
            "sample": m["sample"],
            "technique": m["technique"],
        }
        results = {
            r["result_name"]: {"value": r["result_value"], "unit": r["result_unit"]}
            for r in rows
            if r["result_name"]
        }
        doc = {
            "id": item_id,
            "intensities": y,
            "last_updated": _iso(m["time"]),
            "spectral_metadata": meta,
            "results": results,
        }
        if kind == "xrd":
            doc.update(
                two_theta=x,
                two_theta_unit="degrees",
                detected_peaks=[{"two_theta": p} for p in peaks],
            )
        elif kind == "xps":
            doc.update(
                xps_id=item_id,
                binding_energies=x,
                predicted_composition={},
                set_elements=False,
                detected_peaks=[{"binding_energy": p} for p in peaks],
            )
        elif kind == "raman":
            doc.update(
                raman_id=item_id, wavenumbers=x, detected_peaks=[{"raman_shift": p} for p in peaks]
            )
        else:
            doc.update(
                photoluminescence_id=item_id,
                energies=x,
                detected_peaks=[{"energy": p} for p in peaks],
            )
        self.audit(key, "sdk.spectrum", data_id=data_id, points=len(y))
        return doc

    def close(self) -> None:
        """Close the state database."""
        self.state.close()
