"""Load benchmark: many concurrent clients against one org's data server and the ingest service.

Builds a throw-away deployment (org ``load``: ``--runs`` runs, series/tool state/metrology for
``--detail-runs`` of them), starts the data-serving process and the ingest service on 127.0.0.1,
and runs ``--clients`` client threads for ``--seconds`` seconds, each picking one request at a time:

- ``page``: a catalogue page (``runs`` with a mixed filter, sort and page);
- ``run``: one run's record and its process series as JSON (``runs/{id}``, ``runs/{id}/process``);
- ``arrow``: one run's process series as an Arrow stream (``runs/{id}/process?format=arrow``);
- ``ingest``: one JSON batch (20 rows) into the client's own stream (every client is its own
  instrument: a distinct ``X-Forwarded-For`` address behind the trusted loopback proxy).

Prints ``name: value`` lines: requests/s, p50/p99 per kind (ms), errors per kind. Goals: 0 errors,
page p99 < 250 ms.

``--chaos``: during the run the data-serving process and the ingest service are each killed once
with SIGKILL (by pid) and restarted; clients retry until they get through (failed attempts while a
process is down are counted as ``unavailable``, not errors). At the end every stream is finalized
and the stored rows are counted per acknowledged batch id: ``lost`` and ``duplicated`` must be 0.

The data-serving process is a parameter (``--data-server MODULE:FACTORY``): a factory
``(home: Path, env: dict, org: str, workdir: Path) -> server`` returning an object with ``start()``,
``stop()``, ``kill()`` (SIGKILL by pid), ``url`` (ending in ``/``, where ``atomscale/api/v1/`` is
served) and ``headers`` (auth for a client). The default is the single-user jupyter server with the
extension (``bench/load.py:jupyter_server``).

Clients run as threads spread over ``--procs`` processes, so the client side's own interpreter
lock does not inflate the measured latencies.

With ``--think-ms 0`` (the default) every client sends its next request as soon as the last one is
answered: 50 such clients keep 50 requests in flight, so by Little's law the mean latency is
50 / throughput. ``--think-ms`` adds a pause per client, like people and instruments have.

Usage: ``python bench/load.py [--clients 50] [--procs 5] [--seconds 60] [--think-ms 0] [--chaos]``.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing as mp
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: tests.support

from tests.support import labdata  # noqa: E402
from tests.support.nbserver import stop_server, wait_ready  # noqa: E402
from tests.support.net import free_port  # noqa: E402

ORG = "load"
API = "atomscale/api/v1/"
WEIGHTS = {"page": 40, "run": 20, "arrow": 15, "ingest": 25}
BATCH_ROWS = 20


class JupyterDataServer:
    """The single-user jupyter server with the extension, serving one org (the default).

    Port and token stay the same across restarts, so clients in other processes keep the URL.
    """

    def __init__(self, home: Path, env: dict, org: str, workdir: Path):
        self.env, self.org, self.workdir = env, org, workdir
        self.proc = None
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}/"
        self.headers = {"Authorization": f"token {self.token}"}
        self.starts = 0

    def start(self) -> None:
        """Start (again) and wait until the extension answers."""
        root = self.workdir / "jupyter"
        root.mkdir(exist_ok=True)
        log = self.workdir / f"server-{self.starts}.log"
        self.starts += 1
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root}",
            f"--IdentityProvider.token={self.token}",
            '--ServerApp.jpserver_extensions={"atomscale_lab": True}',
            f"--AtomscaleLab.org={self.org}",
        ]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_ready(self.proc, self.url, self.token, log)

    def kill(self) -> None:
        """SIGKILL the server (by pid)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """Stop it by pid."""
        if self.proc is not None:
            stop_server(self.proc)


def jupyter_server(home: Path, env: dict, org: str, workdir: Path) -> JupyterDataServer:
    """Factory of the default data server."""
    return JupyterDataServer(home, env, org, workdir)


