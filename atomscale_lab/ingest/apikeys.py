"""Org API keys for instruments: issue, list, revoke, authenticate, throttle failures.

A key looks like ``ask_<prefix>_<secret>``: ``prefix`` (10 hex digits) is a non-secret lookup id,
``secret`` 32 random bytes in base64url. Only the prefix and ``HMAC-SHA256(pepper, key)`` are stored
(table ``apikeys`` of the registry), compared with :func:`hmac.compare_digest`.

Why HMAC with a pepper rather than scrypt: the secret has 256 bits of entropy, so a slow hash adds
no protection against guessing (there is nothing to brute-force), while every ingest request is
authenticated and a slow hash would cost milliseconds of CPU per batch. The pepper makes a stolen
registry useless on its own: it is HKDF-derived from the org's data key, which is stored wrapped by
the root key (KMS), so verifying a guess needs the KMS too; root-key rotation re-wraps it with the
other keys, and crypto-shredding the org invalidates all of its API keys at once.

The org of a request always comes from the key row, never from the request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from atomscale_lab.errors import AtomscaleError, NotFound, PermissionDenied, ValidationError

log = logging.getLogger(__name__)

SCOPES = (
    "ingest:process",
    "ingest:tool_state",
    "ingest:metrology",
    "read:process",
    "read:tool_state",
    "read:metrology",
)
"""Scopes an API key may carry: ``ingest:<category>`` streams into one category,
``read:<category>`` reads it through the Atomscale-compatible API (``compat.py``)."""
KEY_RE = re.compile(r"^ask_([0-9a-f]{10})_([A-Za-z0-9_-]{43})$")
MAX_LIFETIME = timedelta(days=730)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS apikeys (
    prefix TEXT PRIMARY KEY, org TEXT NOT NULL, name TEXT NOT NULL, scopes TEXT NOT NULL,
    digest TEXT NOT NULL, key_version INTEGER NOT NULL, created TEXT NOT NULL,
    expires TEXT NOT NULL, last_used TEXT, revoked TEXT, created_by TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS apikeys_org ON apikeys (org);
"""


class InvalidApiKey(PermissionDenied):
    """The API key is malformed, unknown, wrong, expired or revoked (HTTP 401)."""

    http_status = 401


class Throttled(AtomscaleError):
    """Too many failed attempts from one client (HTTP 429, ``retry_after`` seconds)."""

    http_status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ApiKeyInfo:
    """What an authenticated request knows about its key: never the secret."""

    prefix: str
    org: str
    name: str
    scopes: tuple[str, ...]

    @property
    def actor(self) -> str:
        """The audit actor of requests made with this key."""
        return f"apikey:{self.prefix}"

    def require(self, scope: str) -> None:
        """Raise ``PermissionDenied`` unless the key carries ``scope``."""
        if scope not in self.scopes:
            raise PermissionDenied(f"API key {self.prefix} lacks the scope {scope!r}")


def parse_scopes(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"ingest:process,ingest:tool_state"`` → a sorted tuple; unknown scopes are refused."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = sorted({s.strip() for s in items if s.strip()})
    if not scopes:
        raise ValidationError("at least one scope is required", field="scope")
    for s in scopes:
        if s not in SCOPES:
            raise ValidationError(
                f"unknown scope {s!r}; choose from {', '.join(SCOPES)}", field="scope"
            )
    return tuple(scopes)


def parse_duration(text: str) -> timedelta:
    """``"90d"``, ``"12h"``, ``"30m"`` → a timedelta (at most two years)."""
    m = re.fullmatch(r"\s*(\d+)\s*([dhm])\s*", text or "")
    if not m:
        raise ValidationError(
            f"cannot read the duration {text!r}; write e.g. 90d, 12h or 30m", field="expires"
        )
    n, unit = int(m.group(1)), m.group(2)
    d = {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]
    if d <= timedelta(0) or d > MAX_LIFETIME:
        raise ValidationError(
            "an API key must expire after more than 0 and at most 730 days", field="expires"
        )
    return d


def pepper_from_org_keys(org_keys, version: int | None = None) -> tuple[int, bytes]:
    """Derive the API-key pepper of one org from its data key (``OrgKeys``), by HKDF."""
    v = org_keys.current if version is None else version
    if v not in org_keys.keys:
        from atomscale_lab.errors import KeyUnavailable

        raise KeyUnavailable(f"data key version {v} of org {org_keys.org!r} is not available")
    info = f"atomscale-lab/apikey-pepper/{org_keys.org}/v{v}".encode()
    return v, HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        org_keys.keys[v]
    )


