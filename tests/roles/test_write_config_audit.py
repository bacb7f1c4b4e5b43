"""data:write (POST metrology), the org configuration and audit:read vs audit:all, by attack:
each role, bad input that must leave nothing behind, and the events the audit log must hold."""

import json

import pyarrow as pa
import pytest

from atomscale_lab.server.handlers import ARROW_STREAM
from tests.support.roles import metrology_body

ADMIN, SCIENTIST = "org-admin@acme", "scientist@acme"
VIEWER, SUPPORT = "viewer@acme", "support@acme"
ARROW = {"Content-Type": ARROW_STREAM}


def ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


async def metrology_rows(call):
    code, body = await call(ADMIN, "GET", "status")
    assert code == 200
    return json.loads(body)["categories"]["metrology"]["rows"]


# --- data:write ---------------------------------------------------------------------------------


async def test_a_scientist_saves_a_derived_result_and_reads_it_back(call, audit_lines):
    rows_before = await metrology_rows(call)
    body = metrology_body("R-00002", n=2)
    code, raw = await call(
        SCIENTIST, "POST", "metrology", params={"run_id": "R-00002"}, body=body, headers=ARROW
    )
    assert code == 201, raw
    doc = json.loads(raw)
    assert doc["rows"] == 2 and doc["run_ids"] == ["R-00002"] and doc["table"] == "metrology/items"
    assert await metrology_rows(call) == rows_before + 2
    # the index follows at once: the writer's next page lists the new items with their values
    code, raw = await call(
        SCIENTIST, "GET", "metrology", params={"run_id": "R-00002", "technique": "RHEED-fit"}
    )
    items = {i["item_id"]: i for i in json.loads(raw)["items"]}
    assert set(items) == set(doc["item_ids"])
    first = items[doc["item_ids"][0]]
    assert first["result_value"] == 4.2 and first["result_unit"] == "s"
    assert first["sample"] == "S-00002"  # filled from the run
    # audited with the user, the run and the row count, and no values
    events = [
        e
        for e in audit_lines("acme")
        if e["action"] == "data.write" and e["outcome"] == "allowed" and e["actor"] == SCIENTIST
    ]
    assert events and events[-1]["detail"]["run_ids"] == ["R-00002"]
    assert events[-1]["detail"]["rows"] == 2
    assert "4.2" not in json.dumps(events[-1]) and "oscillation" not in json.dumps(events[-1])


BAD = [
    ("no arrow content type", {"Content-Type": "application/json"}, b"{}", {}, 400),
    ("not an arrow stream", ARROW, b"not arrow at all", {}, 400),
    (
        "unknown column",
        ARROW,
        ipc(
            pa.table(
                {
                    "item_id": ["D-x1"],
                    "run_id": ["R-00001"],
                    "technique": ["fit"],
                    "time": [1],
                    "secret_sauce": [1.0],
                }
            )
        ),
        {},
        400,
    ),
    (
        "wrong type",
        ARROW,
        ipc(
            pa.table(
                {
                    "item_id": ["D-x2"],
                    "run_id": ["R-00001"],
                    "technique": ["fit"],
                    "time": ["yesterday"],
                }
            )
        ),
        {},
        400,
    ),
    (
        "missing technique",
        ARROW,
        ipc(
            pa.table(
                {
                    "item_id": ["D-x3"],
                    "run_id": ["R-00001"],
                    "time": pa.array([1], pa.timestamp("us")),
                }
            )
        ),
        {},
        400,
    ),
    ("no rows", ARROW, ipc(pa.table({"item_id": pa.array([], pa.string())})), {}, 400),
    ("unknown run", ARROW, metrology_body(), {"run_id": "R-99999"}, 404),
    (
        "rows of another run",
        ARROW,
        ipc(
            pa.table(
                {
                    "item_id": ["D-x4"],
                    "run_id": ["R-00001"],
                    "technique": ["fit"],
                    "time": pa.array([1], pa.timestamp("us")),
                }
            )
        ),
        {"run_id": "R-00003"},
        400,
    ),
    (
        "existing item id",
        ARROW,
        ipc(
            pa.table(
                {
                    "item_id": ["M-00001-xrd"],
                    "technique": ["fit"],
                    "time": pa.array([1], pa.timestamp("us")),
                }
            )
        ),
        {"run_id": "R-00001"},
        409,
    ),
    (
        "item twice",
        ARROW,
        ipc(
            pa.table(
                {
                    "item_id": ["D-x5", "D-x5"],
                    "technique": ["a", "b"],
                    "time": pa.array([1, 2], pa.timestamp("us")),
                }
            )
        ),
        {"run_id": "R-00001"},
        400,
    ),
    ("unknown parameter", ARROW, metrology_body(), {"run": "R-00001"}, 400),
    (
        "too many rows",
        ARROW,
        ipc(pa.table({"item_id": [f"D-{i}" for i in range(100_001)]})),
        {"run_id": "R-00001"},
        413,
    ),
]


