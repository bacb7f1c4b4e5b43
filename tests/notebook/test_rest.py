"""The REST API in an in-process server (pytest-jupyter), with unauthenticated access refused."""

import inspect
import io
import json
import re

import pyarrow as pa
import pytest
from tornado.httpclient import HTTPClientError

from atomscale_lab.server import handlers
from atomscale_lab.server.app import AtomscaleLab

API = ("atomscale", "api", "v1")


async def get_json(jp_fetch, *path, **params):
    r = await jp_fetch(*API, *path, params=params)
    assert r.headers["Content-Type"].startswith("application/json")
    return json.loads(r.body)


async def get_arrow(jp_fetch, *path, **params):
    r = await jp_fetch(*API, *path, params={**params, "format": "arrow"})
    assert r.headers["Content-Type"] == handlers.ARROW_STREAM
    return pa.ipc.open_stream(io.BytesIO(r.body)).read_all(), r


async def status_of(jp_fetch, *path, method="GET", body=None, headers=None, **params):
    kw = {"method": method, "params": params, "headers": headers}
    if body is not None:
        kw["body"] = body
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch(*API, *path, **kw)
    return e.value.code, json.loads(e.value.response.body or b"{}")


async def test_status(jp_fetch, lab_env):
    doc = await get_json(jp_fetch, "status")
    assert doc["org"] == "acme" and doc["region"] == "us"
    assert doc["role"] == "org-admin"
    assert doc["key"]["version"] == 1 and len(doc["key"]["fingerprint"]) >= 8
    assert doc["categories"]["process"]["tables"] == {"runs": 30, "series": 30 * 3 * 240}
    assert doc["categories"]["metrology"]["rows"] == 40


async def test_runs_pages_cover_every_run_once(jp_fetch):
    seen = []
    for page in (1, 2, 3, 4):
        doc = await get_json(
            jp_fetch, "runs", per_page="12", page=str(page), sort="run_id", order="asc"
        )
        assert doc["total"] == 30 and doc["per_page"] == 12
        seen += [r["run_id"] for r in doc["runs"]]
    assert seen == [f"R-{i:05d}" for i in range(30)]
    newest = await get_json(jp_fetch, "runs", per_page="1")
    assert newest["runs"][0]["run_id"] == "R-00029"  # default: newest start first
    assert newest["runs"][0]["end"] is None and newest["runs"][0]["status"] == "active"


async def test_runs_filters(jp_fetch):
    doc = await get_json(jp_fetch, "runs", project="gaas-qw", per_page="500")
    assert doc["total"] == 10 and {r["project"] for r in doc["runs"]} == {"gaas-qw"}
    doc = await get_json(jp_fetch, "runs", instrument="pld-2,sputter-3", status="error")
    assert {r["run_id"] for r in doc["runs"]} == {"R-00010", "R-00020"}
    doc = await get_json(jp_fetch, "runs", q="s-0000", sort="sample", order="asc")
    assert [r["sample"] for r in doc["runs"]] == [f"S-{i:05d}" for i in range(10)]
    # runs 0..2 start at 08:00, 14:00 and 20:00; run 3 starts the next day
    doc = await get_json(
        jp_fetch, "runs", start="2025-01-06T00:00:00Z", end="2025-01-06T20:30:00+00:00"
    )
    assert sorted(r["run_id"] for r in doc["runs"]) == ["R-00000", "R-00001", "R-00002"]
    doc = await get_json(jp_fetch, "runs", project="no-such-project")
    assert doc["total"] == 0 and doc["runs"] == []
    t, r = await get_arrow(jp_fetch, "runs", project="ito-films", per_page="3")
    assert t.num_rows == 3 and r.headers["X-Total-Count"] == "10"
    assert r.headers["Cache-Control"] == "no-store"  # decrypted data stays out of caches


