"""The deployment the hub end-to-end suite and ``bench/hub.py`` run against.

- :func:`deployment`: a complete deployment on 127.0.0.1 free ports — vault with orgs ``acme`` and
  ``beta`` (small demo data), the bundled identity provider (Node, https), the hub (https, internal
  TLS, proxy, key and context services) — started once and stopped by pid at the end.
  Identity-provider users: ``<org>-admin|scientist|viewer|support`` for both orgs, ``acme-nomfa``
  (password only), ``gamma-user`` (an org the hub does not serve).
- :func:`api`, :func:`server_pid`: calls to the hub's public URL, a user's server process.
- :class:`ScaleOut`: pass one to :func:`deployment` for the scale-out backend — data and context
  roots on object storage (moto), registries, heads, audit chain and ingest state in PostgreSQL —
  given to the hub through its environment as an operator would; the data servers' service
  accounts get their own object-store credentials in ``~/.aws``.

Per-user Unix accounts without touching the host: the hub runs inside ``unshare -m`` with
``/etc/passwd`` and ``/etc/group`` bind-mounted from copies that add one account per hub user
(uids from 200000, distinct per run), one group per org and one service account per org (its
data server's, which owns the org's data folder); homes and data folders are owned by those
numeric ids. Outside the namespace the tests use the numeric ids (``setpriv``).
Needs root (the hub setuids to the accounts) and Node with ``idp/node_modules`` installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from atomscale_lab.hub.roles import ROLES
from atomscale_lab.hub.stack import REPO, hub_process, idp_process, init_stack
from atomscale_lab.hub.users import (
    IdpUsers,
    lock_home,
    org_group,
    service_account,
    share_org_data,
    unix_name,
)
from tests.support import hub_helpers as helpers

ORGS = ("acme", "beta")
ROLE_USER = {
    "org-admin": "admin",
    "scientist": "scientist",
    "viewer": "viewer",
    "support": "support",
}
# Numeric ids of the test accounts: distinct per run (several runs may share a machine, and
# teardown ends leftover processes by uid).
UID_BASE = 200_000 + (os.getpid() % 20_000) * 50


@dataclass
class Account:
    """A hub user's Unix account inside the test namespace."""

    name: str
    uid: int
    gid: int
    home: Path


@dataclass
class ScaleOut:
    """The scale-out backend of a deployment: ``s3://`` roots on ``s3`` (a
    :class:`tests.support.s3.S3Env`) and the registries in PostgreSQL at ``database_url``."""

    s3: object
    data_root: object
    context_root: object
    database_url: str

    def env(self) -> dict[str, str]:
        """The hub's (and the storage admin's) environment: roots, database, the AWS variables."""
        return {
            **self.s3.env(),
            "ATOMSCALE_DATA_ROOT": self.data_root.url,
            "ATOMSCALE_CONTEXT_ROOT": self.context_root.url,
            "ATOMSCALE_DATABASE_URL": self.database_url,
        }

    def settings(self, home):
        """The deployment's settings as an admin opens them (no variable of this process)."""
        from atomscale_lab.vault.settings import Settings

        return Settings.load(
            home,
            data_root=self.data_root,
            context_root=self.context_root,
            database_url=self.database_url,
        )

    def aws_credentials(self) -> str:
        """A service account's ``~/.aws/credentials`` (the standard credential chain)."""
        env = self.s3.env()
        return (
            "[default]\n"
            f"aws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
            f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
        )


