"""The vault: a deployment's orgs, keys, stores, context and audit, for admins and single-user use.

``Vault`` is the façade the CLI, the demo, the hub services
and the single-user server extension use. Hub-spawned user servers do *not* use it: they get
``OrgKeys`` from the key service and build ``OrgStore`` directly.

Residency: each storage root declares its region and kind in a ``.atomscale-root.json`` marker,
written on first use from ``Settings.region``. An org is created only if its region is the roots'
region, and opened only while that still holds (a root moved to another region's disk is refused).

Admin actions are audited twice: in the org's own log, and in the deployment log (pseudo-org
``_deployment``, its own audit key) so that an org's deletion stays on record after its keys — and
with them its own log's MAC key — are destroyed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from atomscale_lab.errors import (
    AtomscaleError,
    ConfigError,
    KeyUnavailable,
    OrgExists,
    ResidencyError,
    UnknownOrg,
    ValidationError,
)
from atomscale_lab.vault.audit import AuditHeads, AuditLog
from atomscale_lab.vault.settings import REGIONS, Settings

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
MARKER = ".atomscale-root.json"
SYSTEM_ORG = "_deployment"
"""Pseudo-org of the deployment audit log (org names cannot start with ``_``)."""
AUDIT_KEY_VERSION = 1
"""The audit chain is MACed with version 1 of the org's audit key for the log's whole life."""

_ORGS_SCHEMA = """
CREATE TABLE IF NOT EXISTS orgs (
    name TEXT PRIMARY KEY, region TEXT NOT NULL, created TEXT NOT NULL, deleted TEXT)
"""

_CONFIG_SCHEMA = """
CREATE TABLE IF NOT EXISTS org_config (
    name TEXT PRIMARY KEY, doc TEXT NOT NULL, updated TEXT NOT NULL)
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid org name, else raise ``ValidationError`` saying why."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(
            f"invalid org name {name!r}: use 2-32 characters, lower-case letters, digits and "
            "'-', starting with a letter",
            field="name",
        )
    return name


def check_region(region: str) -> str:
    """Return the normalised region or raise ``ValidationError`` naming the valid ones."""
    r = str(region or "").strip().lower()
    if r not in REGIONS:
        raise ValidationError(
            f"unknown region {region!r}; choose one of {', '.join(REGIONS)}", field="region"
        )
    return r


def read_marker(root) -> dict | None:
    """The residency marker of a storage root (a folder or an ``s3://`` root), or None if the
    root has none yet."""
    from atomscale_lab.vault.store.media import as_root, join

    root = as_root(root)
    path = join(root, MARKER)
    try:
        if isinstance(root, Path):
            doc = json.loads(path.read_text())
        else:
            got = _object_medium(root).get(MARKER)
            if got is None:
                return None
            doc = json.loads(got[0])
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(f"the storage root marker {path} is unreadable: {e}") from None
    if not isinstance(doc, dict) or "region" not in doc or "kind" not in doc:
        raise ConfigError(f"the storage root marker {path} lacks 'region' or 'kind'")
    return doc


def _object_medium(root):
    from atomscale_lab.vault.store.objects import S3Medium

    return S3Medium(root)


def _write_marker(root, kind: str, region: str) -> dict:
    doc = {"region": region, "kind": kind, "created": _now()}
    if not isinstance(root, Path):
        # A conditional put keeps the marker of whoever wrote it first, like link() below.
        if _object_medium(root).put(MARKER, json.dumps(doc).encode()) is None:
            return read_marker(root) or doc
        return doc
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".marker-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if another process wrote the marker first: keep theirs.
        try:
            os.link(tmp, root / MARKER)
        except FileExistsError:
            return read_marker(root) or doc
    finally:
        os.unlink(tmp)
    return doc


