"""The hub deployment end to end on the scale-out backend: the data and context roots on object
storage (moto's S3 server) and the registries, heads, audit chain, API keys and ingest state in
PostgreSQL (the tests' private cluster), given to the hub through its environment as an operator
would (``ATOMSCALE_DATA_ROOT``/``ATOMSCALE_CONTEXT_ROOT`` = ``s3://…``, the AWS variables,
``ATOMSCALE_DATABASE_URL``); the data servers' service accounts use their own ``~/.aws``.

Outcomes are read where the deployment keeps them: rows from the API compared with what was
written, audit events from PostgreSQL's ``audit_events``, commit objects from the bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from atomscale_lab.hub.stack import REPO
from tests.support import hub_helpers as helpers
from tests.support.hubstack import (
    ScaleOut,
    api,
    data_server_pids,
    deployment,
    descends_from,
    events_json,
    restart_data_server,
    server_pid,
)

pytestmark = pytest.mark.slow

SCIENTIST = "acme-scientist"
SERIES = "tables/process/series"
FORBIDDEN_ENV = ("AWS_", "ATOMSCALE_DATABASE_URL", "PGPASS", "ATOMSCALE_HUB_DB_URL")


@pytest.fixture(scope="module")
def hub(s3, postgres_cluster):
    """The whole deployment on S3 roots + PostgreSQL (one schema of its own), stopped by pid."""
    if os.geteuid() != 0:
        pytest.fail("the hub suite needs root: the hub runs servers as per-user Unix accounts")
    if not (REPO / "idp" / "node_modules" / "oidc-provider").exists():
        pytest.fail("idp/node_modules is missing: run `make setup` (scripts/setup.d/40-idp.sh)")
    schema = postgres_cluster.new_schema("hub")
    scale = ScaleOut(s3, s3.root(), s3.root(), postgres_cluster.url(schema=schema))
    try:
        with deployment(runs=2, scale_out=scale) as st:
            yield st
    finally:
        from atomscale_lab.vault.db import close_pools

        close_pools()
        postgres_cluster.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(scope="module")
def tokens(hub):
    """``tokens(user, server=False)``: the user's API token after a real login (IdP + TOTP),
    its server started when asked."""
    got, started = {}, set()

    def get(user, server=False):
        if user not in got:
            s = helpers.session(hub.ca)
            r = helpers.login(
                s, hub.url, user, hub.passwords[user], helpers.fresh_totp(hub.idp, user)
            )
            assert helpers.on_hub(r, hub.url), (r.status_code, r.url, r.text[-500:])
            got[user] = helpers.api_token(s, hub.url, user)
        if server and user not in started:
            try:
                helpers.start_server(hub.url, got[user], user, hub.ca)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{hub.log_tail()}") from None
            started.add(user)
        return got[user]

    return get


def pg_events(hub, org, **where):
    """The org's audit events as rows of PostgreSQL's ``audit_events`` (oldest first), each the
    stored record plus its ``seq``; ``where`` filters on the record's fields."""
    import psycopg

    url = hub.scale_out.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT seq, actor, action, line FROM audit_events WHERE org = %s ORDER BY seq",
            (org,),
        ).fetchall()
    out = []
    for seq, actor, action, line in rows:
        rec = json.loads(line)
        assert (rec["actor"], rec["action"]) == (actor, action)  # the filter columns agree
        rec["seq"] = seq
        if all(rec.get(k) == v for k, v in where.items()):
            out.append(rec)
    return out


def _arrow(r) -> pa.Table:
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return pa.ipc.open_stream(r.content).read_all()


def _rows(table: pa.Table) -> list[dict]:
    """Rows in a stable order, as JSON-comparable values."""
    rows = json.loads(json.dumps(table.to_pylist(), default=str))
    return sorted(rows, key=lambda d: json.dumps(d, sort_keys=True))


