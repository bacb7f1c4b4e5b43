"""The Streamer: non-blocking push, encrypted spool while the service is down, ordered replay."""

import socket
import threading
import time
from datetime import UTC, datetime, timedelta

from atomscale_lab.errors import NotFound
from atomscale_lab.ingest import Streamer
from atomscale_lab.tls import ensure_self_signed
from tests.support.ingest import Service


def _rows(start, n):
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    return [
        {
            "time": t0 + timedelta(seconds=start + i),
            "channel": "GROWTH_RATE_SECRET_NAME",
            "value": float(start + i),
            "unit": "nm/s",
        }
        for i in range(n)
    ]


def test_spool_while_down_then_replay_in_order(deployment, root_key):
    svc = Service(deployment.home, root_key)
    ensure_self_signed(svc.cert.parent)  # the service will use this certificate
    key = deployment.key()
    spool = deployment.home.parent / "spool"
    kw = dict(
        spool_dir=spool,
        verify=str(svc.cert),
        backoff=0.05,
        max_backoff=0.2,
        max_retries=1,
        batch_rows=100,
        flush_interval=0.1,
        timeout=5,
    )
    s1 = Streamer(svc.url, key, "run-down", "mbe1", "process", **kw)
    # push queues and returns (it never waits for the network; its cost: bench/ingest.py)
    for i in range(5):
        s1.push(_rows(i * 60, 60))
    s1.push(time=datetime(2026, 2, 1, 1, tzinfo=UTC), channel="x", value=1.0)
    assert s1.flush(timeout=2.0) is False
    deadline = time.monotonic() + 60  # the first batch converts slowly (lazy imports)
    while s1.pending < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert s1.pending >= 3
    assert s1.close(timeout=1.0) is False  # the service is down: batches stay spooled
    files = sorted((spool).rglob("*.batch"))
    assert files
    for f in files:
        assert b"GROWTH_RATE_SECRET_NAME" not in f.read_bytes()  # spool is encrypted
    svc.start()
    try:
        s2 = Streamer(svc.url, key, "run-down", "mbe1", "process", **kw)
        s2.push(_rows(1000, 50))
        assert s2.close(timeout=30) is True, s2.last_error
        assert s2.pending == 0 and s2.rejected == 0
        values = deployment.rows("acme", "process/series", "run-down").column("value")
        expected = [float(i) for i in range(300)] + [1.0] + [float(1000 + i) for i in range(50)]
        assert sorted(values.to_pylist()) == sorted(expected)
        run = deployment.rows("acme", "process/runs", "run-down").to_pylist()[0]
        assert run["status"] == "complete"
        # Replay kept the order: batch ids were accepted in spool order.
        import sqlite3

        db = sqlite3.connect(deployment.home / "ingest" / "state.sqlite")
        ids = [r[0] for r in db.execute("SELECT batch_id FROM batches ORDER BY rowid")]
        db.close()
        assert ids == sorted(ids, key=lambda b: int(b.split("-")[1]))
    finally:
        svc.stop()


def test_push_returns_while_the_sender_is_stuck_in_the_network(deployment, tmp_path):
    # A listener that accepts and never answers: the sender hangs in its TLS handshake until its
    # timeout. Pushes made meanwhile must all return while that connection is still open.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    conns, gave_up, release = [], threading.Event(), threading.Event()

    def serve():
        conn, _ = listener.accept()
        conns.append(conn)
        conn.settimeout(0.05)
        with conn:
            while not release.is_set():
                try:
                    if conn.recv(65536) == b"":
                        gave_up.set()  # the client closed the connection (its timeout)
                        return
                except TimeoutError:
                    continue

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    s = Streamer(
        f"https://127.0.0.1:{listener.getsockname()[1]}",
        deployment.key(),
        "run-stuck",
        "mbe1",
        "process",
        spool_dir=tmp_path / "spool",
        batch_rows=10,
        flush_interval=0.05,
        timeout=5,
        backoff=0.05,
        max_retries=1,
    )
    try:
        s.push(_rows(0, 10))  # a full batch: the sender cuts it and connects
        deadline = time.monotonic() + 60
        while not conns:
            assert time.monotonic() < deadline, "the sender never connected"
            time.sleep(0.01)
        for i in range(1, 40):
            s.push(_rows(i * 10, 10))
        assert not gave_up.is_set(), "push waited until the sender's request timed out"
    finally:
        release.set()
        server.join(10)
        listener.close()
        s.close(finalize=False, timeout=1.0)


def test_refused_batch_is_kept_aside_and_the_rest_goes_through(deployment, service):
    key = deployment.key()
    s = Streamer(
        service.url,
        key,
        "run-bad",
        "mbe1",
        "process",
        spool_dir=deployment.home.parent / "sp",
        verify=str(service.cert),
        batch_rows=10,
        flush_interval=0.05,
    )
    s.push([{"time": "2026-02-01T00:00:00Z", "channel": "T", "value": 1.0}])
    s.flush(10)
    s.push([{"time": "2026-02-01T00:00:01Z", "channel": None, "value": 2.0}])  # no channel
    s.flush(10)
    s.push([{"time": "2026-02-01T00:00:02Z", "channel": "T", "value": 3.0}])
    assert s.close(timeout=20) is True
    assert s.rejected == 1 and "channel" in s.last_error
    assert len(list((deployment.home.parent / "sp").rglob("rejected/*.batch"))) == 1
    values = deployment.rows("acme", "process/series", "run-bad").column("value").to_pylist()
    assert sorted(values) == [1.0, 3.0]


def test_a_revoked_key_keeps_the_spool(deployment, service):
    key = deployment.key()
    deployment.keys.revoke("acme", key.split("_")[1])
    s = Streamer(
        service.url,
        key,
        "run-rev",
        "mbe1",
        "process",
        spool_dir=deployment.home.parent / "sp",
        verify=str(service.cert),
        flush_interval=0.05,
    )
    s.push(time="2026-02-01T00:00:00Z", channel="T", value=1.0)
    assert s.close(timeout=5) is False
    assert s.fatal and "revoked" in s.fatal
    assert s.pending == 1
    try:
        n = deployment.rows("acme", "process/series").num_rows
    except NotFound:
        n = 0
    assert n == 0


def test_drain_sends_the_spools_of_every_run(deployment, root_key):
    svc = Service(deployment.home, root_key)
    ensure_self_signed(svc.cert.parent)
    key = deployment.key()
    spool = deployment.home.parent / "spool-drain"
    kw = dict(
        spool_dir=spool,
        verify=str(svc.cert),
        backoff=0.05,
        max_backoff=0.1,
        max_retries=0,
        flush_interval=0.05,
        timeout=5,
    )
    for run, cat in (("run-a", "process"), ("run-b", "tool_state")):
        s = Streamer(svc.url, key, run, "mbe1", cat, sample="S-" + run, **kw)
        s.push(_rows(0, 25))
        assert s.close(timeout=3) is False
    svc.start()
    try:
        left = Streamer.drain(svc.url, key, spool, timeout=30, verify=str(svc.cert))
        assert left == {"run-a": 0, "run-b": 0}
        assert deployment.rows("acme", "process/series", "run-a").num_rows == 25
        assert deployment.rows("acme", "tool_state/readings", "run-b").num_rows == 25
        runs = {r["run_id"]: r for r in deployment.rows("acme", "process/runs").to_pylist()}
        assert runs["run-a"]["status"] == "complete" and runs["run-b"]["sample"] == "S-run-b"
        assert Streamer.drain(svc.url, key, spool, verify=str(svc.cert)) == {}
    finally:
        svc.stop()
