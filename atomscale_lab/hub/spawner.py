"""AtomscaleSpawner: one local server per hub user, each as its own Unix user in its org's group.

- The Unix account is ``as-<hub name>`` (:func:`atomscale_lab.hub.users.unix_name`), never the hub
  name itself, so an identity-provider user called ``root`` cannot spawn as root.
- The org comes from the user's ``org:<org>`` hub group (exactly one).
- The server's environment is built from scratch: the project's virtual environment (made from a
  Python every Unix user can execute), the org, the hub's public URL and CA bundle. The root key,
  any data key, the data root and every other ``ATOMSCALE_*`` secret are never passed: the server
  holds no key and forwards its REST API to the org's data server (``atomscale-data-<org>``).
- The account has no access to the data or context roots (they belong to service accounts).
- New files are created with umask 007.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid
from traitlets import Bool, Dict, Unicode, default

from atomscale_lab.hub.roles import org_roles_of
from atomscale_lab.hub.users import ensure_unix_user, unix_name
from atomscale_lab.names import org_of_group

SECRET_PREFIXES = (
    "ATOMSCALE_ROOT_KEY",
    "ATOMSCALE_KMS",
    "ATOMSCALE_HUB_DB_URL",  # JupyterHub's own database (may carry its password)
    "OAUTH_",
    "JUPYTERHUB_CRYPT_KEY",
    "CONFIGPROXY_AUTH_TOKEN",
    "ATOMSCALE_IDP",
    "ATOMSCALE_TRANSIT_",
    "ATOMSCALE_AWS_KMS_",
    "VAULT_",
    "BAO_",
    "AWS_",
    "ATOMSCALE_DATABASE_URL",
    "PGPASS",
)


class AtomscaleSpawner(LocalProcessSpawner):
    """LocalProcessSpawner with per-user Unix accounts grouped by org and a scrubbed environment."""

    create_unix_users = Bool(
        False,
        config=True,
        help="""Create the Unix account (and the org's group) at first spawn with ``useradd``.
        Needs the hub to run as root. Off: the accounts must exist (``atomscale-lab hub users``).
        """,
    )

    home_base = Unicode(
        "/home/atomscale",
        config=True,
        help="Parent folder of the per-org home folders of created accounts.",
    )

    venv = Unicode(
        config=True,
        help="""Virtual environment the servers run from (must be readable and executable by
        every per-user account; build it from the system Python, not one under a private home).
        """,
    )

    atomscale_env = Dict(
        config=True,
        help="""Extra environment for every server (non-secret: hub public URL, CA bundle, data
        root, region). Set by ``atomscale_lab.hub.configure``.""",
    )

    @default("venv")
    def _venv_default(self):
        return str(Path(sys.executable).parent.parent)

    @default("cmd")
    def _cmd_default(self):
        return [str(Path(self.venv) / "bin" / "jupyterhub-singleuser")]

    @default("env_keep")
    def _env_keep_default(self):
        return ["LANG", "LC_ALL"]

    @property
    def unix_user(self) -> str:
        """The Unix account this user's server runs as."""
        return unix_name(self.user.name)

    @property
    def org(self) -> str:
        """The user's org, from its hub groups; refuses none or several."""
        orgs = {org_of_group(g.name) for g in self.user.groups} - {None}
        if len(orgs) != 1:
            raise RuntimeError(
                f"user {self.user.name} must belong to exactly one org "
                f"(groups: {sorted(orgs) or 'none'})"
            )
        return orgs.pop()

    @property
    def roles_in_org(self) -> set[str]:
        """The user's roles in its org."""
        return org_roles_of(self.user.groups).get(self.org, set())

    def make_preexec_fn(self, name):
        """setuid to the mapped Unix account, then umask 007."""
        inner = set_user_setuid(unix_name(name))

        def preexec():
            inner()
            os.umask(0o007)

        return preexec

    def user_env(self, env):
        """USER, HOME and SHELL of the mapped Unix account."""
        pw = pwd.getpwnam(self.unix_user)
        env["USER"] = pw.pw_name
        env["HOME"] = pw.pw_dir
        env["SHELL"] = pw.pw_shell or "/bin/sh"
        return env

    def get_env(self):
        """The hub's server variables plus the org's, minus anything secret."""
        env = super().get_env()
        for k in list(env):
            if k.startswith(SECRET_PREFIXES):
                del env[k]
        venv_bin = str(Path(self.venv) / "bin")
        env["PATH"] = os.pathsep.join([venv_bin, "/usr/local/bin", "/usr/bin", "/bin"])
        env["VIRTUAL_ENV"] = self.venv
        env.update({k: str(v) for k, v in self.atomscale_env.items()})
        env["ATOMSCALE_ORG"] = self.org
        env["ATOMSCALE_ROLE"] = ",".join(sorted(self.roles_in_org))
        return env

    async def move_certs(self, paths):
        """Put the server's internal TLS files into its account's home, owned by it, 0600."""
        pw = pwd.getpwnam(self.unix_user)
        out = Path(pw.pw_dir) / ".jupyterhub" / "jupyterhub-certs"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True, mode=0o700)
        moved = {}
        for kind in ("keyfile", "certfile", "cafile"):
            src = Path(paths[kind])
            dst = out / src.name
            if kind == "cafile":
                shutil.copyfile(src, dst)
            else:
                shutil.move(src, dst)
            os.chown(dst, pw.pw_uid, pw.pw_gid)
            os.chmod(dst, 0o600)
            moved[kind] = str(dst)
        for d in (out.parent, out):
            os.chown(d, pw.pw_uid, pw.pw_gid)
        return moved

    async def start(self):
        """Make sure the Unix account exists (optionally creating it), then start."""
        org = self.org  # raises before anything happens for a user without an org
        if self.create_unix_users:
            ensure_unix_user(self.user.name, org, self.home_base)
        else:
            try:
                pwd.getpwnam(self.unix_user)
            except KeyError:
                raise RuntimeError(
                    f"no Unix account {self.unix_user} for hub user "
                    f"{self.user.name}; create it with `atomscale-lab hub users "
                    "sync` or set AtomscaleSpawner.create_unix_users"
                ) from None
        self.notebook_dir = self.notebook_dir or pwd.getpwnam(self.unix_user).pw_dir
        return await super().start()
