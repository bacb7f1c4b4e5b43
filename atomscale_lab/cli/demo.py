"""Demo data: deterministic, physically plausible growth runs of a thin-film lab.

Four instruments grow four materials systems: GaAs/AlGaAs by solid-source MBE (``MBE-1``), GaN
on sapphire by plasma-assisted MBE (``MBE-2``), La0.7Sr0.3MnO3 on SrTiO3 by PLD (``PLD-2``) and
reactive-sputtered TiN on Si (``SPUT-1``). Each run gets

- a run record (project, sample, operator, start/end, status — mostly ``complete``, a few
  ``error`` / ``interrupted``);
- process series: substrate temperature ramp / plateau (wandering ±1.5 °C) / cool-down, the
  recipe's growth rate, RHEED specular intensity with damped oscillations whose period is the
  monolayer time (1 / actual growth rate; a fifth of the runs noisy, a fifth strongly damped,
  ~12 % grown by a cell that drifted 8–15 % off the recipe), and the RHEED oscillation period;
- tool state: effusion-cell (or laser, gas, target) setpoints and lagging, noisy readbacks, shutter
  states, chamber pressure;
- metrology: an XRD 2θ scan with the system's reflections (film peak width = size broadening
  plus defect broadening that shrinks with growth temperature), an XPS survey with its core
  levels, an AFM roughness;
- context labels (materials system, film, substrate, layer stack, target formula, tags, notes),
  which are handed only to the context store.

:func:`build` is pure (same ``seed`` → identical tables) and returns the physical truth of each
run (``DemoData.truth``) for validating analyses; :func:`generate` writes them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from atomscale_lab.schema import CONTEXT, METROLOGY, RUNS, SERIES, TOOL_STATE

BASE_TIME = datetime(2026, 1, 5, 7, 30, tzinfo=UTC)
"""Start of the first demo run (fixed, so the same seed gives the same bytes)."""
CU_KA = 1.5406
"""Cu Kα1 wavelength in Å (XRD)."""
RHEED_SAMPLES_PER_PERIOD = 12

PROJECTS = ("aurora", "borealis", "cascade", "dynamo")
OPERATORS = ("akim", "bnguyen", "cfischer", "dpatel", "eromero", "fsato")


@dataclass(frozen=True)
class System:
    """One instrument and the materials system it grows, with its physical constants."""

    instrument: str
    method: str
    weight: float
    material_system: str
    substrate: str
    ml_nm: float
    """Thickness of one monolayer (or unit cell) in nm."""
    rate: tuple[float, float]
    """Growth rate range, in monolayers per second (nm/s where there is no RHEED)."""
    rheed: bool
    growth_temp: tuple[float, float]
    duration_min: tuple[float, float]
    xrd_range: tuple[float, float]
    xrd_substrate: tuple[str, float]
    xps: tuple[tuple[str, float, float], ...]
    """(core level, binding energy in eV, relative area)."""
    roughness_nm: tuple[float, float]
    tags: tuple[str, ...]
    cells: dict = field(default_factory=dict)


SYSTEMS = (
    System(
        "MBE-1",
        "MBE",
        0.40,
        "GaAs/AlGaAs",
        "GaAs(001)",
        0.28267,
        (0.55, 1.10),
        True,
        (575.0, 600.0),
        (70, 140),
        (64.6, 67.2),
        ("GaAs(004)", 66.05),
        (
            ("Ga 3d", 19.0, 1.0),
            ("As 3d", 41.0, 0.9),
            ("Al 2p", 73.0, 0.25),
            ("C 1s", 284.8, 0.2),
            ("O 1s", 531.0, 0.3),
            ("Ga 2p3/2", 1117.0, 0.0),
        ),
        (0.12, 0.35),
        ("hemt-calibration", "superlattice-test", "doping-series", "interface-study"),
        {
            "Ga": (550.0, (890.0, 960.0)),
            "Al": (700.0, (1060.0, 1120.0)),
            "As": (250.0, (330.0, 380.0)),
        },
    ),
    System(
        "MBE-2",
        "MBE",
        0.20,
        "GaN/Al2O3",
        "Al2O3(0001)",
        0.25926,
        (0.15, 0.35),
        True,
        (700.0, 760.0),
        (90, 180),
        (32.5, 43.0),
        ("Al2O3(0006)", 41.68),
        (
            ("Ga 3d", 20.0, 1.0),
            ("N 1s", 397.0, 0.8),
            ("C 1s", 284.8, 0.15),
            ("O 1s", 531.5, 0.35),
            ("Ga LMM", 423.0, 0.4),
        ),
        (0.4, 1.6),
        ("buffer-optimisation", "nucleation-study", "metal-rich-growth"),
        {"Ga": (600.0, (960.0, 1010.0))},
    ),
    System(
        "PLD-2",
        "PLD",
        0.25,
        "La0.7Sr0.3MnO3/SrTiO3",
        "SrTiO3(001)",
        0.3905,
        (0.05, 0.16),
        True,
        (680.0, 750.0),
        (40, 90),
        (44.0, 49.5),
        ("SrTiO3(002)", 46.47),
        (
            ("Sr 3d", 133.0, 0.7),
            ("Ti 2p", 459.0, 0.15),
            ("O 1s", 529.6, 1.0),
            ("La 4d", 102.0, 0.5),
            ("Mn 2p", 641.5, 0.8),
            ("La 3d", 834.0, 1.2),
            ("C 1s", 284.8, 0.12),
        ),
        (0.15, 0.5),
        ("magnetic-oxide", "thickness-series", "fluence-scan", "dead-layer-study"),
    ),
    System(
        "SPUT-1",
        "sputtering",
        0.15,
        "TiN/Si",
        "Si(001)",
        0.0,
        (0.05, 0.20),
        False,
        (300.0, 450.0),
        (25, 60),
        (34.0, 72.0),
        ("Si(004)", 69.13),
        (
            ("Ti 2p", 455.0, 1.0),
            ("N 1s", 397.0, 0.7),
            ("O 1s", 530.5, 0.4),
            ("C 1s", 284.8, 0.25),
            ("Si 2p", 99.3, 0.05),
        ),
        (0.6, 2.5),
        ("diffusion-barrier", "reactive-sputter", "plasmonic-film"),
    ),
)


def two_theta(d_angstrom: float) -> float:
    """Bragg angle 2θ (degrees) of a lattice spacing under Cu Kα1."""
    return float(np.degrees(2 * np.arcsin(CU_KA / (2 * d_angstrom))))


@dataclass
class DemoData:
    """The generated tables (raw data) and the labels (for the context store only)."""

    runs: pa.Table
    series: pa.Table
    tool_state: pa.Table
    metrology: pa.Table
    labels: pa.Table
    truth: dict = field(default_factory=dict)
    """Per run: the physical parameters used (growth rate, monolayer time, peak positions)."""

    def tables(self) -> dict[str, pa.Table]:
        """Raw-data tables by table name."""
        return {
            RUNS.name: self.runs,
            SERIES.name: self.series,
            TOOL_STATE.name: self.tool_state,
            METROLOGY.name: self.metrology,
        }


def _us(dt: datetime) -> int:
    return int(dt.timestamp() * 1_000_000)


class _Cols:
    """Column-wise accumulator of rows for one table."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.parts: dict[str, list] = {n: [] for n in schema.names}

    def add(self, n: int, **cols) -> None:
        for name in self.schema.names:
            v = cols.get(name)
            if isinstance(v, np.ndarray):
                self.parts[name].append(v)
            else:
                self.parts[name].append(
                    np.full(n, v, dtype=object)
                    if not isinstance(v, float | int) or isinstance(v, bool)
                    else np.full(n, v)
                )

    def table(self) -> pa.Table:
        cols = {}
        for f in self.schema:
            chunks = self.parts[f.name]
            if not chunks:
                cols[f.name] = pa.array([], type=f.type)
                continue
            arrays = []
            for c in chunks:
                if pa.types.is_timestamp(f.type) and c.dtype != object:
                    arrays.append(pa.array(c.astype("int64"), type=pa.int64()).cast(f.type))
                elif f.type == pa.float64() and c.dtype != object:
                    arrays.append(pa.array(c.astype("float64"), type=f.type, from_pandas=True))
                else:
                    arrays.append(pa.array(list(c), type=f.type, from_pandas=True))
            cols[f.name] = pa.chunked_array(arrays, type=f.type).combine_chunks()
        return pa.table(cols, schema=self.schema)


