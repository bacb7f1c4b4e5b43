"""Compare runs: channels aligned at an event, a side-by-side table, and "runs like this one".

The pure functions take frames (long process/tool-state frames, RHEED summaries, metrology
results); :func:`run_features` and :func:`similar_runs` fetch them through a
:class:`~atomscale_lab.client.workspace.Workspace`.

Features of a run (one row of :func:`run_features`): the recipe's setpoints during growth (median
of each tool channel's setpoint while the growth shutters are open: cell temperatures, laser
energy, gas flows …), the substrate temperature during growth, the RHEED growth rate and its
deviation from the recipe, and the metrology results (film peak FWHM, carbon fraction, RMS
roughness). Distances are Euclidean over the features both runs have, each feature scaled by its
spread across the candidates (robust: median absolute deviation), averaged per feature so that
runs with fewer shared features are not favoured.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

ALIGN = ("growth_start", "shutter_open", "run_start")
"""Events a comparison can align on: the start of growth refined from RHEED (falls back to the
first shutter opening), the first growth-shutter opening, or the run's first sample."""


def event_time(
    process: pd.DataFrame, tools: pd.DataFrame | None, at: str, rheed=None
) -> pd.Timestamp | None:
    """The time of event ``at`` (see :data:`ALIGN`) in a run's frames, or None."""
    if at not in ALIGN:
        raise ValueError(f"align at one of {', '.join(ALIGN)}, not {at!r}")
    if at == "growth_start" and rheed is not None and rheed.onset is not None:
        return pd.Timestamp(rheed.onset)
    if at in ("growth_start", "shutter_open") and rheed is not None and len(rheed.windows):
        start = rheed.windows["start"].iloc[0]
        if pd.notna(start):
            return pd.Timestamp(start)
    if at in ("growth_start", "shutter_open") and tools is not None and len(tools):
        sh = tools[tools["channel"].str.startswith("shutter_") & (tools["value"] > 0.5)]
        if len(sh):
            return pd.Timestamp(sh["time"].min())
    frames = [f for f in (process, tools) if f is not None and len(f)]
    if not frames:
        return None
    return pd.Timestamp(min(f["time"].min() for f in frames))


def aligned(
    frames: dict[str, pd.DataFrame], events: dict[str, pd.Timestamp | None]
) -> pd.DataFrame:
    """Long frames of several runs with ``t_s``: seconds from each run's event."""
    out = []
    for run_id, df in frames.items():
        ev = events.get(run_id)
        if df is None or df.empty or ev is None:
            continue
        t = pd.to_datetime(df["time"], utc=True)
        out.append(df.assign(run_id=run_id, t_s=(t - ev).dt.total_seconds()))
    if not out:
        return pd.DataFrame(columns=["run_id", "time", "channel", "value", "t_s"])
    return pd.concat(out, ignore_index=True)


def setpoints_during_growth(
    tools: pd.DataFrame | None, windows: pd.DataFrame | None
) -> dict[str, float]:
    """Median setpoint of each tool channel while growth shutters are open (the recipe)."""
    if tools is None or tools.empty or "setpoint" not in tools:
        return {}
    t = pd.to_datetime(tools["time"], utc=True)
    mask = pd.Series(True, index=tools.index)
    if windows is not None and len(windows):
        mask = pd.Series(False, index=tools.index)
        for w in windows.itertuples():
            if pd.notna(w.start) and pd.notna(w.end):
                mask |= (t >= w.start) & (t <= w.end)
    sel = tools[mask & ~tools["channel"].str.startswith("shutter_") & tools["setpoint"].notna()]
    units = sel.groupby("channel")["unit"].first() if "unit" in sel else {}
    med = sel.groupby("channel")["setpoint"].median()
    return {
        f"{ch} setpoint [{unit_label(units.get(ch, ''))}]".replace(" []", ""): float(v)
        for ch, v in med.items()
    }


UNIT_LABELS = {"degC": "°C", "deg": "°", "deg 2theta": "° 2θ"}


def unit_label(unit: str | None) -> str:
    """A unit as a scientist writes it (``degC`` → ``°C``)."""
    return UNIT_LABELS.get(unit or "", unit or "")


