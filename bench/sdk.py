"""The hosted platform's SDK (``atomscale``) against atomscale-lab, next to the native clients.

Builds a throw-away deployment, starts the ingest service (``--http`` on 127.0.0.1) and a
single-user ``jupyter server`` with the extension, and prints ``name: value`` lines, in one run:

- ``sdk_stream_multi_rows_per_s``: ``TimeseriesStreamer.push_multi`` of ``--points`` points
  (``--channels`` channels, ``--points-per-chunk`` points per channel and chunk) until
  ``finalize()`` returns (every point fsynced in the WAL and committed to the store);
- ``sdk_stream_run_rows_per_s``: ``TimeseriesStreamer.run`` (one channel, blocking) likewise;
- ``native_json_rows_per_s`` / ``native_arrow_rows_per_s``: the native ingest API with batches of
  the same size (JSON rows, and Arrow IPC), sent back to back over the same plain-HTTP loopback,
  until ``finalize`` returns;
- ``sdk_get_1m_s``: ``Client.get([id])`` of a run with ``--get-points`` points (4 channels),
  JSON over HTTP into the SDK's wide DataFrame, vs ``workspace_process_1m_s`` (long Arrow frame)
  and ``workspace_process_wide_1m_s`` (``wide=True``) through the data server;
  ``sdk_endpoint_fetch_1m_s`` is the same endpoint's bytes fetched with ``requests``, unparsed
  (the server's share of ``get()``); medians of ``--repeat``.

The SDK runs in its own virtual environment (``.venv-sdk``, made by ``make setup``).
Usage: ``python bench/sdk.py [--points 200000] [--get-points 1000000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: tests.support

from tests.support.nbserver import free_port, start_server, stop_server  # noqa: E402

SDK_PYTHON = ROOT / ".venv-sdk" / "bin" / "python"
DRIVER = ROOT / "tests" / "ingest" / "_sdk_driver.py"
TS = pa.timestamp("us", tz="UTC")


def sdk(url: str, key: str, doc: dict) -> dict:
    """One SDK operation in the SDK's environment (clock correction off: same machine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMSCALE_")}
    env.update(AS_API_KEY=key, AS_API_ENDPOINT=url, ATOMSCALE_SKIP_CLOCK_SYNC="1", MPLBACKEND="Agg")
    out = subprocess.run(
        [str(SDK_PYTHON), str(DRIVER), json.dumps(doc)],
        env=env,
        capture_output=True,
        timeout=1800,
        check=True,
    )
    res = json.loads(out.stdout)
    if "error" in res:
        raise RuntimeError(f"SDK: {res}")
    return res


def native(url: str, key: str, run: str, points: int, per: int, chans: int, arrow: bool) -> float:
    """Rows/s of the native ingest API with the SDK's chunk sizes, until finalize returns."""
    s = requests.Session()
    s.trust_env = False
    s.headers["Authorization"] = f"Bearer {key}"
    sid = s.post(
        url + "/streams",
        json={"run_id": run, "tool": "bench", "category": "tool_state"},
        timeout=60,
    ).json()["id"]
    bodies = []
    for k in range(points // (per * chans)):
        ts = 1.77e9 + (k * per + np.arange(per)) * 0.001
        t = pa.table(
            {
                "time": pa.array(np.round(np.tile(ts, chans) * 1e6).astype(np.int64)).cast(TS),
                "channel": pa.array(np.repeat([f"ch{c}" for c in range(chans)], per)),
                "value": pa.array(np.tile(np.arange(per, dtype=np.float64), chans)),
                "unit": pa.array(["V"] * (per * chans)),
            }
        )
        if arrow:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, t.schema) as w:
                w.write_table(t)
            bodies.append(sink.getvalue().to_pybytes())
        else:
            rows = [
                {"time": int(v) / 1e6, "channel": c, "value": x, "unit": "V"}
                for v, c, x in zip(
                    t.column("time").cast(pa.int64()).to_pylist(),
                    t.column("channel").to_pylist(),
                    t.column("value").to_pylist(),
                    strict=True,
                )
            ]
            for r in rows:  # the JSON API takes ISO 8601 times
                r["time"] = np.datetime64(int(r["time"] * 1e6), "us").astype(str) + "Z"
            bodies.append(json.dumps({"batch_id": f"b{k:06d}", "rows": rows}).encode())
    t0 = time.perf_counter()
    for k, b in enumerate(bodies):
        headers = (
            {"Content-Type": "application/vnd.apache.arrow.stream", "X-Batch-Id": f"b{k:06d}"}
            if arrow
            else {"Content-Type": "application/json"}
        )
        s.post(
            url + f"/streams/{sid}/batches", data=b, headers=headers, timeout=120
        ).raise_for_status()
    while True:
        r = s.post(url + f"/streams/{sid}/finalize", timeout=120)
        if r.status_code != 503:
            r.raise_for_status()
            break
    return len(bodies) * per * chans / (time.perf_counter() - t0)


