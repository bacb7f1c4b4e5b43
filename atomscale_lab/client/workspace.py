"""``Workspace``: what a notebook kernel uses to read its org's data and save derived results.

A kernel never holds an org key. It talks to the REST API of the Jupyter server it belongs to
(the server extension holds the key, checks permissions and audits every read), and frames travel
as Arrow IPC streams. ::

    from atomscale_lab import Workspace
    ws = Workspace()
    runs = ws.runs(project="gaas-qw", status="complete")
    series = ws.process(runs.run_id[0], channels=["rheed_intensity"], wide=True)
    ws.write_metrology(fits, run=runs.run_id[0])   # needs data:write; audited as data.write
    ws.config()["instrument_names"]                # the org's settings, as support set them up

Finding the server (first match wins): the ``url``/``token`` arguments; ``ATOMSCALE_LAB_URL`` and
``ATOMSCALE_LAB_TOKEN``; in JupyterHub ``JUPYTERHUB_SERVICE_URL`` with ``JUPYTERHUB_API_TOKEN``;
``JUPYTER_SERVER_URL`` with ``JUPYTER_TOKEN``; else the running Jupyter servers of this user
(``jupyter_server.serverapp.list_running_servers``): the kernel's parent, or the only one.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import pandas as pd
import pyarrow as pa
import requests

from atomscale_lab.errors import (
    AtomscaleError,
    ConfigError,
    Conflict,
    KeyUnavailable,
    NotFound,
    PermissionDenied,
)
from atomscale_lab.errors import ValidationError as _ValidationError
from atomscale_lab.labels import join_labels
from atomscale_lab.schema import ARROW_STREAM, METROLOGY_SCALARS, RUN_COLUMNS, TABLE_ALIASES
from atomscale_lab.tls import hub_ssl

API = "atomscale/api/v1/"
ARROW_ACCEPT = f"{ARROW_STREAM}; compression=zstd"
"""What a ``Workspace`` asks Arrow answers in: buffers compressed (pyarrow reads them as is), so
fewer bytes cross the TLS legs of the hub's proxy and the pass-through."""
PAGE = 500

_ERRORS = {
    400: _ValidationError,
    401: PermissionDenied,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: _ValidationError,
    503: KeyUnavailable,
}