class IngestService:
    """The ingest service as a subprocess on a fixed port (so clients keep their URL)."""

    def __init__(self, home: Path, env: dict, workdir: Path):
        self.home, self.env, self.workdir = home, env, workdir
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert = str(home / "ingest" / "tls" / "cert.pem")
        self.proc = None
        self.starts = 0

    def start(self) -> None:
        """Start (again) and wait for /health."""
        log = open(self.workdir / f"ingest-{self.starts}.log", "wb")  # noqa: SIM115
        self.starts += 1
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atomscale_lab.ingest.service",
                "--port",
                str(self.port),
                "--flush-interval",
                "0.5",
                "--trusted-proxy",
                "127.0.0.1",
                "--max-client-connections",
                "8",
                "--max-key-connections",
                "128",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        s = requests.Session()
        s.trust_env = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the ingest service exited at start")
            try:
                if (
                    Path(self.cert).exists()
                    and s.get(self.url + "/health", verify=self.cert, timeout=1).status_code == 200
                ):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("the ingest service did not become ready")

    def kill(self) -> None:
        """SIGKILL it (by pid)."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM it (by pid): it flushes its WAL and exits."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Stats:
    """Latencies and outcomes per request kind (thread-safe)."""

    def __init__(self):
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter = Counter()
        self.unavailable: Counter = Counter()
        self.samples: dict[str, str] = {}
        self.lock = threading.Lock()

    def ok(self, kind: str, seconds: float) -> None:
        """One successful request."""
        with self.lock:
            self.lat[kind].append(seconds)

    def error(self, kind: str, what: str) -> None:
        """One failed request."""
        with self.lock:
            self.errors[kind] += 1
            self.samples.setdefault(kind, what[:300])

    def down(self, kind: str) -> None:
        """One attempt that failed while a process was being restarted."""
        with self.lock:
            self.unavailable[kind] += 1


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


class Client(threading.Thread):
    """One client: a loop of weighted random requests until ``deadline``."""

    def __init__(
        self,
        n: int,
        ends: dict,
        key: str,
        detail: list[str],
        stats: Stats,
        deadline: float,
        down,
        think: float = 0.0,
    ):
        super().__init__(daemon=True)
        self.think = think
        self.n, self.ends, self.key = n, ends, key
        self.detail, self.stats = detail, stats
        self.deadline, self.down = deadline, down
        self.rnd = random.Random(n)
        self.http = requests.Session()
        self.http.trust_env = False
        self.acked: dict[str, int] = {}
        self.batch_no = 0
        self.sid: str | None = None
        self.run_id = f"load-{n:03d}"
        self.ip = f"10.0.{n // 250}.{n % 250 + 1}"

    def _data(self, path: str, **params):
        r = self.http.get(
            self.ends["data_url"] + API + path,
            headers=self.ends["data_headers"],
            params=params,
            timeout=60,
        )
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code} {r.text[:200]}")
        return r

    def ingest(self, method: str, path: str, **kw):
        """One request to the ingest service as this client's instrument."""
        headers = {"Authorization": f"Bearer {self.key}", "X-Forwarded-For": self.ip}
        return self.http.request(
            method,
            self.ends["ingest_url"] + path,
            headers=headers,
            verify=self.ends["ingest_cert"],
            timeout=60,
            **kw,
        )

    def page(self):
        """A catalogue page with a mixed filter, sort and page."""
        params = {
            "sort": self.rnd.choice(["start", "run_id", "sample", "operator"]),
            "order": self.rnd.choice(["asc", "desc"]),
            "page": self.rnd.randint(1, 20),
            "per_page": 50,
        }
        if self.rnd.random() < 0.5:
            params["project"] = self.rnd.choice(labdata.PROJECTS)
        if self.rnd.random() < 0.3:
            params["q"] = self.rnd.choice(["R-00", "ana", "mbe"])
        self._data("runs", **params).json()

    def run(self):  # noqa: D102 - Thread.run: the loop
        kinds, weights = zip(*WEIGHTS.items(), strict=True)
        while time.monotonic() < self.deadline:
            if self.think:  # a person or instrument pauses between requests (exponential)
                time.sleep(self.rnd.expovariate(1.0 / self.think))
            kind = self.rnd.choices(kinds, weights)[0]
            t0 = time.perf_counter()
            try:
                if kind == "page":
                    self.page()
                elif kind == "run":
                    rid = self.rnd.choice(self.detail)
                    self._data(f"runs/{rid}").json()
                    self._data(f"runs/{rid}/process", max_points=500).json()
                elif kind == "arrow":
                    rid = self.rnd.choice(self.detail)
                    body = self._data(f"runs/{rid}/process", format="arrow").content
                    if len(body) < 100:
                        raise RuntimeError("short Arrow stream")
                else:
                    self.batch()
                self.stats.ok(kind, time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - every failure is counted, none is fatal
                if self.down.is_set():
                    self.stats.down(kind)
                    time.sleep(0.2)
                else:
                    self.stats.error(kind, f"{type(e).__name__}: {e}")

    def batch(self):
        """Send the next batch; retried with the same id until acknowledged (exactly once)."""
        if self.sid is None:
            r = self.ingest(
                "POST",
                "/streams",
                json={"run_id": self.run_id, "tool": "mbe-1", "category": "process"},
            )
            if r.status_code != 201:
                raise RuntimeError(f"open: {r.status_code} {r.text[:200]}")
            self.sid = r.json()["id"]
        bid = f"c{self.n}-b{self.batch_no}"
        t0 = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.batch_no * BATCH_ROWS)
        rows = [
            {
                "time": (t0 + timedelta(seconds=i)).isoformat(),
                "channel": bid,
                "value": float(i),
                "unit": "a.u.",
            }
            for i in range(BATCH_ROWS)
        ]
        r = self.ingest(
            "POST", f"/streams/{self.sid}/batches", json={"batch_id": bid, "rows": rows}
        )
        if r.status_code != 200:
            raise RuntimeError(f"batch: {r.status_code} {r.text[:200]}")
        self.acked[bid] = r.json()["rows"]
        self.batch_no += 1


