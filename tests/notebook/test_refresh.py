"""The in-memory run catalogue follows the runs table: new runs and status changes show up."""

import json
from datetime import timedelta

import labdata
import pyarrow as pa
import pytest


@pytest.fixture
def jp_server_config(lab_env):
    return {"ServerApp": {"jpserver_extensions": {"atomscale_lab": True},
                          "allow_unauthenticated_access": False},
            "AtomscaleLab": {"org": "beta", "scrub_root_key": False, "export_url": False,
                             "refresh_interval": 0.0}}


async def runs(jp_fetch, **params):
    r = await jp_fetch("atomscale", "api", "v1", "runs", params={"per_page": "500", **params})
    return json.loads(r.body)


async def test_new_runs_and_status_changes_appear(jp_fetch, lab_env):
    from atomscale_lab.config import Settings
    from atomscale_lab.vault import Vault

    before = await runs(jp_fetch)
    vault = Vault(Settings.load(lab_env["home"]))
    table = vault.store("beta").table("process/runs")
    t = labdata.runs_table(before["total"] + 1).slice(before["total"])  # one more run
    table.write(t, actor="test")
    new_id = t.column("run_id")[0].as_py()
    after = await runs(jp_fetch)
    assert after["total"] == before["total"] + 1
    assert new_id in {r["run_id"] for r in after["runs"]}

    # a later version of a run record wins (the run finished with an error)
    row = t.to_pylist()[0]
    row.update(status="error", end=row["start"] + timedelta(hours=1),
               updated_at=row["start"] + timedelta(hours=1))
    table.write(pa.Table.from_pylist([row], schema=t.schema), actor="test")
    errored = await runs(jp_fetch, status="error")
    assert new_id in {r["run_id"] for r in errored["runs"]}
    detail = json.loads((await jp_fetch("atomscale", "api", "v1", "runs", new_id)).body)
    assert detail["status"] == "error"
    vault.close()
