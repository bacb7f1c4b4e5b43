"""The ingest service under attack: unauthenticated bodies, connection floods, decompression
bombs, stream floods, spoofed client addresses, other runs' records; checked on a live service."""

from __future__ import annotations

import json
import socket
import ssl
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from atomscale_lab.errors import ValidationError
from atomscale_lab.ingest.guard import (
    ConnectionLimits,
    TooManyConnections,
    client_address,
    ipc_decoded_size,
    parse_networks,
)
from tests.support.ingest import Service

ARROW = "application/vnd.apache.arrow.stream"


def _open(svc, key, run_id="run-1", tool="mbe1", headers=None, **extra):
    return svc.request(
        "POST",
        "/streams",
        key,
        headers=dict(headers or {}),
        json={"run_id": run_id, "tool": tool, "category": "process", **extra},
    )


def _tls(svc) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(svc.cert))
    raw = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _head(svc, sid, key, length, extra="") -> bytes:
    return (
        f"POST /streams/{sid}/batches HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def _status(sock) -> int:
    """The status code of the answer on ``sock`` (waits up to the socket's timeout)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def _bomb(rows=300_000, width=256) -> bytes:
    """A ZSTD-compressed Arrow stream of few rows that decodes to ~77 MB."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t = pa.table(
        {
            "time": pa.array(np.full(rows, int(t0.timestamp() * 1e6)), pa.timestamp("us", "UTC")),
            "channel": pa.array(["x" * width] * rows, pa.large_string()),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


def test_a_batch_without_a_valid_key_is_refused_before_its_body_is_read(deployment, service):
    key = deployment.key()
    sid = _open(service, key).json()["id"]
    # 10 MB announced, not one byte sent: the 401 must come from the headers alone.
    with _tls(service) as s:
        s.sendall(_head(service, sid, key[:-3] + "abc", 10_000_000))
        assert _status(s) == 401
    with _tls(service) as s:
        s.sendall(_head(service, sid, "", 10_000_000))
        assert _status(s) == 401
    # A valid key is still asked for its body (and a small refused body still gets its 401).
    r = service.request(
        "POST", f"/streams/{sid}/batches", key[:-3] + "abc", json={"batch_id": "b", "rows": []}
    )
    assert r.status_code == 401
    # the wrong secrets are charged to the key's org; the missing key to the deployment log
    events = deployment.vault.audit("acme").events(action="apikey.use")
    assert [e["outcome"] for e in events[:3]] == ["denied", "denied", "allowed"]
    assert deployment.vault.system_audit().events(action="apikey.use")[0]["outcome"] == "denied"


def _authenticated(deployment, client: str) -> int:
    """Batch requests from ``client`` whose key the service accepted (its audited key use)."""
    events = deployment.vault.audit("acme").events(action="apikey.use", limit=1000)
    return sum(
        1
        for e in events
        if e["outcome"] == "allowed"
        and e["detail"].get("client") == client
        and e["detail"].get("request") == "stream.batch"
    )


def test_concurrent_requests_are_capped_per_client_and_per_key(deployment, root_key):
    svc = Service(
        deployment.home,
        root_key,
        [
            "--max-client-connections",
            "2",
            "--max-key-connections",
            "3",
            "--trusted-proxy",
            "127.0.0.1",
        ],
    )
    svc.start()
    held = []
    try:
        key = deployment.key()
        sid = _open(svc, key).json()["id"]

        def hold(client):
            """Send a batch's headers, not its body, and wait until the service has taken the
            request's slots. A probe sent earlier would compete with the held request for the
            last slot, and a held request refused 429 waits for its body holding no slot."""
            before = _authenticated(deployment, client)
            s = _tls(svc)
            s.sendall(_head(svc, sid, key, 1000, f"X-Forwarded-For: {client}\r\n"))
            held.append(s)
            # its client slot is taken before the key is checked, its key slot right after
            deadline = time.monotonic() + 60
            while _authenticated(deployment, client) == before:
                assert time.monotonic() < deadline, "the held request was never authenticated"
                time.sleep(0.05)

        hold("10.0.0.1")
        hold("10.0.0.1")
        r = svc.request("GET", f"/streams/{sid}", key, headers={"X-Forwarded-For": "10.0.0.1"})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "client" in r.json()["message"]
        # another client still gets in, until the key's cap (3) is reached
        hold("10.0.0.2")
        r = svc.request("GET", f"/streams/{sid}", key, headers={"X-Forwarded-For": "10.0.0.3"})
        assert r.status_code == 429 and "key" in r.json()["message"]
        # slots come back when the requests end
        for s in held:
            s.sendall(json.dumps({"batch_id": "x", "rows": []}).encode().ljust(1000))
            assert _status(s) == 400  # empty batch, answered normally
            s.close()
        held.clear()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = svc.request("GET", f"/streams/{sid}", key, headers={"X-Forwarded-For": "10.0.0.1"})
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert r.status_code == 200
    finally:
        for s in held:
            s.close()
        svc.stop()


def test_a_body_that_never_comes_gives_its_slot_back(deployment, root_key):
    """Headers without a body (slowloris): the connection is closed after ``--body-timeout`` and
    the client's only slot comes back."""
    svc = Service(
        deployment.home,
        root_key,
        ["--max-client-connections", "1", "--body-timeout", "2", "--trusted-proxy", "127.0.0.1"],
    )
    svc.start()
    try:
        key = deployment.key()
        sid = _open(svc, key).json()["id"]
        s = _tls(svc)
        s.sendall(_head(svc, sid, key, 1000, "X-Forwarded-For: 10.0.0.9\r\n"))
        deadline = time.monotonic() + 60
        while _authenticated(deployment, "10.0.0.9") == 0:
            assert time.monotonic() < deadline, "the held request was never authenticated"
            time.sleep(0.05)
        r = svc.request("GET", f"/streams/{sid}", key, headers={"X-Forwarded-For": "10.0.0.9"})
        assert r.status_code == 429  # the held request has the client's only slot
        s.settimeout(60)
        try:
            assert s.recv(4096) == b""  # closed by the service, no answer
        except (ConnectionResetError, ssl.SSLError):
            pass
        finally:
            s.close()
        deadline = time.monotonic() + 30
        while True:
            r = svc.request("GET", f"/streams/{sid}", key, headers={"X-Forwarded-For": "10.0.0.9"})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 200
    finally:
        svc.stop()


def test_a_decompression_bomb_is_refused_before_decoding(deployment, service):
    body = _bomb()
    rows, size = ipc_decoded_size(body)
    assert len(body) < 1_000_000 and size > 64 * 1024 * 1024 and rows == 300_000
    key = deployment.key()
    sid = _open(service, key).json()["id"]
    r = service.request(
        "POST",
        f"/streams/{sid}/batches",
        key,
        data=body,
        headers={"Content-Type": ARROW, "X-Batch-Id": "bomb"},
    )
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "body"
    assert service.request("GET", f"/streams/{sid}", key).json()["rows"] == 0
    # an honest compressed batch still goes through
    t = pa.table(
        {
            "time": pa.array([datetime(2026, 1, 1, tzinfo=UTC)], pa.timestamp("us", "UTC")),
            "channel": ["T"],
            "value": [1.0],
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(t)
    r = service.request(
        "POST",
        f"/streams/{sid}/batches",
        key,
        data=sink.getvalue().to_pybytes(),
        headers={"Content-Type": ARROW, "X-Batch-Id": "ok"},
    )
    assert r.status_code == 200, r.text


def test_decoded_size_reader_survives_mangled_streams():
    body = _bomb(rows=1000, width=8)
    rnd = np.random.default_rng(3)
    for _ in range(300):
        b = bytearray(body)
        for i in rnd.integers(0, len(b), size=4):
            b[i] = int(rnd.integers(0, 256))
        try:
            ipc_decoded_size(bytes(b))
        except ValidationError as e:  # a clear 400, never another exception or a crash
            assert e.field == "body"


def test_open_streams_per_key_are_capped(deployment):
    from atomscale_lab.ingest.apikeys import ApiKeyInfo
    from atomscale_lab.ingest.core import IngestCore, TooManyStreams

    core = IngestCore(deployment.vault, max_open_streams=2)
    try:
        k = ApiKeyInfo("0123456789", "acme", "", ("ingest:process",))
        other = ApiKeyInfo("9876543210", "acme", "", ("ingest:process",))
        a = core.open_stream(k, "r1", "t", "process")
        core.open_stream(k, "r2", "t", "process")
        core.open_stream(k, "r1", "t", "process")  # resuming an open stream is not a new one
        with pytest.raises(TooManyStreams) as e:
            core.open_stream(k, "r3", "t", "process")
        assert e.value.http_status == 429
        core.open_stream(other, "r9", "t", "process")  # the cap is per key
        core.add_batch(
            k, a["id"], "b1", [{"time": "2026-01-01T00:00:00Z", "channel": "T", "value": 1.0}]
        )
        core.finalize(k, a["id"])
        assert core.open_stream(k, "r3", "t", "process")["status"] == "active"
    finally:
        core.close()


def test_spoofed_client_headers_neither_escape_nor_aim_the_throttle(deployment, root_key):
    # Behind a local proxy (as under the hub): only the proxy's X-Forwarded-For entry counts.
    svc = Service(deployment.home, root_key, ["--behind-proxy"])
    svc.start()
    try:
        good = deployment.key()
        bad = "ask_0123456789_" + "Z" * 43
        # An attacker rotating X-Real-Ip cannot escape the lockout of its own address...
        codes = [
            svc.request(
                "GET", "/streams/st_0000000000000000", bad, headers={"X-Real-Ip": f"10.9.0.{i}"}
            ).status_code
            for i in range(11)
        ]
        assert codes[:10] == [401] * 10 and codes[10] == 429
        # ...nor lock out an instrument by naming its address in X-Real-Ip, or by putting it
        # at the left of X-Forwarded-For (the proxy appends the real peer on the right).
        for _ in range(10):
            svc.request(
                "GET",
                "/streams/st_0000000000000000",
                bad,
                headers={"X-Real-Ip": "10.1.1.1", "X-Forwarded-For": "10.1.1.1, 10.7.7.7"},
            )
        r = _open(svc, good, headers={"X-Forwarded-For": "10.1.1.1"})
        assert r.status_code == 201, r.text
        uses = deployment.vault.audit("acme").events(action="apikey.use", limit=1)
        assert uses[0]["detail"]["client"] == "10.1.1.1"
        denied = [e for e in deployment.vault.system_audit().events(action="apikey.use", limit=50)]
        assert {e["detail"]["client"] for e in denied} <= {"127.0.0.1", "10.7.7.7"}
    finally:
        svc.stop()


def test_client_address_and_limits_units():
    trusted = parse_networks("127.0.0.1, 10.0.0.0/8")
    assert client_address("192.0.2.9", "1.2.3.4", trusted) == "192.0.2.9"  # untrusted peer
    assert client_address("127.0.0.1", "1.2.3.4, 192.0.2.7", trusted) == "192.0.2.7"
    assert client_address("127.0.0.1", "192.0.2.7, 10.1.2.3", trusted) == "192.0.2.7"
    assert client_address("127.0.0.1", "not-an-ip", trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", "1.2.3.4", ()) == "127.0.0.1"
    lim = ConnectionLimits(per_client=1, per_key=1)
    lim.enter("client", "a")
    with pytest.raises(TooManyConnections):
        lim.enter("client", "a")
    lim.leave("client", "a")
    lim.enter("client", "a")
    assert lim.in_use("client", "a") == 1


def test_a_stream_cannot_rewrite_another_runs_record(deployment, service):
    from atomscale_lab.cli import demo

    demo.generate(deployment.vault, "acme", runs=2, seed=1, points_per_run=20)
    runs = deployment.vault.store("acme").table("process/runs").read().to_pylist()
    target = runs[0]
    key = deployment.key()
    r = _open(service, key, run_id=target["run_id"], operator='=HYPERLINK("x")')
    assert r.status_code == 409, r.text
    after = {
        x["run_id"]: x
        for x in deployment.vault.store("acme").table("process/runs").read().to_pylist()
    }
    assert after[target["run_id"]]["status"] == target["status"]
    assert after[target["run_id"]]["operator"] == target["operator"]
    # another key's run is not this key's either
    mine = _open(service, key, run_id="fresh-1", operator="alice")
    assert mine.status_code == 201
    other = deployment.key()
    assert _open(service, other, run_id="fresh-1", operator="mallory").status_code == 409
    assert _open(service, key, run_id="fresh-1").status_code == 201  # its own: resumed
    events = deployment.vault.audit("acme").events(action="ingest.stream_open")
    assert any(e["outcome"] == "denied" for e in events)


def test_csv_export_neutralises_formulas(deployment, service, tmp_path, venv_bin):
    import csv
    import os
    import subprocess

    key = deployment.key()
    payloads = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    hidden = 'ok\r=HYPERLINK("http://x","y")'  # a CR mid-cell must not start a row
    for i, p in enumerate(payloads):
        assert _open(service, key, run_id=f"csv-{i}", operator=p, project="p").status_code == 201
    assert _open(service, key, run_id="csv-hidden", operator=hidden).status_code == 201
    env = dict(os.environ, ATOMSCALE_HOME=str(deployment.home))
    out = tmp_path / "runs.csv"
    subprocess.run(
        [
            str(venv_bin / "atomscale-lab"),
            "export",
            "acme",
            "--category",
            "runs",
            "--format",
            "csv",
            "-o",
            str(out),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    read = list(csv.DictReader(out.open(newline="")))
    assert len(read) == len(payloads) + 1  # no row smuggled in
    rows = {r["run_id"]: r for r in read}
    for i, p in enumerate(payloads):
        cell = rows[f"csv-{i}"]["operator"]
        assert cell == "'" + p, cell
    assert rows["csv-hidden"]["operator"] == hidden
    raw = tmp_path / "raw.csv"
    subprocess.run(
        [
            str(venv_bin / "atomscale-lab"),
            "export",
            "acme",
            "--category",
            "runs",
            "--format",
            "csv",
            "--raw-csv",
            "-o",
            str(raw),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    rows = {r["run_id"]: r for r in csv.DictReader(raw.open(newline=""))}
    assert rows["csv-0"]["operator"] == payloads[0]