class Vault:
    """Orgs (registry in SQLite), their keys, data stores, context stores and audit logs."""

    def __init__(self, settings: Settings | None = None, kms=None):
        """``settings`` defaults to ``Settings.load()``; ``kms`` to ``LocalKms.from_env()``.

        The KMS (and with it the root key) is only loaded when a key is needed, so listing orgs
        works without it.
        """
        from atomscale_lab.vault.registry import connect

        self.settings = settings if settings is not None else Settings.load()
        self.settings.check_roots()
        self._kms = kms
        self._keys = None
        self._db = connect(self.settings.registry_path, secure_delete=True)
        self._db_lock = threading.RLock()
        self._sql(_ORGS_SCHEMA)
        self._heads = AuditHeads(self.settings.registry_path)

    def __repr__(self) -> str:
        return f"Vault(home={str(self.settings.home)!r})"

    def _sql(self, sql: str, params: tuple = ()) -> list[tuple]:
        # One connection shared by the threads of a hub service: serialise its use.
        with self._db_lock:
            return self._db.execute(sql, params).fetchall()

    # -- keys ---------------------------------------------------------------------------------

    @property
    def kms(self):
        """The deployment's KMS (loaded on first use: ``ATOMSCALE_KMS`` or the root key)."""
        if self._kms is None:
            from atomscale_lab.vault.kms import load_kms

            self._kms = load_kms()
        return self._kms

    @property
    def keys(self):
        """The ``KeyRegistry`` (opened on first use)."""
        if self._keys is None:
            from atomscale_lab.vault.registry import KeyRegistry

            self._keys = KeyRegistry(self.settings.registry_path, self.kms)
        return self._keys

    # -- residency ------------------------------------------------------------------------------

    def roots_region(self) -> str:
        """The region both storage roots declare (markers are written on first use).

        Raises ``ResidencyError`` if the markers disagree and ``ConfigError`` if a root's marker
        names the other kind (the roots were swapped).
        """
        from atomscale_lab.vault.store.media import as_root
        from atomscale_lab.vault.store.objects import S3Root, check_root

        s = self.settings
        docs = {}
        for kind, root in (("data", s.data_root), ("context", s.context_root)):
            if isinstance(root, S3Root):
                check_root(root, s.region)  # the bucket's own region, not only the marker
            doc = read_marker(root)
            if doc is None:
                doc = _write_marker(as_root(root), kind, s.region)
                log.info("declared %s root %s as region %s", kind, root, doc["region"])
            if doc["kind"] != kind:
                raise ConfigError(
                    f"{root} is marked as a {doc['kind']} root but is configured "
                    f"as the {kind} root; check ATOMSCALE_DATA_ROOT and "
                    "ATOMSCALE_CONTEXT_ROOT"
                )
            docs[kind] = doc
        d, c = docs["data"]["region"], docs["context"]["region"]
        if d != c:
            raise ResidencyError(
                f"the storage roots declare different regions: data root {s.data_root} is "
                f"{d!r}, context root {s.context_root} is {c!r}; both must be in one region"
            )
        return d

    def _check_residency(self, name: str, region: str) -> None:
        roots = self.roots_region()
        if region != roots:
            raise ResidencyError(
                f"org {name!r} must stay in region {region!r}, but the storage roots "
                f"({self.settings.data_root}, {self.settings.context_root}) are in {roots!r}"
            )

    # -- org registry ---------------------------------------------------------------------------

    def _row(self, name: str):
        rows = self._sql("SELECT name, region, created, deleted FROM orgs WHERE name=?", (name,))
        return rows[0] if rows else None

    def _live(self, name: str) -> dict:
        row = self._row(name) if isinstance(name, str) else None
        if row is None:
            raise UnknownOrg(f"unknown org {name!r} (see `atomscale-lab org list`)")
        if row[3]:
            raise UnknownOrg(f"org {name!r} was deleted on {row[3][:10]}; its data is gone")
        return {"name": row[0], "region": row[1], "created": row[2]}

    def create_org(self, name: str, region: str, *, actor: str = "admin") -> dict:
        """Create an org (name: ``[a-z][a-z0-9-]{1,31}``); refuse a region that does not match the
        roots' declared region (``ResidencyError``) or an existing name (``OrgExists``)."""
        from atomscale_lab.names import check_new_org, check_unix_free, unix_org_group

        check_name(name)
        check_new_org(name)
        # Two orgs must never share a Unix group (it owns the org's files on a hub).
        check_unix_free(
            unix_org_group(name),
            name,
            {unix_org_group(o["name"]): o["name"] for o in self.orgs(include_deleted=True)},
            "org name",
        )
        region = check_region(region)
        # Unwrapping the deployment audit key first proves the root key is the one the registry
        # uses; otherwise the new org's keys would be wrapped under a different root key.
        system = self.system_audit()
        row = self._row(name)
        if row is not None:
            if row[3]:
                raise OrgExists(
                    f"org {name!r} was deleted on {row[3][:10]}; its name cannot be "
                    "reused (choose another name)"
                )
            raise OrgExists(f"org {name!r} already exists")
        try:
            roots = self.roots_region()
            if region != roots:
                raise ResidencyError(
                    f"cannot create org {name!r} in region {region!r}: the storage roots "
                    f"({self.settings.data_root}, {self.settings.context_root}) are declared "
                    f"{roots!r}; its data would be stored outside its region (use storage roots "
                    f"declared {region!r}: ATOMSCALE_DATA_ROOT/ATOMSCALE_CONTEXT_ROOT on "
                    f"{region!r} storage with ATOMSCALE_REGION={region})"
                )
        except ResidencyError as e:
            system.record(
                actor, "org.create", "denied", org_name=name, region=region, reason=str(e)
            )
            raise
        self.keys.create_org(name)
        created = _now()
        try:
            self._sql(
                "INSERT INTO orgs (name, region, created) VALUES (?, ?, ?)", (name, region, created)
            )
        except Exception:
            self.keys.shred(name)
            raise
        for root in (self.settings.data_root, self.settings.context_root):
            if isinstance(root, Path):  # object storage has no folders to make
                (root / name).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.audit(name).record(actor, "org.create", region=region)
        system.record(actor, "org.create", org_name=name, region=region)
        return {"name": name, "region": region, "created": created}

    def orgs(self, *, include_deleted: bool = False) -> list[dict]:
        """Every live org: name, region, created (and ``deleted`` ones on request)."""
        if include_deleted:
            rows = self._sql("SELECT name, region, created, deleted FROM orgs ORDER BY name")
            return [{"name": n, "region": r, "created": c, "deleted": d} for n, r, c, d in rows]
        rows = self._sql(
            "SELECT name, region, created FROM orgs WHERE deleted IS NULL ORDER BY name"
        )
        return [{"name": n, "region": r, "created": c} for n, r, c in rows]

    def org_region(self, name: str) -> str:
        """The region of a live org (no keys needed)."""
        return self._live(name)["region"]

    def org_info(self, name: str) -> dict:
        """Region, key versions and fingerprints, per-table rows/files/bytes; never key material."""
        info = self._live(name)
        self._check_residency(name, info["region"])
        fps = self.keys.fingerprints(name)
        info["keys"] = {
            p: [{"version": v, "fingerprint": f} for v, f in sorted(vs.items())]
            for p, vs in sorted(fps.items())
        }
        from atomscale_lab.vault.store.media import join

        info["data_root"] = str(join(self.settings.data_root, name))
        info["context_root"] = str(join(self.settings.context_root, name))
        tables = {}
        for t in [*self.store(name).tables(), self.context(name).table]:
            files = t.files()
            tables[t.spec.name] = {
                "rows": int(t.num_rows()),
                "files": len(files),
                "bytes": int(sum(_size(f) for f in files)),
            }
        info["tables"] = tables
        info["totals"] = {k: sum(v[k] for v in tables.values()) for k in ("rows", "files", "bytes")}
        return info

    # -- per-org handles ------------------------------------------------------------------------

    def org_keys(self, name: str):
        """The org's ``OrgKeys``: data key versions, verify keys and the signing key (writer).

        An org created before commit-log signing is migrated on first use (see
        :meth:`migrate_org`).
        """
        self._live(name)
        keys = self.keys.org_keys(name)
        if not keys.verify:
            self.migrate_org(name, actor="system", strict=False)
            keys = self.keys.org_keys(name)
        return keys

    def migrate_org(self, name: str, *, actor: str = "admin", strict: bool = True) -> dict:
        """Give an org made before commit-log signing its signing key and seal every table.

        Each table's HMAC-verified history is checked, then sealed by one signed line and
        restarted from a signed checkpoint (the lines with plaintext statistics are dropped);
        from then on an unsigned line is refused. Idempotent. Returns
        ``{"created_key": bool, "sealed": [table, ...], "failed": {table: reason}}``; audited as
        ``org.migrate``. Without ``strict`` (the automatic migration on first use) a table that
        cannot be sealed here (its log fails verification, or this process may not write under
        the data root) is left for ``atomscale-lab org migrate`` and readers refuse it until then.
        """
        self._live(name)
        created = self.keys.ensure_signing_key(name)
        sealed, failed = [], {}
        for t in [*self.store(name).tables(), self.context(name).table]:
            try:
                if t.seal(actor=actor):
                    sealed.append(t.spec.name)
            except (AtomscaleError, OSError) as e:
                if strict:
                    self.audit(name).record(
                        actor,
                        "org.migrate",
                        "error",
                        created=created,
                        tables=sealed,
                        table=t.spec.name,
                        error=str(e)[:300],
                    )
                    raise
                failed[t.spec.name] = str(e)[:300]
                log.warning(
                    "org %s: cannot seal %s now (%s); run `atomscale-lab org migrate`",
                    name,
                    t.spec.name,
                    type(e).__name__,
                )
        if created or sealed or failed:
            self.audit(name).record(
                actor,
                "org.migrate",
                "error" if failed else "allowed",
                created=created,
                tables=sealed,
                failed=sorted(failed),
            )
        return {"created_key": created, "sealed": sealed, "failed": failed}

    def heads(self):
        """The commit-log head store (in the registry, outside the data root)."""
        from atomscale_lab.vault.store import SqliteHeadStore

        return SqliteHeadStore(self.settings.registry_path)

    def crypto(self, name: str):
        """The org's data ``OrgCrypto``."""
        from atomscale_lab.vault.crypto import OrgCrypto

        # A rotation by another process is picked up on the first unseen key version.
        return OrgCrypto(self.org_keys(name), refresh=lambda: self.org_keys(name))

    def store(self, name: str, *, actor: str = "admin"):
        """The org's ``OrgStore``."""
        from atomscale_lab.vault.store import OrgStore

        info = self._live(name)
        self._check_residency(name, info["region"])
        return OrgStore(self.settings.data_root, name, self.crypto(name), heads=self.heads())

    def context(self, name: str):
        """The org's ``ContextStore``."""
        from atomscale_lab.vault.context import ContextStore

        info = self._live(name)
        self._check_residency(name, info["region"])
        versions = self.keys.versions(name).get("context", [])
        keys = self.org_keys(name).with_keys(
            dict(self.keys.key(name, "context", v) for v in versions)
        )
        return ContextStore(
            self.settings.context_root, name, keys, self.audit(name), heads=self.heads()
        )

    def audit(self, name: str):
        """The org's ``AuditLog``."""
        self._live(name)
        return self._audit_log(name)

    def _audit_log(self, name: str) -> AuditLog:
        _, key = self.keys.key(name, "audit", AUDIT_KEY_VERSION)
        return AuditLog(self.settings.audit_root / f"{name}.jsonl", name, key, heads=self._heads)

    def system_audit(self) -> AuditLog:
        """The deployment audit log (org creation and deletion, root-key rotation)."""
        try:
            self.keys.key(SYSTEM_ORG, "audit", AUDIT_KEY_VERSION)
        except UnknownOrg:
            try:
                self.keys.create_org(SYSTEM_ORG)
            except OrgExists:  # another process won the race
                pass
        return self._audit_log(SYSTEM_ORG)

    # -- admin actions --------------------------------------------------------------------------

    def verify_org(
        self,
        name: str,
        *,
        deep: bool = False,
        actor: str = "admin",
        progress: Callable[[str], None] | None = None,
    ) -> dict:
        """Verify the org's audit chain, every table's commit log and listed files (``deep``:
        decrypt every file in full). Returns ``{"audit": events, "tables": {name: files}}`` or
        raises ``IntegrityError`` naming the first fault; the outcome is audited."""
        from atomscale_lab.errors import IntegrityError

        audit = self.audit(name)
        result: dict = {"audit": audit.verify(), "tables": {}}
        tables = [*self.store(name).tables(), self.context(name).table]
        try:
            for t in tables:
                if progress:
                    progress(t.spec.name)
                t.verify(deep=deep)
                result["tables"][t.spec.name] = len(t.files())
        except IntegrityError as e:
            audit.record(actor, "org.verify", "error", deep=deep, error=str(e)[:500])
            raise
        audit.record(actor, "org.verify", deep=deep, tables=result["tables"])
        return result

    def rotate_data_key(
        self,
        name: str,
        *,
        rewrite: bool = False,
        actor: str = "admin",
        progress: Callable[[str, int, int], None] | None = None,
    ) -> int:
        """New data-key version; with ``rewrite`` re-encrypt all files under it. Returns version.

        ``progress(table, done, total)`` is called while rewriting.
        """
        self._live(name)
        audit = self.audit(name)
        self.org_keys(name)  # an org from before commit-log signing is migrated first
        version = self.keys.rotate(name, "data")
        sign_version = self.keys.rotate(name, "sign")
        audit.record(actor, "key.rotate", purpose="data", key_version=version)
        audit.record(actor, "key.rotate", purpose="sign", key_version=sign_version)
        # One line signed with the new key per table: lines signed with the retired key are
        # refused from now on, even by someone who kept it.
        for t in [*self.store(name).tables(), self.context(name).table]:
            t.seal(actor=actor, scrub=False)
        if rewrite:
            store = self.store(name)
            rewritten = {}
            for t in store.tables():
                total = len(t.files())
                if progress:
                    progress(t.spec.name, 0, total)
                cb = (
                    (lambda done, _t=t.spec.name, _n=total: progress(_t, done, _n))
                    if progress
                    else None
                )
                try:
                    t.rewrite(progress=cb, actor=actor)
                except Exception as e:
                    audit.record(
                        actor,
                        "key.rewrite",
                        "error",
                        key_version=version,
                        table=t.spec.name,
                        error=type(e).__name__,
                    )
                    raise
                rewritten[t.spec.name] = total
            audit.record(actor, "key.rewrite", key_version=version, files=rewritten)
        return version

    def rotate_root_key(self, new_kms, *, actor: str = "admin") -> int:
        """Re-wrap every key under a new root key. Returns the number of keys re-wrapped."""
        live = [o["name"] for o in self.orgs()]
        self.system_audit()  # make sure its keys exist and are re-wrapped too
        count = self.keys.rewrap(new_kms)
        self._kms = new_kms
        for name in live:
            self._audit_log(name).record(
                actor, "key.rotate_root", kms_key_id=new_kms.key_id, keys=count
            )
        self.system_audit().record(
            actor, "key.rotate_root", kms_key_id=new_kms.key_id, keys=count, orgs=len(live)
        )
        return count

    def rotate_kms_key(self, *, rotate: bool = True, actor: str = "admin") -> int:
        """Rotate the wrapping key inside an external KMS, then re-wrap every stored key under
        its newest version (inside the KMS where it can). Returns the number of keys re-wrapped.

        With ``rotate=False`` only the re-wrap runs (e.g. after a rotation made in the KMS).
        """
        kms = self.kms
        if rotate:
            if not hasattr(kms, "rotate"):
                raise ConfigError(
                    f"the KMS in use ({type(kms).__name__}) cannot rotate its own "
                    "key; use `atomscale-lab root-key rotate`"
                )
            kms.rotate()
        live = [o["name"] for o in self.orgs()]
        self.system_audit()  # its keys are re-wrapped too
        count = self.keys.rewrap_in_kms()
        action = "key.rotate_root" if rotate else "key.rewrap"
        for name in live:
            self._audit_log(name).record(actor, action, kms_key_id=kms.key_id, keys=count)
        self.system_audit().record(actor, action, kms_key_id=kms.key_id, keys=count, orgs=len(live))
        return count

    def delete_org(self, name: str, *, shred: bool, actor: str = "admin") -> None:
        """Delete an org; with ``shred`` destroy its keys first (its files become unreadable).

        Without ``shred`` the org is only marked deleted and its keys kept (e.g. a legal hold);
        with it the keys are destroyed, then the org's data and context folders are removed.
        """
        self._live(name)
        system = self.system_audit()  # proves the root key before anything is destroyed
        try:
            self.audit(name).record(actor, "org.delete", shred=bool(shred))
        except KeyUnavailable:
            # An earlier deletion stopped after shredding the keys: finish it.
            log.warning("org %s has no keys left; completing its deletion", name)
        if shred:
            self.keys.shred(name)
        self._sql("UPDATE orgs SET deleted=? WHERE name=?", (_now(), name))
        system.record(actor, "org.delete", org_name=name, shred=bool(shred))
        if shred:
            for root in (self.settings.data_root, self.settings.context_root):
                if isinstance(root, Path):
                    shutil.rmtree(root / name, ignore_errors=True)
                else:
                    _object_medium(root.child(name)).delete_all()
            self._heads.forget(name)
            self.heads().forget(name)

    # -- org configuration ------------------------------------------------------------------

    def org_config(self, name: str) -> dict:
        """The org's workspace configuration: ``{config, updated}`` (defaults if never set)."""
        from atomscale_lab import orgconfig

        self._live(name)
        self._sql(_CONFIG_SCHEMA)
        rows = self._sql("SELECT doc, updated FROM org_config WHERE name=?", (name,))
        if not rows:
            return {"config": orgconfig.defaults(), "updated": None}
        stored = json.loads(rows[0][0])
        # a setting a newer or older version no longer knows is dropped, not an error
        known = {k: v for k, v in stored.items() if k in orgconfig.DEFAULTS}
        return {"config": orgconfig.validate(known), "updated": rows[0][1]}

    def set_org_config(self, name: str, config: dict) -> dict:
        """Validate and store the org's complete configuration; returns ``{config, updated}``.

        Auditing is the caller's (the server audits ``config.change`` with the changed keys).
        """
        from atomscale_lab import orgconfig

        self._live(name)
        doc = orgconfig.validate(config)
        updated = _now()
        self._sql(_CONFIG_SCHEMA)
        self._sql(
            "INSERT INTO org_config (name, doc, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET doc=excluded.doc, updated=excluded.updated",
            (name, json.dumps(doc), updated),
        )
        return {"config": doc, "updated": updated}

    def close(self) -> None:
        """Close the registry connections."""
        self._db.close()
        if self._keys is not None:
            self._keys.close()


def _size(entry: dict) -> int:
    for k in ("size", "bytes", "file_size"):
        if k in entry:
            return int(entry[k] or 0)
    return 0
