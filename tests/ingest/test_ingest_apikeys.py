"""API keys: issue, store only a peppered hash, authenticate, expire, revoke, throttle, audit."""

from datetime import UTC, datetime, timedelta

import pytest

from atomscale_lab.errors import NotFound, PermissionDenied, ValidationError
from atomscale_lab.ingest import apikeys, statedb
from atomscale_lab.ingest.apikeys import InvalidApiKey, Throttled
from tests.support.s3 import state_backend_per_deployment  # noqa: F401 - state_backend


def test_key_format_and_only_digest_stored(deployment):
    key = deployment.key(name="mbe1 logger")
    assert apikeys.KEY_RE.match(key)
    prefix = key.split("_")[1]
    (row,) = deployment.keys._db.sql("SELECT * FROM apikeys WHERE prefix=?", (prefix,))
    assert all(key not in str(v) and key.split("_", 2)[2] not in str(v) for v in row)
    listed = deployment.keys.list("acme")
    assert [k["prefix"] for k in listed] == [prefix]
    assert listed[0]["name"] == "mbe1 logger"
    assert listed[0]["state"] == "active"
    assert set(listed[0]["scopes"]) == {"ingest:process", "ingest:tool_state"}
    assert deployment.keys.list("beta") == []


def test_authenticate_gives_the_keys_org_and_is_audited(deployment):
    key = deployment.key("beta", "ingest:tool_state")
    info = deployment.keys.authenticate(key, client="127.0.0.1", scope="ingest:tool_state")
    assert info.org == "beta"
    with pytest.raises(PermissionDenied, match="lacks the scope"):
        deployment.keys.authenticate(key, client="127.0.0.1", scope="ingest:process")
    events = deployment.vault.audit("beta").events(action="apikey.use", limit=10)
    assert [e["outcome"] for e in events][:2] == ["denied", "allowed"]
    assert deployment.vault.audit("acme").events(action="apikey.use") == []
    assert deployment.keys.list("beta")[0]["last_used"] is not None


def test_wrong_secret_unknown_and_malformed_are_refused(deployment):
    key = deployment.key()
    prefix = key.split("_")[1]
    wrong = f"ask_{prefix}_" + ("A" * 43 if not key.endswith("A" * 43) else "B" * 43)
    for bad in (wrong, "ask_0123456789_" + "x" * 43, "nonsense", "", None):
        with pytest.raises(InvalidApiKey, match="invalid API key"):
            deployment.keys.authenticate(bad, client=f"c-{bad}")
    denied = deployment.vault.audit("acme").events(action="apikey.use")
    assert [e["detail"]["reason"] for e in denied] == ["wrong API key"]
    system = deployment.vault.system_audit().events(action="apikey.use", limit=10)
    assert sorted(e["detail"]["reason"] for e in system) == ["malformed or missing API key"] * 3 + [
        "unknown API key"
    ]
    assert all(e["outcome"] == "denied" for e in system)


def test_expired_and_revoked_keys_are_refused(deployment):
    key = deployment.key(expires=timedelta(minutes=1))
    later = apikeys.ApiKeyStore(
        deployment.vault.settings.registry_path,
        lambda org, v: apikeys.pepper_from_org_keys(deployment.vault.org_keys(org), v),
        audit_for=deployment.vault.audit,
        now=lambda: datetime.now(UTC) + timedelta(minutes=2),
        database=statedb.shared(deployment.vault.settings),  # None: the registry file
    )
    with pytest.raises(InvalidApiKey, match="expired"):
        later.authenticate(key, client="x")
    assert later.list("acme")[0]["state"] == "expired"
    later.close()
    key2 = deployment.key()
    prefix = key2.split("_")[1]
    with pytest.raises(NotFound):
        deployment.keys.revoke("beta", prefix)  # another org's key is not found
    assert deployment.keys.revoke("acme", prefix)["state"] == "revoked"
    with pytest.raises(InvalidApiKey, match="revoked"):
        deployment.keys.authenticate(key2, client="y")
    actions = [e["action"] for e in deployment.vault.audit("acme").events(limit=50)]
    assert "apikey.revoke" in actions and "apikey.create" in actions


def test_bad_scopes_and_durations():
    with pytest.raises(ValidationError, match="unknown scope"):
        apikeys.parse_scopes("ingest:process,admin")
    with pytest.raises(ValidationError):
        apikeys.parse_scopes("")
    assert apikeys.parse_duration("90d") == timedelta(days=90)
    assert apikeys.parse_duration("12h") == timedelta(hours=12)
    for bad in ("0d", "90", "forever", "9999d"):
        with pytest.raises(ValidationError):
            apikeys.parse_duration(bad)


def test_throttle_locks_out_after_repeated_failures():
    clock = [0.0]
    t = apikeys.FailureThrottle(max_failures=3, window=60, lockout=30, clock=lambda: clock[0])
    for _ in range(2):
        t.failure("a")
    t.check("a")
    t.failure("a")
    with pytest.raises(Throttled) as ei:
        t.check("a")
    assert 1 <= ei.value.retry_after <= 30
    t.check("b")  # other clients are not affected
    clock[0] = 31
    t.check("a")


def test_a_throttled_client_is_refused_even_with_a_good_key(deployment):
    key = deployment.key()
    deployment.keys.throttle = apikeys.FailureThrottle(max_failures=2)
    for _ in range(2):
        with pytest.raises(InvalidApiKey):
            deployment.keys.authenticate("ask_0000000000_" + "a" * 43, client="10")
    with pytest.raises(Throttled):
        deployment.keys.authenticate(key, client="10")
    assert deployment.keys.authenticate(key, client="11").org == "acme"
