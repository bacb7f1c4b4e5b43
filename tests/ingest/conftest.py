"""Fixtures of the ingest suite.

- ``key_recorder`` (session): every API key plaintext issued through ``deployment.key`` and every
  deployment home of the session; ``scan()`` looks for the plaintexts in every file under those
  homes' test folders. ``test_ingest_secrets.py`` scans what was recorded so far, and the
  fixture scans everything again at the end of the session (a hit fails the session's teardown),
  so the check holds whatever order the tests run in.
- ``deployment``: a vault on a temporary home with orgs ``acme`` and ``beta`` and an
  ``ApiKeyStore``; ``deployment.key(org, scopes)`` issues a key and records its plaintext.
- ``state_backend``: where ingest keeps its state. Here the embedded default (SQLite files); a
  suite about state overrides it with ``db_backend`` (once on SQLite, once on a fresh
  PostgreSQL schema through ``ATOMSCALE_DATABASE_URL``; the ingest service subprocesses inherit
  it).
- ``service``: starts the ingest service as a subprocess on 127.0.0.1 (a free port) for that
  deployment; ``service.kill()`` sends SIGKILL, ``service.start()`` starts it again. Always stopped
  by pid.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

import atomscale_lab.ingest  # noqa: F401 - registers the ingest migrations before `db upgrade`
from tests.support.ingest import Service
from tests.support.s3 import use_s3_roots


class KeyRecorder:
    """API key plaintexts issued and deployment homes used in this session."""

    def __init__(self):
        self.keys: list[str] = []
        self.homes: list[Path] = []

    def scan(self) -> tuple[list[Path], list[str]]:
        """Files scanned and files holding a key plaintext (whole or its secret part), under
        the folders of the recorded homes (each home lies beside its test's spool folders)."""
        needles = set()
        for k in self.keys:
            needles.add(k.encode())
            needles.add(k.split("_", 2)[2].encode())
        scanned, hits = [], set()
        for root in {h.parent for h in self.homes}:
            for path in root.rglob("*"):
                if not path.is_file() or path.is_symlink():
                    continue
                data = path.read_bytes()
                scanned.append(path)
                if any(n in data for n in needles):
                    hits.add(str(path))
        return scanned, sorted(hits)


@pytest.fixture(scope="session")
def key_recorder():
    """The session's :class:`KeyRecorder`; at the end, no recorded key may be on disk."""
    rec = KeyRecorder()
    yield rec
    _, hits = rec.scan()
    assert not hits, f"API key plaintext found in: {hits}"


class Deployment:
    """A vault, its home and its API key store."""

    def __init__(self, home: Path, vault, recorder: KeyRecorder):
        from atomscale_lab.ingest import apikeys

        self.home, self.vault, self.recorder = home, vault, recorder
        self.keys = apikeys.for_vault(vault)

    def key(
        self,
        org="acme",
        scopes="ingest:process,ingest:tool_state",
        expires=timedelta(days=1),
        name="",
    ):
        """Issue a key and remember its plaintext."""
        key, _ = self.keys.create(org, scopes, expires, name=name)
        self.recorder.keys.append(key)
        return key

    def rows(self, org, table, run_id=None):
        """Rows of a table as a pyarrow Table (optionally one run)."""
        t = self.vault.store(org).table(table)
        return t.read(run_ids=[run_id] if run_id else None)


@pytest.fixture
def state_backend(request, home, monkeypatch):
    """The embedded default (None), or with ``parametrize("state_backend", ["sqlite",
    "postgres"], indirect=True)`` each in turn: local folders and SQLite files, then the URL of a
    fresh upgraded PostgreSQL schema set as ``ATOMSCALE_DATABASE_URL`` with the data and context
    roots on object storage (moto; the ingest service subprocesses inherit both)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    from tests.support.postgres import upgraded

    url = upgraded(request.getfixturevalue("pg_url"))
    monkeypatch.setenv("ATOMSCALE_DATABASE_URL", url)
    use_s3_roots(request.getfixturevalue("s3"), monkeypatch)
    return url


@pytest.fixture
def deployment(home, root_key, key_recorder, state_backend):
    """A deployment with orgs acme and beta (its state where ``state_backend`` says)."""
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.settings import Settings

    v = Vault(Settings.load(home))
    # the PostgreSQL run is the scale-out deployment: its roots must really be on object storage
    assert isinstance(v.settings.data_root, Path) == (state_backend is None)
    v.create_org("acme", "us")
    v.create_org("beta", "us")
    key_recorder.homes.append(home)
    d = Deployment(home, v, key_recorder)
    yield d
    d.keys.close()


@pytest.fixture
def service(deployment, root_key):
    """The ingest service for ``deployment``, started; stopped by pid afterwards."""
    svc = Service(deployment.home, root_key)
    svc.start()
    yield svc
    svc.stop()
    svc.http.close()
