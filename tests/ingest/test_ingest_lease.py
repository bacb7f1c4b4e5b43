"""The per-org ingest lease: several ingest replicas on one PostgreSQL state database.

Two real ingest processes, each with its own state folder (its WAL volume): one owns the org, the
other refuses its writes with 503 + ``Retry-After``; after ``kill -9`` of the owner the other takes
the org over, and every acknowledged row is stored exactly once (the killed replica's WAL is
replayed when it comes back, as a StatefulSet restarts a pod on its own volume).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pyarrow.compute as pc
import pytest

from atomscale_lab.ingest.lease import AdvisoryLease, LocalLease, lease_key
from tests.support.ingest import Service
from tests.support.s3 import use_s3_roots

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def state_backend(pg_url, s3, monkeypatch):
    """Only the scale-out deployment (PostgreSQL, roots on object storage): the lease is about
    replicas sharing one database and one store."""
    from tests.support.postgres import upgraded

    url = upgraded(pg_url)
    monkeypatch.setenv("ATOMSCALE_DATABASE_URL", url)
    use_s3_roots(s3, monkeypatch)
    return url


def _rows(first: int, n: int) -> list[dict]:
    return [
        {"time": (T0 + timedelta(seconds=i)).isoformat(), "channel": "T", "value": float(i)}
        for i in range(first, first + n)
    ]


def _until(what, timeout: float = 30.0, step: float = 0.05):
    """Call ``what`` until it returns a true value (that value), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def _connect(url):
    def connect():
        import psycopg

        return psycopg.connect(url, autocommit=True)

    return connect


def test_advisory_lease_one_holder_and_takeover_on_close(state_backend, postgres_cluster):
    lost = []
    a = AdvisoryLease(_connect(state_backend), on_lost=lost.extend, check_interval=0.1)
    b = AdvisoryLease(_connect(state_backend), check_interval=0.1)
    try:
        assert a.acquire("acme") and a.acquire("acme")  # idempotent
        assert not b.acquire("acme") and not b.holds("acme")
        assert b.acquire("beta") and not a.acquire("beta")  # per org
        a.release("acme")
        assert b.acquire("acme") and not a.acquire("acme")
        b.close()  # a clean stop gives both orgs up at once
        assert a.acquire("acme") and a.acquire("beta")
        assert a.held() == {"acme", "beta"}
        # a session that ends without a word (its process died): PostgreSQL drops its locks
        c = AdvisoryLease(_connect(state_backend), check_interval=0.1)
        a.release("acme")
        assert c.acquire("acme") and not a.acquire("acme")
        (pid,) = c._conn.execute("SELECT pg_backend_pid()").fetchone()
        postgres_cluster.execute(f"SELECT pg_terminate_backend({int(pid)})")
        _until(lambda: a.acquire("acme"), timeout=10)
        c.close()
    finally:
        a.close()
        b.close()
    assert lost == []  # closing is not losing
    assert lease_key("acme") != lease_key("beta")
    assert lease_key("acme", "schema_a") != lease_key("acme", "schema_b")
    local = LocalLease()
    assert local.acquire("acme") and local.holds("beta")


def test_a_lost_connection_drops_every_org(state_backend, postgres_cluster):
    lost: list[str] = []
    a = AdvisoryLease(_connect(state_backend), on_lost=lost.extend, check_interval=0.05)
    try:
        assert a.acquire("acme")
        (pid,) = a._conn.execute("SELECT pg_backend_pid()").fetchone()
        # the server ends the lease session (as when a network partition times it out)
        postgres_cluster.execute(f"SELECT pg_terminate_backend({int(pid)})")
        _until(lambda: lost == ["acme"], timeout=10)
        assert not a.holds("acme")
        assert a.acquire("acme")  # a new session takes it again (nobody else holds it)
    finally:
        a.close()


