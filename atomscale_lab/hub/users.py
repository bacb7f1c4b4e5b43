"""Accounts: the local identity provider's users file, TOTP codes, and the per-user Unix accounts.

The identity provider in ``idp/`` reads a JSON users file written here: a scrypt password hash, a
TOTP secret (base32), the org and the role of each user. The file is 0600 and holds secrets; nothing
here prints a password hash or a TOTP secret.

Every hub user's server runs as its own Unix user (``as-<hub name>``), in the Unix group of its org
(``as-org-<org>``): servers of different orgs cannot read each other's process environment or files.
Each org's data server runs as the org's service account (:func:`service_account`, its own user and
group), which owns ``data_root/<org>``; no user account has any access there.
Names too long for 32 characters are shortened injectively (:mod:`atomscale_lab.names`).

``pyotp`` (the ``hub`` extra) is imported only where a TOTP secret or code is made.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import subprocess
from pathlib import Path

from atomscale_lab import names
from atomscale_lab.errors import ConfigError, NotFound, ValidationError
from atomscale_lab.permissions import ROLES

NAME_RE = names.NAME_RE
ENV_IDP_USERS = "ATOMSCALE_IDP_USERS"
SCRYPT = {"N": 16384, "r": 8, "p": 1}


def _pyotp():
    """``pyotp`` (hub extra), imported when a TOTP secret or code is needed."""
    try:
        import pyotp
    except ImportError:
        raise ConfigError("TOTP needs the hub extra: pip install 'atomscale-lab[hub]'") from None
    return pyotp


def default_users_file(home: str | Path | None = None) -> Path:
    """``$ATOMSCALE_IDP_USERS`` or ``<home>/idp/users.json`` (``home`` defaults to
    ``$ATOMSCALE_HOME`` or ``~/.atomscale``)."""
    from atomscale_lab.vault.settings import default_home

    if os.environ.get(ENV_IDP_USERS):
        return Path(os.environ[ENV_IDP_USERS])
    return (Path(home).expanduser() if home else default_home()) / "idp" / "users.json"


def hash_password(password: str) -> dict:
    """A scrypt hash record the identity provider verifies (``{"scrypt": {...}}``)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT["N"], r=SCRYPT["r"], p=SCRYPT["p"], dklen=32
    )
    return {
        "scrypt": {
            "salt": base64.b64encode(salt).decode(),
            "hash": base64.b64encode(digest).decode(),
            **SCRYPT,
        }
    }


def check_name(name: str, what: str = "user name") -> str:
    """Return ``name`` if it is a valid user/org name, else raise ``ValidationError``."""
    return names.check_name(name, what)


class IdpUsers:
    """The identity provider's users file (JSON, mode 0600)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_users_file()

    def load(self) -> dict:
        """``{username: record}``; an absent file is an empty one."""
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text()).get("users", {})
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.path} is not valid JSON: {e}") from None

    def save(self, users: dict) -> None:
        """Write atomically with mode 0600."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"users": users}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add(
        self,
        username: str,
        org: str,
        role: str,
        *,
        password: str | None = None,
        mfa: bool = True,
        email: str | None = None,
        replace: bool = False,
    ) -> str:
        """Create (or with ``replace`` reset) a user; returns the password (generated if None).

        The TOTP secret is generated here; read codes with :meth:`totp_now`.
        """
        pyotp = _pyotp()
        check_name(username)
        check_name(org, "org")
        if role not in ROLES:
            raise ValidationError(
                f"unknown role {role!r}; choose one of {', '.join(ROLES)}", field="role"
            )
        users = self.load()
        if username in users and not replace:
            raise ValidationError(f"user {username!r} already exists", field="username")
        if username not in users:
            names.check_new_user(username)
            names.check_unix_free(
                unix_name(username), username, {unix_name(u): u for u in users}, "user name"
            )
        password = password or secrets.token_urlsafe(12)
        users[username] = {
            "org": org,
            "role": role,
            "mfa": bool(mfa),
            "email": email or f"{username}@{org}.example",
            "password": hash_password(password),
            "totp": pyotp.random_base32(),
        }
        self.save(users)
        return password

    def remove(self, username: str) -> None:
        """Delete a user (NotFound if absent)."""
        users = self.load()
        if users.pop(username, None) is None:
            raise NotFound(f"no identity-provider user {username!r}")
        self.save(users)

    def get(self, username: str) -> dict:
        """One user's public attributes (org, role, mfa, email) — never secrets."""
        users = self.load()
        if username not in users:
            raise NotFound(f"no identity-provider user {username!r} in {self.path}")
        u = users[username]
        return {
            "username": username,
            "org": u["org"],
            "role": u["role"],
            "mfa": u["mfa"],
            "email": u.get("email"),
        }

    def list(self, org: str | None = None) -> list[dict]:
        """Public attributes of every user (of ``org``)."""
        return [
            self.get(n) for n in sorted(self.load()) if org is None or self.load()[n]["org"] == org
        ]

    def totp(self, username: str):
        """The user's ``pyotp.TOTP`` (for the demo's ``atomscale-lab totp`` and the tests)."""
        pyotp = _pyotp()
        users = self.load()
        if username not in users:
            raise NotFound(f"no identity-provider user {username!r} in {self.path}")
        return pyotp.TOTP(users[username]["totp"])

    def totp_now(self, username: str) -> str:
        """The current 6-digit code of ``username``."""
        return self.totp(username).now()


