"""Sustained ingest through the HTTPS API, with WAL and Parquet encryption on.

Starts the ingest service as a subprocess on 127.0.0.1 in a throw-away deployment, then measures:

- one stream: Arrow IPC batches of ``--batch-rows`` rows sent back to back (acknowledged = fsynced
  in the encrypted WAL), and the rate until every row is committed to the encrypted store;
- ``--streams`` concurrent streams doing the same;
- the ``Streamer`` (push Arrow tables, spool, send, finalize) for one stream;
- push → visible latency: a small batch is sent and a reader polls the table's commit log until
  the rows are there (p50/p99 over ``--samples`` batches);
- SIGTERM → exit of the service (it flushes its WAL on the way out).

Prints ``name: value`` lines. Usage: ``python bench/ingest.py [--rows 1000000]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import requests


def body(run: str, start: int, n: int) -> bytes:
    """An Arrow IPC stream of ``n`` process rows (three channels, realistic floats)."""
    t0 = np.datetime64(datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None), "us")
    idx = np.arange(start, start + n)
    t = pa.table(
        {
            "time": pa.array(t0 + idx * 1000, pa.timestamp("us", tz="UTC")),
            "channel": pa.array(
                np.array(["rheed_intensity", "substrate_temperature", "growth_rate"])[idx % 3]
            ),
            "value": pa.array(
                np.sin(idx / 50.0) * 100 + np.random.default_rng(start).normal(0, 1, n)
            ),
            "unit": pa.array(np.array(["a.u.", "C", "nm/s"])[idx % 3]),
        }
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


class Client:
    """One HTTPS session to the service."""

    def __init__(self, url: str, key: str, cert: str):
        self.url, self.cert = url, cert
        self.s = requests.Session()
        self.s.trust_env = False
        self.s.headers["Authorization"] = f"Bearer {key}"

    def post(self, path, **kw):
        r = self.s.post(self.url + path, verify=self.cert, timeout=120, **kw)
        r.raise_for_status()
        return r.json()

    def get(self, path):
        r = self.s.get(self.url + path, verify=self.cert, timeout=60)
        r.raise_for_status()
        return r.json()

    def open(self, run: str) -> str:
        return self.post("/streams", json={"run_id": run, "tool": "bench", "category": "process"})[
            "id"
        ]

    def batch(self, sid: str, bid: str, data: bytes):
        return self.post(
            f"/streams/{sid}/batches",
            data=data,
            headers={"Content-Type": "application/vnd.apache.arrow.stream", "X-Batch-Id": bid},
        )


def wait_flushed(c: Client, sids: list[str], timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = [c.get(f"/streams/{s}") for s in sids]
        if all(d["flushed_rows"] >= d["rows"] for d in docs):
            return
        time.sleep(0.02)
    raise RuntimeError("rows were not committed in time")


def run_streams(url, key, cert, n_streams, rows, batch_rows, tag):
    per = rows // n_streams
    batches = max(1, per // batch_rows)
    bodies = [
        [body(f"{tag}-{s}", b * batch_rows, batch_rows) for b in range(batches)]
        for s in range(n_streams)
    ]
    clients = [Client(url, key, cert) for _ in range(n_streams)]
    sids = [c.open(f"{tag}-{i}") for i, c in enumerate(clients)]
    errors = []

    def send(i):
        try:
            for b, data in enumerate(bodies[i]):
                clients[i].batch(sids[i], f"b{b:06d}", data)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(n_streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked = time.perf_counter() - t0
    if errors:
        raise errors[0]
    wait_flushed(clients[0], sids)
    committed = time.perf_counter() - t0
    total = n_streams * batches * batch_rows
    return total / acked, total / committed


def streamer_rate(url, key, cert, rows, batch_rows, spool):
    """Rows/s through ``Streamer`` (Arrow tables pushed, spooled, sent, finalized)."""
    from atomscale_lab.ingest import Streamer

    n = max(1, rows // batch_rows)
    tables = [
        pa.ipc.open_stream(body("streamer", b * batch_rows, batch_rows)).read_all()
        for b in range(n)
    ]
    s = Streamer(
        url,
        key,
        "streamer",
        "bench",
        "process",
        verify=cert,
        spool_dir=spool,
        batch_rows=batch_rows,
        flush_interval=0.2,
    )
    t0 = time.perf_counter()
    push_times = []
    for t in tables:
        p0 = time.perf_counter()
        s.push(t)
        push_times.append(time.perf_counter() - p0)
    ok = s.close(timeout=600)
    if not ok:
        raise RuntimeError(f"streamer did not finish: {s.last_error}")
    return n * batch_rows / (time.perf_counter() - t0), max(push_times)


def latency(url, key, cert, home, samples):
    """Seconds from sending a batch to its rows being readable from the store."""
    os.environ["ATOMSCALE_HOME"] = str(home)
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.settings import Settings

    table = Vault(Settings.load(home)).store("bench").table("process/series")
    c = Client(url, key, cert)
    sid = c.open("latency")
    out = []
    for i in range(samples):
        before = table.num_rows()
        t0 = time.perf_counter()
        c.batch(sid, f"l{i:05d}", body("latency", 10_000_000 + i * 100, 100))
        while table.num_rows() < before + 100:
            time.sleep(0.005)
        out.append(time.perf_counter() - t0)
        time.sleep(0.05)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per measurement")
    ap.add_argument("--batch-rows", type=int, default=10_000)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--flush-interval", type=float, default=0.5)
    args = ap.parse_args()

    from atomscale_lab.ingest.apikeys import for_vault
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.kms import generate_root_key
    from atomscale_lab.vault.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="atomscale-bench-ingest-"))
    home = tmp / "home"
    home.mkdir()
    root_key = generate_root_key()
    os.environ["ATOMSCALE_ROOT_KEY"] = root_key
    os.environ["ATOMSCALE_HOME"] = str(home)
    vault = Vault(Settings.load(home))
    vault.create_org("bench", "us")
    key, _ = for_vault(vault).create("bench", "ingest:process", timedelta(days=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp / "service.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atomscale_lab.ingest.service",
            "--port",
            str(port),
            "--flush-interval",
            str(args.flush_interval),
        ],
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url, cert = f"https://127.0.0.1:{port}", str(home / "ingest" / "tls" / "cert.pem")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if Path(cert).exists():
                    requests.get(url + "/health", verify=cert, timeout=1)
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((tmp / "service.log").read_text()[-2000:])
            time.sleep(0.1)
        print(f"batch_rows: {args.batch_rows}")
        acked, committed = run_streams(url, key, cert, 1, args.rows, args.batch_rows, "one")
        print(f"one_stream_acked_rows_per_s: {acked:,.0f}")
        print(f"one_stream_committed_rows_per_s: {committed:,.0f}")
        acked, committed = run_streams(
            url, key, cert, args.streams, args.rows, args.batch_rows, "multi"
        )
        print(f"streams: {args.streams}")
        print(f"multi_stream_acked_rows_per_s: {acked:,.0f}")
        print(f"multi_stream_committed_rows_per_s: {committed:,.0f}")
        rate, worst_push = streamer_rate(url, key, cert, args.rows, args.batch_rows, tmp / "spool")
        print(f"streamer_rows_per_s: {rate:,.0f}")
        print(f"streamer_push_max_ms: {worst_push * 1000:.2f}")
        lat = sorted(latency(url, key, cert, home, args.samples))
        print(f"push_to_visible_p50_s: {statistics.median(lat):.3f}")
        print(f"push_to_visible_p99_s: {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.3f}")
        print(f"push_to_visible_max_s: {lat[-1]:.3f}")
        t0 = time.perf_counter()
        os.kill(proc.pid, signal.SIGTERM)  # the service flushes its WAL and exits
        proc.wait(60)
        print(f"sigterm_to_exit_s: {time.perf_counter() - t0:.2f}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(60)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
