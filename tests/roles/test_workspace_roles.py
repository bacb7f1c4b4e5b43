"""``Workspace.write_metrology``, ``config`` and ``audit`` from a kernel's point of view: a real
jupyter server subprocess serving acme to token users of every role (permissions from their
roles' hub scopes)."""

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atomscale_lab.client.workspace import Workspace
from atomscale_lab.errors import Conflict, NotFound, PermissionDenied, ValidationError
from atomscale_lab.permissions import ROLES
from tests.support.nbserver import free_port, stop_server, wait_ready
from tests.support.roles import user_name

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def server(roles_home, tmp_path_factory):
    """A jupyter server for acme whose users are ``<role>@acme``; yields ``{url, tokens}``."""
    root = tmp_path_factory.mktemp("roles-lab")
    tokens = {user_name(r, "acme"): secrets.token_hex(16) for r in ROLES}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTERHUB_"))}
    env.update(
        {
            "ATOMSCALE_HOME": str(roles_home["home"]),
            "ATOMSCALE_ROOT_KEY": roles_home["root_key"],
            "PYTHONPATH": str(HERE.parents[1]),  # the repository: tests.support
            "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
            "JUPYTER_CONFIG_DIR": str(root / ".config"),
            "JUPYTER_DATA_DIR": str(root / ".data"),
        }
    )
    users = json.dumps({t: u for u, t in tokens.items()})
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        '--ServerApp.jpserver_extensions={"atomscale_lab": True}',
        "--ServerApp.identity_provider_class=tests.support.roles.TokenUsers",
        f"--TokenUsers.users={users}",
        "--AtomscaleLab.org=acme",
        "--AtomscaleLab.access_class=tests.support.roles.ScopeAccess",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}/"
    wait_ready(proc, url, tokens[user_name("org-admin", "acme")], log_path)
    try:
        yield {"url": url, "tokens": tokens}
    finally:
        stop_server(proc)
        shutil.rmtree(root / ".runtime", ignore_errors=True)


def workspace(server, role):
    return Workspace(url=server["url"], token=server["tokens"][user_name(role, "acme")])


def test_a_scientist_writes_a_derived_result_from_a_notebook(server):
    ws = workspace(server, "scientist")
    # what a notebook computes: a fitted RHEED oscillation period per run, naive times (UTC)
    frame = pd.DataFrame(
        {
            "technique": ["RHEED-fit", "RHEED-fit"],
            "result_name": ["oscillation_period", "growth_rate"],
            "result_value": [3.75, 0.27],
            "result_unit": ["s", "nm/min"],
            "x": [np.linspace(0, 60, 5).tolist(), None],
            "y": [np.cos(np.linspace(0, 60, 5)).tolist(), None],
        }
    )
    done = ws.write_metrology(frame, run="R-00003")
    assert done["rows"] == 2 and done["run_ids"] == ["R-00003"]
    got = ws.metrology(run_id="R-00003", technique="RHEED-fit", with_spectra=True)
    got = got.set_index("item_id").loc[done["item_ids"]]
    assert got["result_value"].tolist() == [3.75, 0.27]
    assert got["sample"].tolist() == ["S-00003", "S-00003"]
    assert list(got["x"].iloc[0]) == pytest.approx(np.linspace(0, 60, 5).tolist())
    assert str(got["time"].dt.tz) == "UTC"
    # the write is on record under the scientist's name
    events = ws.audit(action="data.write")
    assert events.iloc[0]["actor"] == "scientist@acme" and events.iloc[0]["outcome"] == "allowed"
    # the same ids again collide; an unknown run is named
    with pytest.raises(Conflict, match=done["item_ids"][0]):
        ws.write_metrology(frame.assign(item_id=done["item_ids"]), run="R-00003")
    with pytest.raises(NotFound, match="R-77777"):
        ws.write_metrology(frame, run="R-77777")
    with pytest.raises(ValidationError, match="technique"):
        ws.write_metrology(frame.drop(columns=["technique"]), run="R-00003")
    # a measured time without a zone is UTC
    timed = frame.assign(
        time=pd.to_datetime(["2025-01-07 10:00:00", "2025-01-07 10:05:00.5"], format="ISO8601")
    )
    done = ws.write_metrology(timed, run="R-00004")
    got = ws.metrology(run_id="R-00004", technique="RHEED-fit").set_index("item_id")
    assert got.loc[done["item_ids"], "time"].tolist() == [
        pd.Timestamp("2025-01-07 10:00", tz="UTC"),
        pd.Timestamp("2025-01-07 10:05:00.5", tz="UTC"),
    ]


@pytest.mark.parametrize("role", ["viewer", "support"])
def test_viewer_and_support_cannot_write(server, role):
    ws = workspace(server, role)
    with pytest.raises(PermissionDenied, match="data:write"):
        ws.write_metrology(pd.DataFrame({"technique": ["x"]}), run="R-00001")
    events = workspace(server, "org-admin").audit(action="data.write", actor=f"{role}@acme")
    assert events.iloc[0]["outcome"] == "denied"


def test_support_sets_up_the_workspace_members_read_it(server):
    support = workspace(server, "support")
    cfg = support.set_config(instrument_names={"pld-2": "PLD chamber 2"}, sidebar_page_size=40)
    assert cfg["instrument_names"] == {"pld-2": "PLD chamber 2"}
    for role in ("viewer", "scientist", "org-admin"):
        got = workspace(server, role).config()
        assert got["instrument_names"] == {"pld-2": "PLD chamber 2"}
        assert got["sidebar_page_size"] == 40
    with pytest.raises(PermissionDenied, match="config"):
        workspace(server, "scientist").set_config(sidebar_page_size=10)
    with pytest.raises(ValidationError, match="sidebar_page_size"):
        support.set_config(sidebar_page_size=0)
    assert workspace(server, "viewer").config()["sidebar_page_size"] == 40


def test_audit_scope_by_role(server):
    assert set(workspace(server, "scientist").audit(limit=500)["actor"]) == {"scientist@acme"}
    everyone = set(workspace(server, "org-admin").audit(limit=1000)["actor"])
    assert {"scientist@acme", "support@acme"} <= everyone
    for role in ("viewer", "support"):
        with pytest.raises(PermissionDenied, match="audit:read"):
            workspace(server, role).audit()
    with pytest.raises(PermissionDenied, match="audit:all"):
        workspace(server, "scientist").audit(actor="org-admin@acme")
