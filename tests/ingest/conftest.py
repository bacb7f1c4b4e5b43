"""Fixtures of the ingest suite.

- ``key_recorder`` (session): every API key plaintext issued through ``deployment.key`` and every
  deployment home of the session; ``scan()`` looks for the plaintexts in every file under those
  homes' test folders. ``test_ingest_secrets.py`` scans what was recorded so far, and the
  fixture scans everything again at the end of the session (a hit fails the session's teardown),
  so the check holds whatever order the tests run in.
- ``deployment``: a vault on a temporary home with orgs ``acme`` and ``beta`` and an
  ``ApiKeyStore``; ``deployment.key(org, scopes)`` issues a key and records its plaintext.
- ``service``: starts the ingest service as a subprocess on 127.0.0.1 (a free port) for that
  deployment; ``service.kill()`` sends SIGKILL, ``service.start()`` starts it again. Always stopped
  by pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests


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

    def key(self, org="acme", scopes="ingest:process,ingest:tool_state", expires=timedelta(days=1),
            name=""):
        """Issue a key and remember its plaintext."""
        key, _ = self.keys.create(org, scopes, expires, name=name)
        self.recorder.keys.append(key)
        return key

    def rows(self, org, table, run_id=None):
        """Rows of a table as a pyarrow Table (optionally one run)."""
        t = self.vault.store(org).table(table)
        return t.read(run_ids=[run_id] if run_id else None)


@pytest.fixture
def deployment(home, root_key, key_recorder):
    """A deployment with orgs acme and beta."""
    from atomscale_lab.config import Settings
    from atomscale_lab.vault import Vault

    v = Vault(Settings.load(home))
    v.create_org("acme", "us")
    v.create_org("beta", "us")
    key_recorder.homes.append(home)
    d = Deployment(home, v, key_recorder)
    yield d
    d.keys.close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """The ingest service as a subprocess of the test."""

    def __init__(self, home: Path, root_key: str, extra_args=()):
        self.home, self.root_key, self.extra = home, root_key, list(extra_args)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.cert = home / "ingest" / "tls" / "cert.pem"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.http = requests.Session()
        self.http.trust_env = False

    def start(self, wait=True):
        """Start the service (and wait until it answers)."""
        env = dict(os.environ, ATOMSCALE_HOME=str(self.home), ATOMSCALE_ROOT_KEY=self.root_key)
        env.pop("ATOMSCALE_ROOT_KEY_FILE", None)
        self.log = open(self.home / f"service-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "atomscale_lab.ingest.service", "--port", str(self.port),
             "--flush-interval", "0.2", *self.extra],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.starts += 1
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout=30.0):
        """Poll /health until it answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}: "
                                   + (self.home / f"service-{self.starts - 1}.log").read_text())
            try:
                if self.cert.exists():
                    self.http.get(self.url + "/health", verify=str(self.cert), timeout=1)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError("the ingest service did not become ready")

    def kill(self):
        """SIGKILL the service by pid and reap it."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def stop(self):
        """SIGTERM the service by pid (it flushes and exits)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc:
            self.log.close()

    def request(self, method, path, key=None, **kw):
        """One HTTPS request to the service."""
        headers = kw.pop("headers", {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return self.http.request(method, self.url + path, headers=headers,
                                 verify=str(self.cert), timeout=30, **kw)


@pytest.fixture
def service(deployment, root_key):
    """The ingest service for ``deployment``, started; stopped by pid afterwards."""
    svc = Service(deployment.home, root_key)
    svc.start()
    yield svc
    svc.stop()
    svc.http.close()
