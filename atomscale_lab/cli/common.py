"""What every command of ``atomscale-lab`` shares: its errors, the vault of ``--home``, the actor
named in audit events, progress bars, JSON output and the common options."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from atomscale_lab.errors import AtomscaleError

PROG = "atomscale-lab"


class CliError(AtomscaleError):
    """A command was used wrongly (refused confirmation, missing option)."""


class UsageError(CliError):
    """A command line that cannot work as given (a missing argument): exit 2 like argparse."""

    exit_code = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other error."""

    def error(self, message):
        """Print ``atomscale-lab: error: ...`` with a pointer to --help and exit 2."""
        sys.stderr.write(f"{PROG}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


# -- utilities for commands (also used by plug-ins) ------------------------------------------------


def open_vault(args=None):
    """The deployment's :class:`~atomscale_lab.vault.facade.Vault` (``--home`` honoured)."""
    from atomscale_lab.vault.facade import Vault
    from atomscale_lab.vault.settings import Settings

    home = getattr(args, "home", None) if args is not None else None
    return Vault(Settings.load(home))


def actor(args=None) -> str:
    """The name audit events of this command carry: the login name of whoever runs it."""
    name = os.environ.get("ATOMSCALE_ACTOR")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "admin"


def progress(args=None, **kw):
    """A tqdm bar on stderr (hidden when stderr is not a terminal or with ``--quiet``)."""
    from tqdm import tqdm

    quiet = bool(getattr(args, "quiet", False))
    kw.setdefault("file", sys.stderr)
    kw.setdefault("leave", False)
    kw.setdefault("dynamic_ncols", True)
    return tqdm(disable=True if quiet else None, **kw)


def warn(message: str) -> None:
    """One warning line on stderr."""
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def print_json(doc) -> None:
    """Print ``doc`` as indented JSON on stdout (times and paths as strings)."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


ORG_HELP = "org name"


def add_org_argument(parser, *, optional: bool = False, dest: str = "name", help: str = ORG_HELP):
    """The org argument, spelled ``ORG`` in every command (the first positional argument)."""
    kw = {"nargs": "?"} if optional else {}
    return parser.add_argument(dest, metavar="ORG", help=help, **kw)


def add_format_option(
    parser,
    choices=("text", "json"),
    default: str | None = "text",
    help: str | None = None,
    required: bool = False,
    alias: bool = True,
):
    """``--format``: the one spelling of an output format; ``--json`` stays as a hidden,
    deprecated alias of ``--format json`` where JSON is a choice."""
    kw = {"required": True} if required else {"default": default}
    parser.add_argument(
        "--format",
        choices=choices,
        dest="format",
        help=help
        or f"output format: {', '.join(choices)}"
        + (f" (default {default})" if default and not required else ""),
        **kw,
    )
    if alias and "json" in choices:
        parser.add_argument(
            "--json", action="store_const", const="json", dest="format", help=argparse.SUPPRESS
        )


# -- root-key --------------------------------------------------------------------------------------