def _obj(value) -> np.ndarray:
    """A one-element object array holding ``value`` (a list stays one cell)."""
    arr = np.empty(1, dtype=object)
    arr[0] = value
    return arr


def _first_order_lag(setpoint: np.ndarray, t: np.ndarray, tau: float) -> np.ndarray:
    """Readback of a controller with time constant ``tau`` following ``setpoint``."""
    out = np.empty_like(setpoint)
    out[0] = setpoint[0]
    for i in range(1, len(t)):
        a = 1 - np.exp(-(t[i] - t[i - 1]) / tau)
        out[i] = out[i - 1] + a * (setpoint[i] - out[i - 1])
    return out


def _ramp_to(t: np.ndarray, t0: float, v0: float, v1: float, rate_per_s: float) -> np.ndarray:
    """A setpoint that leaves ``v0`` at ``t0`` and moves to ``v1`` at a limited rate."""
    dur = abs(v1 - v0) / rate_per_s if rate_per_s > 0 else 0.0
    frac = np.clip((t - t0) / dur, 0, 1) if dur > 0 else (t >= t0).astype(float)
    return v0 + (v1 - v0) * frac


def _pseudo_voigt(x: np.ndarray, x0: float, fwhm: float, eta: float = 0.5) -> np.ndarray:
    g = np.exp(-4 * np.log(2) * ((x - x0) / fwhm) ** 2)
    lor = 1 / (1 + 4 * ((x - x0) / fwhm) ** 2)
    return eta * lor + (1 - eta) * g


