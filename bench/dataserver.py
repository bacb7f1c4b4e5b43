"""Benchmark of the data API in hub mode: the org's data server vs a direct read.

Builds a throw-away hub deployment (``tests/hub/hubstack.py``) with an extra org ``bench``
(100k runs; process series of 50 runs, 1M rows), logs a scientist in, starts its server and
prints ``name: value`` lines:

- ``arrow_one_run_{direct,data_server,pass_through}_ms`` and ratios: one run's process series as
  an Arrow table — ``OrgTable.read(run_ids=[id])`` in this process (root key, same store) vs
  ``runs/{id}/process?format=arrow`` from the data server through the proxy (what a kernel's
  ``Workspace`` does) and through the user's server pass-through (what the lab sidebar does);
  medians of 7 interleaved rounds after a warm-up; goal: direct / data server ≥ 0.5; each HTTP
  path uncompressed (what the lab extension gets) and with the buffer compression ``Workspace``
  asks for (``_lz4``) and with ``_zstd``, plus the bytes each sends;
- ``catalog_page_{data_server,pass_through}_p50_ms`` / ``_p99_ms``: ``runs`` pages over 100k runs
  (mixed sorts and filters, only pages that exist), measured at the client, the two paths
  interleaved request by request; goal p99 < 100 ms.

Held equal: the same store files, the same run, the same client process and TLS session reuse on
both HTTP paths; both HTTP paths audit each read (one event, posted to ``atomscale-keys``).
Needs root and ``make setup``. Usage: ``python bench/dataserver.py [--runs N] [--rows N]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: tests.support
sys.path.insert(0, str(ROOT / "bench"))

from notebook import series_rows  # noqa: E402

from tests.support import hub_helpers as helpers  # noqa: E402
from tests.support import labdata  # noqa: E402
from tests.support.hubstack import deployment  # noqa: E402

USER = "bench-sci"


SIZES: dict[str, int] = {}


def arrow(sess, url: str, codec: str | None = None, key: str = "") -> pa.Table:
    """GET an Arrow stream (buffers compressed with ``codec`` if given) and decode it."""
    accept = "application/vnd.apache.arrow.stream" + (f"; compression={codec}" if codec else "")
    r = sess.get(url, params={"format": "arrow"}, headers={"Accept": accept}, timeout=120)
    assert r.status_code == 200, r.text[:300]
    assert r.headers.get("X-Arrow-Compression") == codec, r.headers
    SIZES[key] = len(r.content)
    return pa.ipc.open_stream(r.content).read_all()


def main() -> None:
    """Build, start, measure, print."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()

    def populate(vault):
        vault.create_org("bench", "us")
        store = vault.store("bench")
        store.table("process/runs").write(labdata.runs_table(args.runs), actor="bench")
        store.table("process/series").write(series_rows(args.rows, 50), actor="bench")

    t0 = time.monotonic()
    with deployment(runs=4, extra_users={USER: ("bench", "scientist")}, populate=populate) as st:
        print(f"setup_and_hub_ready_s: {time.monotonic() - t0:.1f}")
        s = helpers.session(st.ca)
        r = helpers.login(s, st.url, USER, st.passwords[USER], helpers.fresh_totp(st.idp, USER))
        assert helpers.on_hub(r, st.url), r.text[-300:]
        token = helpers.api_token(s, st.url, USER)
        helpers.start_server(st.url, token, USER, st.ca, timeout=120)
        sess = helpers.session(st.ca)
        sess.headers["Authorization"] = f"token {token}"
        bases = {
            "data_server": f"{st.url}/services/atomscale-data-bench/atomscale/api/v1/",
            "pass_through": f"{st.url}/user/{USER}/atomscale/api/v1/",
        }
        t = time.monotonic()
        r = sess.get(bases["data_server"] + "runs", params={"per_page": 1}, timeout=300)
        assert r.status_code == 200, r.text[:300]
        print(
            f"catalog_first_request_s: {time.monotonic() - t:.2f}  (index already warm or "
            "built by the data server at start)"
        )

        vault = st.vault()
        try:
            series = vault.store("bench").table("process/series")
            rid = labdata.run_id(7)
            fns = {
                "direct": lambda: series.read(run_ids=[rid]),
                **{
                    k + sfx: (
                        lambda b=b, c=c, key=k + sfx: arrow(sess, f"{b}runs/{rid}/process", c, key)
                    )
                    for k, b in bases.items()
                    for sfx, c in (("", None), ("_lz4", "lz4"), ("_zstd", "zstd"))
                },
            }
            times = {k: [] for k in fns}
            rows = {k: fn().num_rows for k, fn in fns.items()}  # warm-up
            assert len(set(rows.values())) == 1, rows
            for _ in range(7):
                for k, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
        finally:
            vault.close()
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"arrow_one_run_rows: {rows['direct']}")
        for k, v in med.items():
            print(f"arrow_one_run_{k}_ms: {v * 1000:.1f}")
        for k, n in SIZES.items():
            print(f"arrow_one_run_{k}_bytes: {n}")
        for k in med:
            if k != "direct":
                print(
                    f"arrow_one_run_ratio_{k}: {med['direct'] / med[k]:.2f}  (direct / {k}; "
                    "goal >= 0.5)"
                )

        # catalogue pages: mixed sorts and filters, only pages that exist
        rng = np.random.default_rng(1)
        sorts = ["start", "run_id", "sample", "project", "status", "end"]
        totals: dict[tuple, int] = {}
        lat = {k: [] for k in bases}
        for i in range(args.requests):
            p = {
                "per_page": "50",
                "sort": sorts[i % len(sorts)],
                "order": "asc" if i % 2 else "desc",
            }
            kind = i % 5
            if kind == 1:
                p["project"] = labdata.PROJECTS[i % 3]
            elif kind == 2:
                p["q"] = f"s-{int(rng.integers(0, 99999)):05d}"[:6]
            elif kind == 3:
                a = labdata.T0 + timedelta(days=int(rng.integers(0, 2000)))
                p["start"] = a.isoformat()
                p["end"] = (a + timedelta(days=90)).isoformat()
            elif kind == 4:
                p.update(instrument="pld-2", status="complete,error")
            key = tuple(sorted((k, v) for k, v in p.items() if k not in ("sort", "order")))
            if key not in totals:  # untimed: how many pages this filter has
                totals[key] = sess.get(bases["data_server"] + "runs", params=p, timeout=60).json()[
                    "total"
                ]
            pages = max(1, math.ceil(totals[key] / 50))
            p["page"] = str(int(rng.integers(1, pages + 1)))
            for k in list(bases) if i % 2 else list(bases)[::-1]:
                t = time.perf_counter()
                r = sess.get(bases[k] + "runs", params=p, timeout=60)
                lat[k].append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text[:300]
                assert r.json()["runs"] or totals[key] == 0, p
        print(f"catalog_runs: {args.runs}")
        for k, v in lat.items():
            v.sort()
            print(f"catalog_page_{k}_p50_ms: {statistics.median(v):.1f}")
            print(f"catalog_page_{k}_p99_ms: {v[int(len(v) * 0.99) - 1]:.1f}  (goal < 100)")
        print(f"load_average_1m: {os.getloadavg()[0]:.1f}")
        print(f"measured_at: {datetime.now(UTC).isoformat(timespec='seconds')}")


if __name__ == "__main__":
    main()