# ---------------------------------------------------------------- Unix accounts


def unix_name(hub_user: str) -> str:
    """The Unix account a hub user's server runs as (injective, at most 32 characters)."""
    return names.unix_user(hub_user)


def org_group(org: str) -> str:
    """The Unix group of an org's users (owns ``data_root/<org>``; injective, <= 32 chars)."""
    return names.unix_org_group(org)


_COMMENT_RE = re.compile(r"^atomscale-lab (?P<user>[a-z][a-z0-9-]{1,63})$")


def service_account(org: str) -> str:
    """The Unix account (and group) of ``org``'s data server; owns ``data_root/<org>``
    (injective like every mapped name; hub user names cannot start with ``svc-``)."""
    return names.unix_service_account(org)


def ensure_service_account(org: str) -> tuple[int, int]:
    """Create the org's service account and its group if missing (no login, no home); returns
    ``(uid, gid)``. Needs root."""
    name = service_account(check_name(org, "org"))
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--gid",
                name,
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                f"atomscale-lab data server of {org}",
                name,
            ],
            check=True,
            capture_output=True,
        )
    return pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid


def ensure_org_group(org: str) -> int:
    """Create the org's Unix group if missing; returns its gid."""
    name = org_group(check_name(org, "org"))
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
        return grp.getgrnam(name).gr_gid


def ensure_unix_user(hub_user: str, org: str, home_base: str | Path = "/home/atomscale") -> str:
    """Create the Unix user of ``hub_user`` in its org's group, home ``home_base/<org>/<name>``
    (mode 0700). Needs root. Returns the Unix name."""
    check_name(hub_user)
    ensure_org_group(org)
    name = unix_name(hub_user)
    base = Path(home_base) / org
    base.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(Path(home_base), 0o755)  # noqa: S103 - homes below are 0700
    try:
        existing = pwd.getpwnam(name)
    except KeyError:
        existing = None
    if existing is not None:
        # An account of another hub user (or not ours at all) under this name: refuse, never share.
        owner = _COMMENT_RE.match(existing.pw_gecos or "")
        if owner is None or owner["user"] != hub_user:
            raise ValidationError(
                f"the Unix account {name!r} exists and does not belong to hub "
                f"user {hub_user!r}; refusing to share it",
                field="user name",
            )
    else:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--create-home",
                "--home-dir",
                str(base / name),
                "--gid",
                org_group(org),
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                f"atomscale-lab {hub_user}",
                name,
            ],
            check=True,
            capture_output=True,
        )
    home = Path(pwd.getpwnam(name).pw_dir)
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, pwd.getpwnam(name).pw_uid, grp.getgrnam(org_group(org)).gr_gid)
    os.chmod(home, 0o700)
    return name


def remove_unix_user(hub_user: str) -> None:
    """Delete the Unix user of ``hub_user`` and its home (no error when absent)."""
    name = unix_name(hub_user)
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


def lock_home(settings) -> None:
    """Make the deployment home traversable by the data servers' accounts but nothing else in it
    readable: home and data root ``0711``; registry, audit logs, context root and IdP files
    private to the hub's account."""
    home = Path(settings.home)
    os.chmod(home, 0o711)  # noqa: S103 - traverse only, to reach the data root
    for p, mode in (
        (settings.registry_path, 0o600),
        (settings.audit_root, 0o700),
        (settings.context_root, 0o700),
        (home / "idp", 0o700),
        (settings.data_root, 0o711),
    ):
        if isinstance(p, (str, Path)) and Path(p).exists():  # s3:// roots have no modes
            os.chmod(p, mode)


def share_org_data(
    data_root: str | Path, org: str, uid: int | None = None, gid: int | None = None
) -> None:
    """Give ``data_root/<org>`` to the org's service account (and nobody else).

    Owner: the service account; group: its own group (no user account is a member), so files the
    hub's writers (ingest, admin CLI) create there are readable by the data server. Directories
    become ``2770`` (new files inherit the group), files ``0660``; ``data_root`` itself is
    traversable (``0711``) but not listable. Without ``uid``/``gid`` the account is created.
    """
    if uid is None or gid is None:
        uid, gid = ensure_service_account(org)
    root = Path(data_root)
    org_dir = root / org
    org_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # noqa: S103 - traversable, not listable
    for dirpath, _dirnames, filenames in os.walk(org_dir):
        os.chown(dirpath, uid, gid)
        os.chmod(dirpath, 0o2770)  # noqa: S103 - the service account and its group only
        for f in filenames:
            p = os.path.join(dirpath, f)
            os.chown(p, uid, gid)
            os.chmod(p, 0o660)