def _pick_statuses(rng: np.random.Generator, n: int) -> list[str]:
    statuses = ["complete"] * n
    bad = rng.permutation(n)
    n_err = max(1, round(0.06 * n)) if n >= 8 else 0
    n_int = max(1, round(0.06 * n)) if n >= 8 else 0
    for i in bad[:n_err]:
        statuses[i] = "error"
    for i in bad[n_err : n_err + n_int]:
        statuses[i] = "interrupted"
    return statuses


def build(runs: int = 40, seed: int = 0, points_per_run: int = 600, progress=None) -> DemoData:
    """Generate ``runs`` runs; identical ``seed`` and sizes give identical tables.

    ``points_per_run`` is the number of RHEED intensity samples per run; the slow process and
    tool channels get a quarter of that each. ``progress`` (a callable) is called once per run.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    points = max(60, int(points_per_run))
    slow = max(30, points // 4)
    rng = np.random.default_rng(seed)
    weights = np.array([s.weight for s in SYSTEMS])
    picks = rng.choice(len(SYSTEMS), size=runs, p=weights / weights.sum())
    statuses = _pick_statuses(rng, runs)
    R, S, T, M, L = (_Cols(x.schema) for x in (RUNS, SERIES, TOOL_STATE, METROLOGY, CONTEXT))
    truth: dict[str, dict] = {}
    start_us = _us(BASE_TIME)
    for i in range(runs):
        sysm = SYSTEMS[picks[i]]
        run_rng = np.random.default_rng([seed, i])
        start_us += int(run_rng.uniform(4, 30) * 3600e6)
        _one_run(
            i,
            sysm,
            statuses[i],
            start_us,
            run_rng,
            points,
            slow,
            R,
            S,
            T,
            M,
            L,
            truth,
            np.random.default_rng([seed, i, 1]),
        )
        if progress:
            progress(1)
    return DemoData(R.table(), S.table(), T.table(), M.table(), L.table(), truth)


def _one_run(i, sysm: System, status, start_us, rng, points, slow, R, S, T, M, L, truth, xrng):
    # ``xrng`` draws what later versions added (growth conditions that vary, noisy or strongly
    # damped RHEED, rate drift), so the original draws of ``rng`` stay as they were.
    run_id = f"{sysm.instrument}-{i + 1:04d}"
    sample = f"S-{i + 1:05d}"
    duration = rng.uniform(*sysm.duration_min) * 60.0
    # Phases (seconds from start): heat-up, growth, cool-down.
    t_growth0 = duration * rng.uniform(0.22, 0.30)
    t_growth1 = duration * rng.uniform(0.78, 0.86)
    end_s = duration
    if status == "error":
        end_s = rng.uniform(t_growth0 * 0.5, t_growth0 + 0.3 * (t_growth1 - t_growth0))
    elif status == "interrupted":
        end_s = rng.uniform(t_growth0 + 0.3 * (t_growth1 - t_growth0), t_growth1)
    grown_s = max(0.0, min(end_s, t_growth1) - t_growth0)
    rate = float(rng.uniform(*sysm.rate))
    # The recipe asks for ``rate``; a cell that drifted since its flux calibration grows faster or
    # slower than asked (seen in the RHEED period), while the logged growth_rate stays the recipe's.
    drifted = bool(sysm.rheed and xrng.random() < 0.12)
    actual = rate * (1 + xrng.choice([-1, 1]) * xrng.uniform(0.08, 0.15)) if drifted else rate
    ml_time = 1.0 / actual if sysm.rheed else None
    noisy = bool(xrng.random() < 0.2)
    damped = bool(xrng.random() < 0.2)
    rheed_noise = float(xrng.uniform(0.02, 0.04)) if noisy else 0.008
    t_grow = float(rng.uniform(*sysm.growth_temp))
    end_us = start_us + int(end_s * 1e6)
    project = PROJECTS[int(rng.integers(len(PROJECTS)))]
    operator = OPERATORS[int(rng.integers(len(OPERATORS)))]
    R.add(
        1,
        run_id=run_id,
        project=project,
        sample=sample,
        instrument=sysm.instrument,
        method=sysm.method,
        operator=operator,
        start=np.array([start_us]),
        end=np.array([end_us]),
        status=status,
        updated_at=np.array([end_us]),
    )

    def ts(t):
        return start_us + np.round(np.asarray(t) * 1e6).astype("int64")

    # -- process series --------------------------------------------------------------------
    t = np.linspace(0, end_s, slow)
    temp_sp = np.where(
        t < t_growth0, 200 + (t_grow - 200) * np.clip(t / (0.8 * t_growth0), 0, 1), t_grow
    )
    if sysm.material_system.startswith("GaAs"):  # oxide desorption bump before growth
        bump = (t > 0.55 * t_growth0) & (t < 0.9 * t_growth0)
        temp_sp = np.where(bump, t_grow + 35, temp_sp)
    cool = t > t_growth1
    temp_sp = np.where(cool, 200 + (t_grow - 200) * np.exp(-(t - t_growth1) / 600), temp_sp)
    # a slow wander of the heater around its setpoint, as thermocouple readings show
    wander = 1.5 * np.sin(2 * np.pi * t / max(end_s, 1.0) * xrng.uniform(1, 3) + xrng.uniform(0, 6))
    temp = _first_order_lag(temp_sp, t, 45.0) + rng.normal(0, 0.4, t.size) + wander
    S.add(
        t.size, run_id=run_id, time=ts(t), channel="substrate_temperature", value=temp, unit="degC"
    )

    in_growth = (t >= t_growth0) & (t <= min(end_s, t_growth1))
    tg = t[in_growth]
    if tg.size:
        drift = 1 + 0.006 * np.sin(2 * np.pi * (tg - t_growth0) / max(grown_s, 1.0))
        gr = rate * drift * (1 + rng.normal(0, 0.004, tg.size))
        if sysm.rheed:
            S.add(tg.size, run_id=run_id, time=ts(tg), channel="growth_rate", value=gr, unit="ML/s")
            period = 1 / (gr * actual / rate) * (1 + rng.normal(0, 0.006, tg.size))
            S.add(
                tg.size,
                run_id=run_id,
                time=ts(tg),
                channel="rheed_oscillation_period",
                value=period,
                unit="s",
            )
        else:
            S.add(tg.size, run_id=run_id, time=ts(tg), channel="growth_rate", value=gr, unit="nm/s")
    if sysm.rheed:
        dt = ml_time / RHEED_SAMPLES_PER_PERIOD
        n_pre = RHEED_SAMPLES_PER_PERIOD * 4
        tr = t_growth0 + (np.arange(points) - n_pre) * dt
        tr = tr[tr <= end_s]
        x = tr - t_growth0
        i0 = rng.uniform(0.8, 1.2)
        i_ss = i0 * rng.uniform(0.45, 0.65)
        tau_m = ml_time * rng.uniform(3, 6)
        tau_d = ml_time * rng.uniform(15, 35)
        if damped:  # rough growth front: the oscillation fades within a few layers
            tau_d = ml_time * xrng.uniform(4, 8)
        depth = rng.uniform(0.35, 0.6)
        base = np.where(x < 0, i0, i_ss + (i0 - i_ss) * np.exp(-np.clip(x, 0, None) / tau_m))
        osc = np.where(
            x < 0,
            0.0,
            depth
            * np.exp(-np.clip(x, 0, None) / tau_d)
            * (1 - np.cos(2 * np.pi * x / ml_time))
            / 2,
        )
        noise = rng.normal(0, 0.008, tr.size) * (rheed_noise / 0.008)
        intensity = base * (1 - osc) * (1 + noise)
        S.add(
            tr.size,
            run_id=run_id,
            time=ts(tr),
            channel="rheed_specular_intensity",
            value=intensity,
            unit="a.u.",
        )

    # -- tool state ------------------------------------------------------------------------
    tt = np.linspace(0, end_s, slow)
    t_open, t_close = t_growth0, min(end_s, t_growth1)
    tool = sysm.instrument

    def reading(channel, value, setpoint, unit):
        T.add(
            tt.size,
            run_id=run_id,
            tool=tool,
            time=ts(tt),
            channel=channel,
            value=value,
            setpoint=setpoint,
            unit=unit,
        )

    def shutter(channel, t0, t1):
        state = ((tt >= t0) & (tt < t1)).astype(float)
        reading(channel, state, state.copy(), "state")

    if sysm.method == "MBE":
        cells = {}
        for el, (idle, (lo, hi)) in sysm.cells.items():
            hot = float(rng.uniform(lo, hi))
            sp = _ramp_to(tt, 0.05 * t_growth0, idle, hot, 15 / 60)
            sp = np.where(tt > t_growth1, _ramp_to(tt, t_growth1, hot, idle, 20 / 60), sp)
            rb = _first_order_lag(sp, tt, 90.0) + rng.normal(0, 0.15, tt.size)
            reading(f"cell_{el}_temperature", rb, sp, "degC")
            cells[el] = hot
        if "As" in sysm.cells:
            shutter("shutter_As", 0.5 * t_growth0, t_close + 0.5 * (end_s - t_close))
            shutter("shutter_Ga", t_open, t_close)
            mid = t_open + 0.6 * (t_close - t_open)
            shutter("shutter_Al", mid, t_close - 0.05 * (t_close - t_open))
        else:
            shutter("shutter_Ga", t_open, t_close)
            shutter("shutter_N_plasma", t_open - 60, t_close)
            rf = np.where((tt >= t_open - 120) & (tt < t_close), 350.0, 0.0)
            reading("plasma_rf_power", rf + rng.normal(0, 1.5, tt.size) * (rf > 0), rf, "W")
        base_p = 10 ** rng.uniform(np.log10(1.2e-10), np.log10(4e-10))
        flux_p = 10 ** rng.uniform(np.log10(8e-8), np.log10(6e-7))
        open_ = (tt >= t_open) & (tt < t_close)
        p = np.where(open_, flux_p, base_p + (flux_p - base_p) * 0.05 * (tt > 0.5 * t_growth0))
        p = np.clip(p * np.exp(rng.normal(0, 0.05, tt.size)), 1e-10, 1e-6)
        reading("chamber_pressure", p, np.full(tt.size, np.nan), "Torr")
        truth_cells = cells
    elif sysm.method == "PLD":
        energy = float(rng.uniform(180, 320))
        rep = float(rng.choice([1.0, 2.0, 3.0, 5.0]))
        open_ = (tt >= t_open) & (tt < t_close)
        reading(
            "laser_energy",
            np.where(open_, energy * (1 + rng.normal(0, 0.02, tt.size)), 0),
            np.where(open_, energy, 0.0),
            "mJ",
        )
        reading("laser_rep_rate", np.where(open_, rep, 0.0), np.where(open_, rep, 0.0), "Hz")
        o2 = float(rng.choice([0.015, 0.05, 0.1, 0.2]))
        o2_sp = np.where((tt >= 0.3 * t_growth0) & (tt < t_close + 120), o2, 0.0)
        o2_rb = np.clip(_first_order_lag(o2_sp, tt, 20.0), 0, None)
        reading("o2_pressure", o2_rb * np.exp(rng.normal(0, 0.01, tt.size)), o2_sp, "Torr")
        base_p = 10 ** rng.uniform(-8.5, -7.5)
        p = np.maximum(o2_rb, base_p) * np.exp(rng.normal(0, 0.02, tt.size))
        reading("chamber_pressure", p, np.full(tt.size, np.nan), "Torr")
        shutter("shutter_substrate", t_open, t_close)
        truth_cells = {"laser_energy": energy, "rep_rate": rep, "o2": o2}
    else:
        power = float(rng.choice([150.0, 200.0, 250.0]))
        on = (tt >= t_open - 180) & (tt < t_close)
        reading(
            "target_power",
            np.where(on, power + rng.normal(0, 1.0, tt.size), 0.0),
            np.where(on, power, 0.0),
            "W",
        )
        ar, n2 = float(rng.uniform(15, 30)), float(rng.uniform(1.5, 4.0))
        reading(
            "ar_flow",
            np.where(on, ar + rng.normal(0, 0.05, tt.size), 0.0),
            np.where(on, ar, 0.0),
            "sccm",
        )
        reading(
            "n2_flow",
            np.where(on, n2 + rng.normal(0, 0.02, tt.size), 0.0),
            np.where(on, n2, 0.0),
            "sccm",
        )
        work_p = float(rng.uniform(2e-3, 5e-3))
        base_p = 10 ** rng.uniform(-7.7, -7.0)
        p = np.where(on, work_p, base_p) * np.exp(rng.normal(0, 0.02, tt.size))
        reading("chamber_pressure", p, np.full(tt.size, np.nan), "Torr")
        shutter("shutter_target", t_open, t_close)
        truth_cells = {"target_power": power}

    # -- metrology and labels --------------------------------------------------------------
    thickness_nm = grown_s * (actual * sysm.ml_nm if sysm.rheed else rate)
    peaks, film, stack, target = _film(sysm, rng, thickness_nm)
    fwhm = _film_fwhm(sysm, xrng, thickness_nm, peaks, t_grow)
    truth[run_id] = {
        "system": sysm.material_system,
        "growth_rate": actual,
        "ml_time": ml_time,
        "recipe_rate": rate,
        "drift": drifted,
        "ml_nm": sysm.ml_nm or None,
        "growth_start": start_us + int(t_growth0 * 1e6) if grown_s > 0 else None,
        "growth_start_s": t_growth0,
        "growth_end_s": t_growth1,
        "rheed_noise": rheed_noise if sysm.rheed else None,
        "rheed_damped": damped if sysm.rheed else None,
        "film_fwhm": fwhm,
        "xrd_peaks": peaks,
        "thickness_nm": thickness_nm,
        "status": status,
        "growth_temp": t_grow,
        "tool": truth_cells,
    }
    if status != "error":
        t_meas = end_us + int(rng.uniform(2, 48) * 3600e6)
        _xrd(M, rng, sysm, run_id, sample, t_meas, peaks, fwhm)
        if status == "complete":
            _xps(M, rng, sysm, run_id, sample, t_meas + int(3600e6))
            rough = float(rng.uniform(*sysm.roughness_nm))
            M.add(
                1,
                item_id=f"{run_id}-afm",
                run_id=run_id,
                sample=sample,
                technique="AFM",
                time=np.array([t_meas + int(7200e6)]),
                x=None,
                y=None,
                x_unit=None,
                y_unit=None,
                peaks=None,
                result_name="rms_roughness",
                result_value=np.array([rough]),
                result_unit="nm",
            )
    tags = sorted(rng.choice(sysm.tags, size=int(rng.integers(1, 3)), replace=False).tolist())
    notes = _notes(sysm, rng, status, t_grow, rate, thickness_nm)
    L.add(
        1,
        run_id=run_id,
        sample=sample,
        material_system=sysm.material_system,
        film=film,
        substrate=sysm.substrate,
        layer_stack=_obj(stack),
        target_formula=target,
        tags=_obj(tags),
        notes=notes,
        updated_at=np.array([end_us + int(86400e6)]),
    )


def _film(sysm: System, rng, thickness_nm):
    """Peak positions (2θ) and the labels of the film grown."""
    sub_name, sub_peak = sysm.xrd_substrate
    sub = sub_peak + rng.normal(0, 0.003)
    t = max(thickness_nm, 1.0)
    if sysm.instrument == "MBE-1":
        x = float(rng.choice([0.25, 0.30, 0.33]))
        film = f"Al{x:.2f}Ga{1 - x:.2f}As"
        # Coherently strained AlxGa1-xAs (004) sits below GaAs by about 0.37° per unit of x.
        peaks = [round(sub, 4), round(sub - 0.37 * x + rng.normal(0, 0.004), 4)]
        buffer = int(rng.choice([100, 200, 300]))
        stack = [f"GaAs buffer {buffer} nm", f"{film} {t:.0f} nm", "GaAs cap 5 nm"]
        return peaks, film, stack, film
    if sysm.instrument == "MBE-2":
        gan = 34.57 + rng.normal(0, 0.01)
        aln = 36.04 + rng.normal(0, 0.02)
        stack = [f"AlN nucleation {int(rng.choice([20, 30, 50]))} nm", f"GaN {t:.0f} nm"]
        return [round(gan, 4), round(aln, 4), round(sub, 4)], "GaN", stack, "GaN"
    if sysm.instrument == "PLD-2":
        film = "La0.7Sr0.3MnO3"
        # Tensile in-plane strain on SrTiO3 shrinks the out-of-plane c of LSMO to about 3.85 Å.
        lsmo = two_theta(3.852 / 2 + rng.normal(0, 0.002))
        uc = max(1, round(thickness_nm / sysm.ml_nm))
        stack = [f"{film} {uc} u.c."]
        return [round(sub, 4), round(lsmo, 4)], film, stack, film
    tin200 = 42.60 + rng.normal(0, 0.03)
    tin111 = 36.66 + rng.normal(0, 0.03)
    stack = ["native SiO2 2 nm", f"TiN {t:.0f} nm"]
    return [round(tin111, 4), round(tin200, 4), round(sub, 4)], "TiN", stack, "Ti"


FILM_MOSAIC_DEG = {"MBE-1": 0.025, "MBE-2": 0.12, "PLD-2": 0.05, "SPUT-1": 0.25}
"""Defect (mosaic) broadening of each system's film reflection at its coolest growth temperature."""


