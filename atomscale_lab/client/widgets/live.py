"""``LiveRun``: follow a run while an instrument streams it in.

Every ``interval`` seconds the widget asks the server (through the :class:`Workspace`) for the
run's record and for the rows newer than the last time it has seen, appends them, redraws the plot
and the status line, and stops by itself once the run is ``complete`` (or ``error``). Only new rows
travel: the first poll fetches the run so far (downsampled by the server to ``max_points`` per
channel), later polls only what came after.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import ipywidgets as W
import pandas as pd

from atomscale_lab.client.widgets.plots import image_output, series_figure, text_output

FINAL = ("complete", "error")


def _esc(text) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class LiveRun(W.VBox):
    """Follow an active run: a status line and a plot that grow as rows arrive.

    ``LiveRun(ws, run_id)`` starts polling at once (``autostart=False`` to call :meth:`poll`
    yourself). ``channels`` limits the plot; ``category`` is ``"process"`` or ``"tool_state"``;
    ``keep`` bounds the rows held in memory per channel. ``frame`` is what has been seen so far.
    """

    def __init__(
        self,
        workspace,
        run_id: str,
        *,
        channels=None,
        category: str = "process",
        interval: float = 2.0,
        max_points: int = 2000,
        keep: int = 20_000,
        autostart: bool = True,
        **kwargs,
    ):
        if category not in ("process", "tool_state"):
            raise ValueError("category must be 'process' or 'tool_state'")
        self.ws, self.run_id, self.category = workspace, run_id, category
        self.channels, self.interval = channels, interval
        self.max_points, self.keep = max_points, keep
        self.frame = pd.DataFrame()
        self.status = "unknown"
        self.polls = 0
        self.error: str | None = None
        self._since = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.status_line = W.HTML(value=f"<b>{_esc(run_id)}</b>: waiting for the first poll…")
        self.plot = W.Output(layout=W.Layout(min_height="200px"))
        self.stop_button = W.Button(
            description="Stop following", icon="stop", layout=W.Layout(width="160px")
        )
        self.stop_button.on_click(lambda _b: self.stop())
        super().__init__(
            children=[W.HBox([self.status_line, self.stop_button]), self.plot], **kwargs
        )
        if autostart:
            self.start()

    # -- polling --------------------------------------------------------------------------------
    def _fetch(self, start):
        fn = self.ws.process if self.category == "process" else self.ws.tool_state
        kw = {"channels": self.channels, "start": start}
        if start is None:
            kw["max_points"] = self.max_points
        return fn(self.run_id, **kw)

    def poll(self) -> int:
        """One round: fetch the run's status and new rows, redraw. Returns the new row count."""
        with self._lock:
            run = self.ws.run(self.run_id)
            status = (
                (run.get("run") or run).get("status", "unknown")
                if isinstance(run, dict)
                else "unknown"
            )
            new = self._fetch(self._since)
            added = self._merge(new)
            self.status = status
            self.polls += 1
            self._render(added)
            if status in FINAL:
                self._stop.set()
            return added

    def _merge(self, new: pd.DataFrame) -> int:
        if new is None or new.empty:
            return 0
        new = new.copy()
        new["time"] = pd.to_datetime(new["time"], utc=True)
        if not self.frame.empty and self._since is not None:
            # The start filter is inclusive: drop rows already seen at the boundary time.
            key = ["time", "channel"]
            edge = self.frame[self.frame["time"] >= self._since][key]
            if not edge.empty:
                seen = set(map(tuple, edge.itertuples(index=False, name=None)))
                mask = [tuple(r) not in seen for r in new[key].itertuples(index=False, name=None)]
                new = new[mask]
        if new.empty:
            return 0
        frame = pd.concat([self.frame, new], ignore_index=True) if not self.frame.empty else new
        frame = frame.sort_values("time", kind="stable")
        if self.keep:
            frame = frame.groupby("channel", sort=False, group_keys=False).tail(self.keep)
        self.frame = frame.reset_index(drop=True)
        self._since = self.frame["time"].max()
        return len(new)

    def _render(self, added: int) -> None:
        last = self._since.strftime("%H:%M:%S UTC") if self._since is not None else "—"
        colour = {
            "active": "#1a7f37",
            "interrupted": "#b35900",
            "finalizing": "#0550ae",
            "complete": "#57606a",
            "error": "#cf222e",
        }.get(self.status, "#57606a")
        self.status_line.value = (
            f"<b>{_esc(self.run_id)}</b> · <span style='color:{colour}'>{_esc(self.status)}"
            f"</span> · {len(self.frame):,} rows (+{added:,}) · last point {last} · "
            f"checked {datetime.now(UTC).strftime('%H:%M:%S')}"
            + ("" if self.status not in FINAL else " · stopped following")
        )
        if added or self.polls == 1:
            if self.frame.empty:
                self.plot.outputs = (text_output("no rows yet"),)
            else:
                proc = self.frame if self.category == "process" else None
                tools = self.frame if self.category == "tool_state" else None
                fig = series_figure(proc, tools, title=f"{self.run_id} (live)")
                self.plot.outputs = (image_output(fig, f"live plot of {self.run_id}"),)

    # -- background following -------------------------------------------------------------------
    def start(self) -> None:
        """Poll every ``interval`` seconds in a background thread until the run is final."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"live-{self.run_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.poll()
                self.error = None
            except Exception as e:  # keep following through a server restart
                self.error = str(e)
                self.status_line.value = (
                    f"<b>{_esc(self.run_id)}</b> · cannot reach the server ({_esc(e)}); retrying"
                )
            self._stop.wait(max(0.05, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        """Stop following (the plot and rows stay)."""
        self._stop.set()
        self.stop_button.disabled = True

    @property
    def following(self) -> bool:
        """Whether the background poller is running."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until following stops (run final or :meth:`stop`); True if it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()
