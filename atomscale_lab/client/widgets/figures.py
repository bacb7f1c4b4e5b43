"""Interactive science figures (plotly) with a static matplotlib image of the same figure.

Why plotly: its figures zoom, pan and read out values on hover in the browser without a kernel
round trip; ``FigureWidget`` (built on anywidget since plotly 6) reports zoom and selection back
to Python, so a time window chosen with the mouse can be re-analysed in the kernel; and both its
mime renderer and anywidget ship as prebuilt JupyterLab 4 extensions inside their wheels — nothing
to build. Static export without a browser (plotly's kaleido needs Chrome) is done by redrawing the
same figure with matplotlib (:func:`to_matplotlib`), so nbconvert, PDF exports and the test suite
get a PNG that shows what the interactive figure shows.

Conventions: times in UTC (axis titles say so), XRD intensity on a log axis with the scans offset
by decades and peak labels staggered so they do not collide, XPS binding energy decreasing to the
right with core levels named, AFM roughness as values (nm), units with degree signs.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from atomscale_lab.client.widgets.plots import DPI

COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
XRD_DECADES = 2.0
"""Offset between stacked XRD scans, in decades of intensity."""

CORE_LEVELS = {
    "Ga 3d": 19.0,
    "Ga 3d (GaN)": 20.0,
    "As 3d": 41.0,
    "Al 2p": 73.0,
    "C 1s": 284.8,
    "O 1s": 531.0,
    "N 1s": 397.0,
    "Ga LMM": 423.0,
    "Sr 3d": 133.0,
    "Ti 2p": 458.5,
    "La 4d": 102.0,
    "Mn 2p": 641.5,
    "La 3d": 834.0,
    "Si 2p": 99.3,
    "Ga 2p3/2": 1117.0,
    "In 3d": 444.5,
    "Ba 3d": 780.0,
}
"""Reference binding energies (eV) used to name XPS peaks (nearest within 2 eV)."""


def _utc(series) -> pd.Series:
    return pd.to_datetime(series, utc=True).dt.tz_convert("UTC")


def _ns(times: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (one unit for every resolution pandas may hold)."""
    return times.astype("datetime64[ns, UTC]").astype("int64").to_numpy()


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 380) -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 14}},
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        template="plotly_white",
        hovermode="closest",
        legend={"font": {"size": 10}},
    )
    fig.update_xaxes(title_text=x, showline=True, mirror=True, ticks="outside")
    fig.update_yaxes(title_text=y, showline=True, mirror=True, ticks="outside")
    return fig


# --- RHEED ------------------------------------------------------------------------------------


def rheed_figure(result, title: str = "") -> go.Figure:
    """A run's RHEED intensity with the growth windows and layers shaded, maxima marked.

    ``result`` is a :class:`~atomscale_lab.rheed.RheedAnalysis` with ``trace`` (from
    ``Workspace.rheed_result``). The x range is the RHEED trace, not the whole run.
    """
    fig = go.Figure()
    trace = result.trace if result.trace is not None else pd.DataFrame()
    if trace.empty:
        fig.add_annotation(
            text="no RHEED intensity in this run",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
        )
        return _layout(fig, title, "time (UTC)", "intensity (a.u.)")
    trace = trace.sort_values("time")
    t = _utc(trace["time"])
    lo, hi = t.min(), t.max()
    fig.add_trace(
        go.Scatter(
            x=t,
            y=trace["value"],
            mode="lines",
            name="specular intensity",
            line={"width": 1.2, "color": COLORS[0]},
            hovertemplate="%{x|%H:%M:%S.%L} UTC<br>%{y:.3f} a.u.<extra></extra>",
        )
    )
    shapes = [
        _band(max(w.start, lo), min(w.end, hi), "#2ca02c", 0.07)
        for w in result.windows.itertuples()
        if not (pd.isna(w.start) or w.start > hi or w.end < lo)
    ]
    layers = result.layers
    shapes += [_band(ly.start, ly.end) for k, ly in enumerate(layers.itertuples()) if k % 2 == 0]
    fig.update_layout(shapes=shapes)
    if len(layers):
        ends = _utc(layers["end"])
        y_at = np.interp(_ns(ends), _ns(t), trace["value"])
        fig.add_trace(
            go.Scatter(
                x=ends,
                y=y_at,
                mode="markers",
                name="layer completed (intensity maximum)",
                marker={"symbol": "triangle-down", "size": 7, "color": COLORS[3]},
                customdata=np.column_stack(
                    [layers["layer"], layers["period_s"], layers["period_err_s"]]
                ),
                hovertemplate="layer %{customdata[0]:.0f}<br>period %{customdata[1]:.3f} ± "
                "%{customdata[2]:.3f} s<extra></extra>",
            )
        )
    fig.update_xaxes(range=[lo, hi])
    head = _rheed_headline(result)
    return _layout(
        fig, f"{title} — {head}" if title else head, "time (UTC)", "specular intensity (a.u.)"
    )