def discover(url: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """Find this kernel's Jupyter server: returns ``(base URL ending in /, token)``."""
    env = os.environ
    if url is None:
        for u_var, t_var in (
            ("ATOMSCALE_LAB_URL", "ATOMSCALE_LAB_TOKEN"),
            ("JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_API_TOKEN"),
            ("JUPYTER_SERVER_URL", "JUPYTER_TOKEN"),
        ):
            if env.get(u_var):
                url, token = env[u_var], token or env.get(t_var)
                break
    if url is None:
        info = _running_server()
        url, token = info["url"], token or info.get("token") or None
    if token is None:
        token = (
            env.get("ATOMSCALE_LAB_TOKEN")
            or env.get("JUPYTERHUB_API_TOKEN")
            or env.get("JUPYTER_TOKEN")
            or _token_for(url)
        )
    return (url if url.endswith("/") else url + "/"), token


def _servers() -> list[dict]:
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:  # a kernel without jupyter_server installed
        return []
    return list(list_running_servers())


def _running_server() -> dict:
    servers = _servers()
    parent = [s for s in servers if s.get("pid") == os.getppid()]
    if parent:
        return parent[0]
    if len(servers) == 1:
        return servers[0]
    if not servers:
        raise ConfigError(
            "no Jupyter server found: run this in a notebook of an atomscale-lab "
            "server, or pass Workspace(url=..., token=...)"
        )
    raise ConfigError(
        "several Jupyter servers are running ("
        + ", ".join(s["url"] for s in servers)
        + "); pass Workspace(url=...) or set ATOMSCALE_LAB_URL"
    )


def _token_for(url: str) -> str | None:
    want = urlsplit(url)
    for s in _servers():
        got = urlsplit(s["url"])
        if (got.hostname, got.port) == (want.hostname, want.port):
            return s.get("token") or None
    return None


def _csv(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable):
        return ",".join(str(v) for v in value)
    return str(value)


def _time(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return ts.isoformat()


class Workspace:
    """The org's data as seen from a kernel, through its server's REST API.

    What a call may do is the caller's role in the org: reading needs ``data:read``,
    :meth:`write_metrology` ``data:write``, :meth:`labels` ``context:join``, :meth:`set_config`
    ``config``, :meth:`audit` ``audit:read`` (own events) or ``audit:all``; a refusal raises
    ``PermissionDenied`` and is audited.

    ``org`` (optional) is checked against the org the server serves, so a notebook written for one
    org fails clearly on another org's server.
    """

    def __init__(
        self,
        org: str | None = None,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 120.0,
    ):
        self.url, token = discover(url, token)
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = False  # loopback only; no proxies or CA bundles from the env
        if token:
            self._session.headers["Authorization"] = f"token {token}"
        tls = hub_ssl()
        ca = tls.client_ca
        hub = (os.environ.get("ATOMSCALE_HUB_PUBLIC_URL") or "").rstrip("/")
        if hub and self.url.startswith(hub + "/") and os.environ.get("ATOMSCALE_CA_BUNDLE"):
            # the org's data server behind the hub's public URL (hub mode)
            self._session.verify = os.environ["ATOMSCALE_CA_BUNDLE"]
        elif self.url.startswith("https:") and ca:
            self._session.verify = ca
            if tls.has_cert:
                self._session.cert = (tls.certfile, tls.keyfile)
        self._status = self.status()
        self.org = self._status["org"]
        if org is not None and org != self.org:
            raise ConfigError(f"this server serves org {self.org!r}, not {org!r}")

    def __repr__(self) -> str:
        return f"Workspace(org={self.org!r}, url={self.url!r})"

    # --- HTTP ---------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        params: dict | None = None,
        json=None,
        arrow: bool = False,
        stream: bool = False,
        data: bytes | None = None,
        headers: dict | None = None,
    ) -> requests.Response:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if arrow:
            params["format"] = "arrow"
            headers = {"Accept": ARROW_ACCEPT, **(headers or {})}
        try:
            r = self._session.request(
                method,
                self.url + API + path,
                params=params,
                json=json,
                data=data,
                headers=headers,
                timeout=self.timeout,
                stream=stream,
            )
        except requests.ConnectionError as e:
            raise ConfigError(f"cannot reach the Jupyter server at {self.url}: {e}") from None
        if r.status_code >= 400:
            try:
                message = r.json().get("message") or r.reason
            except ValueError:
                message = r.text[:200] or r.reason
            if r.status_code == 401 or (r.status_code == 403 and "permission" not in message):
                message = f"not authenticated to {self.url} ({message}); check the token"
            raise _ERRORS.get(r.status_code, AtomscaleError)(message)
        return r

    def _json(self, path: str, **params):
        return self._request("GET", path, params).json()

    def _arrow(self, path: str, **params) -> tuple[pa.Table, requests.Response]:
        r = self._request("GET", path, params, arrow=True, stream=True)
        with r:
            if r.headers.get("Content-Type") != ARROW_STREAM:
                raise AtomscaleError(
                    f"expected an Arrow stream from {path}, got {r.headers.get('Content-Type')}"
                )
            try:
                if r.headers.get("Content-Length"):
                    # a sized answer (one run, a page): read it whole, parse without a copy
                    table = pa.ipc.open_stream(pa.py_buffer(r.content)).read_all()
                else:
                    # a streamed table: parse batches as they arrive, in large reads
                    r.raw.decode_content = True
                    source = io.BufferedReader(r.raw, buffer_size=4 << 20)
                    table = pa.ipc.open_stream(source).read_all()
            except (pa.ArrowInvalid, OSError) as e:
                raise AtomscaleError(
                    f"the Arrow stream from {path} was cut short or is malformed: {e}"
                ) from None
        return table, r

    # --- catalogue ----------------------------------------------------------------------------

    def status(self) -> dict:
        """Org, region, user, role, key version and row counts."""
        return self._json("status")

    def facets(self) -> dict:
        """Distinct projects, instruments, methods, operators and statuses."""
        return self._json("facets")

    def runs_page(self, page: int = 1, per_page: int = 50, **filters) -> dict:
        """One page of runs as the API answers it: ``{total, page, per_page, runs}``."""
        return self._json("runs", page=page, per_page=per_page, **self._filters(filters))

    @staticmethod
    def _filters(filters: dict) -> dict:
        out = {}
        for k, v in filters.items():
            if k in ("start", "end"):
                out[k] = _time(v)
            elif k in ("q", "sort", "order"):
                out[k] = v
            else:
                out[k] = _csv(v)
        return out

    def runs(self, limit: int | None = None, **filters) -> pd.DataFrame:
        """Runs matching ``filters`` (project, sample, instrument, method, operator, status — a
        value or a list —, start, end, q, sort, order) as a DataFrame; every page, or ``limit``."""
        if limit is not None and limit < 1:
            raise _ValidationError("limit must be at least 1", field="limit")
        params = self._filters(filters)
        if limit is None and not {
            k for k, v in params.items() if v is not None and k not in ("sort", "order")
        }:
            return self._all_runs(params.get("sort") or "start", params.get("order") or "desc")
        frames, page, got = [], 1, 0
        while True:
            per_page = PAGE if limit is None else min(PAGE, limit - got)
            t, r = self._arrow("runs", page=page, per_page=per_page, **params)
            total = int(r.headers.get("X-Total-Count", "0"))
            if t.num_rows:
                frames.append(t)
            got += t.num_rows
            if t.num_rows < per_page or got >= total or (limit is not None and got >= limit):
                break
            page += 1
        df = _frame(pa.concat_tables(frames)) if frames else _empty_runs()
        return df.reset_index(drop=True)

    def _all_runs(self, sort: str, order: str) -> pd.DataFrame:
        # every run: one Arrow stream of the runs table instead of hundreds of pages
        cols = list(RUN_COLUMNS)
        if sort not in cols:
            raise _ValidationError(
                f"cannot sort by {sort!r}; choose one of {', '.join(cols)}", field="sort"
            )
        if order not in ("asc", "desc"):
            raise _ValidationError("order must be 'asc' or 'desc'", field="order")
        df = _frame(self.table("process/runs", columns=cols))
        df = df.sort_values("run_id", ascending=order == "asc", kind="stable")  # as the server
        df = df.sort_values(sort, ascending=order == "asc", kind="stable", na_position="last")
        return df.reset_index(drop=True)

    def run(self, run_id: str) -> dict:
        """One run: its record, channels, metrology items and row counts."""
        return self._json(f"runs/{quote(run_id, safe='')}")

    # --- frames -------------------------------------------------------------------------------

    def _series(self, category: str, run_id: str, channels, start, end, max_points):
        t, _ = self._arrow(
            f"runs/{quote(run_id, safe='')}/{category}",
            channels=_csv(channels),
            start=_time(start),
            end=_time(end),
            max_points=max_points,
        )
        return _frame(t)

    def process(
        self,
        run_id: str,
        channels: Sequence[str] | str | None = None,
        start=None,
        end=None,
        wide: bool = False,
        max_points: int | None = None,
    ) -> pd.DataFrame:
        """Process time series of a run: a long frame (``run_id, time, channel, value, unit``),
        or with ``wide=True`` one column per channel indexed by time."""
        df = self._series("process", run_id, channels, start, end, max_points)
        return _wide(df) if wide else df

    def tool_state(
        self,
        run_id: str,
        channels: Sequence[str] | str | None = None,
        start=None,
        end=None,
        wide: bool = False,
        max_points: int | None = None,
    ) -> pd.DataFrame:
        """Tool readback and setpoints of a run: long frame (``run_id, tool, time, channel, value,
        setpoint, unit``), or with ``wide=True`` the readback values one column per channel."""
        df = self._series("tool_state", run_id, channels, start, end, max_points)
        return _wide(df) if wide else df

    def metrology(
        self,
        run_id: Sequence[str] | str | None = None,
        technique: Sequence[str] | str | None = None,
        with_spectra: bool = False,
    ) -> pd.DataFrame:
        """Metrology items (scalar results; ``x``, ``y``, units and ``peaks`` with spectra)."""
        frames, page = [], 1
        while True:
            t, r = self._arrow(
                "metrology",
                run_id=_csv(run_id),
                technique=_csv(technique),
                spectra="true" if with_spectra else None,
                page=page,
                per_page=PAGE,
            )
            if t.num_rows:
                frames.append(t)
            total = int(r.headers.get("X-Total-Count", "0"))
            if t.num_rows < PAGE or page * PAGE >= total:
                break
            page += 1
        if not frames:
            return pd.DataFrame(columns=list(METROLOGY_SCALARS))
        return _frame(pa.concat_tables(frames))

    def metrology_item(self, item_id: str) -> dict:
        """One metrology item with its spectrum (``x``, ``y``, ``peaks``) and units."""
        return self._json(f"metrology/{quote(item_id, safe='')}")

    def table(
        self,
        name: str,
        *,
        run_ids: Sequence[str] | str | None = None,
        columns: Sequence[str] | None = None,
        start=None,
        end=None,
    ) -> pa.Table:
        """A whole table (``process/series`` …, or a short name like ``series``) as Arrow."""
        full = TABLE_ALIASES.get(name, name)
        t, _ = self._arrow(
            f"tables/{full}",
            run_id=_csv(run_ids),
            columns=_csv(columns),
            start=_time(start),
            end=_time(end),
        )
        return t

    def dataset(self, name: str, **kw):
        """A ``pyarrow.dataset`` of a table, for DuckDB (``duckdb.sql("... from ds")``) or Polars
        (``pl.scan_pyarrow_dataset(ds)``).

        The table is streamed once from the server as Arrow IPC and held in memory (an
        ``InMemoryDataset``); the decrypting dataset stays in the server, which holds the key.
        Pass ``run_ids``, ``columns``, ``start``, ``end`` to fetch less.
        """
        import pyarrow.dataset as ds

        return ds.dataset(self.table(name, **kw))

    # --- analysis -----------------------------------------------------------------------------

    def rheed(
        self,
        run_ids: Sequence[str] | str,
        *,
        layers: bool = False,
        material: str | None = None,
        ml_nm: float | None = None,
        recipe_rate: float | None = None,
        drift_tolerance: float | None = None,
        purpose: str | None = None,
    ) -> pd.DataFrame:
        """RHEED analysis of one or more runs (see :mod:`atomscale_lab.rheed`) as a frame.

        One row per growth window (``period_s ± period_err_s``, ``rate_ml_s``, ``rate_nm_s``,
        ``monolayers``, ``drift`` …), or with ``layers=True`` one row per layer. The monolayer
        thickness for nm/s is ``ml_nm``, else that of ``material`` (e.g. ``"GaAs"``), else — when
        a ``purpose`` is given — of the run's ``film`` context label (an audited join); without
        any of them nm/s stays empty. The recipe rate defaults to the run's logged
        ``growth_rate`` (ML/s).
        """
        from atomscale_lab import rheed as _rheed

        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        films: dict[str, str] = {}
        if ml_nm is None and material is None and purpose:
            lab = self.labels(ids, ["film", "material_system"], purpose)
            films = {r.run_id: r.film or r.material_system for r in lab.itertuples()}
        frames = []
        for rid in ids:
            result = self.rheed_result(
                rid,
                ml_nm=ml_nm or _rheed.monolayer_nm(material or films.get(rid)),
                recipe_rate=recipe_rate,
                drift_tolerance=drift_tolerance,
            )
            df = result.layers if layers else result.windows
            frames.append(df.assign(run_id=rid)[["run_id", *df.columns]])
        cols = ["run_id", *(_rheed.LAYER_COLUMNS if layers else _rheed.SUMMARY_COLUMNS)]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)

    def rheed_server(self, run_id: str, max_points: int = 2000, ml_nm: float | None = None) -> dict:
        """The server's RHEED analysis of a run (``GET runs/{run_id}/rheed``): ``windows``,
        ``layers``, ``onset`` and the ``trace`` decimated to ``max_points`` — one request."""
        return self._json(
            f"runs/{quote(run_id, safe='')}/rheed", max_points=max_points, ml_nm=ml_nm
        )

    def rheed_result(
        self,
        run_id: str,
        *,
        ml_nm: float | None = None,
        recipe_rate: float | None = None,
        drift_tolerance: float | None = None,
    ):
        """The full :class:`~atomscale_lab.rheed.RheedAnalysis` of one run (with its trace in
        ``.trace``)."""
        from atomscale_lab import rheed as _rheed

        proc = self.process(run_id, channels=[_rheed.RHEED_CHANNEL, "growth_rate"])
        shutters = [
            c
            for c in self.run(run_id).get("channels", {}).get("tool_state", [])
            if c.startswith("shutter_")
        ]
        tools = self.tool_state(run_id, channels=shutters) if shutters else None
        kw = {} if drift_tolerance is None else {"drift_tolerance": drift_tolerance}
        result = _rheed.analyze_frames(proc, tools, recipe_rate=recipe_rate, ml_nm=ml_nm, **kw)
        result.trace = proc[proc["channel"] == _rheed.RHEED_CHANNEL] if len(proc) else proc
        result.shutters = tools
        return result

    # --- context and audit --------------------------------------------------------------------

    def labels(self, run_ids: Sequence[str], fields: Sequence[str], purpose: str) -> pd.DataFrame:
        """Context labels of ``run_ids`` (audited as ``context.join`` with ``purpose``)."""
        body = {
            "run_ids": [str(r) for r in dict.fromkeys(run_ids)],
            "fields": [fields] if isinstance(fields, str) else list(fields),
            "purpose": purpose,
        }
        labels = self._request("POST", "context/join", json=body).json()["labels"]
        cols = ["run_id", *body["fields"]]
        return pd.DataFrame(labels, columns=cols)

    def join_context(
        self, df: pd.DataFrame, fields: Sequence[str], purpose: str, on: str = "run_id"
    ) -> pd.DataFrame:
        """``df`` with the context ``fields`` of its runs joined on (left join on ``on``).

        A field ``df`` already has (e.g. ``sample``) comes back as ``<field>_label``.
        """
        if on not in df.columns:
            raise _ValidationError(f"the frame has no {on!r} column to join on", field="on")
        ids = [str(r) for r in df[on].dropna().unique()]
        labels = self.labels(ids, fields, purpose)
        return join_labels(df, labels, [c for c in labels.columns if c != "run_id"], on)

    def audit(
        self, limit: int = 100, action: str | None = None, offset: int = 0, actor: str | None = None
    ) -> pd.DataFrame:
        """Recent audit events, newest first: every event with ``audit:all`` (org admins), your own
        with ``audit:read`` (scientists); ``actor`` narrows to one person (others' events need
        ``audit:all``). Viewers and support get ``PermissionDenied``."""
        doc = self._json("audit", limit=limit, offset=offset, action=action, actor=actor)
        return pd.DataFrame(doc["events"])

    # --- writing and configuration ------------------------------------------------------------

    def write_metrology(self, frame: pd.DataFrame | pa.Table, run: str | None = None) -> dict:
        """Save derived results (e.g. a fitted period or a film thickness) as metrology items.

        ``frame`` has the metrology columns (``item_id, run_id, sample, technique, time, x, y,
        x_unit, y_unit, peaks, result_name, result_value, result_unit``); ``technique`` is
        required. ``run`` is the run the rows belong to (rows without ``run_id`` get it); a
        missing ``item_id`` column gets new ids, a missing ``time`` column the current UTC time,
        and ``sample`` defaults to the run's sample. Naive times are taken as UTC.

        Needs the ``data:write`` permission (org admins and scientists); the server checks every
        row against the schema and the org's runs and writes nothing if one is wrong
        (``ValidationError``, ``NotFound`` for an unknown run, ``Conflict`` for an existing
        item id). The write is audited as ``data.write`` with your name, the runs and the row
        count. Returns ``{table, rows, commit, run_ids, item_ids}``.
        """
        t = (
            frame
            if isinstance(frame, pa.Table)
            else pa.Table.from_pandas(frame, preserve_index=False)
        )
        n = t.num_rows
        if "item_id" not in t.column_names:
            t = t.append_column(
                "item_id", pa.array([f"D-{uuid.uuid4().hex[:20]}" for _ in range(n)], pa.string())
            )
        if "time" not in t.column_names:
            now = pd.Timestamp.now(tz="UTC").floor("us")
            t = t.append_column("time", pa.array([now] * n, pa.timestamp("us", tz="UTC")))
        i = t.schema.get_field_index("time")
        if pa.types.is_timestamp(t.schema.field(i).type):
            # the store keeps microseconds in UTC; sub-microsecond digits are dropped
            t = t.set_column(
                i,
                "time",
                t.column(i).cast(
                    pa.timestamp("us", tz=t.schema.field(i).type.tz or "UTC"), safe=False
                ),
            )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, t.schema) as writer:
            writer.write_table(t)
        r = self._request(
            "POST",
            "metrology",
            params={"run_id": run},
            data=sink.getvalue().to_pybytes(),
            headers={"Content-Type": ARROW_STREAM},
        )
        return r.json()

    def config(self) -> dict:
        """The org's workspace configuration (instrument display names, default project, unit
        preferences, sidebar page size), as set up by support or an org admin."""
        return self._json("config")["config"]

    def set_config(self, **settings) -> dict:
        """Change some settings of the org's configuration (``None`` restores a default).

        Needs the ``config`` permission (support and org admins); audited as ``config.change``
        with the names of the changed settings. Returns the whole new configuration.
        """
        return self._request("PATCH", "config", json=settings).json()["config"]

    # --- an Atomscale-style façade ------------------------------------------------------------

    def search(
        self,
        keywords: Sequence[str] | str | None = None,
        status: str | None = None,
        start=None,
        end=None,
        limit: int | None = None,
        **filters,
    ) -> pd.DataFrame:
        """Runs whose text fields contain every keyword (case-insensitive), newest first.

        Like the hosted platform's ``search``: the frame has a ``Data ID`` column (the run id) to
        hand to :meth:`get`.
        """
        words = [keywords] if isinstance(keywords, str) else list(keywords or [])
        df = self.runs(
            limit=None if len(words) > 1 else limit,
            q=words[0] if words else None,
            status=status,
            start=start,
            end=end,
            **filters,
        )
        for w in words[1:]:
            text = (
                df[list(RUN_COLUMNS[:6])].fillna("").astype(str).agg(" ".join, axis=1).str.lower()
            )
            df = df[text.str.contains(w.lower(), regex=False)]
        if limit is not None:
            df = df.head(limit)
        df = df.reset_index(drop=True)
        df.insert(0, "Data ID", df["run_id"])
        return df

    def get(self, data_ids: Sequence[str] | str) -> list[RunItem]:
        """Run items for ids from :meth:`search`; their frames load on first access."""
        ids = [data_ids] if isinstance(data_ids, str) else list(data_ids)
        return [RunItem(self, rid, self.run(rid)) for rid in ids]


@dataclass
class RunItem:
    """One run from :meth:`Workspace.get`; frames are fetched lazily and kept."""

    workspace: Workspace = field(repr=False)
    run_id: str
    record: dict = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    def _get(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def timeseries_data(self) -> pd.DataFrame:
        """Process series, one column per channel, indexed by time."""
        return self._get("ts", lambda: self.workspace.process(self.run_id, wide=True))

    @property
    def tool_state(self) -> pd.DataFrame:
        """Tool state (long frame with setpoints)."""
        return self._get("tool", lambda: self.workspace.tool_state(self.run_id))

    @property
    def metrology(self) -> pd.DataFrame:
        """Metrology items with spectra."""
        return self._get("met", lambda: self.workspace.metrology(self.run_id, with_spectra=True))


def _frame(t: pa.Table) -> pd.DataFrame:
    return t.to_pandas()


def _wide(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="time"))
    wide = df.pivot_table(index="time", columns="channel", values="value", aggfunc="mean")
    wide.columns.name = None
    return wide


def _empty_runs() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype=object) for c in RUN_COLUMNS})
    for c in ("start", "end"):
        df[c] = pd.Series(dtype="datetime64[us, UTC]")
    return df
