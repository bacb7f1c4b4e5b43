"""RHEED specular-intensity analysis: growth windows, oscillation periods, growth rate.

Pure numerics (numpy and scipy), no I/O: :func:`analyze` takes a run's intensity trace and,
optionally, its shutter states and the recipe's growth rate, and returns per-layer periods and a
per-window summary. :meth:`atomscale_lab.client.workspace.Workspace.rheed` feeds it from the REST
API.

How it works, and why it is robust to damping and noise:

1. **Growth windows** come from the shutter states (a window is an interval with a constant set
   of open growth shutters; group-V and gas shutters such as As or N plasma only set the
   ambient and do not start growth). Shutter logs are sampled coarsely, so the start of growth
   inside the first window is refined from the intensity itself: the first sustained drop below
   the pre-growth level (median − 4 noise σ, robust noise from the median absolute deviation).
2. **Initial period** from the strongest peak of a zero-padded spectrum of the trace's first
   difference (a slow background is suppressed in proportion to its slowness), weighted towards
   the start of growth where a damped oscillation is strongest.
3. **Detrending** by a running mean one period long (which cancels an oscillation of that
   period exactly), so a decaying background and a fading amplitude do not move the extrema.
4. **Layer completions** are the oscillation maxima. Each maximum is located to a fraction of a
   sample by a least-squares parabola over ±¼ period, with the standard error of its vertex from
   the fit's covariance. Maxima whose prominence falls under 3 noise σ (the oscillation has died
   out) are not used.
5. **Period** of each layer = time between consecutive maxima (uncertainty from both vertices);
   the window's period is the weighted least-squares slope of maximum time against layer index,
   with its standard error — this is what damping and noise leave intact.

Units: times in seconds, rates in monolayers per second (ML/s) and nm/s, the monolayer thickness
in nm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MONOLAYER_NM = {
    "GaAs": 0.28267,
    "AlGaAs": 0.28267,
    "AlAs": 0.28305,
    "InAs": 0.30292,
    "InP": 0.29345,
    "GaN": 0.25926,
    "AlN": 0.24905,
    "SrTiO3": 0.3905,
    "La0.7Sr0.3MnO3": 0.3876,
    "LaAlO3": 0.379,
    "BaTiO3": 0.4036,
    "Si": 0.13577,
    "Ge": 0.14144,
}
"""Thickness of one monolayer (zinc-blende: a/2 on (001); wurtzite: c/2; perovskites: one unit
cell a) in nm, by film. :func:`monolayer_nm` also understands materials systems like
``"GaAs/AlGaAs"`` (film before the slash)."""

AMBIENT_SHUTTERS = (
    "as",
    "p",
    "sb",
    "n",
    "n_plasma",
    "n2",
    "o",
    "o2",
    "o_plasma",
    "plasma",
    "gas",
    "se",
    "s",
)
"""Shutter names (after ``shutter_``) that set the ambient (group V, chalcogen, gas) rather than
start growth."""

RHEED_CHANNEL = "rheed_specular_intensity"
"""The process channel holding the specular-spot intensity."""

DRIFT_TOLERANCE = 0.05
"""Default relative deviation of the measured rate from the recipe that flags a run."""

LAYER_COLUMNS = ["window", "layer", "start", "end", "period_s", "period_err_s"]
SUMMARY_COLUMNS = [
    "window",
    "start",
    "end",
    "shutters",
    "duration_s",
    "rheed_start",
    "rheed_end",
    "period_s",
    "period_err_s",
    "rate_ml_s",
    "rate_err_ml_s",
    "rate_nm_s",
    "layers_observed",
    "monolayers",
    "thickness_nm",
    "recipe_rate_ml_s",
    "rate_deviation",
    "drift",
    "period_trend",
    "status",
]


def monolayer_nm(material: str | None) -> float | None:
    """Monolayer thickness (nm) of a film or materials system, or None when unknown."""
    if not material:
        return None
    film = str(material).split("/")[0].strip()
    if film in MONOLAYER_NM:
        return MONOLAYER_NM[film]
    for name, value in MONOLAYER_NM.items():  # e.g. "Al0.30Ga0.70As" → AlGaAs
        letters = "".join(c for c in film if c.isalpha())
        if letters == name:
            return value
    return None


@dataclass
class RheedAnalysis:
    """Result of :func:`analyze`: ``layers`` (one row per layer) and ``windows`` (one row per
    growth window), both with times in seconds from the trace's time origin."""

    layers: pd.DataFrame
    windows: pd.DataFrame
    onset: float | None = None
    """Start of growth (s) as refined from the intensity, or None."""
    notes: list[str] = field(default_factory=list)
    trace: pd.DataFrame | None = None
    """The analysed trace (long frame) where the caller keeps it (``Workspace.rheed_result``)."""
    shutters: pd.DataFrame | None = None
    """The shutter states used, where the caller keeps them."""


