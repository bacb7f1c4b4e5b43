"""The HTTPS ingest service: streams, batches, validation, isolation, throttling, visibility."""

import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from atomscale_lab.errors import NotFound
from tests.support.ingest import Service


def _rows(n, start=0, t0=None):
    t0 = t0 or datetime(2026, 1, 1, tzinfo=UTC)
    return [
        {
            "time": (t0 + timedelta(seconds=start + i)).isoformat(),
            "channel": "T",
            "value": float(start + i),
            "unit": "C",
        }
        for i in range(n)
    ]


def _arrow(n, start=0):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t = pa.table(
        {
            "time": pa.array(
                [t0 + timedelta(seconds=start + i) for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
            "channel": ["T"] * n,
            "value": [float(start + i) for i in range(n)],
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


def _open(service, key, run_id="run-1", category="process", **extra):
    r = service.request(
        "POST",
        "/streams",
        key,
        json={"run_id": run_id, "tool": "mbe1", "category": category, **extra},
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _count(deployment, org="acme", table="process/series", run_id=None):
    try:
        return deployment.rows(org, table, run_id).num_rows
    except NotFound:
        return 0


def _wait_rows(deployment, n, timeout=30.0, **kw):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _count(deployment, **kw) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"rows not visible after {timeout}s: {_count(deployment, **kw)} < {n}")


def _nothing_else_stored(service, deployment, key, sid, org="acme", expected=0):
    """Send one valid row after the refused ones and wait until it is visible: by then a refused
    row, had it been accepted, would be visible too. Returns the stored values."""
    r = service.request(
        "POST",
        f"/streams/{sid}/batches",
        key,
        json={"batch_id": "sentinel", "rows": _rows(1, start=777)},
    )
    assert r.status_code == 200, r.text
    _wait_rows(deployment, expected + 1, org=org)
    return deployment.rows(org, "process/series").column("value").to_pylist()


def test_stream_json_and_arrow_batches_visible_then_finalized(deployment, service):
    key = deployment.key()
    sid = _open(service, key, project="p-7", sample="S-1")
    runs = deployment.rows("acme", "process/runs").to_pylist()
    assert runs[0]["status"] == "active" and runs[0]["project"] == "p-7"
    r = service.request(
        "POST", f"/streams/{sid}/batches", key, json={"batch_id": "b-1", "rows": _rows(50)}
    )
    assert r.status_code == 200 and r.json() == {"batch_id": "b-1", "rows": 50, "duplicate": False}
    _wait_rows(deployment, 50, timeout=30.0)  # how fast: bench/ingest.py
    r = service.request(
        "POST",
        f"/streams/{sid}/batches",
        key,
        data=_arrow(1000, start=50),
        headers={"Content-Type": "application/vnd.apache.arrow.stream", "X-Batch-Id": "b-2"},
    )
    assert r.status_code == 200 and r.json()["rows"] == 1000
    # A retried batch is acknowledged but stored once; a reused id with other rows is refused.
    r = service.request(
        "POST", f"/streams/{sid}/batches", key, json={"batch_id": "b-1", "rows": _rows(50)}
    )
    assert r.status_code == 200 and r.json()["duplicate"] is True
    r = service.request(
        "POST",
        f"/streams/{sid}/batches",
        key,
        json={"batch_id": "b-1", "rows": _rows(5, start=9000)},
    )
    assert r.status_code == 409
    r = service.request("POST", f"/streams/{sid}/finalize", key)
    assert r.status_code == 200 and r.json()["status"] == "complete"
    assert r.json()["rows"] == r.json()["flushed_rows"] == 1050
    table = deployment.rows("acme", "process/series", "run-1")
    assert table.num_rows == 1050
    assert sorted(table.column("value").to_pylist()) == [float(i) for i in range(1050)]
    assert set(table.column("run_id").to_pylist()) == {"run-1"}
    run = deployment.rows("acme", "process/runs").to_pylist()[0]
    assert run["status"] == "complete" and run["instrument"] == "mbe1"
    assert run["end"] == datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=1049)
    r = service.request(
        "POST", f"/streams/{sid}/batches", key, json={"batch_id": "b-3", "rows": _rows(1)}
    )
    assert r.status_code == 409
    acts = {e["action"] for e in deployment.vault.audit("acme").events(limit=100)}
    assert {"apikey.use", "ingest.stream_open", "ingest.finalize"} <= acts


@pytest.mark.parametrize(
    "body, field",
    [
        (
            {
                "batch_id": "x",
                "rows": [{"time": "2026-01-01T00:00:00+00:00", "channel": "T", "value": "hot"}],
            },
            "value",
        ),
        (
            {"batch_id": "x", "rows": [{"time": "2026-01-01T00:00:00+00:00", "value": 1.0}]},
            "channel",
        ),
        ({"batch_id": "x", "rows": [{"channel": "T", "value": 1.0}]}, "time"),
        (
            {
                "batch_id": "x",
                "rows": [
                    {
                        "time": "2026-01-01T00:00:00+00:00",
                        "channel": "T",
                        "value": 1.0,
                        "colour": "red",
                    }
                ],
            },
            "colour",
        ),
        (
            {
                "batch_id": "x",
                "rows": [
                    {
                        "time": "2026-01-01T00:00:00+00:00",
                        "channel": "T",
                        "run_id": "someone-elses-run",
                    }
                ],
            },
            "run_id",
        ),
        ({"batch_id": "x", "rows": []}, "rows"),
        ({"rows": [{"time": "2026-01-01T00:00:00+00:00", "channel": "T"}]}, "batch_id"),
        ({"batch_id": "x", "rows": "nope"}, "rows"),
    ],
)
def test_bad_payloads_are_refused_naming_the_field(deployment, service, body, field):
    key = deployment.key()
    sid = _open(service, key)
    good = _rows(3)
    if isinstance(body.get("rows"), list) and body["rows"]:
        body = {**body, "rows": good + body["rows"]}  # the bad row is row 3
    r = service.request("POST", f"/streams/{sid}/batches", key, json=body)
    assert r.status_code == 400, r.text
    doc = r.json()
    assert doc["field"] == field
    if field in ("value", "channel", "time", "run_id"):
        assert doc["row"] == 3
    assert field in doc["message"]
    assert _nothing_else_stored(service, deployment, key, sid) == [777.0]
    assert service.request("GET", f"/streams/{sid}", key).json()["rows"] == 1


def test_malformed_bodies_and_oversized_batches(deployment, root_key):
    svc = Service(deployment.home, root_key, ["--max-body", "200000"])
    svc.start()
    try:
        key = deployment.key()
        sid = _open(svc, key)
        r = svc.request("POST", f"/streams/{sid}/batches", key, data=b"{not json")
        assert r.status_code == 400 and r.json()["field"] == "body"
        r = svc.request(
            "POST",
            f"/streams/{sid}/batches",
            key,
            data=b"garbage",
            headers={"Content-Type": "application/vnd.apache.arrow.stream", "X-Batch-Id": "a"},
        )
        assert r.status_code == 400
        r = svc.request(
            "POST",
            f"/streams/{sid}/batches",
            key,
            data=_arrow(10),
            headers={"Content-Type": "application/vnd.apache.arrow.stream"},
        )
        assert r.status_code == 400 and r.json()["field"] == "batch_id"
        r = svc.request(
            "POST", f"/streams/{sid}/batches", key, json={"batch_id": "big", "rows": _rows(3000)}
        )
        assert r.status_code == 413, r.text
        r = svc.request(
            "POST", "/streams", key, json={"run_id": "r 1", "tool": "t", "category": "process"}
        )
        assert r.status_code == 400 and r.json()["field"] == "run_id"
        r = svc.request(
            "POST", "/streams", key, json={"run_id": "r1", "tool": "t", "category": "context"}
        )
        assert r.status_code == 400 and r.json()["field"] == "category"
        assert _nothing_else_stored(svc, deployment, key, sid) == [777.0]
    finally:
        svc.stop()


def test_keys_of_another_org_expired_revoked_or_wrong_scope(deployment, service):
    acme = deployment.key("acme")
    beta = deployment.key("beta")
    sid = _open(service, acme)
    # beta's key cannot see or write acme's stream; its own streams land in beta only.
    r = service.request(
        "POST", f"/streams/{sid}/batches", beta, json={"batch_id": "b", "rows": _rows(3)}
    )
    assert r.status_code == 404
    assert service.request("GET", f"/streams/{sid}", beta).status_code == 404
    assert service.request("POST", f"/streams/{sid}/finalize", beta).status_code == 404
    sid_b = _open(service, beta, run_id="run-1")
    r = service.request(
        "POST", f"/streams/{sid_b}/batches", beta, json={"batch_id": "b", "rows": _rows(3)}
    )
    assert r.status_code == 200
    service.request("POST", f"/streams/{sid_b}/finalize", beta)
    assert _count(deployment, "beta") == 3 and _count(deployment, "acme") == 0
    # scope: a tool-state-only key cannot open a process stream
    ts_only = deployment.key("acme", "ingest:tool_state")
    r = service.request(
        "POST", "/streams", ts_only, json={"run_id": "r", "tool": "t", "category": "process"}
    )
    assert r.status_code == 403
    # revoked and expired keys
    prefix = acme.split("_")[1]
    deployment.keys.revoke("acme", prefix)
    r = service.request(
        "POST", f"/streams/{sid}/batches", acme, json={"batch_id": "c", "rows": _rows(3)}
    )
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    short = deployment.key("acme", expires=timedelta(minutes=1))
    deployment.keys._db.sql(
        "UPDATE apikeys SET expires=? WHERE prefix=?",
        ("2020-01-01T00:00:00+00:00", short.split("_")[1]),
    )
    r = service.request(
        "POST", "/streams", short, json={"run_id": "r", "tool": "t", "category": "process"}
    )
    assert r.status_code == 401 and "expired" in r.json()["message"]
    r = service.request(
        "POST", "/streams", None, json={"run_id": "r", "tool": "t", "category": "process"}
    )
    assert r.status_code == 401
    assert _nothing_else_stored(service, deployment, deployment.key("acme"), sid) == [777.0]


def test_repeated_failures_are_throttled(deployment, service):
    good = deployment.key()
    bad = "ask_0123456789_" + "Z" * 43
    codes = [
        service.request("GET", "/streams/st_0000000000000000", bad).status_code for _ in range(12)
    ]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    r = service.request(
        "POST", "/streams", good, json={"run_id": "r", "tool": "t", "category": "process"}
    )
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