def _film_fwhm(sysm: System, rng, thickness_nm: float, peaks, t_grow: float) -> float:
    """Film-peak FWHM (° 2θ): Scherrer size broadening plus defect broadening that shrinks as the
    growth temperature rises through the system's window (adatoms diffuse further, fewer
    defects), with run-to-run scatter."""
    theta = np.radians(float(np.median(peaks)) / 2)
    size = np.degrees(0.9 * CU_KA / (max(thickness_nm, 5.0) * 10 * np.cos(theta)))
    lo, hi = sysm.growth_temp
    q = (t_grow - lo) / (hi - lo)
    mosaic = FILM_MOSAIC_DEG[sysm.instrument] * (1.8 - 1.1 * q) * np.exp(rng.normal(0, 0.08))
    return float(np.clip(np.hypot(size, mosaic), 0.005, 1.2))


def _xrd(M, rng, sysm: System, run_id, sample, t_meas, peaks, fwhm_film):
    lo, hi = sysm.xrd_range
    step = 0.004 if hi - lo < 6 else (0.01 if hi - lo < 12 else 0.02)
    x = np.round(np.arange(lo, hi + step / 2, step), 4)
    sub_peak = sysm.xrd_substrate[1]
    y = 8 + 3 * np.exp(-(x - lo) / 10)
    for p in peaks:
        substrate = abs(p - sub_peak) < 0.05
        height = 6e4 * rng.uniform(0.7, 1.3) if substrate else 3e3 * rng.uniform(0.3, 1.5)
        width = 0.012 if substrate else fwhm_film
        y = y + height * _pseudo_voigt(x, p, width, 0.4)
    y = rng.poisson(y).astype(float)
    M.add(
        1,
        item_id=f"{run_id}-xrd",
        run_id=run_id,
        sample=sample,
        technique="XRD",
        time=np.array([t_meas]),
        x=_obj(x.tolist()),
        y=_obj(y.tolist()),
        x_unit="deg 2theta",
        y_unit="counts",
        peaks=_obj(sorted(peaks)),
        result_name="film_peak_fwhm",
        result_value=np.array([round(fwhm_film, 4)]),
        result_unit="deg",
    )