def _rheed_headline(result) -> str:
    ok = result.windows[result.windows["status"] == "ok"] if len(result.windows) else []
    if not len(ok):
        return "no RHEED oscillation found"
    w = ok.iloc[0]
    text = f"period {w.period_s:.3f} ± {w.period_err_s:.3f} s · {w.rate_ml_s:.3f} ML/s"
    if pd.notna(w.rate_nm_s):
        text += f" · {w.rate_nm_s:.4f} nm/s"
    if w.drift:
        text += f" · DRIFT {100 * w.rate_deviation:+.1f} % vs recipe"
    return text


def _band(x0, x1, color: str = "#1f77b4", opacity: float = 0.08) -> dict:
    """A shaded x range over the whole height (a layout shape, drawn below the data)."""
    return {
        "type": "rect",
        "xref": "x",
        "yref": "paper",
        "x0": x0,
        "x1": x1,
        "y0": 0,
        "y1": 1,
        "fillcolor": color,
        "opacity": opacity,
        "line": {"width": 0},
        "layer": "below",
    }


def overlay_figure(
    frames: pd.DataFrame,
    channel: str,
    layers: pd.DataFrame | None = None,
    at: str = "growth_start",
    title: str = "",
) -> go.Figure:
    """Several runs' ``channel`` on one axis of seconds from event ``at``.

    ``frames``: long frame with ``run_id, t_s, channel, value`` (see
    :func:`atomscale_lab.client.compare.aligned`). ``layers``: RHEED layers with
    ``run_id, t0_s, t1_s``
    — the first run's layers are shaded, every run's layer completions are marked.
    """
    sel = frames[frames["channel"] == channel] if len(frames) else frames
    runs = list(dict.fromkeys(sel["run_id"])) if len(sel) else []
    shapes, traces = [], []
    if layers is not None and len(layers) and runs:
        first = layers[layers["run_id"] == runs[0]]
        shapes = [_band(ly.t0_s, ly.t1_s) for k, ly in enumerate(first.itertuples()) if k % 2 == 0]
    unit = ""
    # one Figure built from all traces and shapes at once: adding them one by one re-validates
    # the figure each time and made a 10-run overlay several times slower
    for i, (rid, g) in enumerate(sel.groupby("run_id", sort=False)):
        g = g.sort_values("t_s")
        color = COLORS[i % len(COLORS)]
        unit = g["unit"].iloc[0] if "unit" in g and len(g) else unit
        traces.append(
            go.Scatter(
                x=g["t_s"].to_numpy(),
                y=g["value"].to_numpy(),
                mode="lines",
                name=rid,
                line={"width": 1.1, "color": color},
                hovertemplate=f"{rid}<br>%{{x:.2f}} s<br>%{{y:.4g}}<extra></extra>",
            )
        )
        if layers is not None and len(layers):
            ly = layers[layers["run_id"] == rid]
            if len(ly):
                y_at = np.interp(ly["t1_s"], g["t_s"], g["value"])
                traces.append(
                    go.Scatter(
                        x=ly["t1_s"].to_numpy(),
                        y=y_at,
                        mode="markers",
                        showlegend=False,
                        hoverinfo="skip",
                        marker={"symbol": "line-ns-open", "size": 8, "color": color},
                    )
                )
    fig = go.Figure(data=traces, layout={"shapes": shapes})
    if not runs:
        fig.add_annotation(
            text=f"no {channel} in these runs",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
        )
    what = at.replace("_", " ")
    return _layout(
        fig,
        title or f"{channel} aligned at {what}",
        f"time from {what} (s)",
        f"{channel} ({_unit(unit)})",
    )


