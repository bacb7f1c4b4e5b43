"""``atomscale-lab lab ORG``: JupyterLab for one org on this machine (single-user, local mode).

The server extension reads the org's key from the local vault with the root key in the environment
(``ATOMSCALE_ROOT_KEY`` / ``ATOMSCALE_ROOT_KEY_FILE``), then removes those variables from its own
environment so the kernels it starts never see them; kernels reach the data through the server's
REST API with the server's token. Token authentication stays on as usual (``JUPYTER_TOKEN`` is
respected; otherwise Jupyter makes one and prints the URL).
"""

from __future__ import annotations

import os
import shlex
import sys

from atomscale_lab.errors import ValidationError

APPS = {"lab": "jupyterlab", "server": "jupyter_server"}


def register(subparsers, org_subparsers=None):
    """Add the ``lab`` command to the ``atomscale-lab`` CLI."""
    p = subparsers.add_parser(
        "lab",
        help="start JupyterLab with one org's data (single-user mode)",
        description="Start JupyterLab (or a bare Jupyter server) serving ORG's datasets through "
        "the atomscale_lab server extension.",
    )
    p.add_argument("org", metavar="ORG", help="the organization to open")
    p.add_argument("--port", type=int, default=8888, help="port (default 8888)")
    p.add_argument("--ip", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--root-dir", help="notebook folder (default: the current folder)")
    p.add_argument(
        "--app",
        choices=sorted(APPS),
        default="lab",
        help="lab (JupyterLab, default) or server (no UI, REST and kernels only)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the command instead of starting it"
    )
    p.add_argument(
        "--allow-root", action="store_true", help="let Jupyter run as root (containers, CI)"
    )
    p.add_argument(
        "--jupyter-option",
        action="append",
        default=[],
        metavar="OPT",
        help="an extra Jupyter option, e.g. --jupyter-option=--ServerApp.base_url=/x/ (repeatable)",
    )
    p.set_defaults(func=cmd_lab)


def lab_command(
    org: str,
    *,
    port: int = 8888,
    ip: str = "127.0.0.1",
    no_browser: bool = False,
    root_dir: str | None = None,
    app: str = "lab",
    extra=(),
) -> list[str]:
    """The command line that starts Jupyter with the extension on for ``org`` in local mode."""
    if not 0 < port < 65536:
        raise ValidationError(f"--port must be between 1 and 65535 (got {port})", field="port")
    cmd = [
        sys.executable,
        "-m",
        APPS[app],
        f"--ip={ip}",
        f"--port={port}",
        # traitlets reads a Dict option as a Python literal (True, not JSON's true)
        "--ServerApp.jpserver_extensions=" + repr({"atomscale_lab": True}),
        f"--AtomscaleLab.org={org}",
        "--AtomscaleLab.access_class=atomscale_lab.server.access.LocalAccess",
    ]
    if no_browser:
        cmd.append("--no-browser")
    if root_dir:
        cmd.append(f"--ServerApp.root_dir={root_dir}")
    return cmd + list(extra)


def cmd_lab(args) -> int:
    """Check the org and the root key, then replace this process with Jupyter."""
    from atomscale_lab.cli.common import open_vault
    from atomscale_lab.vault.settings import ENV_HOME, load_root_key_text

    vault = open_vault(args)
    region = vault.org_region(args.org)  # UnknownOrg with a hint if it does not exist
    load_root_key_text()  # RootKeyError with a hint if unset, before Jupyter starts
    extra = list(args.jupyter_option) + (["--allow-root"] if args.allow_root else [])
    cmd = lab_command(
        args.org,
        port=args.port,
        ip=args.ip,
        no_browser=args.no_browser,
        root_dir=args.root_dir,
        app=args.app,
        extra=extra,
    )
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    sys.stderr.write(
        f"atomscale-lab: opening org {args.org} (region {region}) on "
        f"http://{args.ip}:{args.port}/\n"
    )
    sys.stderr.flush()
    env = dict(os.environ)
    if getattr(args, "home", None):  # the server reads the vault of --home, like this command
        env[ENV_HOME] = str(vault.settings.home)
    os.execve(cmd[0], cmd, env)  # noqa: S606 - a fixed argv of our own, no shell
    return 1  # not reached