# --- growth windows ---------------------------------------------------------------------------


def _is_ambient(channel: str) -> bool:
    name = channel.lower().removeprefix("shutter_")
    return name in AMBIENT_SHUTTERS


def growth_windows(shutters: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Intervals with a constant, non-empty set of open growth shutters.

    ``shutters`` maps a channel (``shutter_Ga`` …) to ``(times, states)`` with states 0/1 held
    until the next sample. Returns ``[{start, end, shutters}]`` sorted by start. When every
    shutter is an ambient one (As, N plasma …), they count as growth shutters.
    """
    if not shutters:
        return []
    growth = {k: v for k, v in shutters.items() if not _is_ambient(k)} or dict(shutters)
    times = np.unique(np.concatenate([np.asarray(t, float) for t, _ in growth.values()]))
    if times.size == 0:
        return []

    def open_at(t: float) -> tuple[str, ...]:
        names = []
        for ch, (ts, st) in growth.items():
            ts, st = np.asarray(ts, float), np.asarray(st, float)
            i = np.searchsorted(ts, t, side="right") - 1
            if i >= 0 and st[i] > 0.5:
                names.append(ch.removeprefix("shutter_"))
        return tuple(sorted(names))

    windows: list[dict] = []
    current, since = (), None
    for t in times:
        state = open_at(t)
        if state != current:
            if current:
                windows.append({"start": since, "end": float(t), "shutters": current})
            current, since = state, float(t)
    if current:
        windows.append({"start": since, "end": float(times[-1]), "shutters": current})
    return windows


# --- oscillation analysis ---------------------------------------------------------------------


def _robust_sigma(x: np.ndarray) -> float:
    if x.size < 2:
        return 0.0
    d = np.diff(x) / np.sqrt(2)  # differences cancel slow trends
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def _noise_sigma(osc: np.ndarray, per: float) -> float:
    """Noise of the detrended trace: the spread around a local quadratic smoothing over a
    quarter period (which follows the oscillation but not the sample-to-sample noise)."""
    from scipy.signal import savgol_filter

    width = max(5, int(round(per / 4)) | 1)
    if osc.size <= width:
        return _robust_sigma(osc)
    resid = osc - savgol_filter(osc, width, 2)
    # the smoothing absorbs part of the noise: scale back for a quadratic over ``width`` points
    return float(
        1.4826
        * np.median(np.abs(resid - np.median(resid)))
        / np.sqrt(1 - 3 * (3 * width * width - 7) / (4 * width * (width * width - 4)))
    )


def _onset(t: np.ndarray, y: np.ndarray, earliest: float | None) -> float | None:
    """First sustained intensity drop below the pre-growth level (median − 4σ).

    The trace before ``earliest`` (the earliest time growth could have started, from the shutter
    log) is the reference when it holds a few samples; else the trace's first samples are.
    """
    before = y[t < earliest] if earliest is not None else y[:0]
    ref = before if before.size >= 5 else y[: max(8, y.size // 30)]
    if ref.size < 5:
        return None
    level, sigma = float(np.median(ref)), _robust_sigma(ref)
    below = y < level - max(4 * sigma, 0.01 * abs(level))
    start = 1 if earliest is None else max(1, int(np.searchsorted(t, earliest)))
    run = 3
    for i in range(start, y.size - run):
        if below[i : i + run].all():
            # step back to the last sample still at the pre-growth level
            j = i
            while j > start and y[j - 1] < level - sigma:
                j -= 1
            return float(t[j - 1])
    return None


def _spectral_period(t: np.ndarray, y: np.ndarray) -> float | None:
    """Period of the strongest oscillation: spectrum of the first difference (which suppresses
    the slow background in proportion to its slowness), weighted towards the start of growth
    where a damped oscillation is strongest."""
    if t.size < 16:
        return None
    span = t[-1] - t[0]
    dt = float(np.median(np.diff(t)))
    yy = np.diff(y)
    yy = (yy - yy.mean()) * np.exp(-(t[1:] - t[0]) / (span / 4))
    n = int(2 ** np.ceil(np.log2(yy.size * 16)))
    f = np.fft.rfftfreq(n, dt)
    p = np.abs(np.fft.rfft(yy, n))
    p[f < 2.5 / span] = 0  # at least 2.5 periods in the window
    p[f > 0.45 / dt] = 0
    if not p.any():
        return None
    return float(1 / f[int(np.argmax(p))])


def _running_mean(y: np.ndarray, width: int) -> np.ndarray:
    from scipy.ndimage import uniform_filter1d

    return uniform_filter1d(y, size=max(1, width), mode="nearest")


def _vertex(t: np.ndarray, y: np.ndarray, sigma: float) -> tuple[float, float] | None:
    """Vertex of a least-squares parabola through (t, y) and its standard error."""
    if t.size < 4:
        return None
    t0 = float(t.mean())
    x = t - t0
    a_mat = np.column_stack([x * x, x, np.ones_like(x)])
    coef, *_ = np.linalg.lstsq(a_mat, y, rcond=None)
    a, b, _c = coef
    if a >= 0:
        return None  # not a maximum
    resid = y - a_mat @ coef
    dof = max(1, t.size - 3)
    s2 = max(float(resid @ resid) / dof, sigma * sigma)
    cov = s2 * np.linalg.pinv(a_mat.T @ a_mat)
    v = -b / (2 * a)
    grad = np.array([b / (2 * a * a), -1 / (2 * a), 0.0])
    err = float(np.sqrt(max(grad @ cov @ grad, 0.0)))
    if not (x.min() <= v <= x.max()):
        return None
    return t0 + float(v), err


def _maxima(t, osc, period, sigma):
    """Times of the oscillation maxima (with standard errors) while they stand above noise."""
    from scipy.signal import find_peaks

    dt = float(np.median(np.diff(t)))
    per = period / dt
    idx, props = find_peaks(
        osc, distance=max(1, int(0.6 * per)), prominence=3 * sigma if sigma > 0 else None
    )
    half = max(2, int(round(per / 4)))
    out = []
    for i in idx:
        lo, hi = max(0, i - half), min(t.size, i + half + 1)
        v = _vertex(t[lo:hi], osc[lo:hi], sigma)
        if v is not None:
            out.append(v)
    if not out:
        return np.empty(0), np.empty(0)
    arr = np.array(out)
    return arr[:, 0], arr[:, 1]


def _consecutive(times: np.ndarray, errs: np.ndarray, period: float):
    """The longest run of maxima spaced about one period apart (a missed maximum ends it)."""
    if times.size < 2:
        return times, errs
    gaps = np.diff(times)
    ok = (gaps > 0.6 * period) & (gaps < 1.4 * period)
    best, cur, best_start, cur_start = 0, 0, 0, 0
    for k, good in enumerate(ok):
        if good:
            if cur == 0:
                cur_start = k
            cur += 1
            if cur > best:
                best, best_start = cur, cur_start
        else:
            cur = 0
    if best == 0:
        return times[:1], errs[:1]
    return times[best_start : best_start + best + 1], errs[best_start : best_start + best + 1]


def _fit_period(times: np.ndarray, errs: np.ndarray):
    """Weighted least squares t_k = t0 + k·T: returns (T, σ_T, relative trend per 10 layers)."""
    k = np.arange(times.size, dtype=float)
    w = 1 / np.maximum(errs, 1e-9) ** 2
    a_mat = np.column_stack([np.ones_like(k), k])
    aw = a_mat * w[:, None]
    cov = np.linalg.inv(a_mat.T @ aw)
    coef = cov @ (aw.T @ times)
    resid = times - a_mat @ coef
    chi2 = float((resid**2 * w).sum()) / max(1, times.size - 2)
    # an under-estimated per-point error must not make the period look better than it is
    sigma_t = float(np.sqrt(cov[1, 1] * max(1.0, chi2)))
    trend = np.nan
    if times.size >= 6:
        q = np.polyfit(k, times, 2, w=np.sqrt(w))
        slope_mid = q[1] + 2 * q[0] * k.mean()
        trend = float(2 * q[0] * 10 / slope_mid) if slope_mid else np.nan
    return float(coef[1]), sigma_t, trend


def analyze(
    time_s,
    intensity,
    *,
    shutters: dict | None = None,
    recipe_rate: float | None = None,
    ml_nm: float | None = None,
    drift_tolerance: float = DRIFT_TOLERANCE,
) -> RheedAnalysis:
    """Analyse one RHEED specular-intensity trace.

    ``time_s``/``intensity``: the trace (seconds, any origin). ``shutters``: ``{channel: (times,
    states)}`` on the same clock (see :func:`growth_windows`); without them the whole trace is one
    window starting at the detected intensity drop. ``recipe_rate`` (ML/s): what the recipe asked
    for; a window whose measured rate differs from it by more than ``drift_tolerance`` (and by more
    than three standard errors) is flagged ``drift``. ``ml_nm``: monolayer thickness for nm/s.
    """
    t = np.asarray(time_s, float)
    y = np.asarray(intensity, float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    notes: list[str] = []
    windows = growth_windows(shutters or {})
    if not windows:
        if t.size:
            windows = [{"start": float(t[0]), "end": float(t[-1]), "shutters": ()}]
            notes.append("no shutter states: the whole trace is one window")
    onset = None
    layer_rows, rows = [], []
    for w_i, win in enumerate(windows, start=1):
        row = {
            "window": w_i,
            "start": win["start"],
            "end": win["end"],
            "shutters": "+".join(win["shutters"]),
            "duration_s": win["end"] - win["start"],
            "rheed_start": np.nan,
            "rheed_end": np.nan,
            "period_s": np.nan,
            "period_err_s": np.nan,
            "rate_ml_s": np.nan,
            "rate_err_ml_s": np.nan,
            "rate_nm_s": np.nan,
            "layers_observed": 0,
            "monolayers": np.nan,
            "thickness_nm": np.nan,
            "recipe_rate_ml_s": recipe_rate,
            "rate_deviation": np.nan,
            "drift": False,
            "period_trend": np.nan,
            "status": "no RHEED",
        }
        rows.append(row)
        # shutter logs are coarse: look from one log step before the window opened
        slack = 0.0 if not shutters else _log_step(shutters)
        sel = (t >= win["start"] - slack) & (t <= win["end"])
        if w_i == 1 and shutters:
            sel = t <= win["end"]  # the pre-growth trace gives the reference level
        tw, yw = t[sel], y[sel]
        if tw.size < 24:
            continue
        win_start = win["start"]
        if w_i == 1:
            onset = _onset(tw, yw, win["start"] - slack if shutters else None)
            near = (
                abs(onset - win["start"]) <= slack + 4 * float(np.median(np.diff(tw)))
                if onset is not None
                else False
            )
            if onset is not None and (not shutters or near):
                win_start = onset
                row["start"] = onset
                row["duration_s"] = row["end"] - onset
        g = tw >= win_start
        tg, yg = tw[g], yw[g]
        if tg.size < 24:
            row["status"] = "too short"
            continue
        row["rheed_start"], row["rheed_end"] = float(tg[0]), float(tg[-1])
        period0 = _spectral_period(tg, yg)
        if period0 is None:
            row["status"] = "no oscillation"
            continue
        dt = float(np.median(np.diff(tg)))
        background = _running_mean(yg, int(round(period0 / dt)))
        osc = yg / np.where(background == 0, np.nan, background) - 1
        osc = np.nan_to_num(osc)
        sigma = _noise_sigma(osc, period0 / dt)
        mt, me = _maxima(tg, osc, period0, sigma)
        mt, me = _consecutive(mt, me, period0)
        if mt.size < 3:
            row["status"] = "no oscillation"
            continue
        period, perr, trend = _fit_period(mt, me)
        for k in range(mt.size - 1):
            # maxima mark completed layers: number them from the start of growth
            n = int(round((mt[k + 1] - win_start) / period)) if w_i == 1 else k + 1
            layer_rows.append(
                {
                    "window": w_i,
                    "layer": n,
                    "start": float(mt[k]),
                    "end": float(mt[k + 1]),
                    "period_s": float(mt[k + 1] - mt[k]),
                    "period_err_s": float(np.hypot(me[k], me[k + 1])),
                }
            )
        rate = 1 / period
        row.update(
            {
                "period_s": period,
                "period_err_s": perr,
                "rate_ml_s": rate,
                "rate_err_ml_s": perr / period**2,
                "layers_observed": int(mt.size - 1),
                "monolayers": row["duration_s"] / period,
                "period_trend": trend,
                "status": "ok",
            }
        )
        if ml_nm:
            row["rate_nm_s"] = rate * ml_nm
            row["thickness_nm"] = row["monolayers"] * ml_nm
        if recipe_rate:
            dev = rate / recipe_rate - 1
            row["rate_deviation"] = dev
            row["drift"] = bool(
                abs(dev) > drift_tolerance and abs(rate - recipe_rate) > 3 * row["rate_err_ml_s"]
            )
    layers = pd.DataFrame(layer_rows, columns=LAYER_COLUMNS)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return RheedAnalysis(layers=layers, windows=summary, onset=onset, notes=notes)


def _log_step(shutters: dict) -> float:
    steps = [
        float(np.median(np.diff(np.asarray(ts, float))))
        for ts, _ in shutters.values()
        if len(ts) > 1
    ]
    return max(steps) if steps else 0.0


def analyze_frames(
    process: pd.DataFrame,
    tools: pd.DataFrame | None = None,
    *,
    recipe_rate: float | None = None,
    ml_nm: float | None = None,
    drift_tolerance: float = DRIFT_TOLERANCE,
    channel: str = RHEED_CHANNEL,
) -> RheedAnalysis:
    """:func:`analyze` on a run's long frames (``time, channel, value`` as from ``Workspace``).

    Times of the result are UTC timestamps. The recipe rate defaults to the median of the
    ``growth_rate`` process channel when that is logged in ML/s.
    """
    empty = RheedAnalysis(
        pd.DataFrame(columns=LAYER_COLUMNS), pd.DataFrame(columns=SUMMARY_COLUMNS)
    )
    is_trace = (
        (process["channel"] == channel).to_numpy(bool)
        if process is not None and len(process)
        else np.zeros(0, bool)
    )
    if not is_trace.any():
        empty.notes.append(f"no {channel} channel")
        row = dict.fromkeys(SUMMARY_COLUMNS, np.nan)
        row.update(
            window=0,
            shutters="",
            layers_observed=0,
            drift=False,
            status="no RHEED",
            recipe_rate_ml_s=recipe_rate,
        )
        empty.windows = pd.DataFrame([row], columns=SUMMARY_COLUMNS)
        for c in ("start", "end", "rheed_start", "rheed_end"):
            empty.windows[c] = pd.Series([pd.NaT], dtype="datetime64[us, UTC]")
        return empty
    trace = process[is_trace]
    times = pd.to_datetime(trace["time"], utc=True)
    origin = times.min()
    origin_us = origin.value // 1000

    def secs(ts) -> np.ndarray:
        us = pd.to_datetime(ts, utc=True).to_numpy("datetime64[us]").astype("int64")
        return (us - origin_us) / 1e6

    shutters = {}
    if tools is not None and not tools.empty:
        for ch, g in tools[tools["channel"].str.startswith("shutter_")].groupby("channel"):
            g = g.sort_values("time")
            shutters[ch] = (secs(g["time"]), g["value"].to_numpy(float))
    if recipe_rate is None:
        gr = process[process["channel"] == "growth_rate"]
        if not gr.empty and "unit" in gr and (gr["unit"] == "ML/s").all():
            recipe_rate = float(gr["value"].median())
    result = analyze(
        secs(trace["time"]),
        trace["value"].to_numpy(float),
        shutters=shutters,
        recipe_rate=recipe_rate,
        ml_nm=ml_nm,
        drift_tolerance=drift_tolerance,
    )

    def stamp(col: pd.Series) -> pd.Series:
        # microseconds, the resolution of the stored times
        us = pd.Series(origin_us + np.round(col.to_numpy(float) * 1e6), index=col.index)
        return pd.to_datetime(us, unit="us", utc=True).astype("datetime64[us, UTC]")

    for frame, cols in (
        (result.layers, ("start", "end")),
        (result.windows, ("start", "end", "rheed_start", "rheed_end")),
    ):
        for c in cols:
            frame[c] = stamp(frame[c]) if len(frame) else pd.Series(dtype="datetime64[us, UTC]")
    if result.onset is not None:
        result.onset = (origin + pd.to_timedelta(result.onset, unit="s")).round("us")
    return result