def main() -> None:
    """Build, start, measure, print, stop."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--points-per-chunk", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=4)
    ap.add_argument("--get-points", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not SDK_PYTHON.exists():
        raise SystemExit("the SDK's virtual environment is missing: run `make setup`")

    from atomscale_lab.client.workspace import Workspace
    from atomscale_lab.ingest.apikeys import for_vault
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.kms import generate_root_key
    from atomscale_lab.vault.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="atomscale-bench-sdk-"))
    home = tmp / "home"
    home.mkdir()
    os.environ["ATOMSCALE_HOME"] = str(home)
    os.environ["ATOMSCALE_ROOT_KEY"] = generate_root_key()
    for v in ("ATOMSCALE_ROOT_KEY_FILE", "ATOMSCALE_DATA_ROOT", "ATOMSCALE_CONTEXT_ROOT"):
        os.environ.pop(v, None)
    vault = Vault(Settings.load(home))
    vault.create_org("bench", "us")
    keys = for_vault(vault)
    key, _ = keys.create(
        "bench", "ingest:tool_state,read:process,read:tool_state", timedelta(days=1)
    )

    # a 1M-point run for get(): 4 process channels, 1 s apart
    n = args.get_points // 4
    t0 = 1_767_225_600_000_000
    vault.store("bench").table("process/runs").write(
        pa.table(
            {
                "run_id": ["big"],
                "start": pa.array([t0], pa.int64()).cast(TS),
                "status": ["complete"],
                "updated_at": pa.array([t0], pa.int64()).cast(TS),
            }
        )
    )
    vault.store("bench").table("process/series").write(
        pa.table(
            {
                "run_id": ["big"] * (4 * n),
                "time": pa.array(np.tile(t0 + np.arange(n) * 1_000_000, 4), pa.int64()).cast(TS),
                "channel": pa.array(np.repeat(["a", "b", "c", "d"], n)),
                "value": pa.array(np.sin(np.arange(4 * n) / 50.0)),
                "unit": pa.array(["V"] * (4 * n)),
            }
        )
    )

    port = free_port()
    log = open(tmp / "ingest.log", "wb")  # noqa: SIM115
    ingest = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atomscale_lab.ingest.service",
            "--http",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=dict(os.environ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB")}
    env.update({"JUPYTER_RUNTIME_DIR": str(tmp / "rt"), "JUPYTER_CONFIG_DIR": str(tmp / "cfg")})
    server = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url + "/health", timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline or ingest.poll() is not None:
                    raise RuntimeError((tmp / "ingest.log").read_text()) from None
                time.sleep(0.05)
        server, lab_url, token = start_server(
            env, tmp, "bench", tmp / "server.log", extra=["--ServerApp.log_level=WARN"]
        )
        ws = Workspace(url=lab_url, token=token)
        sdk_url = url + "/sdk/"
        per, chans = args.points_per_chunk, args.channels
        print(f"points: {args.points} ({chans} channels x {per} points per chunk)")

        res = sdk(
            sdk_url,
            key,
            {
                "op": "stream_generated",
                "name": "multi",
                "mode": "multi",
                "points": args.points,
                "points_per_chunk": per,
                "channels": chans,
            },
        )
        stored = len(ws.tool_state(res["data_id"]))
        print(
            f"sdk_stream_multi_rows_per_s: {res['points'] / res['seconds']:.0f} "
            f"(stored {stored} of {res['points']})"
        )
        res = sdk(
            sdk_url,
            key,
            {
                "op": "stream_generated",
                "name": "one",
                "mode": "run",
                "points": args.points // chans,
                "points_per_chunk": per,
                "channels": 1,
            },
        )
        stored = len(ws.tool_state(res["data_id"]))
        print(
            f"sdk_stream_run_rows_per_s: {res['points'] / res['seconds']:.0f} "
            f"(stored {stored} of {res['points']})"
        )
        print(
            f"native_json_rows_per_s: "
            f"{native(url, key, 'nat-json', args.points, per, chans, False):.0f}"
        )
        print(
            f"native_arrow_rows_per_s: "
            f"{native(url, key, 'nat-arrow', args.points, per, chans, True):.0f}"
        )

        gets = [sdk(sdk_url, key, {"op": "get_timed", "ids": ["big"]}) for _ in range(args.repeat)]
        print(
            f"sdk_get_1m_s: {statistics.median(g['seconds'] for g in gets):.2f} "
            f"({gets[0]['rows']} rows x {gets[0]['columns']} columns)"
        )
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            body = requests.get(
                sdk_url + "tool-state/big/timeseries/", headers={"X-API-KEY": key}, timeout=600
            ).content
            times.append(time.perf_counter() - t)
        print(
            f"sdk_endpoint_fetch_1m_s: {statistics.median(times):.2f} "
            f"({len(body) / 1e6:.0f} MB of JSON)"
        )
        for name, kw in (
            ("workspace_process_1m_s", {}),
            ("workspace_process_wide_1m_s", {"wide": True}),
        ):
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                df = ws.process("big", **kw)
                times.append(time.perf_counter() - t)
            print(f"{name}: {statistics.median(times):.2f} ({len(df)} rows)")
    finally:
        if server is not None:
            stop_server(server)
        if ingest.poll() is None:
            os.kill(ingest.pid, signal.SIGTERM)
            ingest.wait(60)
        log.close()


if __name__ == "__main__":
    main()