def _written(hub, org, table, run_id) -> pa.Table:
    """The run's rows as the store holds them (read with the root key, like an admin)."""
    v = hub.vault()
    try:
        return v.store(org).table(table).read(run_ids=[run_id])
    finally:
        v.close()


KERNEL_READ = r"""
import json, os
from atomscale_lab.client.workspace import Workspace
t = Workspace("acme").table("process/series", run_ids=[RUN])
env = open("/proc/self/environ", "rb").read().decode("latin-1")
print(json.dumps({"rows": json.loads(json.dumps(t.to_pylist(), default=str)),
                  "env": sorted(kv.split("=", 1)[0] for kv in env.split("\0") if "=" in kv),
                  "blob": env}))
"""


@pytest.fixture(scope="module")
def kernel_read(hub, tokens):
    """A real kernel in the scientist's server reads one run with ``Workspace`` (its token,
    directly from the data server) and reports its rows and its environment."""
    token = tokens(SCIENTIST, server=True)
    r = api(hub, token, "GET", f"/user/{SCIENTIST}/atomscale/api/v1/runs")
    assert r.status_code == 200, r.text
    run_id = sorted(x["run_id"] for x in r.json()["runs"])[0]
    out = helpers.run_in_kernel(
        hub.url, SCIENTIST, token, hub.ca, f"RUN = {run_id!r}\n" + KERNEL_READ, timeout=180
    )
    doc = json.loads(out.strip().splitlines()[-1])
    doc["run_id"] = run_id
    return doc


def test_scientist_reads_a_run_through_the_pass_through_and_a_kernel_audited_in_postgres(
    hub, tokens, kernel_read
):
    token = tokens(SCIENTIST, server=True)
    run_id = kernel_read["run_id"]
    written = _rows(_written(hub, "acme", "process/series", run_id))
    assert written, "the demo run has no process rows"
    since = max((e["seq"] for e in pg_events(hub, "acme")), default=0)
    r = api(
        hub,
        token,
        "GET",
        f"/user/{SCIENTIST}/atomscale/api/v1/{SERIES}",
        params={"format": "arrow", "run_id": run_id},
    )
    assert _rows(_arrow(r)) == written
    # the kernel read the same rows directly from the data server with its own token
    assert sorted(kernel_read["rows"], key=lambda d: json.dumps(d, sort_keys=True)) == written
    # both reads are audit events in PostgreSQL naming the user, recorded by the data server
    reads = pg_events(hub, "acme", actor=SCIENTIST, action="data.read", outcome="allowed")
    assert any(e["seq"] > since for e in reads), events_json(reads)
    table_reads = [e for e in reads if e["detail"].get("table") == "process/series"]
    assert len(table_reads) >= 2, events_json(table_reads)  # the kernel's and the pass-through's
    assert {e["detail"].get("via") for e in table_reads} == {"atomscale-data-acme"}
    # nothing of it went to local files: no JSONL chain, no data folder, no SQLite registry
    assert not (hub.home / "audit" / "acme.jsonl").exists()
    assert not (hub.home / "data").exists() and not (hub.home / "registry.sqlite").exists()
    # the data lives in the bucket
    assert any(k.endswith(".parquet") for k in hub.scale_out.s3.keys(hub.scale_out.data_root))


def test_context_join_reads_labels_from_object_storage(hub, tokens):
    token = tokens(SCIENTIST, server=True)
    runs = api(hub, token, "GET", f"/user/{SCIENTIST}/atomscale/api/v1/runs").json()["runs"]
    ids = sorted(r["run_id"] for r in runs)[:2]
    r = api(
        hub,
        token,
        "POST",
        f"/user/{SCIENTIST}/atomscale/api/v1/context/join",
        json={"run_ids": ids, "fields": ["film"], "purpose": "scale-out check"},
    )
    assert r.status_code == 200, r.text
    labels = r.json()["labels"]
    assert {row["run_id"] for row in labels} == set(ids)
    assert all(row.get("film") for row in labels)
    # the labels came from the context root in the bucket; the join is audited in PostgreSQL
    assert hub.scale_out.s3.keys(hub.scale_out.context_root)
    joins = pg_events(hub, "acme", actor=SCIENTIST, action="context.join", outcome="allowed")
    assert joins, events_json(pg_events(hub, "acme", actor=SCIENTIST))