def _unit(unit: str) -> str:
    from atomscale_lab.client.compare import unit_label

    return unit_label(unit)


# --- metrology ---------------------------------------------------------------------------------


def _clusters(xs: np.ndarray, span: float) -> list[list[int]]:
    """Indices of sorted peaks grouped where neighbours are closer than ~5 % of the axis (one
    label per group, so labels never sit on top of each other)."""
    groups: list[list[int]] = []
    for i, x in enumerate(xs):
        if groups and x - xs[groups[-1][-1]] < 0.05 * span:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _stagger(xs: np.ndarray, span: float, levels: int = 3) -> list[int]:
    """A label level per peak so that labels closer than ~6 % of the axis do not collide."""
    out, last = [], {}
    min_dx = 0.06 * span
    for x in xs:
        level = 0
        while level < levels and x - last.get(level, -np.inf) < min_dx:
            level += 1
        level = min(level, levels - 1)
        last[level] = x
        out.append(level)
    return out


def xrd_figure(items: pd.DataFrame, title: str = "XRD 2θ scans") -> go.Figure:
    """XRD scans on a log intensity axis, offset by :data:`XRD_DECADES` decades each, with peak
    markers and staggered 2θ labels."""
    fig = go.Figure()
    rows = [r for r in items.itertuples(index=False) if r.x is not None and len(r.x)]
    all_x = np.concatenate([np.asarray(r.x, float) for r in rows]) if rows else np.array([0, 1])
    span = float(all_x.max() - all_x.min()) or 1.0
    for k, r in enumerate(rows):
        x, y = np.asarray(r.x, float), np.clip(np.asarray(r.y, float), 0.5, None)
        off = 10 ** (XRD_DECADES * k)
        color = COLORS[k % len(COLORS)]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y * off,
                mode="lines",
                name=str(r.run_id),
                line={"width": 1.0, "color": color},
                customdata=y,
                hovertemplate=f"{r.run_id}<br>2θ %{{x:.3f}}°<br>"
                "%{customdata:.0f} counts<extra></extra>",
            )
        )
        peaks = np.sort(np.asarray(r.peaks if r.peaks is not None else [], float))
        if len(peaks):
            order = np.argsort(x)
            py = np.interp(peaks, x[order], y[order]) * off
            fig.add_trace(
                go.Scatter(
                    x=peaks,
                    y=py * 1.15,
                    mode="markers",
                    showlegend=False,
                    marker={
                        "symbol": "triangle-down",
                        "size": 7,
                        "color": color,
                        "line": {"width": 0.5},
                    },
                    hovertemplate="peak %{x:.3f}°<extra></extra>",
                )
            )
            groups = _clusters(peaks, span)
            lx = [float(np.mean(peaks[g])) for g in groups]
            ly = [float(py[g].max()) * 10**0.4 for g in groups]
            text = [" / ".join(f"{peaks[i]:.2f}°" for i in g) for g in groups]
            fig.add_trace(
                go.Scatter(
                    x=lx,
                    y=ly,
                    mode="text",
                    showlegend=False,
                    text=text,
                    textfont={"size": 9, "color": color},
                    hoverinfo="skip",
                )
            )
    fig.update_yaxes(type="log")
    fig.update_layout(legend={"traceorder": "reversed"})
    return _layout(
        fig,
        title + (f" (offset ×10^{XRD_DECADES:g} per scan)" if len(rows) > 1 else ""),
        "2θ (°)",
        "intensity (counts, log)",
        height=460,
    )


def core_level(be: float, tolerance: float = 2.0) -> str | None:
    """The name of the reference core level nearest ``be`` (eV), if within ``tolerance``."""
    name, ref = min(CORE_LEVELS.items(), key=lambda kv: abs(kv[1] - be))
    return name.replace(" (GaN)", "") if abs(ref - be) <= tolerance else None


