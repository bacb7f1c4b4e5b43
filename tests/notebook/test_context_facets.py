"""The material-system facet: runs per context label and the ``runs`` filter (context:join).

Both go through one audited context join per request; a viewer (data:read only) is refused with a
403 and a ``denied`` ``context.join`` event, and learns no label. Expected values come from the
labels as ``POST context/join`` returns them, not from the code under test.
"""

import json
from collections import Counter

import pytest
from tornado.httpclient import HTTPClientError

API = ("atomscale", "api", "v1")
PURPOSE = "sidebar facet"


@pytest.fixture
def jp_server_config(lab_env):
    """The extension with an access class whose users have ATOMSCALE_TEST_ROLE's permissions."""
    return {
        "ServerApp": {
            "jpserver_extensions": {"atomscale_lab": True},
            "allow_unauthenticated_access": False,
        },
        "AtomscaleLab": {
            "org": "acme",
            "access_class": "tests.support.labdata.RoleAccess",
            "scrub_root_key": False,
            "export_url": False,
        },
    }


async def code_of(jp_fetch, *path, **kw):
    try:
        r = await jp_fetch(*API, *path, **kw)
    except HTTPClientError as e:
        return e.code, json.loads(e.response.body)
    return r.code, json.loads(r.body)


def joins(lab_env, actor: str) -> list[dict]:
    path = lab_env["home"] / "audit" / "acme.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e for e in events if e["action"] == "context.join" and e["actor"] == actor]


async def all_labels(jp_fetch) -> dict[str, str | None]:
    code, page = await code_of(jp_fetch, "runs", params={"per_page": "500"})
    assert code == 200
    ids = [r["run_id"] for r in page["runs"]]
    body = json.dumps({"run_ids": ids, "fields": ["material_system"], "purpose": "expected"})
    code, doc = await code_of(jp_fetch, "context", "join", method="POST", body=body)
    assert code == 200
    found = {x["run_id"]: x.get("material_system") for x in doc["labels"]}
    return {r: found.get(r) for r in ids}


async def test_scientist_counts_and_filters_by_material_system(jp_fetch, monkeypatch, lab_env):
    monkeypatch.setenv("ATOMSCALE_TEST_ROLE", "scientist")
    labels = await all_labels(jp_fetch)
    expected = Counter(v for v in labels.values() if v)
    assert len(expected) == 3  # the fixture's three material systems

    before = len(joins(lab_env, "scientist-user"))
    code, doc = await code_of(
        jp_fetch, "facets", "context", params={"field": "material_system", "purpose": PURPOSE}
    )
    assert code == 200, doc
    assert {v["value"]: v["runs"] for v in doc["values"]} == dict(expected)
    assert [v["value"] for v in doc["values"]] == sorted(expected)
    assert doc["total"] == len(labels)
    assert doc["unlabelled"] == sum(1 for v in labels.values() if not v)
    # asked twice: audited twice, each with the purpose and every run
    await code_of(jp_fetch, "facets", "context", params={"purpose": PURPOSE})
    new = joins(lab_env, "scientist-user")[before:]
    assert [e["outcome"] for e in new] == ["allowed", "allowed"]
    assert all(e["detail"]["purpose"] == PURPOSE for e in new)

    system = sorted(expected)[1]
    want = sorted(r for r, v in labels.items() if v == system)
    before = len(joins(lab_env, "scientist-user"))
    code, page = await code_of(
        jp_fetch,
        "runs",
        params={
            "material_system": system,
            "purpose": PURPOSE,
            "sort": "run_id",
            "order": "asc",
            "per_page": "500",
        },
    )
    assert code == 200, page
    assert [r["run_id"] for r in page["runs"]] == want and page["total"] == len(want)
    (event,) = joins(lab_env, "scientist-user")[before:]
    assert event["outcome"] == "allowed" and event["detail"]["purpose"] == PURPOSE
    # combined with another filter: the intersection
    project = page["runs"][0]["project"]
    code, both = await code_of(
        jp_fetch,
        "runs",
        params={
            "material_system": system,
            "purpose": PURPOSE,
            "project": project,
            "per_page": "500",
        },
    )
    assert code == 200
    assert {r["run_id"] for r in both["runs"]} == {
        r["run_id"] for r in page["runs"] if r["project"] == project
    }
    code, none = await code_of(
        jp_fetch, "runs", params={"material_system": "Unobtainium/none", "purpose": PURPOSE}
    )
    assert code == 200 and none["total"] == 0 and none["runs"] == []


@pytest.mark.parametrize(
    "params, field",
    [
        ({"field": "material_system"}, "purpose"),
        ({"field": "material_system", "purpose": "  "}, "purpose"),
        ({"field": "film_colour", "purpose": PURPOSE}, "field"),
        ({"purpose": PURPOSE, "page": "2"}, "page"),
    ],
)
async def test_bad_context_facet_requests_are_400(jp_fetch, monkeypatch, params, field):
    monkeypatch.setenv("ATOMSCALE_TEST_ROLE", "scientist")
    code, doc = await code_of(jp_fetch, "facets", "context", params=params)
    assert code == 400 and field in doc["message"], doc


async def test_runs_filter_needs_a_purpose(jp_fetch, monkeypatch):
    monkeypatch.setenv("ATOMSCALE_TEST_ROLE", "scientist")
    code, doc = await code_of(jp_fetch, "runs", params={"material_system": "GaAs/GaAs(001)"})
    assert code == 400 and "purpose" in doc["message"]
    code, doc = await code_of(jp_fetch, "runs", params={"purpose": PURPOSE})
    assert code == 400 and "purpose" in doc["message"]


async def test_viewer_gets_no_material_system_facet(jp_fetch, monkeypatch, lab_env):
    monkeypatch.setenv("ATOMSCALE_TEST_ROLE", "viewer")
    before = len(joins(lab_env, "viewer-user"))
    code, doc = await code_of(jp_fetch, "facets", "context", params={"purpose": PURPOSE})
    assert code == 403 and "context:join" in doc["message"] and "values" not in doc
    code, doc = await code_of(
        jp_fetch, "runs", params={"material_system": "GaAs/GaAs(001)", "purpose": PURPOSE}
    )
    assert code == 403 and "context:join" in doc["message"] and "runs" not in doc
    new = joins(lab_env, "viewer-user")[before:]
    assert [e["outcome"] for e in new] == ["denied", "denied"]
    assert all(e["detail"]["permission"] == "context:join" for e in new)
    # the plain facets and runs still answer a viewer
    code, _ = await code_of(jp_fetch, "facets")
    assert code == 200