def test_other_orgs_user_is_refused_and_the_refusal_is_in_the_right_chain(hub, tokens):
    attacker = "beta-scientist"
    token = tokens(attacker)
    before_beta = len(pg_events(hub, "beta", actor=attacker, outcome="denied"))
    r = api(
        hub,
        token,
        "GET",
        f"/services/atomscale-data-acme/atomscale/api/v1/{SERIES}",
        params={"format": "arrow"},
    )
    assert r.status_code == 403, (r.status_code, r.text[:300])
    denied = pg_events(hub, "acme", actor=attacker, action="auth.server", outcome="denied")
    assert denied, events_json(pg_events(hub, "acme", actor=attacker))
    # recorded in acme's chain (the org refused), not in the caller's own org's
    assert len(pg_events(hub, "beta", actor=attacker, outcome="denied")) == before_beta


def test_user_server_and_kernel_hold_no_cloud_or_database_secret(hub, tokens, kernel_read):
    tokens(SCIENTIST, server=True)
    pid = server_pid(hub, SCIENTIST)
    blob = open(f"/proc/{pid}/environ", "rb").read()
    server_keys = {kv.split(b"=", 1)[0].decode() for kv in blob.split(b"\0") if b"=" in kv}
    secrets = [
        hub.scale_out.s3.env()["AWS_SECRET_ACCESS_KEY"],
        hub.scale_out.s3.env()["AWS_ACCESS_KEY_ID"],
        hub.scale_out.database_url,
        hub.scale_out.data_root.url,
    ]
    for keys in (server_keys, kernel_read["env"]):
        assert "JUPYTERHUB_API_TOKEN" in keys  # control: this is the server's real environment
        assert not [k for k in keys if k.startswith(FORBIDDEN_ENV)], sorted(keys)
    for text in (blob.decode("latin-1"), kernel_read["blob"]):
        assert not [s for s in secrets if s in text]
    # control: the same settings did reach the services that need them — the key service the
    # database and the store's credentials, the org's data server only where the store is
    (keys_pid,) = [
        p
        for p in _pids_with_cmd(b"atomscale_lab.hub.services.keys")
        if descends_from(p, hub.hub_pid)
    ]
    keys_env = open(f"/proc/{keys_pid}/environ", "rb").read()
    assert b"AWS_SECRET_ACCESS_KEY=" in keys_env and b"ATOMSCALE_DATABASE_URL=" in keys_env
    (data_pid,) = data_server_pids(hub, "acme")
    data_env = open(f"/proc/{data_pid}/environ", "rb").read()
    assert b"AWS_ENDPOINT_URL=" in data_env
    assert b"AWS_SECRET_ACCESS_KEY" not in data_env and b"ATOMSCALE_DATABASE_URL" not in data_env


def _pids_with_cmd(needle: bytes) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if needle in open(f"/proc/{p}/cmdline", "rb").read():
                    out.append(int(p))
            except OSError:
                continue
    return out


