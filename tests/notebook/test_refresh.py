"""The in-memory run catalogue follows the runs table: new runs and status changes show up."""

import asyncio
import json
import shutil
import threading
import time
from datetime import timedelta

import pyarrow as pa
import pytest

from tests.support import labdata


@pytest.fixture
def own_home(lab_env, tmp_path, monkeypatch):
    """A copy of the session's demo home for this test (which writes runs)."""
    home = tmp_path / "home"
    shutil.copytree(lab_env["home"], home)
    monkeypatch.setenv("ATOMSCALE_HOME", str(home))
    return {**lab_env, "home": home}


@pytest.fixture
def jp_server_config(own_home):
    return {
        "ServerApp": {
            "jpserver_extensions": {"atomscale_lab": True},
            "allow_unauthenticated_access": False,
        },
        "AtomscaleLab": {
            "org": "beta",
            "scrub_root_key": False,
            "export_url": False,
            "refresh_interval": 0.0,
        },
    }


async def runs(jp_fetch, **params):
    r = await jp_fetch("atomscale", "api", "v1", "runs", params={"per_page": "500", **params})
    return json.loads(r.body)


async def eventually(jp_fetch, check, **params):
    """Pages served while the catalogue is rebuilt in the background are the previous ones."""
    deadline = time.monotonic() + 10
    while True:
        doc = await runs(jp_fetch, **params)
        if check(doc) or time.monotonic() > deadline:
            return doc
        await asyncio.sleep(0.05)


async def test_new_runs_and_status_changes_appear(jp_fetch, own_home):
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.settings import Settings

    before = await runs(jp_fetch)
    vault = Vault(Settings.load(own_home["home"]))
    table = vault.store("beta").table("process/runs")
    t = labdata.runs_table(before["total"] + 1).slice(before["total"])  # one more run
    table.write(t, actor="test")
    new_id = t.column("run_id")[0].as_py()
    after = await eventually(jp_fetch, lambda d: d["total"] > before["total"])
    assert after["total"] == before["total"] + 1
    assert new_id in {r["run_id"] for r in after["runs"]}

    # a later version of a run record wins (the run finished with an error)
    row = t.to_pylist()[0]
    row.update(
        status="error",
        end=row["start"] + timedelta(hours=1),
        updated_at=row["start"] + timedelta(hours=1),
    )
    table.write(pa.Table.from_pylist([row], schema=t.schema), actor="test")
    errored = await eventually(
        jp_fetch, lambda d: new_id in {r["run_id"] for r in d["runs"]}, status="error"
    )
    assert new_id in {r["run_id"] for r in errored["runs"]}
    detail = json.loads((await jp_fetch("atomscale", "api", "v1", "runs", new_id)).body)
    assert detail["status"] == "error"
    vault.close()


def test_stale_while_rebuilding_and_failures_surface():
    from atomscale_lab.server.catalog import Refreshing

    state = {"v": 1, "fail": False}
    gate = threading.Event()

    def build():
        if state["v"] > 1:
            gate.wait(5)
        if state["fail"]:
            raise RuntimeError("log chain broken")
        return state["v"]

    r = Refreshing(build, lambda: state["v"], min_interval=0)
    assert r.get() == 1
    state["v"] = 2
    assert r.get() == 1  # the rebuild runs in the background; callers get the old value
    gate.set()
    r._rebuilding.join(5)
    assert r.get() == 2 and r.builds == 2
    state.update(v=3, fail=True)
    assert r.get() == 2
    r._rebuilding.join(5)
    with pytest.raises(RuntimeError, match="log chain broken"):
        r.get()  # a failed rebuild is not hidden behind the stale value
    state["fail"] = False
    assert r.get() == 3


def test_concurrent_first_gets_share_one_build():
    from atomscale_lab.server.catalog import Refreshing

    calls, asked = [], []
    all_asked = threading.Event()

    def version():
        # Called by every get() before it builds or waits: the build below holds until all
        # four callers are inside get(), so they provably overlap with it.
        asked.append(1)
        if len(asked) >= 4:
            all_asked.set()
        return "v1"

    def build():
        calls.append(1)
        calls.append(all_asked.wait(30))
        return 1

    r = Refreshing(build, version, min_interval=0)
    out = []
    threads = [threading.Thread(target=lambda: out.append(r.get())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert calls == [1, True], "the callers did not overlap with one shared build"
    assert out == [1, 1, 1, 1] and len(asked) == 4