@pytest.mark.parametrize("why, headers, body, params, status", BAD, ids=[b[0] for b in BAD])
async def test_bad_input_is_refused_clearly_and_writes_nothing(
    call, audit_lines, why, headers, body, params, status
):
    rows_before = await metrology_rows(call)
    n_events = len(audit_lines("acme"))
    code, raw = await call(
        SCIENTIST, "POST", "metrology", params=params, body=body, headers=headers
    )
    assert code == status, raw
    assert json.loads(raw)["message"]  # a message the scientist can act on
    assert await metrology_rows(call) == rows_before
    writes = [e for e in audit_lines("acme")[n_events:] if e["action"] == "data.write"]
    assert writes == []


@pytest.mark.parametrize("user", [VIEWER, SUPPORT, "scientist@beta"])
async def test_who_may_not_write_gets_403_and_a_denied_event(call, audit_lines, user):
    rows_before = await metrology_rows(call)
    n_events = len(audit_lines("acme"))
    code, raw = await call(
        user,
        "POST",
        "metrology",
        params={"run_id": "R-00001"},
        body=metrology_body(),
        headers=ARROW,
    )
    assert code == 403 and "data:write" in json.loads(raw)["message"]
    assert await metrology_rows(call) == rows_before
    new = audit_lines("acme")[n_events:]
    assert [(e["actor"], e["action"], e["outcome"]) for e in new] == [
        (user, "data.write", "denied")
    ]


# --- configuration ------------------------------------------------------------------------------


async def test_support_configures_what_every_member_then_sees(call, audit_lines, roles_env):
    settings = {
        "instrument_names": {"mbe-1": "MBE (Veeco Gen930)"},
        "default_project": "gaas-qw",
        "units": {"temperature": "K"},
        "sidebar_page_size": 25,
    }
    n_events = len(audit_lines("acme"))
    code, raw = await call(SUPPORT, "PUT", "config", body=json.dumps(settings))
    assert code == 200, raw
    doc = json.loads(raw)
    assert doc["changed"] == ["default_project", "instrument_names", "sidebar_page_size", "units"]
    for user in (VIEWER, SCIENTIST, ADMIN, SUPPORT):
        code, raw = await call(user, "GET", "config")
        cfg = json.loads(raw)["config"]
        assert code == 200 and cfg["instrument_names"] == {"mbe-1": "MBE (Veeco Gen930)"}
        assert cfg["units"] == {"temperature": "K", "pressure": "Torr", "thickness": "nm"}
        assert cfg["sidebar_page_size"] == 25 and cfg["default_project"] == "gaas-qw"
    change = [e for e in audit_lines("acme")[n_events:] if e["action"] == "config.change"]
    assert [(e["actor"], e["outcome"], e["detail"]["keys"]) for e in change] == [
        (SUPPORT, "allowed", doc["changed"])
    ]
    # an admin changes one setting; null restores a default
    code, raw = await call(
        ADMIN,
        "PATCH",
        "config",
        body=json.dumps({"sidebar_page_size": 100, "default_project": None}),
    )
    assert code == 200 and json.loads(raw)["changed"] == ["default_project", "sidebar_page_size"]
    cfg = json.loads(raw)["config"]
    assert cfg["instrument_names"] == settings["instrument_names"]
    assert cfg["default_project"] is None
    # kept by the deployment (the registry), not in the org's data root
    data_root = roles_env["home"] / "data" / "acme"
    assert not any("config" in p.name for p in data_root.rglob("*"))


