"""The data server's audit path, the two ways side by side in one process, requests interleaved.

Two data servers of one org on 127.0.0.1 (plain HTTP, no proxy, a stub hub resolving one token)
differ only in how a read's ``data.read`` event reaches the key service:

- ``posted_in_call``: posted synchronously inside the service call, as a sink that is no
  ``ServiceAuditSink`` is (the data server's behaviour before events were collected);
- ``posted_while_encoding``: collected during the call and posted from the audit pool while the
  answer is encoded; nothing is sent before the post is confirmed.

The "key service" is this process: 0.5 ms for the socket round trip, then the org's real audit
log (hash chain, fsync, group commit). Prints ``name: value`` lines: medians of one run's process
series as Arrow (zstd) and as downsampled JSON, and of catalogue pages, each next to a direct
``OrgTable.read``; then catalogue pages from ``--clients`` concurrent clients (throughput, p50,
p99), the two servers alternating. Then the key service's own appends, ``--clients`` concurrent
posts of the data server, appended on the event loop (before) or on worker threads (now).

What it leaves out: TLS, the proxy hop and separate processes (``bench/dataserver.py`` measures
the deployment; on a loaded 2-core machine its run-to-run spread exceeds these differences).
Usage: ``python bench/audit_overlap.py [--rounds 80] [--clients 24] [--seconds 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: tests.support
sys.path.insert(0, str(ROOT / "bench"))

from notebook import series_rows  # noqa: E402
from tornado.httpclient import AsyncHTTPClient  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.testing import bind_unused_port  # noqa: E402

from tests.support import labdata  # noqa: E402

ACCEPT_ZSTD = "application/vnd.apache.arrow.stream; compression=zstd"
TOKEN = "bench-token"


def main() -> None:
    """Build, serve, measure, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=80)
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="atomscale-bench-")
    os.environ["ATOMSCALE_HOME"] = home
    os.environ.pop("JUPYTERHUB_SERVICE_PREFIX", None)
    key = subprocess.run(
        [sys.executable, "-m", "atomscale_lab.cli.main", "root-key", "generate"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    os.environ["ATOMSCALE_ROOT_KEY"] = key

    from atomscale_lab.hub.roles import org_scope
    from atomscale_lab.hub.services import data as ds
    from atomscale_lab.server.access import LocalAccess
    from atomscale_lab.vault.facade import Vault
    from tests.hub.test_hub_services import StubHubAuth

    vault = Vault()
    vault.create_org("acme", "us")
    store = vault.store("acme")
    store.table("process/runs").write(labdata.runs_table(20_000), actor="bench")
    store.table("process/series").write(series_rows(200_000, 10), actor="bench")
    rid = labdata.run_id(7)

    def key_service(body: dict) -> None:
        time.sleep(0.0005)  # the Unix-socket round trip
        vault.audit("acme").record(body["actor"], body["action"], body["outcome"], **body["detail"])

    class PostedInCall:
        """A sink posting at once (no ``ServiceAuditSink``: the data server does not defer)."""

        def record(self, actor, action, outcome="allowed", **detail):
            key_service(
                {"actor": str(actor), "action": action, "outcome": outcome, "detail": detail}
            )

    class Access(LocalAccess):
        def __init__(self, *a, deferred: bool, **kw):
            super().__init__(*a, **kw)
            self._sink = ds.ServiceAuditSink(self) if deferred else PostedInCall()

        def permissions(self, user):
            return set(user.permissions) if isinstance(user, ds.Caller) else set()

        def actor(self, user):
            return str(user)

        def audit(self):
            return self._sink

        def _call(self, method, service, path, *, json=None, **kw):
            key_service(json)

    tokens = {TOKEN: {"kind": "user", "name": "ann", "scopes": [org_scope("data:read", "acme")]}}
    bases: dict[str, str] = {}
    for name, deferred in (("posted_in_call", False), ("posted_while_encoding", True)):
        holder = ds.OrgServiceHolder(
            access_factory=lambda d=deferred: Access("acme", vault=vault, deferred=d)
        )
        app = ds.DataServiceApp(org="acme", holder=holder)
        ready = threading.Event()

        def serve(app=app, name=name, ready=ready):
            asyncio.set_event_loop(asyncio.new_event_loop())
            sock, port = bind_unused_port()
            HTTPServer(app.make_app(hub_auth=StubHubAuth(tokens))).add_sockets([sock])
            bases[name] = f"http://127.0.0.1:{port}{app.prefix}atomscale/api/v1/"
            ready.set()
            asyncio.get_event_loop().run_forever()

        threading.Thread(target=serve, daemon=True).start()
        ready.wait()
        holder.warm()

    local = threading.local()

    def session() -> requests.Session:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
            s.trust_env = False
            s.headers["Authorization"] = f"token {TOKEN}"
        return s

    def arrow(base):
        r = session().get(
            base + f"runs/{rid}/process",
            params={"format": "arrow"},
            headers={"Accept": ACCEPT_ZSTD},
        )
        assert r.status_code == 200, r.text[:200]
        return pa.ipc.open_stream(r.content).read_all()

    def frame_json(base):
        r = session().get(base + f"runs/{rid}/process", params={"max_points": "2000"})
        assert r.status_code == 200, r.text[:200]
        return r.json()

    def page(base, rng=random.Random(1)):
        params = {
            "per_page": 50,
            "page": rng.randint(1, 400),
            "sort": rng.choice(["start", "run_id"]),
        }
        r = session().get(base + "runs", params=params)
        assert r.status_code == 200, r.text[:200]
        return r.json()

    series = store.table("process/series")
    for fn in (arrow, frame_json, page):  # warm-up
        for b in bases.values():
            fn(b)
    for label, fn in (("arrow_one_run_zstd", arrow), ("json_one_run", frame_json), ("page", page)):
        times: dict[str, list[float]] = {k: [] for k in bases}
        direct = []
        for i in range(args.rounds):
            for k in list(bases) if i % 2 else list(bases)[::-1]:
                t = time.perf_counter()
                fn(bases[k])
                times[k].append(time.perf_counter() - t)
            t = time.perf_counter()
            series.read(run_ids=[rid])
            direct.append(time.perf_counter() - t)
        d = statistics.median(direct)
        if fn is arrow:  # the same table as a direct read, the goal's ratio
            print(f"{label}_direct_read_ms: {d * 1000:.2f}")
        for k, v in times.items():
            m = statistics.median(v)
            ratio = f"  (direct / http {d / m:.2f})" if fn is arrow else ""
            print(f"{label}_{k}_ms: {m * 1000:.2f}{ratio}")

    def burst(base) -> list[float]:
        lat: list[float] = []
        stop = time.monotonic() + args.seconds

        def client():
            rng = random.Random()
            while time.monotonic() < stop:
                t = time.perf_counter()
                page(base, rng)
                lat.append(time.perf_counter() - t)

        with ThreadPoolExecutor(args.clients) as ex:
            for _ in range(args.clients):
                ex.submit(client)
        return lat

    conc: dict[str, list[float]] = {k: [] for k in bases}
    for rnd in range(2):
        for k in list(bases) if rnd % 2 else list(bases)[::-1]:
            conc[k] += burst(bases[k])
    for k, v in conc.items():
        _summary(f"page_{args.clients}_clients_{k}", v, 2 * args.seconds)
    asyncio.run(_key_service_appends(vault, args.clients))
    print(f"load_average_1m: {os.getloadavg()[0]:.1f}")
    vault.close()
    shutil.rmtree(home, ignore_errors=True)


async def _key_service_appends(vault, clients: int) -> None:
    """Concurrent posts of the data server to an in-process key service: appends on the event
    loop (the service before) vs on worker threads (group commit)."""
    from atomscale_lab.hub.services import keys as keys_service
    from tests.hub.test_hub_services import TOKENS, StubHubAuth

    AsyncHTTPClient.configure(None, max_clients=max(clients, 10))
    app = keys_service.app.make_app(vault=vault, hub_auth=StubHubAuth(TOKENS))
    sock, port = bind_unused_port()
    HTTPServer(app).add_sockets([sock])
    url = f"http://127.0.0.1:{port}/services/atomscale-keys/orgs/acme/audit"

    async def inline(fn, *a, **kw):
        return fn(*a, **kw)

    async def one(i: int) -> float:
        t = time.perf_counter()
        body = {"actor": f"u{i}", "action": "data.read", "detail": {"rows": i}}
        r = await AsyncHTTPClient().fetch(
            url, method="POST", headers={"Authorization": "token data-acme"}, body=json.dumps(body)
        )
        assert r.code == 201
        return time.perf_counter() - t

    lat: dict[str, list[float]] = {"on_event_loop": [], "on_worker_threads": []}
    wall = dict.fromkeys(lat, 0.0)
    real = keys_service.asyncio
    try:
        for rnd in range(6):
            for k in list(lat) if rnd % 2 else list(lat)[::-1]:
                keys_service.asyncio = (
                    types.SimpleNamespace(to_thread=inline) if k == "on_event_loop" else real
                )
                t = time.perf_counter()
                lat[k] += await asyncio.gather(*(one(i) for i in range(clients)))
                wall[k] += time.perf_counter() - t
    finally:
        keys_service.asyncio = real
    for k, v in lat.items():
        _summary(f"key_service_{clients}_concurrent_appends_{k}", v, wall[k])
    vault.audit("acme").verify()


def _summary(name: str, lat: list[float], seconds: float) -> None:
    lat = sorted(lat)
    print(
        f"{name}: {len(lat) / seconds:.0f}/s, p50 {statistics.median(lat) * 1000:.1f} ms, "
        f"p99 {lat[max(0, int(len(lat) * 0.99) - 1)] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
