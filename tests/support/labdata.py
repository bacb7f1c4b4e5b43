"""Deterministic lab data for the notebook-experience tests and benchmark.

``fill_org(vault, org, runs=N)`` writes N runs with process series, tool state, metrology (XRD for
every run, XPS for every third) and context labels through the real stores. Values depend only on
the run index, so tests can assert on them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
INSTRUMENTS = [("mbe-1", "MBE"), ("pld-2", "PLD"), ("sputter-3", "sputtering")]
PROJECTS = ["gaas-qw", "ito-films", "sto-buffer"]
OPERATORS = ["ana", "ben", "chen"]
PROCESS_CHANNELS = [
    ("rheed_intensity", "a.u."),
    ("substrate_temp", "degC"),
    ("growth_rate", "nm/min"),
]
TOOL_CHANNELS = [("cell_temp", "degC"), ("chamber_pressure", "Torr")]


def run_id(i: int) -> str:
    """The id of run number ``i``."""
    return f"R-{i:05d}"


def xrd_peak(i: int) -> float:
    """Where run ``i``'s XRD peak sits (2θ, degrees)."""
    return 30.0 + (i % 7) * 0.5


def runs_table(n: int) -> pa.Table:
    """The runs table: one run every 6 hours; the last one is still active."""
    idx = np.arange(n)
    start = [T0 + timedelta(hours=6 * int(i)) for i in idx]
    end = [s + timedelta(hours=2) for s in start]
    status = ["complete" if i % 10 else "error" for i in idx]
    if n:
        status[-1] = "active"
        end[-1] = None
    return pa.table(
        {
            "run_id": [run_id(int(i)) for i in idx],
            "project": [PROJECTS[i % 3] for i in idx],
            "sample": [f"S-{i:05d}" for i in idx],
            "instrument": [INSTRUMENTS[i % 3][0] for i in idx],
            "method": [INSTRUMENTS[i % 3][1] for i in idx],
            "operator": [OPERATORS[(i // 3) % 3] for i in idx],
            "start": pa.array(start, TS),
            "end": pa.array(end, TS),
            "status": status,
            "updated_at": pa.array(start, TS),
        }
    )


def series_table(runs: list[int], points: int) -> pa.Table:
    """Process series: three channels, one point every 30 s."""
    cols: dict[str, list] = {"run_id": [], "time": [], "channel": [], "value": [], "unit": []}
    k = np.arange(points)
    for i in runs:
        t = [T0 + timedelta(hours=6 * i, seconds=30 * int(j)) for j in k]
        for ch, unit in PROCESS_CHANNELS:
            if ch == "rheed_intensity":
                v = 1000 + 200 * np.cos(2 * np.pi * k / 12.0) * np.exp(-k / 400) + i
            elif ch == "substrate_temp":
                v = 580 + 0.01 * k + (i % 5)
            else:
                v = np.full(points, 0.5 + 0.01 * (i % 7))
            cols["run_id"] += [run_id(i)] * points
            cols["time"] += t
            cols["channel"] += [ch] * points
            cols["value"] += v.tolist()
            cols["unit"] += [unit] * points
    cols["time"] = pa.array(cols["time"], TS)
    return pa.table(cols)


def tool_table(runs: list[int], points: int) -> pa.Table:
    """Tool state: cell temperature and chamber pressure with setpoints, one point a minute."""
    cols: dict[str, list] = {
        "run_id": [],
        "tool": [],
        "time": [],
        "channel": [],
        "value": [],
        "setpoint": [],
        "unit": [],
    }
    n = max(points // 2, 2)
    k = np.arange(n)
    for i in runs:
        t = [T0 + timedelta(hours=6 * i, seconds=60 * int(j)) for j in k]
        for ch, unit in TOOL_CHANNELS:
            if ch == "cell_temp":
                sp = np.full(n, 900.0 + (i % 4) * 10)
                v = sp - 5 * np.exp(-k / 20)
            else:
                sp = np.full(n, 1e-9)
                v = 1e-9 * (1 + 0.1 * np.sin(k / 5))
            cols["run_id"] += [run_id(i)] * n
            cols["tool"] += [INSTRUMENTS[i % 3][0]] * n
            cols["time"] += t
            cols["channel"] += [ch] * n
            cols["value"] += v.tolist()
            cols["setpoint"] += sp.tolist()
            cols["unit"] += [unit] * n
    cols["time"] = pa.array(cols["time"], TS)
    return pa.table(cols)


def metrology_table(runs: list[int]) -> pa.Table:
    """XRD 2θ scans for every run (one Gaussian peak), XPS for every third run."""
    rows = []
    two_theta = np.linspace(20, 60, 400)
    be = np.linspace(0, 100, 200)
    for i in runs:
        p = xrd_peak(i)
        y = 10 + 1000 * np.exp(-((two_theta - p) ** 2) / (2 * 0.15**2))
        rows.append(
            {
                "item_id": f"M-{i:05d}-xrd",
                "run_id": run_id(i),
                "sample": f"S-{i:05d}",
                "technique": "XRD",
                "time": T0 + timedelta(hours=6 * i + 4),
                "x": two_theta.tolist(),
                "y": y.tolist(),
                "x_unit": "deg",
                "y_unit": "counts",
                "peaks": [p],
                "result_name": "fwhm",
                "result_value": 0.35 + 0.01 * (i % 5),
                "result_unit": "deg",
            }
        )
        if i % 3 == 0:
            y2 = 50 + 400 * np.exp(-((be - 41.0) ** 2) / 2.0)
            rows.append(
                {
                    "item_id": f"M-{i:05d}-xps",
                    "run_id": run_id(i),
                    "sample": f"S-{i:05d}",
                    "technique": "XPS",
                    "time": T0 + timedelta(hours=6 * i + 5),
                    "x": be.tolist(),
                    "y": y2.tolist(),
                    "x_unit": "eV",
                    "y_unit": "counts",
                    "peaks": [41.0],
                    "result_name": "ga_fraction",
                    "result_value": 0.5,
                    "result_unit": "",
                }
            )
    return pa.Table.from_pylist(rows)


def labels(runs: list[int]) -> list[dict]:
    """Materials-system labels of the runs."""
    films = [("GaAs", "GaAs(001)"), ("ITO", "glass"), ("SrTiO3", "Si(001)")]
    return [
        {
            "run_id": run_id(i),
            "sample": f"S-{i:05d}",
            "material_system": f"{films[i % 3][0]}/{films[i % 3][1]}",
            "film": films[i % 3][0],
            "substrate": films[i % 3][1],
            "layer_stack": [films[i % 3][1], films[i % 3][0]],
            "target_formula": films[i % 3][0],
            "tags": ["demo"],
            "notes": "",
        }
        for i in runs
    ]


def fill_org(
    vault,
    org: str,
    runs: int = 30,
    points: int = 240,
    detail_runs: int | None = None,
    actor: str = "test",
) -> None:
    """Write ``runs`` runs; series, tool state and metrology for the first ``detail_runs``."""
    store = vault.store(org)
    store.table("process/runs").write(runs_table(runs), actor=actor)
    detail = list(range(runs if detail_runs is None else min(detail_runs, runs)))
    if detail:
        store.table("process/series").write(series_table(detail, points), actor=actor)
        store.table("tool_state/readings").write(tool_table(detail, points), actor=actor)
        store.table("metrology/items").write(metrology_table(detail), actor=actor)
        vault.context(org).put(labels(detail), actor=actor)


class RoleAccess:
    """A ``LocalAccess`` whose users have one role's permissions (``ATOMSCALE_TEST_ROLE``)."""

    def __new__(cls, org, **kw):
        import os

        from atomscale_lab.permissions import ROLE_PERMISSIONS
        from atomscale_lab.server.access import LocalAccess

        class _Access(LocalAccess):
            def permissions(self, user):
                return set(ROLE_PERMISSIONS[os.environ.get("ATOMSCALE_TEST_ROLE", "viewer")])

            def actor(self, user):
                return f"{os.environ.get('ATOMSCALE_TEST_ROLE', 'viewer')}-user"

        return _Access(org, **kw)