def worker(
    ids: list[int],
    ends: dict,
    key: str,
    detail: list[str],
    deadline: float,
    down,
    out,
    think: float = 0.0,
) -> None:
    """One client process: threads for ``ids``; puts its results on ``out``."""
    stats = Stats()
    clients = [Client(i, ends, key, detail, stats, deadline, down, think) for i in ids]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    out.put(
        {
            "lat": dict(stats.lat),
            "errors": dict(stats.errors),
            "unavailable": dict(stats.unavailable),
            "samples": stats.samples,
            "streams": [(c.n, c.run_id, c.sid, c.acked) for c in clients],
        }
    )


def build(home: Path, runs: int, detail: int) -> tuple[str, list[str], list[str]]:
    """The deployment: org ``load`` with data and one API key. Returns (key, runs, detail)."""
    from atomscale_lab.ingest.apikeys import for_vault
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.settings import Settings

    v = Vault(Settings.load(home))
    v.create_org(ORG, "us")
    labdata.fill_org(v, ORG, runs=runs, detail_runs=detail, actor="bench")
    keys = for_vault(v)
    key, _ = keys.create(ORG, "ingest:process", timedelta(days=1), name="load-bench")
    keys.close()
    v.close()
    return key, [labdata.run_id(i) for i in range(runs)], [labdata.run_id(i) for i in range(detail)]


def check_rows(home: Path, streams: list) -> tuple[int, int, int]:
    """(acknowledged rows, lost, duplicated), counted per acknowledged batch id."""
    import pyarrow.compute as pc

    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.settings import Settings

    v = Vault(Settings.load(home))
    try:
        table = (
            v.store(ORG)
            .table("process/series")
            .read(run_ids=[run_id for _, run_id, _, acked in streams if acked])
        )
    finally:
        v.close()
    counts = (
        dict(
            zip(
                *[x.to_pylist() for x in pc.value_counts(table.column("channel")).flatten()],
                strict=True,
            )
        )
        if table.num_rows
        else {}
    )
    acked_rows = lost = dup = 0
    for _, _, _, acked in streams:
        for bid, n in acked.items():
            got = counts.get(bid, 0)
            acked_rows += n
            lost += max(0, n - got)
            dup += max(0, got - n)
    return acked_rows, lost, dup