def xps_figure(items: pd.DataFrame, title: str = "XPS survey") -> go.Figure:
    """XPS spectra on a reversed binding-energy axis with named core levels."""
    fig = go.Figure()
    rows = [r for r in items.itertuples(index=False) if r.x is not None and len(r.x)]
    ymax = 0.0
    for k, r in enumerate(rows):
        x, y = np.asarray(r.x, float), np.asarray(r.y, float)
        ymax = max(ymax, float(y.max()))
        color = COLORS[k % len(COLORS)]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=str(r.run_id),
                line={"width": 1.0, "color": color},
                hovertemplate=f"{r.run_id}<br>%{{x:.1f}} eV<br>%{{y:.0f}} counts/s<extra></extra>",
            )
        )
        peaks = np.sort(np.asarray(r.peaks if r.peaks is not None else [], float))
        if len(peaks) and k == 0:  # name the core levels once, on the first spectrum
            order = np.argsort(x)
            py = np.interp(peaks, x[order], y[order])
            names = [core_level(p) or f"{p:.1f} eV" for p in peaks]
            levels = _stagger(peaks, float(x.max() - x.min()) or 1.0)
            fig.add_trace(
                go.Scatter(
                    x=peaks,
                    y=py * (1.06 + 0.09 * np.asarray(levels)),
                    mode="text",
                    text=names,
                    textfont={"size": 9, "color": "#333"},
                    showlegend=False,
                    hovertemplate="%{text}: %{x:.1f} eV<extra></extra>",
                )
            )
    fig.update_xaxes(autorange="reversed")
    return _layout(fig, title, "binding energy (eV)", "intensity (counts/s)")


def afm_figure(items: pd.DataFrame, title: str = "AFM RMS roughness") -> go.Figure:
    """AFM roughness of each run as bars (nm), value on hover and on the bar."""
    rows = items[items["result_value"].notna()] if len(items) else items
    fig = go.Figure(
        go.Bar(
            x=[str(r) for r in rows["run_id"]],
            y=rows["result_value"],
            text=[f"{v:.2f} nm" for v in rows["result_value"]],
            textposition="outside",
            marker={"color": COLORS[2]},
            hovertemplate="%{x}<br>RMS %{y:.3f} nm<extra></extra>",
        )
    )
    unit = rows["result_unit"].iloc[0] if len(rows) else "nm"
    return _layout(fig, title, "run", f"RMS roughness ({unit})")


def metrology_figure(items: pd.DataFrame, technique: str, title: str = "") -> go.Figure:
    """The figure for ``technique``: XRD, XPS, AFM; other spectra as plain lines."""
    tech = technique.upper()
    if tech == "XRD":
        return xrd_figure(items, title or "XRD 2θ scans")
    if tech == "XPS":
        return xps_figure(items, title or "XPS survey")
    has_spectra = len(items) and any(x is not None and len(x) for x in items.get("x", []))
    if tech == "AFM" or not has_spectra:
        return afm_figure(
            items, title or f"{technique}: " + (items["result_name"].iloc[0] if len(items) else "")
        )
    fig = go.Figure()
    for k, r in enumerate(items.itertuples(index=False)):
        fig.add_trace(
            go.Scatter(
                x=r.x,
                y=r.y,
                mode="lines",
                name=str(r.run_id),
                line={"color": COLORS[k % len(COLORS)]},
            )
        )
    first = items.iloc[0]
    return _layout(fig, title or technique, first.get("x_unit") or "x", first.get("y_unit") or "y")


# --- static image ------------------------------------------------------------------------------


def _mpl_color(c):
    return c if isinstance(c, str) and c.startswith("#") else None


