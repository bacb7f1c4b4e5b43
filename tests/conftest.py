"""Shared fixtures.

- ``root_key``: a freshly generated root key, set as ``ATOMSCALE_ROOT_KEY`` for the test.
- ``home``: an empty ``ATOMSCALE_HOME`` in a temporary folder (data and context roots inside it).
- ``vault``: a ``Vault`` on ``home`` with ``root_key``.
- ``venv_bin``: the folder of the project's executables (``atomscale-lab``, ``jupyter`` …).
- ``postgres_cluster``, ``pg_url``, ``database``, ``db_backend``: the private PostgreSQL cluster
  and per-backend fixtures (:mod:`tests.support.postgres`).
- ``s3``: moto's S3 server for the whole session (:class:`tests.support.s3.S3Env`).

Suites for one area live in their own folder with their own ``conftest.py``.
"""

import os
import sys
from pathlib import Path

import pytest

from tests.support.postgres import (  # noqa: F401 - fixtures shared by every suite
    database,
    db_backend,
    pg_url,
    postgres_cluster,
)
from tests.support.s3 import s3_server


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server (in memory, 127.0.0.1, stopped by pid at the end of the session)."""
    with s3_server(tmp_path_factory.mktemp("s3")) as env:
        yield env


@pytest.fixture
def root_key(monkeypatch):
    """A new root key, exported as ATOMSCALE_ROOT_KEY."""
    from atomscale_lab.vault.kms import generate_root_key

    key = generate_root_key()
    monkeypatch.setenv("ATOMSCALE_ROOT_KEY", key)
    monkeypatch.delenv("ATOMSCALE_ROOT_KEY_FILE", raising=False)
    return key


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty ATOMSCALE_HOME."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("ATOMSCALE_HOME", str(h))
    for var in (
        "ATOMSCALE_DATA_ROOT",
        "ATOMSCALE_CONTEXT_ROOT",
        "ATOMSCALE_REGION",
        "ATOMSCALE_DATABASE_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture
def vault(home, root_key):
    """A Vault on the temporary home."""
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.settings import Settings

    return Vault(Settings.load(home))


@pytest.fixture(scope="session")
def venv_bin():
    """Folder holding the project's console scripts."""
    return Path(sys.executable).parent


@pytest.fixture(scope="session", autouse=True)
def _no_proxy_env():
    # requests honours proxies from the environment; tests talk to loopback only.
    with pytest.MonkeyPatch.context() as mp:
        no_proxy = os.environ.get("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("NO_PROXY", no_proxy)
        mp.setenv("no_proxy", no_proxy)
        yield