def _xps(M, rng, sysm: System, run_id, sample, t_meas):
    x = np.arange(0.0, 1000.5, 0.5)
    y = 2000 + 1500 * np.exp(-x / 400)
    areas, used = {}, []
    for name, be, area in sysm.xps:
        if area <= 0 or be > x[-1]:
            continue
        pos = be + rng.normal(0, 0.1)
        h = area * 2.0e4 * rng.uniform(0.8, 1.2)
        peak = h * _pseudo_voigt(x, pos, 1.6, 0.3)
        # Inelastic background: a step on the high-binding-energy side of each peak.
        y = y + peak + 0.04 * h * (1 - 1 / (1 + np.exp((x - pos) / 1.5)))
        areas[name] = h
        used.append(round(pos, 2))
    y = rng.poisson(y).astype(float)
    c_frac = 100 * areas.get("C 1s", 0.0) / sum(areas.values())
    M.add(
        1,
        item_id=f"{run_id}-xps",
        run_id=run_id,
        sample=sample,
        technique="XPS",
        time=np.array([t_meas]),
        x=_obj(x.tolist()),
        y=_obj(y.tolist()),
        x_unit="eV binding energy",
        y_unit="counts/s",
        peaks=_obj(sorted(used)),
        result_name="carbon_fraction",
        result_value=np.array([round(c_frac, 2)]),
        result_unit="%",
    )