def features_of(
    run: dict,
    process: pd.DataFrame,
    tools: pd.DataFrame | None,
    rheed,
    metrology: pd.DataFrame | None,
) -> dict:
    """One run's comparison features (see the module docstring) as a flat dict."""
    windows = rheed.windows if rheed is not None else None
    feat: dict = {
        "run_id": run.get("run_id"),
        "instrument": run.get("instrument"),
        "method": run.get("method"),
        "status": run.get("status"),
    }
    feat.update(setpoints_during_growth(tools, windows))
    if process is not None and len(process):
        temp = process[process["channel"].str.contains("substrate_temp")]
        grew = windows is not None and len(windows) and pd.notna(windows["start"].iloc[0])
        if len(temp) and grew:
            t = pd.to_datetime(temp["time"], utc=True)
            grow = temp[(t >= windows["start"].iloc[0]) & (t <= windows["end"].max())]
            temp = grow if len(grow) else temp
        if len(temp):
            feat["substrate temperature [°C]"] = float(temp["value"].median())
    if windows is not None and len(windows) and windows["status"].iloc[0] == "ok":
        w = windows.iloc[0]
        feat["RHEED rate [ML/s]"] = float(w.rate_ml_s)
        feat["RHEED period [s]"] = float(w.period_s)
        if pd.notna(w.rate_deviation):
            feat["rate vs recipe [%]"] = float(100 * w.rate_deviation)
    if metrology is not None and len(metrology):
        for m in metrology.itertuples():
            if m.result_name and pd.notna(m.result_value):
                unit = unit_label(m.result_unit)
                feat[f"{m.technique} {m.result_name} [{unit}]"] = float(m.result_value)
    return feat


def side_by_side(features: pd.DataFrame) -> pd.DataFrame:
    """Features (one row per run) turned into a table with one column per run."""
    f = features.set_index("run_id")
    return f.T.rename_axis(None, axis=1)


def _scaled(features: pd.DataFrame) -> pd.DataFrame:
    num = features.select_dtypes("number")
    med = num.median()
    mad = (num - med).abs().median() * 1.4826
    spread = mad.where(mad > 0, num.std()).replace(0, np.nan)
    return (num - med) / spread


def distances(features: pd.DataFrame, run_id: str) -> pd.Series:
    """Distance of every run to ``run_id`` over the scaled numeric features both have."""
    f = features.set_index("run_id")
    z = _scaled(f)
    ref = z.loc[run_id]
    diff = (z - ref) ** 2
    shared = diff.notna().sum(axis=1)
    d = np.sqrt(diff.sum(axis=1, min_count=1) / shared.replace(0, np.nan))
    return d.drop(index=run_id).sort_values()


def run_features(ws, run_ids: Sequence[str]) -> pd.DataFrame:
    """Comparison features of ``run_ids`` fetched through a Workspace (2–3 requests per run and
    one for all metrology results)."""
    from atomscale_lab import rheed as _rheed

    ids = list(dict.fromkeys(run_ids))
    met = ws.metrology(run_id=ids) if ids else None
    rows = []
    for rid in ids:
        rec = ws.run(rid)
        tool_ch = list(rec.get("channels", {}).get("tool_state", []))
        proc_ch = [
            c
            for c in rec.get("channels", {}).get("process", [])
            if c in (_rheed.RHEED_CHANNEL, "growth_rate") or "substrate_temp" in c
        ]
        proc = (
            ws.process(rid, channels=proc_ch)
            if proc_ch
            else pd.DataFrame(columns=["time", "channel", "value", "unit"])
        )
        tools = ws.tool_state(rid, channels=tool_ch) if tool_ch else None
        result = _rheed.analyze_frames(proc, tools)
        m = met[met["run_id"] == rid] if met is not None and len(met) else None
        rows.append(features_of(rec, proc, tools, result, m))
    return pd.DataFrame(
        rows, columns=None if rows else ["run_id", "instrument", "method", "status"]
    )


def similar_runs(
    ws,
    run_id: str,
    candidates: Sequence[str] | None = None,
    k: int = 5,
    same_instrument: bool = True,
    limit: int = 200,
) -> pd.DataFrame:
    """The ``k`` runs nearest to ``run_id`` over their features, nearest first.

    ``candidates`` defaults to the newest ``limit`` runs (of the same instrument unless
    ``same_instrument=False``). Returns the candidates' features with a ``distance`` column.
    """
    if candidates is None:
        rec = ws.run(run_id)
        filters = {"instrument": rec.get("instrument")} if same_instrument else {}
        candidates = list(ws.runs(limit=limit, **filters)["run_id"])
    ids = [run_id, *[c for c in candidates if c != run_id]]
    feats = run_features(ws, ids)
    d = distances(feats, run_id)
    out = feats.set_index("run_id").loc[d.index].assign(distance=d.values)
    return out.head(k).reset_index()