def test_two_replicas_one_owner_kill_takeover_rows_exactly_once(
    deployment, root_key, tmp_path, postgres_cluster
):
    key = deployment.key()
    a = Service(deployment.home, root_key, ["--flush-interval", "3600"], tmp_path / "replica-a")
    b = Service(deployment.home, root_key, [], tmp_path / "replica-b")
    a.start()
    b.start()
    try:
        opened = a.request(
            "POST",
            "/streams",
            key,
            json={"run_id": "run-lease", "tool": "mbe1", "category": "process"},
        )
        assert opened.status_code == 201, opened.text
        sid = opened.json()["id"]
        # the other replica refuses writes for the org while the first one owns it
        refused = b.request(
            "POST",
            "/streams",
            key,
            json={"run_id": "run-other", "tool": "mbe1", "category": "process"},
        )
        assert refused.status_code == 503 and refused.json()["reason"] == "NotLeaseHolder"
        assert int(refused.headers["Retry-After"]) >= 1
        refused = b.request(
            "POST", f"/streams/{sid}/batches", key, json={"batch_id": "b0", "rows": _rows(0, 5)}
        )
        assert refused.status_code == 503
        # ...but reads work anywhere, and another org may be owned by the other replica
        assert b.request("GET", f"/streams/{sid}", key).json()["status"] == "active"
        beta = deployment.key("beta")
        assert (
            b.request(
                "POST",
                "/streams",
                beta,
                json={"run_id": "run-b", "tool": "x", "category": "process"},
            ).status_code
            == 201
        )
        assert (
            a.request(
                "POST",
                "/streams",
                beta,
                json={"run_id": "run-b2", "tool": "x", "category": "process"},
            ).status_code
            == 503
        )

        # A acknowledges 4 batches (never flushed: its flush interval is an hour), then dies
        for i in range(4):
            r = a.request(
                "POST",
                f"/streams/{sid}/batches",
                key,
                json={"batch_id": f"b{i}", "rows": _rows(i * 10, 10)},
            )
            assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
        a.kill()

        def take_over():
            r = b.request(
                "POST",
                "/streams",
                key,
                json={"run_id": "run-lease", "tool": "mbe1", "category": "process"},
            )
            assert r.status_code in (201, 503), r.text
            return r if r.status_code == 201 else None

        resumed = _until(take_over, timeout=30)  # timings: bench/ingest_state.py
        assert resumed.json()["id"] == sid  # the same stream, resumed on the new owner
        # the client retries its last batch (it may not have seen the ack) and goes on
        dup = b.request(
            "POST", f"/streams/{sid}/batches", key, json={"batch_id": "b3", "rows": _rows(30, 10)}
        )
        assert dup.status_code == 200 and dup.json()["duplicate"] is True
        for i in range(4, 7):
            r = b.request(
                "POST",
                f"/streams/{sid}/batches",
                key,
                json={"batch_id": f"b{i}", "rows": _rows(i * 10, 10)},
            )
            assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
        # A's acknowledged rows are on A's volume only: not everything is stored yet
        early = b.request("POST", f"/streams/{sid}/finalize", key)
        assert early.status_code == 503 and early.json()["reason"] == "NotYetStored"

        a.start()  # the replica comes back on its volume and replays its WAL, lease or not

        def finalized():
            r = b.request("POST", f"/streams/{sid}/finalize", key)
            assert r.status_code in (200, 503), r.text
            return r if r.status_code == 200 else None

        done = _until(finalized, timeout=30).json()
        assert done["status"] == "complete" and done["rows"] == 70 and done["batches"] == 7
        got = deployment.rows("acme", "process/series", "run-lease")
        values = sorted(got.column("value").to_pylist())
        assert values == [float(i) for i in range(70)]  # every row once: none lost, none twice
        assert pc.count_distinct(got.column("time")).as_py() == 70
    finally:
        a.stop()
        b.stop()
        a.http.close()
        b.http.close()


def test_a_batch_in_two_wals_is_stored_by_its_claimant_only(deployment, tmp_path):
    """A replica died after writing a batch to its WAL but before claiming it; the client retried
    it on the new owner. When the first replica replays its WAL, the claim decides: stored once."""
    from atomscale_lab.ingest.core import CATEGORY_TABLE, IngestCore
    from atomscale_lab.ingest.wal import WalRecord

    key = deployment.keys.authenticate(deployment.key(), client="test")
    a = IngestCore(deployment.vault, tmp_path / "a")
    st = a.open_stream(key, "run-claim", "mbe1", "process")
    table = a.conform(st, _rows(0, 5))
    a._wal("acme").append([WalRecord(st["id"], "b0", CATEGORY_TABLE["process"], table, "d0")])
    a.lease.close()  # gives its lease up (as its death would); its WAL stays
    a._owned.clear()

    b = IngestCore(deployment.vault, tmp_path / "b")
    assert b.replica != a.replica
    ack = b.add_batch(key, st["id"], "b0", _rows(0, 5))
    assert ack["duplicate"] is False
    b.flush()
    a.flush()  # replays its WAL: the batch is b's claim, not written again
    assert a.flush() == 0
    got = deployment.rows("acme", "process/series", "run-claim")
    assert sorted(got.column("value").to_pylist()) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert b.finalize(key, st["id"])["rows"] == 5
    a.close()
    b.close()


def test_ingest_tables_come_from_db_upgrade_and_the_app_role_can_use_them(
    home, root_key, pg_url, postgres_cluster, monkeypatch, tmp_path
):
    """The ingest schema is a numbered component of ``atomscale-lab db upgrade``; before it a
    service refuses and names the command; the documented application role can run ingest (and
    cannot delete a batch claim)."""
    import psycopg

    from atomscale_lab.cli.main import main
    from atomscale_lab.errors import ConfigError
    from atomscale_lab.ingest import statedb
    from atomscale_lab.vault.db import Database
    from atomscale_lab.vault.migrations import app_role_grants, status
    from atomscale_lab.vault.settings import Settings

    monkeypatch.setenv("ATOMSCALE_DATABASE_URL", pg_url)
    with pytest.raises(ConfigError, match="db upgrade"):
        statedb.shared(Settings.load(home))
    assert main(["db", "upgrade"]) == 0
    assert status(Database(pg_url))["ingest"] == (1, 1)
    assert statedb.shared(Settings.load(home)) is not None

    schema = pg_url.rsplit("%3D", 1)[1]
    role = f"app_{schema}"
    postgres_cluster.execute(f"CREATE ROLE {role} LOGIN", *app_role_grants(role, schema))
    app_url = pg_url.replace("postgresql://atomscale@", f"postgresql://{role}@")
    with psycopg.connect(app_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO batches (stream_id, batch_id, rows, digest, accepted, wal) "
            "VALUES ('st_1', 'b1', 1, 'd', 'now', 'r-1')"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM batches")