def _notes(sysm: System, rng, status, t_grow, rate, thickness_nm) -> str:
    if sysm.method == "MBE" and sysm.rheed and "As" in sysm.cells:
        obs = rng.choice(
            [
                "streaky 2x4 reconstruction throughout",
                "brief 3x1 pattern during the AlGaAs layer",
                "oval defects visible under Nomarski afterwards",
            ]
        )
        text = (
            f"Grown at {t_grow:.0f} C, {rate:.2f} ML/s, As/Ga BEP ratio "
            f"{rng.uniform(12, 25):.0f}; {obs}."
        )
    elif sysm.instrument == "MBE-2":
        obs = rng.choice(
            [
                "Ga droplets on surface, reduce Ga flux next time",
                "smooth 1x1 pattern, metal-rich regime",
                "spotty pattern early, recovered after 20 min",
            ]
        )
        text = f"Plasma at 350 W, growth at {t_grow:.0f} C; {obs}."
    elif sysm.method == "PLD":
        obs = rng.choice(
            [
                "layer-by-layer mode confirmed by RHEED",
                "target re-polished before this growth",
                "annealed 30 min in 300 Torr O2 after deposition",
            ]
        )
        text = f"Deposited at {t_grow:.0f} C, {rate * 3600:.0f} u.c./h; {obs}."
    else:
        obs = rng.choice(
            [
                "gold colour, good stoichiometry",
                "slight brown tint, N2 flow raised for next run",
                "film delaminated at the wafer edge",
            ]
        )
        text = f"Reactive sputtering at {t_grow:.0f} C, {thickness_nm:.0f} nm; {obs}."
    if status == "error":
        text += " Run aborted after a controller fault."
    elif status == "interrupted":
        text += " Interrupted before the cap layer."
    return text