@pytest.mark.parametrize(
    "params, field",
    [
        ({"sort": "colour"}, "sort"),
        ({"start": "last tuesday"}, "start"),
        ({"end": "2025-13-01"}, "end"),
        ({"per_page": "501"}, "per_page"),
        ({"per_page": "0"}, "per_page"),
        ({"page": "x"}, "page"),
        ({"order": "sideways"}, "order"),
        ({"colour": "red"}, "colour"),
        ({"format": "xml"}, "format"),
    ],
)
async def test_runs_bad_input_is_400(jp_fetch, params, field):
    code, doc = await status_of(jp_fetch, "runs", **params)
    assert code == 400
    assert field in doc["message"]


async def test_page_size_is_capped_with_a_message(jp_fetch):
    code, doc = await status_of(jp_fetch, "runs", per_page="10000")
    assert code == 400 and "between 1 and 500" in doc["message"]
    ok = await get_json(jp_fetch, "runs", per_page="500")
    assert ok["per_page"] == 500 and len(ok["runs"]) == 30


async def test_run_detail(jp_fetch):
    doc = await get_json(jp_fetch, "runs", "R-00003")
    assert doc["sample"] == "S-00003" and doc["instrument"] == "mbe-1"
    assert doc["channels"]["process"] == ["growth_rate", "rheed_intensity", "substrate_temp"]
    assert doc["channels"]["tool_state"] == ["cell_temp", "chamber_pressure"]
    assert {m["technique"] for m in doc["metrology"]} == {"XRD", "XPS"}
    assert doc["rows"] == {"process": 720, "tool_state": 240, "metrology": 2}


@pytest.mark.parametrize(
    "path",
    [
        ("runs", "R-99999"),
        ("runs", "R-99999", "process"),
        ("runs", "R-99999", "tool_state"),
        ("metrology", "M-nope"),
        ("tables", "process", "nope"),
    ],
)
async def test_unknown_things_are_404(jp_fetch, path):
    code, doc = await status_of(jp_fetch, *path)
    assert code == 404
    assert path[-1] in doc["message"] or "R-99999" in doc["message"]


async def test_metrology_filter_for_unknown_run_is_404(jp_fetch):
    code, _ = await status_of(jp_fetch, "metrology", run_id="R-99999")
    assert code == 404


async def test_process_json_and_arrow_agree(jp_fetch):
    doc = await get_json(jp_fetch, "runs", "R-00004", "process", channels="substrate_temp")
    assert doc["columns"] == ["run_id", "time", "channel", "value", "unit"]
    assert len(doc["data"]) == 240
    assert {row[2] for row in doc["data"]} == {"substrate_temp"}
    assert doc["data"][0][1] == "2025-01-07T08:00:00.000000Z"
    t, _ = await get_arrow(jp_fetch, "runs", "R-00004", "process", channels="substrate_temp")
    assert t.num_rows == 240
    assert t.column("value").to_pylist() == [row[3] for row in doc["data"]]
    assert t.schema.field("time").type == pa.timestamp("us", tz="UTC")


async def test_process_window_and_downsampling(jp_fetch):
    t, _ = await get_arrow(
        jp_fetch,
        "runs",
        "R-00004",
        "process",
        start="2025-01-07T08:00:00Z",
        end="2025-01-07T08:09:30Z",
    )
    assert t.num_rows == 3 * 19  # 30 s steps; the end is exclusive
    full, _ = await get_arrow(jp_fetch, "runs", "R-00004", "process", channels="rheed_intensity")
    small, _ = await get_arrow(
        jp_fetch, "runs", "R-00004", "process", channels="rheed_intensity", max_points="40"
    )
    assert 20 <= small.num_rows <= 44
    v, s = full.column("value").to_pylist(), small.column("value").to_pylist()
    assert max(s) == max(v) and min(s) == min(v)  # extremes survive decimation
    code, _ = await status_of(jp_fetch, "runs", "R-00004", "process", max_points="1")
    assert code == 400


async def test_tool_state(jp_fetch):
    t, _ = await get_arrow(jp_fetch, "runs", "R-00001", "tool_state")
    assert t.column_names == ["run_id", "tool", "time", "channel", "value", "setpoint", "unit"]
    assert t.num_rows == 240 and set(t.column("tool").to_pylist()) == {"pld-2"}


