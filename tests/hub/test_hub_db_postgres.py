"""JupyterHub's own database on PostgreSQL: the URL the deployment gives it, and a real hub on the
tests' private cluster (``postgresql+psycopg://``) whose users land in PostgreSQL and survive a
restart."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from atomscale_lab.errors import ConfigError
from atomscale_lab.hub.config import ENV_HUB_DB, hub_db_url, proxy_command
from tests.support.net import free_port
from tests.support.procs import http_session, stop, wait_until


def test_the_hub_database_url(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_HUB_DB, raising=False)
    assert hub_db_url({}, tmp_path) == f"sqlite:///{tmp_path / 'jupyterhub.sqlite'}"
    assert (
        hub_db_url({"db_url": "postgresql://hub@db.lab.example/jupyterhub"}, tmp_path)
        == "postgresql+psycopg://hub@db.lab.example/jupyterhub"
    )
    with pytest.raises(ConfigError, match="password") as e:
        hub_db_url({"db_url": "postgresql://hub:s3cr3t-pw@db/jupyterhub"}, tmp_path)
    assert "s3cr3t-pw" not in str(e.value)
    # the variable wins (it may carry the password: it is the hub's environment, not a file)
    monkeypatch.setenv(ENV_HUB_DB, "postgres://hub:pw@db/jupyterhub")
    assert (
        hub_db_url({"db_url": "sqlite:///x"}, tmp_path)
        == "postgresql+psycopg://hub:pw@db/jupyterhub"
    )


def _start_hub(tmp: Path, n: int) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"hub-{n}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(tmp / "jupyterhub_config.py")],
            cwd=tmp,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the proxy is stopped with it
        )
    return proc, log


def test_a_real_hub_keeps_its_state_in_postgresql(tmp_path, pg_url, postgres_cluster, monkeypatch):
    import psycopg

    monkeypatch.setenv(ENV_HUB_DB, pg_url)
    port, hub_port, api_port = free_port(), free_port(), free_port()
    token = secrets.token_hex(32)
    monkeypatch.setenv("PROBE_TOKEN", token)
    (tmp_path / "jupyterhub_config.py").write_text(
        f"""
import os
from pathlib import Path
from atomscale_lab.hub.config import hub_db_url
c.JupyterHub.db_url = hub_db_url({{}}, Path({str(tmp_path)!r}))
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = {proxy_command()!r}
c.ConfigurableHTTPProxy.pid_file = {str(tmp_path / "proxy.pid")!r}
c.JupyterHub.cookie_secret_file = {str(tmp_path / "cookie_secret")!r}
# only the database matters here: users are made through the API, nobody logs in
c.JupyterHub.authenticator_class = "null"
c.JupyterHub.services = [{{"name": "probe", "api_token": os.environ["PROBE_TOKEN"]}}]
c.JupyterHub.load_roles = [{{"name": "probe", "scopes": ["admin:users"], "services": ["probe"]}}]
"""
    )
    api = f"http://127.0.0.1:{hub_port}/hub/api"
    http = http_session()
    http.headers["Authorization"] = f"token {token}"
    assert hub_db_url({}, tmp_path).startswith("postgresql+psycopg://")
    for n, action in enumerate(("create", "read back")):
        proc, log = _start_hub(tmp_path, n)
        try:
            wait_until(
                lambda: http.get(api + "/users", timeout=2).status_code == 200,
                proc,
                "jupyterhub",
                log,
                deadline_s=60,
            )
            if action == "create":
                r = http.post(api + "/users/grower-1", timeout=10)
                assert r.status_code == 201, r.text
            else:  # a restarted hub finds the user in PostgreSQL
                r = http.get(api + "/users/grower-1", timeout=10)
                assert r.status_code == 200 and r.json()["name"] == "grower-1"
        finally:
            stop(proc)
    # the rows are in the cluster, and no SQLite file was made
    with psycopg.connect(pg_url) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM users")}
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert names == {"grower-1"} and revision
    assert not list(tmp_path.glob("*.sqlite"))