def to_matplotlib(fig: go.Figure, width: float = 9.0, height: float | None = None):
    """The plotly figure redrawn with matplotlib (lines, markers, text, bars, shaded x ranges,
    log and reversed axes, titles): a static image of what the interactive figure shows."""
    from matplotlib.figure import Figure

    lay = fig.layout
    h = height or ((lay.height or 380) / 96 * 0.9)
    mfig = Figure(figsize=(width, h), dpi=DPI, layout="constrained")
    ax = mfig.subplots()
    xaxis, yaxis = lay.xaxis, lay.yaxis
    for shape in lay.shapes or ():
        if shape.type == "rect" and shape.yref in ("paper", "y domain"):
            ax.axvspan(
                _xval(shape.x0),
                _xval(shape.x1),
                color=shape.fillcolor or "0.8",
                alpha=shape.opacity if shape.opacity is not None else 0.2,
                lw=0,
                zorder=0,
            )
    for tr in fig.data:
        if tr.type == "bar":
            xs = list(tr.x)
            bars = ax.bar(xs, tr.y, color=_mpl_color(tr.marker.color) or "C2")
            if tr.text is not None:
                ax.bar_label(bars, labels=list(tr.text), fontsize="x-small")
            ax.tick_params(axis="x", labelrotation=30, labelsize="x-small")
            continue
        x = np.asarray([_xval(v) for v in tr.x]) if tr.x is not None else None
        y = np.asarray(tr.y, float) if tr.y is not None else None
        if x is None or y is None or not len(x):
            continue
        mode = tr.mode or "lines"
        color = (
            _mpl_color(tr.line.color)
            or _mpl_color(tr.marker.color)
            or _mpl_color(tr.textfont.color)
        )
        label = tr.name if tr.showlegend is not False and tr.name else None
        if "lines" in mode:
            ax.plot(x, y, lw=tr.line.width or 1.0, color=color, label=label)
        if "markers" in mode:
            ax.plot(
                x,
                y,
                ls="none",
                marker="v",
                ms=5,
                color=color,
                label=label if "lines" not in mode else None,
            )
        if "text" in mode and tr.text is not None:
            for xi, yi, s in zip(x, y, tr.text, strict=False):
                ax.annotate(
                    str(s),
                    (xi, yi),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    color=color or "0.2",
                    annotation_clip=True,
                )
    for ann in lay.annotations or ():
        if ann.xref == "paper":
            ax.text(ann.x, ann.y, ann.text, ha="center", va="center", transform=ax.transAxes)
    if yaxis.type == "log":
        ax.set_yscale("log")
    if xaxis.range is not None:
        ax.set_xlim(_xval(xaxis.range[0]), _xval(xaxis.range[1]))
    if xaxis.autorange == "reversed":
        ax.invert_xaxis()
    ax.set_xlabel(xaxis.title.text or "")
    ax.set_ylabel(yaxis.title.text or "")
    if lay.title.text:
        ax.set_title(lay.title.text, fontsize="medium")
    ax.grid(alpha=0.3)
    if any(t.name and t.showlegend is not False for t in fig.data if t.type != "bar"):
        ax.legend(fontsize="x-small", frameon=False)
    return mfig


def _xval(v):
    if isinstance(v, pd.Timestamp | np.datetime64) or hasattr(v, "tzinfo"):
        ts = pd.Timestamp(v)
        return (ts.tz_convert("UTC") if ts.tzinfo else ts).tz_localize(None)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            ts = pd.Timestamp(v)
            return (ts.tz_convert("UTC") if ts.tzinfo else ts).tz_localize(None)
    return v


def png(fig: go.Figure) -> bytes:
    """The static image of ``fig`` as PNG bytes."""
    buf = io.BytesIO()
    to_matplotlib(fig).savefig(buf, format="png")
    return buf.getvalue()


class Plot:
    """An interactive figure that also carries its static image.

    In JupyterLab it displays as a plotly ``FigureWidget`` (zoom, pan, hover; zoom and selection
    reach Python through :attr:`widget`); exports and ``nbconvert`` keep the PNG of the same
    figure. ``Plot(fig)``; ``.figure`` is the ``go.Figure``.
    """

    def __init__(self, figure: go.Figure, static: bool = True):
        self.figure = figure
        self.static = static
        self._widget = None

    @property
    def widget(self) -> go.FigureWidget:
        """The live ``FigureWidget`` (made on first use)."""
        if self._widget is None:
            self._widget = go.FigureWidget(self.figure)
        return self._widget

    def png(self) -> bytes:
        """The static image as PNG bytes."""
        return png(self.widget if self._widget is not None else self.figure)

    def _repr_mimebundle_(self, include=None, exclude=None):
        bundle = dict(self.widget._repr_mimebundle_(include=include, exclude=exclude) or {})
        if self.static:
            bundle["image/png"] = base64.b64encode(self.png()).decode("ascii")
        bundle["text/plain"] = f"<Plot: {self.figure.layout.title.text or 'figure'}>"
        return bundle

    def output(self) -> dict:
        """A ``display_data`` output (for an ``Output`` widget's ``outputs``)."""
        return {"output_type": "display_data", "metadata": {}, "data": self._repr_mimebundle_()}