async def test_metrology(jp_fetch):
    doc = await get_json(jp_fetch, "metrology", technique="xps", per_page="3")
    assert doc["total"] == 10 and len(doc["items"]) == 3
    assert "x" not in doc["items"][0]
    doc = await get_json(jp_fetch, "metrology", run_id="R-00007,R-00008", spectra="true")
    assert doc["total"] == 2 and len(doc["items"][0]["x"]) == 400
    item = await get_json(jp_fetch, "metrology", "M-00005-xrd")
    assert item["peaks"] == [32.5] and item["x_unit"] == "deg" and len(item["y"]) == 400
    t, _ = await get_arrow(jp_fetch, "metrology", "M-00005-xrd")
    assert t.num_rows == 1 and t.column("item_id")[0].as_py() == "M-00005-xrd"


async def test_whole_table_as_arrow(jp_fetch):
    t, r = await get_arrow(jp_fetch, "tables", "process", "series")
    assert t.num_rows == 30 * 3 * 240
    assert sorted(set(t.column("run_id").to_pylist())) == [f"R-{i:05d}" for i in range(30)]
    t, _ = await get_arrow(jp_fetch, "tables", "process", "runs")
    assert t.num_rows == 30 and "updated_at" not in t.column_names
    t, _ = await get_arrow(
        jp_fetch, "tables", "metrology", "items", run_id="R-00003", columns="item_id,technique"
    )
    assert sorted(t.column("item_id").to_pylist()) == ["M-00003-xps", "M-00003-xrd"]
    code, _ = await status_of(jp_fetch, "tables", "process", "series", format="json")
    assert code == 400
    code, doc = await status_of(jp_fetch, "tables", "process", "series", columns="colour")
    assert code == 400 and "colour" in doc["message"]


async def test_context_join(jp_fetch):
    body = json.dumps(
        {
            "run_ids": ["R-00001", "R-00002", "R-00029"],
            "fields": ["film", "substrate"],
            "purpose": "compare ITO growth",
        }
    )
    r = await jp_fetch(*API, "context", "join", method="POST", body=body)
    labels = {x["run_id"]: x for x in json.loads(r.body)["labels"]}
    assert labels["R-00001"]["film"] == "ITO" and labels["R-00002"]["substrate"] == "Si(001)"
    assert labels["R-00029"]["film"] == "SrTiO3"
    for bad in (
        {"run_ids": ["R-00001"], "fields": ["film"], "purpose": " "},
        {"run_ids": "R-00001", "fields": ["film"], "purpose": "x"},
        {"run_ids": ["R-00001"], "fields": ["colour"], "purpose": "x"},
    ):
        code, _ = await status_of(jp_fetch, "context", "join", method="POST", body=json.dumps(bad))
        assert code == 400, bad
    code, _ = await status_of(jp_fetch, "context", "join", method="POST", body="{not json")
    assert code == 400


async def test_every_data_request_is_audited(jp_fetch):
    await get_json(jp_fetch, "runs", "R-00006", "process", channels="growth_rate")
    await get_json(jp_fetch, "runs", per_page="2", sort="run_id", order="asc")
    doc = await get_json(jp_fetch, "audit", action="data.read", limit="2")
    assert doc["scope"] == "all"
    page, series = doc["events"]
    assert series["detail"]["table"] == "process/series"
    assert series["detail"]["run_ids"] == ["R-00006"] and series["detail"]["rows"] == 240
    assert page["detail"]["table"] == "process/runs"
    assert page["detail"]["run_ids"] == ["R-00000", "R-00001"] and page["detail"]["rows"] == 2
    assert page["outcome"] == "allowed" and page["actor"]
    await get_arrow(jp_fetch, "tables", "tool_state", "readings", columns="run_id,value")
    (whole,) = (await get_json(jp_fetch, "audit", action="data.read", limit="1"))["events"]
    assert whole["detail"]["table"] == "tool_state/readings"
    assert whole["detail"]["rows"] == 30 * 240 and whole["detail"]["query"] == "table"


async def test_facets(jp_fetch):
    doc = await get_json(jp_fetch, "facets")
    assert doc["project"] == ["gaas-qw", "ito-films", "sto-buffer"]
    assert doc["status"] == ["active", "complete", "error"] and doc["total"] == 30


