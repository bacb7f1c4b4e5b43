"""Science views over a Workspace: a run's RHEED analysis, runs overlaid, metrology.

``plot_run(ws, run)`` is a PNG of all of a run's channels. ``plot_rheed(ws, run)``,
``overlay(ws, runs)`` and ``plot_metrology(ws, runs, technique)`` return a
:class:`~atomscale_lab.client.widgets.figures.Plot` (interactive in JupyterLab, a PNG in exports).
``RheedExplorer(ws, run)`` is a widget: zoom the RHEED trace to a time window and the analysis
below is redone for that window.
"""

from __future__ import annotations

from collections.abc import Sequence

import ipywidgets as W
import numpy as np
import pandas as pd

from atomscale_lab import rheed
from atomscale_lab.client import compare
from atomscale_lab.client.widgets.figures import (
    Plot,
    metrology_figure,
    overlay_figure,
    rheed_figure,
)


def plot_run(ws, run_id: str, max_points: int = 2000):
    """A run's process channels and tool state on one time axis (UTC), as a PNG image."""
    from IPython.display import Image

    from atomscale_lab.client.widgets.plots import png_bytes, series_figure

    fig = series_figure(
        ws.process(run_id, max_points=max_points),
        ws.tool_state(run_id, max_points=max_points),
        title=run_id,
    )
    return Image(data=png_bytes(fig), format="png")


def plot_rheed(
    ws, run_id: str, *, ml_nm: float | None = None, material: str | None = None, static: bool = True
) -> Plot:
    """A run's RHEED intensity with growth windows and layers shaded and the analysis in the
    title."""
    result = ws.rheed_result(run_id, ml_nm=ml_nm or rheed.monolayer_nm(material))
    return Plot(rheed_figure(result, title=run_id), static=static)


def _rheed_overlay_part(ws, rid: str, at: str, max_points: int):
    """One run's RHEED trace, event time and layers from the server's analysis (one request)."""
    doc = ws.rheed_server(rid, max_points=max_points)
    trace = pd.DataFrame(
        {
            "time": pd.to_datetime(pd.Series(doc["trace"]["time"], dtype="str"), utc=True),
            "channel": rheed.RHEED_CHANNEL,
            "value": pd.Series(doc["trace"]["value"], dtype=float),
            "unit": "a.u.",
        }
    )
    ev = None
    if at == "growth_start" and doc.get("onset"):
        ev = pd.Timestamp(doc["onset"])
    elif doc["windows"] and doc["windows"][0].get("start"):
        ev = pd.Timestamp(doc["windows"][0]["start"])
    elif len(trace):
        ev = trace["time"].min()
    layers = pd.DataFrame(doc["layers"], columns=["layer", "start", "end"])
    return trace, ev, layers


def _overlay_part(ws, rid: str, channel: str, at: str):
    """One run's ``channel``, event time and RHEED layers, from its frames (2–3 requests)."""
    rec = ws.run(rid)
    channels = rec.get("channels", {})
    shutters = [c for c in channels.get("tool_state", []) if c.startswith("shutter_")]
    tools = ws.tool_state(rid, channels=shutters) if shutters else None
    want = [
        c for c in {channel, rheed.RHEED_CHANNEL, "growth_rate"} if c in channels.get("process", [])
    ]
    proc = (
        ws.process(rid, channels=want)
        if want
        else pd.DataFrame(columns=["time", "channel", "value", "unit"])
    )
    result = rheed.analyze_frames(proc, tools)
    ev = compare.event_time(proc, tools, at, result)
    if channel in channels.get("process", []):
        frame = proc[proc["channel"] == channel]
    elif channel in channels.get("tool_state", []):
        frame = ws.tool_state(rid, channels=[channel])
    else:
        frame = None
    return frame, ev, result.layers