def _cli(hub, *args) -> str:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ATOMSCALE_")},
        **hub.scale_out.env(),
        "ATOMSCALE_HOME": str(hub.home),
        "ATOMSCALE_ROOT_KEY_FILE": str(hub.base / "root.key"),
    }
    r = subprocess.run(
        [sys.executable, "-m", "atomscale_lab.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_ingest_with_an_api_key_writes_a_batch_the_data_server_serves(hub, tokens):
    import psycopg

    key = _cli(
        hub, "apikey", "create", "acme", "--scope", "ingest:process", "--expires", "1d",
        "--name", "mbe-scale",
    ).strip()  # fmt: skip
    s = helpers.session(hub.ca)
    base = f"{hub.url}/services/atomscale-ingest"
    h = {"Authorization": f"Bearer {key}"}
    run_id = "run-scale-ingest"
    r = s.post(
        f"{base}/streams",
        headers=h,
        timeout=30,
        json={"run_id": run_id, "tool": "mbe1", "category": "process"},
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    sent = [
        {
            "time": (t0 + timedelta(seconds=i)).isoformat(),
            "channel": "T",
            "value": float(i) * 1.5,
            "unit": "C",
        }
        for i in range(20)
    ]
    r = s.post(
        f"{base}/streams/{sid}/batches",
        headers=h,
        timeout=30,
        json={"batch_id": "b1", "rows": sent},
    )
    assert r.status_code == 200, r.text
    r = s.post(f"{base}/streams/{sid}/finalize", headers=h, timeout=60)
    assert r.status_code == 200, r.text
    # the API key, the stream and its claimed batch are rows in PostgreSQL
    with psycopg.connect(hub.scale_out.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM apikeys").fetchone()[0] >= 1
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] >= 1
    token = tokens(SCIENTIST, server=True)
    deadline = time.monotonic() + 30
    while True:
        r = api(
            hub,
            token,
            "GET",
            f"/user/{SCIENTIST}/atomscale/api/v1/{SERIES}",
            params={"format": "arrow", "run_id": run_id},
        )
        got = _arrow(r) if r.status_code == 200 else None
        if (got is not None and got.num_rows) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got is not None and got.num_rows == len(sent), r.text[:300] if got is None else got
    rows = sorted(got.to_pylist(), key=lambda d: d["time"])
    assert [(x["channel"], x["value"]) for x in rows] == [(x["channel"], x["value"]) for x in sent]
    assert [x["time"] for x in rows] == [t0 + timedelta(seconds=i) for i in range(20)]


def test_rolled_back_commit_log_on_s3_is_refused_by_a_fresh_data_server(hub, tokens):
    token = tokens(SCIENTIST, server=True)
    url = "/services/atomscale-data-acme/atomscale/api/v1/tables/tool_state/readings"
    assert _arrow(api(hub, token, "GET", url, params={"format": "arrow"})).num_rows
    v = hub.vault()
    try:  # an admin's commit: the central head in PostgreSQL now names it
        table = v.store("acme").table("tool_state/readings")
        table.write(table.read().slice(0, 5), actor="e2e")
    finally:
        v.close()
    s3, root = hub.scale_out.s3, hub.scale_out.data_root
    log = sorted(
        k
        for k in s3.keys(root, "acme/tool_state/readings/_log")
        if k.rsplit("/", 1)[-1][:20].isdigit()
    )
    assert log, s3.keys(root, "acme/tool_state")
    newest = log[-1]
    body = s3.get(root, newest)
    since = max((e["seq"] for e in pg_events(hub, "acme")), default=0)
    try:
        s3.delete(root, newest)  # the rollback, by someone with the bucket's credentials
        pid = restart_data_server(hub, "acme")
        r = api(hub, token, "GET", url, params={"format": "arrow"})
        assert r.status_code == 500, (r.status_code, r.text[:300])
        assert r.json()["reason"] == "Integrity Check Failed"
        assert "rolled back" in r.json()["message"]
        assert data_server_pids(hub, "acme") == [pid]  # the fresh one answered
        events = [e for e in pg_events(hub, "acme", action="data.integrity") if e["seq"] > since]
        assert [(e["actor"], e["outcome"]) for e in events] == [(SCIENTIST, "denied")], events
        assert "rolled back" in events[0]["detail"]["reason"]
    finally:
        s3.put(root, newest, body)  # the log the central head names
    r = api(hub, token, "GET", url, params={"format": "arrow"})
    assert r.status_code == 200, r.text[:300]