class FailureThrottle:
    """Counts failed authentications per client; locks a client out after too many.

    ``max_failures`` failures within ``window`` seconds lock the client for ``lockout`` seconds.
    """

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        lockout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_failures, self.window, self.lockout = max_failures, window, lockout
        self._clock = clock
        self._fails: dict[str, list[float]] = {}
        self._locked: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Raise ``Throttled`` while ``client`` is locked out."""
        with self._lock:
            until = self._locked.get(client)
            if until is None:
                return
            left = until - self._clock()
            if left <= 0:
                del self._locked[client]
                return
        raise Throttled(
            "too many failed authentications from this client; retry later",
            retry_after=max(1, int(left + 0.999)),
        )

    def failure(self, client: str) -> None:
        """Count one failure of ``client``."""
        now = self._clock()
        with self._lock:
            fails = [t for t in self._fails.get(client, []) if now - t < self.window]
            fails.append(now)
            if len(fails) >= self.max_failures:
                self._locked[client] = now + self.lockout
                fails = []
            self._fails[client] = fails
            if len(self._fails) > 10_000:  # bound memory under a spray of client addresses
                self._fails = {
                    c: f for c, f in self._fails.items() if f and now - f[-1] < self.window
                }

    def success(self, client: str) -> None:
        """Forget the failures of ``client``."""
        with self._lock:
            self._fails.pop(client, None)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds")


class ApiKeyStore:
    """API keys of every org in the registry: the SQLite file ``db_path``, or ``database`` (the
    deployment's state database, e.g. PostgreSQL; its ``apikeys`` table comes from a migration).

    ``pepper_for(org, version)`` returns ``(version, pepper)`` (``version=None``: current);
    ``audit_for(org)`` returns the org's audit sink. Both come from the vault in production.
    """

    def __init__(
        self,
        db_path: Path | None,
        pepper_for: Callable[[str, int | None], tuple[int, bytes]],
        audit_for: Callable[[str], object] | None = None,
        throttle: FailureThrottle | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        org_alive: Callable[[str], bool] | None = None,
        system_audit: Callable[[], object] | None = None,
        database=None,
    ):
        from atomscale_lab.ingest import statedb

        if database is None:
            database = statedb.sqlite_database(Path(db_path), secure_delete=True)
            database.conn.executescript(_SCHEMA)
        self._db = database
        self._pepper_for = pepper_for
        self._peppers: dict[tuple[str, int], bytes] = {}
        self._audit_for = audit_for
        self.throttle = throttle or FailureThrottle()
        self._now = now
        self._org_alive = org_alive
        self._system_audit = system_audit
        self._last_used_written: dict[str, float] = {}

    # -- admin side ---------------------------------------------------------------------------
    def create(
        self, org: str, scopes, expires_in: timedelta, *, name: str = "", actor: str = "admin"
    ) -> tuple[str, dict]:
        """Issue a key; returns ``(plaintext, record)``. The plaintext is never stored or logged."""
        scopes = parse_scopes(scopes)
        if expires_in <= timedelta(0) or expires_in > MAX_LIFETIME:
            raise ValidationError("an API key must expire within 730 days", field="expires")
        name = (name or "").strip()[:64]
        version, pepper = self._pepper(org, None)
        for _ in range(5):
            prefix = secrets.token_hex(5)
            key = f"ask_{prefix}_{secrets.token_urlsafe(32)}"
            created = self._now()
            if self._db.sql(
                "INSERT INTO apikeys (prefix, org, name, scopes, digest, key_version, "
                "created, expires, created_by) VALUES (?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT DO NOTHING RETURNING prefix",
                (
                    prefix,
                    org,
                    name,
                    ",".join(scopes),
                    self._digest(pepper, key),
                    version,
                    _iso(created),
                    _iso(created + expires_in),
                    actor,
                ),
            ):
                break  # else a prefix collision: draw again
        else:  # pragma: no cover - 2**40 prefixes
            raise AtomscaleError("could not allocate an API key prefix")
        self._audit(
            org,
            actor,
            "apikey.create",
            "allowed",
            prefix=prefix,
            name=name,
            scopes=list(scopes),
            expires=_iso(created + expires_in),
        )
        return key, self._get(prefix)

    def list(self, org: str) -> list[dict]:
        """Every key of ``org`` (newest first): prefix, name, scopes, dates, state — no secret."""
        rows = self._db.sql(
            "SELECT prefix FROM apikeys WHERE org=? ORDER BY created DESC, prefix", (org,)
        )
        return [self._get(r[0]) for r in rows]

    def revoke(self, org: str, prefix: str, *, actor: str = "admin") -> dict:
        """Revoke the key ``prefix`` of ``org`` (a key of another org is reported as not found)."""
        changed = self._db.sql(
            "UPDATE apikeys SET revoked=? WHERE prefix=? AND org=? AND revoked IS NULL "
            "RETURNING prefix",
            (_iso(self._now()), prefix, org),
        )
        exists = self._db.sql("SELECT 1 FROM apikeys WHERE prefix=? AND org=?", (prefix, org))
        if not exists:
            self._audit(org, actor, "apikey.revoke", "denied", prefix=prefix, reason="not found")
            raise NotFound(f"org {org!r} has no API key with prefix {prefix!r}")
        if changed:
            self._audit(org, actor, "apikey.revoke", "allowed", prefix=prefix)
        return self._get(prefix)

    # -- request side -------------------------------------------------------------------------
    def authenticate(
        self,
        key: str | None,
        *,
        client: str = "unknown",
        scope: str | None = None,
        action: str = "request",
    ) -> ApiKeyInfo:
        """Check ``key`` (and ``scope``); audit the use or failure; throttle repeated failures.

        Raises ``Throttled``, ``InvalidApiKey`` or ``PermissionDenied``.
        """
        self.throttle.check(client)
        m = KEY_RE.match(key or "")
        if not m:
            self._fail(client, None, None, "malformed or missing API key")
        prefix = m.group(1)
        rows = self._db.sql(
            "SELECT org, name, scopes, digest, key_version, expires, revoked "
            "FROM apikeys WHERE prefix=?",
            (prefix,),
        )
        if not rows:
            self._fail(client, None, prefix, "unknown API key")
        org, name, scopes, digest, version, expires, revoked = rows[0]
        if self._org_alive is not None and not self._org_alive(org):
            # A deleted (crypto-shredded) org: its keys die with it, even if a pepper is cached.
            self.forget_org(org)
            self._fail(client, None, prefix, "the org was deleted")
        try:
            _, pepper = self._pepper(org, version)
        except AtomscaleError:
            self._fail(client, org, prefix, "the org's keys are unavailable")
        if not hmac.compare_digest(self._digest(pepper, key), digest):
            self._fail(client, org, prefix, "wrong API key")
        if revoked:
            self._fail(client, org, prefix, "API key revoked")
        if datetime.fromisoformat(expires) <= self._now():
            self._fail(client, org, prefix, "API key expired")
        info = ApiKeyInfo(prefix, org, name, tuple(scopes.split(",")))
        if scope is not None and scope not in info.scopes:
            self._audit(
                org,
                info.actor,
                "apikey.use",
                "denied",
                prefix=prefix,
                client=client,
                reason=f"missing scope {scope}",
                request=action,
            )
            raise PermissionDenied(f"API key {prefix} lacks the scope {scope!r}")
        self.throttle.success(client)
        self._touch(prefix)
        self._audit(
            org, info.actor, "apikey.use", "allowed", prefix=prefix, client=client, request=action
        )
        return info

    # -- internals ----------------------------------------------------------------------------
    def _fail(self, client: str, org: str | None, prefix: str | None, reason: str):
        self.throttle.failure(client)
        log.warning("API key refused for client %s: %s (prefix %s)", client, reason, prefix)
        if org is not None:
            self._audit(
                org,
                f"apikey:{prefix}",
                "apikey.use",
                "denied",
                prefix=prefix,
                client=client,
                reason=reason,
            )
        elif self._system_audit is not None:
            # No org to charge it to: the deployment's own audit log keeps the attempt.
            try:
                self._system_audit().record(
                    f"client:{client}",
                    "apikey.use",
                    "denied",
                    prefix=prefix,
                    client=client,
                    reason=reason,
                )
            except AtomscaleError:
                log.exception("could not audit a refused API key")
        # The client learns "expired"/"revoked" only after proving the secret; otherwise the
        # message does not tell an unknown prefix from a wrong secret.
        shown = reason if reason in ("API key revoked", "API key expired") else "invalid API key"
        raise InvalidApiKey(shown)

    def _touch(self, prefix: str) -> None:
        # last_used at minute resolution: one registry write per key per minute, not per batch.
        now = time.monotonic()
        if now - self._last_used_written.get(prefix, -1e9) < 60:
            return
        self._last_used_written[prefix] = now
        self._db.sql("UPDATE apikeys SET last_used=? WHERE prefix=?", (_iso(self._now()), prefix))

    def _pepper(self, org: str, version: int | None) -> tuple[int, bytes]:
        if version is not None and (org, version) in self._peppers:
            return version, self._peppers[(org, version)]
        v, pepper = self._pepper_for(org, version)
        self._peppers[(org, v)] = pepper
        return v, pepper

    def forget_org(self, org: str) -> None:
        """Drop cached peppers of ``org`` (after a shred or key change)."""
        for k in [k for k in self._peppers if k[0] == org]:
            del self._peppers[k]

    @staticmethod
    def _digest(pepper: bytes, key: str) -> str:
        return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()

    def _get(self, prefix: str) -> dict:
        rows = self._db.sql(
            "SELECT prefix, org, name, scopes, created, expires, last_used, revoked, "
            "created_by FROM apikeys WHERE prefix=?",
            (prefix,),
        )
        if not rows:
            raise NotFound(f"no API key with prefix {prefix!r}")
        row = rows[0]
        rec = dict(
            zip(
                (
                    "prefix",
                    "org",
                    "name",
                    "scopes",
                    "created",
                    "expires",
                    "last_used",
                    "revoked",
                    "created_by",
                ),
                row,
                strict=True,
            )
        )
        rec["scopes"] = rec["scopes"].split(",")
        now = self._now()
        rec["state"] = (
            "revoked"
            if rec["revoked"]
            else "expired"
            if datetime.fromisoformat(rec["expires"]) <= now
            else "active"
        )
        return rec

    def _audit(self, org: str, actor: str, action: str, outcome: str, **detail) -> None:
        if self._audit_for is None:
            return
        self._audit_for(org).record(actor, action, outcome, **detail)

    def close(self) -> None:
        """Close the registry connection."""
        from atomscale_lab.ingest import statedb

        statedb.close(self._db)


def for_vault(vault, **kw) -> ApiKeyStore:
    """An ``ApiKeyStore`` on a ``Vault``'s registry, peppers and audit logs."""
    from atomscale_lab.errors import UnknownOrg

    def alive(org: str) -> bool:
        try:
            vault.org_region(org)
            return True
        except UnknownOrg:
            return False

    from atomscale_lab.ingest import statedb

    return ApiKeyStore(
        vault.settings.registry_path,
        lambda org, v: pepper_from_org_keys(vault.org_keys(org), v),
        database=statedb.shared(vault.settings),
        audit_for=vault.audit,
        org_alive=alive,
        system_audit=vault.system_audit,
        **kw,
    )
