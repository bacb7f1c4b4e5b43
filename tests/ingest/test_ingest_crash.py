"""kill -9 the service while a client streams: no acknowledged row is lost and no row is stored
twice.

Each kill comes after a chosen number of acknowledged batches since the last restart and while a
batch request is in flight, so the test's strength does not depend on how much work fits between
kills on a busy machine; it counts how many kills cut a request off."""

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
import requests

KILLS = 20
ROWS = 500  # rows per batch


def _batch(b):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    n = ROWS
    t = pa.table(
        {
            "time": pa.array(
                [t0 + timedelta(milliseconds=b * n + i) for i in range(n)],
                pa.timestamp("us", tz="UTC"),
            ),
            "channel": ["rheed_intensity"] * n,
            "value": [float(b * n + i) for i in range(n)],
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_row_and_stores_none_twice(deployment, service):
    key = deployment.key()
    rng = random.Random(20261129)
    acked: set[int] = set()
    stop = threading.Event()
    state = {"sid": None, "batch": 0, "errors": 0, "request": 0, "inflight": None}
    failed: set[int] = set()  # request numbers that ended without an answer
    crashed: list[BaseException] = []
    lock = threading.Lock()

    def send(method, path, **kw):
        with lock:
            state["request"] += 1
            n = state["inflight"] = state["request"]
        try:
            return service.request(method, path, key, **kw)
        except requests.RequestException:
            state["errors"] += 1
            failed.add(n)
            return None
        finally:
            with lock:
                state["inflight"] = None

    def client():
        while not stop.is_set():
            if state["sid"] is None:
                r = send(
                    "POST",
                    "/streams",
                    json={"run_id": "crash-run", "tool": "mbe1", "category": "process"},
                )
                if r is not None and r.status_code == 201:
                    state["sid"] = r.json()["id"]
                else:
                    time.sleep(0.05)
                continue
            b = state["batch"]
            r = send(
                "POST",
                f"/streams/{state['sid']}/batches",
                data=_batch(b),
                headers={
                    "Content-Type": "application/vnd.apache.arrow.stream",
                    "X-Batch-Id": f"batch-{b:05d}",
                },
            )
            if r is not None and r.status_code == 200:
                acked.add(b)
                state["batch"] += 1  # only move on once this batch is acknowledged
            elif r is None or r.status_code >= 500:
                time.sleep(0.02)  # service down or restarting: retry the same batch id
            else:
                raise AssertionError(f"unexpected {r.status_code}: {r.text}")

    def run_client():
        try:
            client()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test below
            crashed.append(e)

    def wait_for(cond, what, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not cond():
            if crashed:
                raise crashed[0]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.005)

    th = threading.Thread(target=run_client, daemon=True)
    th.start()
    mid_request = []  # per kill: the request in flight when the kill came, if any
    for _ in range(KILLS):
        # Kill after a chosen number of acknowledged batches since the restart (not after a
        # random time), while a batch request is in flight.
        target = len(acked) + rng.randint(1, 6)
        wait_for(lambda t=target: len(acked) >= t, f"{target} acks")
        wait_for(lambda: state["inflight"] is not None, "a request in flight")
        with lock:
            mid_request.append(state["inflight"])
            service.kill()
        service.start()
    n_acked = len(acked)
    wait_for(lambda: len(acked) > n_acked, "an ack after the last restart")
    stop.set()
    th.join(60)
    assert not th.is_alive()
    if crashed:
        raise crashed[0]
    assert service.starts == KILLS + 1
    # Every kill came while a request was in flight; count those the kill cut off.
    cut = [n for n in mid_request if n in failed]
    assert len(cut) >= KILLS * 3 // 4, f"only {len(cut)} of {KILLS} kills cut a request off"
    r = service.request("POST", f"/streams/{state['sid']}/finalize", key)
    assert r.status_code == 200, r.text
    values = deployment.rows("acme", "process/series", "crash-run").column("value").to_pylist()
    counts = Counter(int(v) // ROWS for v in values)
    lost = sorted(b for b in acked if counts.get(b, 0) < ROWS)
    twice = sorted(b for b, c in counts.items() if c > ROWS)
    assert not lost, f"acknowledged batches lost: {lost}"
    assert not twice, f"batches stored more than once: {twice}"
    assert len(values) == len(set(values))
    # Only batches the client sent can be there (an unacknowledged last batch may be stored).
    assert set(counts) <= acked | {state["batch"]}
    assert r.json()["rows"] == r.json()["flushed_rows"]