def main() -> int:
    """Build, start, load (optionally kill and restart), report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument(
        "--procs",
        type=int,
        default=5,
        help="client processes the clients are spread over (default 5)",
    )
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="mean pause of each client between requests (default 0: back to back)",
    )
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--detail-runs", type=int, default=60)
    ap.add_argument(
        "--chaos",
        action="store_true",
        help="kill -9 the data server and the ingest service once each",
    )
    ap.add_argument(
        "--data-server",
        default="",
        help="MODULE:FACTORY of the data-serving process (default: jupyter server)",
    )
    args = ap.parse_args()

    from atomscale_lab.vault.kms import generate_root_key

    work = Path(tempfile.mkdtemp(prefix="atomscale-load-"))
    home = work / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTERHUB_"))}
    env.update(
        ATOMSCALE_HOME=str(home),
        ATOMSCALE_ROOT_KEY=generate_root_key(),
        JUPYTER_RUNTIME_DIR=str(work / "rt"),
        JUPYTER_CONFIG_DIR=str(work / "cfg"),
        JUPYTER_DATA_DIR=str(work / "data"),
    )
    os.environ.update({k: env[k] for k in ("ATOMSCALE_HOME", "ATOMSCALE_ROOT_KEY")})
    os.environ.pop("ATOMSCALE_ROOT_KEY_FILE", None)
    t0 = time.perf_counter()
    key, runs, detail = build(home, args.runs, args.detail_runs)
    print(f"setup_s: {time.perf_counter() - t0:.1f}")
    if args.data_server:
        mod, _, fn = args.data_server.partition(":")
        factory = getattr(importlib.import_module(mod), fn)
    else:
        factory = jupyter_server
    server = factory(home, env, ORG, work)
    ingest = IngestService(home, env, work)
    server.start()
    ingest.start()
    ends = {
        "data_url": server.url,
        "data_headers": server.headers,
        "ingest_url": ingest.url,
        "ingest_cert": ingest.cert,
    }
    ctx = mp.get_context("spawn")
    down, out = ctx.Event(), ctx.Queue()
    procs = max(1, min(args.procs, args.clients))
    deadline = time.monotonic() + args.seconds
    workers = [
        ctx.Process(
            target=worker,
            args=(
                list(range(p, args.clients, procs)),
                ends,
                key,
                detail,
                deadline,
                down,
                out,
                args.think_ms / 1000,
            ),
        )
        for p in range(procs)
    ]
    started = time.monotonic()
    for w in workers:
        w.start()
    restarts = {}
    results = []
    try:
        if args.chaos:
            for at, name, proc in (
                (args.seconds / 3, "data_server", server),
                (2 * args.seconds / 3, "ingest", ingest),
            ):
                time.sleep(max(0.0, started + at - time.monotonic()))
                down.set()
                t_kill = time.perf_counter()
                proc.kill()
                proc.start()
                restarts[name] = time.perf_counter() - t_kill
                time.sleep(1.0)  # requests in flight at the kill finish failing as "down"
                down.clear()
        results = [out.get(timeout=args.seconds + 300) for _ in workers]
        for w in workers:
            w.join(60)
        elapsed = time.monotonic() - started
        # every stream is finalized: its rows are then in the store
        streams = [s for r in results for s in r["streams"]]
        fin_errors = 0
        http = requests.Session()
        http.trust_env = False
        for n, _, sid, _ in streams:
            if sid is None:
                continue
            ip = f"10.0.{n // 250}.{n % 250 + 1}"
            for _ in range(60):
                r = http.post(
                    ingest.url + f"/streams/{sid}/finalize",
                    verify=ingest.cert,
                    headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": ip},
                    timeout=120,
                )
                if r.status_code == 200:
                    break
                time.sleep(0.5)
            else:
                fin_errors += 1
    finally:
        ingest.stop()
        server.stop()
    stats = Stats()
    acked, lost, dup = check_rows(home, streams)
    shutil.rmtree(work, ignore_errors=True)
    for r in results:
        for k, v in r["lat"].items():
            stats.lat[k].extend(v)
        stats.errors.update(r["errors"])
        stats.unavailable.update(r["unavailable"])
        for k, v in r["samples"].items():
            stats.samples.setdefault(k, v)
    total = sum(len(v) for v in stats.lat.values())
    print(f"clients: {args.clients}")
    print(f"think_ms: {args.think_ms:g}")
    print(f"seconds: {elapsed:.1f}")
    print(f"requests_per_s: {total / elapsed:.1f}")
    for kind in WEIGHTS:
        lat = stats.lat.get(kind, [])
        print(f"{kind}_count: {len(lat)}")
        print(f"{kind}_p50_ms: {_pct(lat, 0.5):.1f}")
        print(f"{kind}_p99_ms: {_pct(lat, 0.99):.1f}")
        if lat:
            print(f"{kind}_mean_ms: {statistics.fmean(lat) * 1000:.1f}")
    print(f"errors: {sum(stats.errors.values())}")
    for kind, n in stats.errors.items():
        print(f"errors_{kind}: {n}  (e.g. {stats.samples.get(kind)})")
    if args.chaos:
        print(f"unavailable_attempts: {sum(stats.unavailable.values())}")
        for name, s in restarts.items():
            print(f"restart_{name}_s: {s:.1f}")
    print(f"finalize_errors: {fin_errors}")
    print(f"acknowledged_rows: {acked}")
    print(f"lost_rows: {lost}")
    print(f"duplicated_rows: {dup}")
    page_p99 = _pct(stats.lat.get("page", []), 0.99)
    ok = not stats.errors and not lost and not dup and not fin_errors and page_p99 < 250
    print(f"goals_met: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