CONFIG_BAD = [
    ("unknown setting", {"colour": "blue"}, 400),
    ("page size out of range", {"sidebar_page_size": 5000}, 400),
    ("page size not a number", {"sidebar_page_size": True}, 400),
    ("bad unit", {"units": {"temperature": "F"}}, 400),
    ("bad instrument id", {"instrument_names": {"../etc": "x"}}, 400),
    ("control characters", {"default_project": "a\x00b"}, 400),
    ("not an object", ["sidebar_page_size"], 400),
    ("too large", {"instrument_names": {f"i{n}": "x" * 80 for n in range(199)}}, 413),
]


@pytest.mark.parametrize("why, body, status", CONFIG_BAD, ids=[c[0] for c in CONFIG_BAD])
async def test_bad_configuration_is_refused_and_changes_nothing(
    call, audit_lines, why, body, status
):
    _, before = await call(ADMIN, "GET", "config")
    n_events = len(audit_lines("acme"))
    code, raw = await call(SUPPORT, "PUT", "config", body=json.dumps(body))
    assert code == status and json.loads(raw)["message"]
    _, after = await call(ADMIN, "GET", "config")
    assert json.loads(after) == json.loads(before)
    assert not [e for e in audit_lines("acme")[n_events:] if e["action"] == "config.change"]


@pytest.mark.parametrize("user", [SCIENTIST, VIEWER, "support@beta"])
async def test_who_may_not_configure_gets_403_and_a_denied_event(call, audit_lines, user):
    n_events = len(audit_lines("acme"))
    code, raw = await call(user, "PATCH", "config", body=json.dumps({"sidebar_page_size": 10}))
    assert code == 403
    new = audit_lines("acme")[n_events:]
    assert [(e["actor"], e["action"], e["outcome"]) for e in new] == [
        (user, "config.change", "denied")
    ]


# --- audit:read vs audit:all ----------------------------------------------------------------------


async def test_audit_all_sees_everyone_audit_read_only_oneself(call, audit_lines):
    await call(VIEWER, "GET", "runs")
    await call(SCIENTIST, "GET", "runs", "R-00001")
    code, raw = await call(ADMIN, "GET", "audit", params={"limit": "1000"})
    doc = json.loads(raw)
    assert code == 200 and doc["scope"] == "all"
    assert {VIEWER, SCIENTIST} <= {e["actor"] for e in doc["events"]}
    code, raw = await call(ADMIN, "GET", "audit", params={"actor": VIEWER})
    assert {e["actor"] for e in json.loads(raw)["events"]} == {VIEWER}
    code, raw = await call(SCIENTIST, "GET", "audit", params={"limit": "1000"})
    doc = json.loads(raw)
    assert code == 200 and doc["scope"] == "own" and doc["events"]
    assert {e["actor"] for e in doc["events"]} == {SCIENTIST}
    # reading the log is itself on record
    reads = [
        e for e in audit_lines("acme") if e["action"] == "audit.read" and e["outcome"] == "allowed"
    ]
    assert {(e["actor"], e["detail"]["scope"]) for e in reads} >= {
        (ADMIN, "all"),
        (SCIENTIST, "own"),
    }


async def test_audit_read_cannot_ask_for_someone_elses_events(call, audit_lines):
    n_events = len(audit_lines("acme"))
    code, raw = await call(SCIENTIST, "GET", "audit", params={"actor": ADMIN})
    assert code == 403 and "audit:all" in json.loads(raw)["message"]
    new = audit_lines("acme")[n_events:]
    assert [
        (e["actor"], e["action"], e["outcome"], e["detail"].get("requested_actor")) for e in new
    ] == [(SCIENTIST, "audit.read", "denied", ADMIN)]
    code, raw = await call(SCIENTIST, "GET", "audit", params={"actor": SCIENTIST})
    assert code == 200 and {e["actor"] for e in json.loads(raw)["events"]} == {SCIENTIST}
