"""Samples, projects and tags of the Atomscale-compatible API (a base of
:class:`~atomscale_lab.ingest.sdkapi.SdkApi`, which holds the state and the vault)."""

from __future__ import annotations

import logging
from collections import defaultdict

from atomscale_lab.errors import NotFound, ValidationError
from atomscale_lab.ingest.sdkstate import (
    INGEST_SCOPES,
    READ_SCOPES,
    _iso,
    _now,
    entity_id,
)

log = logging.getLogger(__name__)


class SdkRecords:
    """Samples, projects and tags: their records, links to runs and items (audited)."""

    # -- samples, projects, tags --------------------------------------------------------------
    def samples(self, key) -> list[dict]:
        """``GET physical_samples/``: named samples of the org's runs and created ones."""
        self.require_any(key, READ_SCOPES + INGEST_SCOPES, "sdk.samples")
        runs = self._runs(key.org)
        out: dict[str, dict] = {}
        for sid, box, created in self.state.sql(
            "SELECT id, name, created FROM samples WHERE org=?", (key.org,)
        ):
            name = self._seal.unseal(key.org, box, f"{key.org}/{sid}/sample")
            out[sid] = {
                "id": sid,
                "name": name,
                "created_datetime": created,
                "num_data_items": 0,
                "projects": [],
            }
        for r in runs:
            if not r.get("sample"):
                continue
            sid = entity_id(key.org, "sample", r["sample"])
            s = out.setdefault(
                sid,
                {
                    "id": sid,
                    "name": r["sample"],
                    "created_datetime": _iso(r.get("start")),
                    "num_data_items": 0,
                    "projects": [],
                },
            )
            s["num_data_items"] += 1
            if r.get("project") and not any(p["name"] == r["project"] for p in s["projects"]):
                s["projects"].append(
                    {"id": entity_id(key.org, "project", r["project"]), "name": r["project"]}
                )
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
        self.state.sql(
            "INSERT INTO samples VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
            (
                sid,
                key.org,
                self._seal.seal(key.org, name, f"{key.org}/{sid}/sample"),
                _now(),
                key.actor,
            ),
        )
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
                raise NotFound(
                    f"no tool_state data item {data_id!r} (a metrology item takes "
                    "the sample of its run)"
                )
        for data_id in ids:
            run = runs[data_id]
            self.core._update_run(
                key.org, run["run_id"], run["status"], actor=key.actor, sample=name
            )
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
            act = self.state.sql(
                "SELECT sample_id FROM tracking WHERE org=? AND project_id=? AND active=1",
                (key.org, p["id"]),
            )
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
            self.state.sql(
                "UPDATE tracking SET active=0 WHERE org=? AND project_id=?", (key.org, project_id)
            )
        self.state.sql(
            "INSERT INTO tracking VALUES (?,?,?,?,?) ON CONFLICT (org, project_id, sample_id) "
            "DO UPDATE SET active=excluded.active, updated=excluded.updated",
            (key.org, project_id, sid, int(active), _now()),
        )
        self.audit(key, "sdk.tracking", project_id=project_id, sample_id=sid, active=active)
        return {"project_id": project_id, "physical_sample_id": sid, "active": active}

    def tags(self, key) -> list[dict]:
        """``GET tags/``: the org's tags."""
        self.require_any(key, READ_SCOPES + INGEST_SCOPES, "sdk.tags")
        rows = [
            (i, self._seal.unseal(key.org, box, f"{key.org}/{i}/tag"), c)
            for i, box, c in self.state.sql(
                "SELECT id, name, created FROM tags WHERE org=?", (key.org,)
            )
        ]
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
            self.state.sql(
                "INSERT INTO tags VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING",
                (
                    tid,
                    key.org,
                    self._seal.seal(key.org, name, f"{key.org}/{tid}/tag"),
                    _now(),
                    key.actor,
                ),
            )
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
                "SELECT 1 FROM items WHERE org=? AND data_id=?", (key.org, self._did(key.org, i))
            ):
                raise NotFound(f"no data item {i!r}")
        for t in tag_ids:
            if not self.state.sql("SELECT 1 FROM tags WHERE id=? AND org=?", (t, key.org)):
                raise NotFound(f"no tag {t!r}")
        for i in ids:
            for t in tag_ids:
                self.state.sql(
                    "INSERT INTO item_tags VALUES (?,?,?) ON CONFLICT DO NOTHING",
                    (key.org, self._did(key.org, i), t),
                )
        self.audit(key, "sdk.tag_attach", data_ids=ids, tag_ids=tag_ids)
        return {"data_ids": ids, "tag_ids": tag_ids}
