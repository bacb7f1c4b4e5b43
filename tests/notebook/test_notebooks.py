"""The example notebooks, executed with nbclient against a running server over demo data.

The kernel gets only the server's URL and token (no root key, no data root): everything it reads
comes through the REST API.
"""

import os
import subprocess
from pathlib import Path

import nbformat
import pytest
from _nbserver import kernel_env, start_server, stop_server
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, venv_bin):
    """A home with org acme holding the packaged demo data, served by a jupyter server."""
    from atomscale_lab.crypto import generate_root_key

    base = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATOMSCALE_", "JUPYTERHUB"))}
    env.update({"ATOMSCALE_HOME": str(base / "home"), "ATOMSCALE_ROOT_KEY": generate_root_key(),
                "JUPYTER_RUNTIME_DIR": str(base / "rt"), "JUPYTER_CONFIG_DIR": str(base / "cfg"),
                "JUPYTER_DATA_DIR": str(base / "data")})
    cli = str(venv_bin / "atomscale-lab")
    for cmd in (["org", "create", "acme", "--region", "us"], ["demo-data", "acme", "--runs", "24"]):
        subprocess.run([cli, *cmd], env=env, check=True, capture_output=True, timeout=300)
    proc, url, token = start_server(env, base, "acme", base / "server.log")
    try:
        yield {"url": url, "token": token, "home": base / "home", "dir": base}
    finally:
        stop_server(proc)


def run_notebook(name, server, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{name} is committed with outputs"
    env = kernel_env(server["url"], server["token"])
    env.pop("ATOMSCALE_HOME", None)
    client = NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    return nb


def outputs(nb, mime):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if mime in o.get("data", {})]


def test_quickstart(demo_server, tmp_path):
    nb = run_notebook("quickstart.ipynb", demo_server, tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "org acme (us)" in text and "role org-admin" in text
    assert len(outputs(nb, "image/png")) >= 2  # process channels, setpoints vs readbacks
    assert outputs(nb, "application/vnd.jupyter.widget-view+json")  # the RunBrowser
    assert "rheed_specular_intensity" in "".join(
        o["data"].get("text/html", "") for o in outputs(nb, "text/html"))


def test_compare_runs_by_xrd(demo_server, tmp_path):
    nb = run_notebook("compare-runs-by-xrd.ipynb", demo_server, tmp_path)
    assert len(outputs(nb, "image/png")) >= 2
    assert outputs(nb, "application/vnd.jupyter.widget-view+json")
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "correlation:" in text


def test_join_materials_context(demo_server, tmp_path):
    nb = run_notebook("join-materials-context.ipynb", demo_server, tmp_path)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "context.join allowed compare XRD peak widths across materials systems" in text
    html = "".join(o["data"].get("text/html", "") for o in outputs(nb, "text/html"))
    assert "GaAs/AlGaAs" in html  # a label only the context store has
    log = (demo_server["home"] / "audit" / "acme.jsonl").read_text()
    assert "compare XRD peak widths across materials systems" in log
