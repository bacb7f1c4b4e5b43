"""Figures for the widgets: process channels and tool state on one time axis, and spectra.

Matplotlib, drawn with the object-oriented ``Figure`` API (no pyplot state, nothing left open) and
rendered to PNG: it is already a dependency, and a static PNG displays the same in JupyterLab,
Notebook, VS Code, nbconvert/nbclient output and the test suite — no browser-side plotting library
to install, version or trust. The widgets stay interactive through their controls (filters, paging,
selection), which re-render the image.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

DPI = 96


def series_figure(process: pd.DataFrame, tools: pd.DataFrame, title: str = "") -> Figure:
    """One panel per process channel and per tool channel, sharing the time axis.

    ``process``: long frame ``time, channel, value, unit``; ``tools``: the same plus ``setpoint``
    (drawn dashed) and ``tool``.
    """
    panels = []
    for df, kind in ((process, "process"), (tools, "tool")):
        if df is not None and not df.empty:
            for ch, g in df.groupby("channel", sort=True):
                panels.append((kind, ch, g.sort_values("time")))
    n = max(len(panels), 1)
    height = 1.6 if n <= 5 else 1.1
    fig = Figure(figsize=(9, height * n + 0.8), dpi=DPI, layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    if not panels:
        axes[0].text(
            0.5,
            0.5,
            "no process data or tool state for this run",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
        axes[0].set_axis_off()
    for ax, (kind, ch, g) in zip(axes, panels, strict=False):
        t = pd.to_datetime(g["time"], utc=True).dt.tz_convert(None)
        color = "C0" if kind == "process" else "C1"
        step = "unit" in g and (g["unit"] == "state").all()  # shutters: open/closed steps
        draw = ax.step if step else ax.plot
        kw = {"where": "post"} if step else {}
        draw(t, g["value"], lw=1.0, color=color, label="value", **kw)
        if kind == "tool" and not step and "setpoint" in g and g["setpoint"].notna().any():
            ax.plot(t, g["setpoint"], lw=1.0, ls="--", color="0.4", label="setpoint")
            ax.legend(loc="upper right", fontsize="x-small", frameon=False)
        unit = g["unit"].dropna().iloc[0] if "unit" in g and g["unit"].notna().any() else ""
        # the channel name inside the panel: long names would collide as y labels
        unit = {"degC": "°C", "deg": "°"}.get(unit, unit)
        ax.text(
            0.005,
            0.96,
            f"{ch} [{unit}]" if unit else ch,
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize="small",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
        ax.tick_params(which="both", labelsize="x-small")
        ax.grid(alpha=0.3)
        if (
            ch == "chamber_pressure"
            or (g["value"] > 0).all()
            and g["value"].max() / max(g["value"].min(), 1e-300) > 1e3
        ):
            ax.set_yscale("log")
    axes[-1].set_xlabel("time (UTC)", fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def spectra_figure(items: pd.DataFrame, log_y: bool = False, title: str = "") -> Figure:
    """Spectra of several items overlaid, one colour per run, with their peaks marked."""
    fig = Figure(figsize=(9, 4.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    if items is None or items.empty:
        ax.text(
            0.5,
            0.5,
            "no spectra for this selection",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return fig
    drawn = 0
    for k, row in enumerate(items.itertuples(index=False)):
        if row.x is None or row.y is None or len(row.x) == 0:
            continue  # a scalar-only item (e.g. an AFM roughness) has no spectrum
        drawn += 1
        x, y = np.asarray(row.x, float), np.asarray(row.y, float)
        color = f"C{k % 10}"
        ax.plot(x, y, lw=1.0, color=color, label=f"{row.run_id} ({row.technique})")
        peaks = np.asarray(row.peaks if row.peaks is not None else [], float)
        if len(peaks) and len(x):
            order = np.argsort(x)
            py = np.interp(peaks, x[order], y[order])
            ax.plot(peaks, py, "v", color=color, ms=7, mec="black", mew=0.5)
            for p, v in zip(peaks, py, strict=True):
                ax.annotate(
                    f"{p:.2f}",
                    (p, v),
                    textcoords="offset points",
                    xytext=(0, 8 + 10 * k),
                    ha="center",
                    fontsize="x-small",
                    color=color,
                )
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "these items have no spectra (scalar results only)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return fig
    first = items.iloc[0]
    ax.set_xlabel(first.get("x_unit") or "x")
    ax.set_ylabel(first.get("y_unit") or "y")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", frameon=False)
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def image_output(fig: Figure, text: str = "") -> dict:
    """A ``display_data`` output holding the figure as PNG (for an ``Output`` widget's outputs)."""
    return {
        "output_type": "display_data",
        "metadata": {},
        "data": {
            "image/png": base64.b64encode(png_bytes(fig)).decode("ascii"),
            "text/plain": text or "<figure>",
        },
    }


def text_output(text: str) -> dict:
    """A plain-text ``stream`` output (messages and errors inside an ``Output`` widget)."""
    return {"output_type": "stream", "name": "stdout", "text": text + "\n"}