@dataclass
class Stack:
    """The running deployment."""

    st: object
    base: Path
    home: Path
    idp: IdpUsers
    passwords: dict
    accounts: dict
    groups: dict
    hub_pid: int
    idp_pid: int
    logs: Path
    sessions: dict = field(default_factory=dict)
    idp_restart: object = None
    services: dict = field(default_factory=dict)
    """``{org: Account}`` of the orgs' data-server service accounts."""
    scale_out: ScaleOut | None = None
    """The scale-out backend, or None for local folders + SQLite."""

    def settings(self):
        """The deployment's settings, as an admin opens them."""
        from atomscale_lab.vault.settings import Settings

        return self.scale_out.settings(self.home) if self.scale_out else Settings.load(self.home)

    def restart_idp(self) -> tuple[str, str]:
        """Stop the identity provider by pid and start it again (new signing key and kid);
        returns the kids before and after."""
        return self.idp_restart()

    @property
    def url(self):
        """The hub's public URL."""
        return self.st.public_url

    @property
    def ca(self):
        """The CA bundle of every https endpoint."""
        return str(self.st.ca)

    def user(self, org, role):
        """The user name of ``role`` in ``org``."""
        return f"{org}-{ROLE_USER[role]}"

    def vault(self):
        """The deployment's vault, opened with its root key (as an admin would)."""
        from atomscale_lab.vault.facade import Vault
        from atomscale_lab.vault.kms import LocalKms

        return Vault(self.settings(), kms=LocalKms((self.base / "root.key").read_text()))

    def audit_events(self, org, **kw):
        """Events of the org's audit log (read with the root key, like an admin)."""
        v = self.vault()
        try:
            return v.audit(org).events(limit=1000, **kw)
        finally:
            v.close()

    def log_tail(self, n=60):
        """Last lines of the hub and IdP logs (for failure messages)."""
        out = []
        for f in ("hub.log", "idp.log"):
            p = self.logs / f
            if p.exists():
                out.append(f"--- {f}\n" + "\n".join(p.read_text().splitlines()[-n:]))
        return "\n".join(out)