def overlay_data(
    ws,
    run_ids: Sequence[str],
    channel: str = rheed.RHEED_CHANNEL,
    at: str = "growth_start",
    max_points: int = 2000,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Aligned long frames of ``channel`` and the RHEED layers (``t0_s``/``t1_s``) of the runs.

    The runs are fetched in parallel; a RHEED overlay aligned at growth start or shutter opening
    uses the server's analysis (one request per run, trace decimated to ``max_points``).
    """
    from concurrent.futures import ThreadPoolExecutor

    if at not in compare.ALIGN:
        raise ValueError(f"align at one of {', '.join(compare.ALIGN)}, not {at!r}")
    ids = list(dict.fromkeys(run_ids))
    server_side = channel == rheed.RHEED_CHANNEL and at != "run_start"

    def part(rid):
        if server_side:
            return _rheed_overlay_part(ws, rid, at, max_points)
        return _overlay_part(ws, rid, channel, at)

    with ThreadPoolExecutor(max_workers=min(4, max(1, len(ids)))) as pool:
        parts = list(pool.map(part, ids))
    frames, events, layer_frames = {}, {}, []
    for rid, (frame, ev, ly) in zip(ids, parts, strict=True):
        if frame is not None:
            frames[rid] = frame
        events[rid] = ev
        if len(ly) and ev is not None:
            layer_frames.append(
                pd.DataFrame(
                    {
                        "run_id": rid,
                        "layer": ly["layer"].to_numpy(),
                        "t0_s": (pd.to_datetime(ly["start"], utc=True) - ev).dt.total_seconds(),
                        "t1_s": (pd.to_datetime(ly["end"], utc=True) - ev).dt.total_seconds(),
                    }
                )
            )
    data = compare.aligned(frames, events)
    layers = (
        pd.concat(layer_frames, ignore_index=True)
        if layer_frames
        else pd.DataFrame(columns=["run_id", "layer", "t0_s", "t1_s"])
    )
    return data, layers


def overlay(
    ws,
    run_ids: Sequence[str],
    channel: str = rheed.RHEED_CHANNEL,
    at: str = "growth_start",
    window: tuple[float, float] | None = None,
    static: bool = True,
) -> Plot:
    """Several runs' ``channel`` overlaid on seconds from an event (``growth_start``,
    ``shutter_open``, ``run_start``), layers shaded; ``window`` = (from, to) seconds."""
    data, layers = overlay_data(ws, run_ids, channel, at)
    if window is not None and len(data):
        data = data[(data["t_s"] >= window[0]) & (data["t_s"] <= window[1])]
        layers = layers[(layers["t1_s"] >= window[0]) & (layers["t0_s"] <= window[1])]
    return Plot(overlay_figure(data, channel, layers, at=at), static=static)


def plot_metrology(ws, run_ids: Sequence[str] | str, technique: str, static: bool = True) -> Plot:
    """XRD (log, offset, labelled), XPS (reversed binding energy, core levels) or AFM
    (roughness) of some runs."""
    items = ws.metrology(run_id=run_ids, technique=technique, with_spectra=True)
    return Plot(metrology_figure(items, technique), static=static)


class RheedExplorer(W.VBox):
    """A run's RHEED trace (zoom and pan it) and the analysis of the visible time window.

    ``RheedExplorer(ws, run_id)``. Zooming the plot — or setting :attr:`window` — re-runs the
    oscillation analysis on that window only; ``table`` shows it and ``analysis`` holds it.
    """

    def __init__(
        self,
        workspace,
        run_id: str,
        *,
        ml_nm: float | None = None,
        material: str | None = None,
        **kwargs,
    ):
        self.ws, self.run_id = workspace, run_id
        self.ml_nm = ml_nm or rheed.monolayer_nm(material)
        self.full = workspace.rheed_result(run_id, ml_nm=self.ml_nm)
        self.plot = Plot(rheed_figure(self.full, title=run_id), static=False)
        self.figure = self.plot.widget
        self.table = W.HTML()
        self.analysis = self.full
        self.figure.layout.on_change(self._on_range, "xaxis.range")
        super().__init__(children=[self.figure, self.table], **kwargs)
        self._show(self.full, "whole trace")

    @property
    def window(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """The visible time window (UTC), or None before any zoom."""
        r = self.figure.layout.xaxis.range
        return None if r is None else (_utc(r[0]), _utc(r[1]))

    @window.setter
    def window(self, value) -> None:
        """Zoom the plot to ``(from, to)`` (times; naive ones are UTC)."""
        lo, hi = (pd.Timestamp(v) for v in value)
        self.figure.layout.xaxis.range = [lo, hi]

    def _on_range(self, layout, rng) -> None:
        if rng is None:
            return
        lo, hi = _utc(rng[0]), _utc(rng[1])
        trace = self.full.trace
        if trace is None or trace.empty:
            return
        t = pd.to_datetime(trace["time"], utc=True)
        part = trace[(t >= lo) & (t <= hi)]
        proc = part.assign(channel=rheed.RHEED_CHANNEL)
        recipe = self.full.windows["recipe_rate_ml_s"].iloc[0] if len(self.full.windows) else None
        recipe = (
            None
            if recipe is None or (isinstance(recipe, float) and np.isnan(recipe))
            else float(recipe)
        )
        self.analysis = rheed.analyze_frames(proc, None, ml_nm=self.ml_nm, recipe_rate=recipe)
        self._show(self.analysis, f"{lo:%H:%M:%S} – {hi:%H:%M:%S} UTC")

    def _show(self, result, what: str) -> None:
        w = result.windows
        if not len(w) or w["status"].iloc[0] != "ok":
            self.table.value = f"<b>{what}</b>: no oscillation found"
            return
        r = w.iloc[0]
        nm = f"{r.rate_nm_s:.4f} nm/s" if pd.notna(r.rate_nm_s) else "nm/s: give ml_nm"
        self.table.value = (
            f"<b>{what}</b>: period {r.period_s:.4f} ± {r.period_err_s:.4f} s · "
            f"{r.rate_ml_s:.4f} ML/s · {nm} · {int(r.layers_observed)} layers observed"
        )


def _utc(v) -> pd.Timestamp:
    ts = pd.Timestamp(v)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