# --- authentication, authorization and the API description ----------------------------------


def _concrete(template):
    return (
        template.replace("{run_id}", "R-00001")
        .replace("{item_id}", "M-00001-xrd")
        .replace("{category}", "process")
        .replace("{name}", "runs")
    )


@pytest.mark.parametrize("template, handler", handlers.ROUTES)
async def test_every_route_refuses_anonymous_requests(jp_fetch, template, handler):
    methods = [m for m in ("get", "post", "put", "patch", "delete") if m in vars(handler)]
    assert methods, f"{handler.__name__} serves nothing"
    for m in methods:
        kw = {"body": "{}"} if m in ("post", "put", "patch") else {}
        code, _ = await status_of(
            jp_fetch,
            *_concrete(template).split("/"),
            method=m.upper(),
            headers={"Authorization": ""},
            **kw,
        )
        assert code in (401, 403), (template, m, code)
        code, _ = await status_of(
            jp_fetch,
            *_concrete(template).split("/"),
            method=m.upper(),
            headers={"Authorization": "token not-the-token"},
            **kw,
        )
        assert code in (401, 403), (template, m, code)


def test_every_handler_method_carries_both_decorators():
    for _, handler in handlers.ROUTES:
        src = inspect.getsource(handler)
        for m in re.finditer(
            r"\n((?:    @.*\n)*)    (?:async )?def (get|post|put|patch|delete)\(", src
        ):
            decorators = m.group(1)
            assert "@web.authenticated" in decorators, (handler.__name__, m.group(2))
            assert "@authorized" in decorators, (handler.__name__, m.group(2))
        assert handler.auth_resource == handlers.AUTH_RESOURCE


def test_openapi_paths_match_the_handlers():
    spec = handlers.openapi_spec()
    documented = {
        (path.lstrip("/"), method) for path, ops in spec["paths"].items() for method in ops
    }
    served = {
        (t, m)
        for t, h in handlers.ROUTES
        for m in ("get", "post", "put", "patch", "delete")
        if m in vars(h)
    }
    assert documented == served


async def test_openapi_is_served_and_the_app_registers_every_route(jp_fetch, jp_serverapp):
    spec = await get_json(jp_fetch, "openapi.json")
    assert spec == handlers.openapi_spec()
    app = jp_serverapp.extension_manager.extension_apps["atomscale_lab"]
    app = next(iter(app))
    assert isinstance(app, AtomscaleLab)
    patterns = {h[0] for h in app.handlers}
    assert patterns == {p for p, _ in handlers.default_handlers}


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
async def test_arrow_answers_are_compressed_only_when_asked(jp_fetch, codec):
    accept = f"{handlers.ARROW_STREAM}; compression={codec}"
    plain = await jp_fetch(*API, "runs", "R-00004", "process", params={"format": "arrow"})
    packed = await jp_fetch(
        *API, "runs", "R-00004", "process", params={"format": "arrow"}, headers={"Accept": accept}
    )
    assert "X-Arrow-Compression" not in plain.headers
    assert packed.headers["X-Arrow-Compression"] == codec
    assert len(packed.body) < len(plain.body) / 1.5
    a = pa.ipc.open_stream(plain.body).read_all()
    b = pa.ipc.open_stream(packed.body).read_all()
    assert a.num_rows > 0 and a.equals(b)
    # streamed tables too; an unknown codec gets the uncompressed stream every reader reads
    t = await jp_fetch(
        *API, "tables", "process", "series", params={"format": "arrow"}, headers={"Accept": accept}
    )
    assert t.headers["X-Arrow-Compression"] == codec
    assert pa.ipc.open_stream(t.body).read_all().num_rows > a.num_rows
    odd = await jp_fetch(
        *API,
        "runs",
        "R-00004",
        "process",
        params={"format": "arrow"},
        headers={"Accept": f"{handlers.ARROW_STREAM}; compression=snappy"},
    )
    assert "X-Arrow-Compression" not in odd.headers and odd.body == plain.body