def _cli(*args, env):
    r = subprocess.run(
        [sys.executable, "-m", "atomscale_lab.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"atomscale-lab {' '.join(args)} failed: {r.stderr}"
    return r.stdout


def _overlay(
    base: Path, users: dict[str, str], aws_credentials: str | None = None
) -> tuple[Path, Path, dict, dict, dict]:
    """passwd/group copies with one account per hub user, one group per org and one service
    account (user and group) per org; with ``aws_credentials`` each service account gets a home
    holding them in ``~/.aws/credentials`` (its own credential chain)."""
    groups = {org: UID_BASE + i for i, org in enumerate(sorted(set(users.values())))}
    assert len(groups) < 10 and len(users) < 40
    accounts = {}
    services = {
        org: Account(
            service_account(org), UID_BASE + 40 + i, UID_BASE + 40 + i, Path("/nonexistent")
        )
        for i, org in enumerate(sorted(groups))
    }
    names = {unix_name(u) for u in users} | {a.name for a in services.values()}
    gnames = {org_group(org) for org in groups} | {a.name for a in services.values()}
    # Accounts of the same names on the host (e.g. from `make demo`) are hidden, not reused.
    passwd = [
        ln
        for ln in Path("/etc/passwd").read_text().splitlines()
        if ln and ln.split(":")[0] not in names
    ]
    group = [
        ln
        for ln in Path("/etc/group").read_text().splitlines()
        if ln and ln.split(":")[0] not in gnames
    ]
    homes = base / "homes"
    homes.mkdir(mode=0o755)
    if aws_credentials is not None:
        for acc in services.values():
            acc.home = homes / "services" / acc.name
            (acc.home / ".aws").mkdir(parents=True, mode=0o700)
            os.chmod(acc.home.parent, 0o755)
            creds = acc.home / ".aws" / "credentials"
            creds.touch(mode=0o600)
            creds.write_text(aws_credentials)
            for p in (acc.home, acc.home / ".aws", creds):
                os.chown(p, acc.uid, acc.gid)
            os.chmod(acc.home, 0o700)
    for i, (user, org) in enumerate(sorted(users.items())):
        name = unix_name(user)
        uid = UID_BASE + 10 + i
        home = homes / org / name
        home.mkdir(parents=True, mode=0o700)
        os.chmod(home.parent, 0o755)
        os.chown(home, uid, groups[org])
        accounts[user] = Account(name, uid, groups[org], home)
        passwd.append(f"{name}:x:{uid}:{groups[org]}:atomscale-lab {user}:{home}:/usr/sbin/nologin")
    for org, gid in groups.items():
        group.append(f"{org_group(org)}:x:{gid}:")
    for org, acc in services.items():
        passwd.append(
            f"{acc.name}:x:{acc.uid}:{acc.gid}:atomscale-lab data server of {org}:"
            f"{acc.home}:/usr/sbin/nologin"
        )
        group.append(f"{acc.name}:x:{acc.gid}:")
    (base / "passwd").write_text("\n".join(passwd) + "\n")
    (base / "group").write_text("\n".join(group) + "\n")
    os.chmod(base / "passwd", 0o644)
    os.chmod(base / "group", 0o644)
    return base / "passwd", base / "group", accounts, groups, services


def _wait_http(url, ca, timeout, proc, what, logs):
    s = helpers.session(ca)
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}\n{logs()}")
        try:
            if s.get(url, timeout=5).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{what} not ready after {timeout} s\n{logs()}")


def _stop(pid: int, timeout: float = 20) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@contextlib.contextmanager
def deployment(
    runs: int = 4,
    extra_users: dict | None = None,
    populate=None,
    scale_out: ScaleOut | None = None,
):
    """The deployment of the ``stack`` fixture as a context manager (also for the benches).

    ``extra_users`` adds identity-provider users ``{name: (org, role)}``; ``populate(vault)``, if
    given, may create more orgs and data before the hub starts (a vault opened with the root key).
    ``scale_out``: the scale-out backend instead of local folders + SQLite (``db upgrade`` first).
    """
    base = Path(tempfile.mkdtemp(prefix="atomscale-hub-"))
    os.chmod(base, 0o755)
    home = base / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    logs = REPO / "artifacts" / "hub"
    logs.mkdir(parents=True, exist_ok=True)
    (base / "root.key").touch(mode=0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOMSCALE_")}
    env["ATOMSCALE_HOME"] = str(home)
    key = subprocess.run(
        [sys.executable, "-m", "atomscale_lab.cli.main", "root-key", "generate"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (base / "root.key").write_text(key)
    env["ATOMSCALE_ROOT_KEY_FILE"] = str(base / "root.key")
    if scale_out is not None:
        env.update(scale_out.env())
        _cli("db", "upgrade", env=env)
    settings = scale_out.settings(home) if scale_out else None
    for org in ORGS:
        _cli("org", "create", org, "--region", "us", env=env)
        _cli("demo-data", org, "--runs", str(runs), "--points", "120", env=env)
    if populate is not None:
        from atomscale_lab.vault.facade import Vault
        from atomscale_lab.vault.kms import LocalKms
        from atomscale_lab.vault.settings import Settings

        v = Vault(settings or Settings.load(home), kms=LocalKms(key))
        try:
            populate(v)
        finally:
            v.close()

    idp = IdpUsers(home / "idp" / "users.json")
    passwords, owners = {}, {}
    for org in ORGS:
        for role in ROLES:
            name = f"{org}-{ROLE_USER[role]}"
            passwords[name] = idp.add(name, org, role)
            owners[name] = org
    for name, (org, role) in (extra_users or {}).items():
        passwords[name] = idp.add(name, org, role)
        owners[name] = org
    passwords["beta-lockme"] = idp.add("beta-lockme", "beta", "viewer")
    passwords["acme-nomfa"] = idp.add("acme-nomfa", "acme", "scientist", mfa=False)
    passwords["gamma-user"] = idp.add("gamma-user", "gamma", "scientist")
    owners["acme-nomfa"] = "acme"
    passwd, group, accounts, groups, services = _overlay(
        base, owners, scale_out.aws_credentials() if scale_out else None
    )
    from atomscale_lab.vault.settings import Settings

    if scale_out is None:  # object storage has no Unix owners
        for org, acc in services.items():
            share_org_data(home / "data", org, uid=acc.uid, gid=acc.gid)
    lock_home(settings or Settings.load(home))

    st = init_stack(base / "stack", home)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATOMSCALE_HOME", str(home))
        mp.setenv("ATOMSCALE_ROOT_KEY_FILE", str(base / "root.key"))
        iargv, ienv = idp_process(st)
        # the hub's own environment, as an operator gives it (the IdP needs none of it)
        for k, v in (scale_out.env() if scale_out else {}).items():
            mp.setenv(k, v)
        hargv, henv = hub_process(st)
    idp_log = open(logs / "idp.log", "w")  # noqa: SIM115 - closed at teardown
    hub_log = open(logs / "hub.log", "w")  # noqa: SIM115
    idp_proc = subprocess.Popen(iargv, env=ienv, stdout=idp_log, stderr=subprocess.STDOUT)
    state = st.root / "hub" / "state"
    state.mkdir(parents=True, exist_ok=True)
    # A private mount namespace in which the overlay passwd/group are the system's.
    wrapped = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"',
        "sh",
        str(passwd),
        str(group),
        *hargv,
    ]
    hub_proc = subprocess.Popen(
        wrapped, env=henv, cwd=state, stdout=hub_log, stderr=subprocess.STDOUT
    )
    s = Stack(
        st=st,
        base=base,
        home=home,
        idp=idp,
        passwords=passwords,
        accounts=accounts,
        groups=groups,
        hub_pid=hub_proc.pid,
        idp_pid=idp_proc.pid,
        logs=logs,
        services=services,
        scale_out=scale_out,
    )
    procs = {"idp": idp_proc}

    def kid():
        jwks = helpers.session(st.ca).get(f"{st.issuer}/jwks", timeout=10).json()
        return jwks["keys"][0]["kid"]

    def restart():
        before = kid()
        _stop(procs["idp"].pid, 5)
        procs["idp"] = subprocess.Popen(iargv, env=ienv, stdout=idp_log, stderr=subprocess.STDOUT)
        s.idp_pid = procs["idp"].pid
        _wait_http(
            f"{st.issuer}/.well-known/openid-configuration",
            st.ca,
            30,
            procs["idp"],
            "IdP",
            s.log_tail,
        )
        return before, kid()

    s.idp_restart = restart
    try:
        _wait_http(
            f"{st.issuer}/.well-known/openid-configuration", st.ca, 30, idp_proc, "IdP", s.log_tail
        )
        _wait_http(
            f"{st.public_url}/services/atomscale-context/health",
            st.ca,
            120,
            hub_proc,
            "hub",
            s.log_tail,
        )
        for org in services:
            _wait_http(
                f"{st.public_url}/services/atomscale-data-{org}/health",
                st.ca,
                60,
                hub_proc,
                f"data server of {org}",
                s.log_tail,
            )
        yield s
    finally:
        _stop(hub_proc.pid)
        _stop(procs["idp"].pid, 5)
        idp_log.close()
        hub_log.close()
        # The hub stops its proxy, services and servers; if it could not (killed), end what is
        # left of this deployment: processes of our accounts, or whose command line or
        # environment names this deployment's folder.
        leftovers = {
            pid for acc in [*accounts.values(), *services.values()] for pid in _pids_of_uid(acc.uid)
        }
        leftovers |= _pids_mentioning(str(base))
        for pid in leftovers - {os.getpid()}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(base, ignore_errors=True)


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if p.stat().st_uid == uid:
                    pids.append(int(p.name))
            except FileNotFoundError:
                continue
    return pids


def _pids_mentioning(text: str) -> set[int]:
    needle = text.encode()
    found = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if needle in (p / "cmdline").read_bytes() or needle in (p / "environ").read_bytes():
                found.add(int(p.name))
        except OSError:
            continue
    return found


def server_pid(stack, user) -> int:
    """The pid of ``user``'s single-user server (found by its account's uid)."""
    uid = stack.accounts[user].uid
    for pid in _pids_of_uid(uid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"jupyterhub-singleuser" in cmd:
            return pid
    raise AssertionError(f"no server process of {user}")


def api(stack, token, method, path, **kw):
    """A request to the hub's public URL with ``token``."""
    s = helpers.session(stack.ca)
    return s.request(
        method,
        stack.url + path,
        headers={"Authorization": f"token {token}"},
        allow_redirects=False,
        timeout=60,
        **kw,
    )


def events_json(events):
    """Compact text of events for assertion messages."""
    return json.dumps(events[:10], default=str)[:2000]


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether process ``pid`` is ``ancestor`` or one of its descendants (another stack of the
    same test session runs the same service accounts and commands)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def data_server_pids(stack, org) -> list[int]:
    """Pids of the org's data server of this stack (its service account's uid, under its hub)."""
    out = []
    for pid in _pids_of_uid(stack.services[org].uid):
        try:
            if b"atomscale_lab.hub.services.data" in Path(f"/proc/{pid}/cmdline").read_bytes():
                if descends_from(pid, stack.hub_pid):
                    out.append(pid)
        except OSError:
            continue
    return out


def restart_data_server(stack, org, timeout=90) -> int:
    """Stop the org's data server by pid and wait until the hub has started a fresh one that
    answers (the hub polls its services at most every 30 s); returns the new pid."""
    (old,) = data_server_pids(stack, org)
    os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    s = helpers.session(stack.ca)
    while time.monotonic() < deadline:
        pids = data_server_pids(stack, org)
        if pids and pids != [old]:
            try:
                r = s.get(f"{stack.url}/services/atomscale-data-{org}/health", timeout=5)
                if r.status_code == 200:
                    return pids[0]
            except Exception:  # noqa: BLE001 - not up yet
                pass
        time.sleep(0.5)
    raise AssertionError(f"the data server of {org} was not restarted\n{stack.log_tail()}")