def generate(
    target,
    org: str | None = None,
    *,
    runs: int = 40,
    seed: int = 0,
    points_per_run: int = 600,
    progress: bool = False,
    actor: str = "demo",
) -> dict:
    """Write demo data for one org and return ``{table: rows}``.

    ``target`` is a :class:`~atomscale_lab.vault.facade.Vault` (with ``org``) or an
    ``(OrgStore, ContextStore)`` pair. Raw tables go to the org store, labels only to the
    context store. ``progress`` shows tqdm bars on stderr.
    """
    from tqdm import tqdm

    audit = None
    if isinstance(target, tuple | list):
        store, context = target
    else:
        if org is None:
            raise ValueError("generate(vault, org): the org name is required")
        store, context = target.store(org), target.context(org)
        audit = target.audit(org)
    with tqdm(
        total=runs,
        desc="generating runs",
        unit="run",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    ) as bar:
        data = build(runs, seed, points_per_run, progress=bar.update)
    written = {}
    steps = [*data.tables().items(), (CONTEXT.name, data.labels)]
    with tqdm(
        steps, desc="encrypting", unit="table", file=sys.stderr, disable=not progress, leave=False
    ) as bar:
        for name, table in bar:
            bar.set_postfix_str(name)
            if name == CONTEXT.name:
                context.put(table, actor=actor)
            else:
                store.table(name).write(table, actor=actor)
            written[name] = table.num_rows
    if audit is not None:
        audit.record(
            actor,
            "data.write",
            source="demo",
            seed=seed,
            runs=runs,
            rows={k: v for k, v in written.items() if k != CONTEXT.name},
        )
    return written
