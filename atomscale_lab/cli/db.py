"""``atomscale-lab db`` commands (a CLI plug-in): the deployment database's schema versions.

- ``db upgrade`` — apply the missing migrations of every component (idempotent);
- ``db status`` — each component's version in the database and the version this release needs.

The database is ``ATOMSCALE_DATABASE_URL`` / ``database_url`` (PostgreSQL) or the embedded SQLite
registry of ``ATOMSCALE_HOME`` (which also upgrades itself on first use).
"""

from __future__ import annotations

import importlib

COMPONENT_MODULES = ["atomscale_lab.ingest"]
"""Packages outside the vault that may register migrations of their own on import."""


def _database(args):
    from atomscale_lab.vault.db import Database
    from atomscale_lab.vault.settings import Settings

    for name in COMPONENT_MODULES:  # their migrations register on import
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    settings = Settings.load(getattr(args, "home", None))
    return Database(settings.database)


def cmd_db_upgrade(args) -> int:
    """Apply the missing migrations; print what changed."""
    from atomscale_lab.cli import common as cli
    from atomscale_lab.vault.migrations import upgrade

    db = _database(args)
    done = upgrade(db)
    if args.format == "json":
        cli.print_json({c: {"from": a, "to": b} for c, (a, b) in done.items()})
        return 0
    if not done:
        print(f"{db!r}: every schema is up to date")
    for comp, (a, b) in done.items():
        print(f"{comp:<12} v{a} -> v{b}")
    return 0


def cmd_db_status(args) -> int:
    """Print each component's schema version; exit 1 if one needs ``db upgrade``."""
    from atomscale_lab.cli import common as cli
    from atomscale_lab.vault.migrations import status

    db = _database(args)
    st = status(db)
    behind = [c for c, (have, need) in st.items() if have < need]
    if args.format == "json":
        cli.print_json(
            {
                "database": repr(db),
                "components": {c: {"version": h, "needed": n} for c, (h, n) in st.items()},
                "upgrade_needed": behind,
            }
        )
    else:
        print(repr(db))
        for comp, (have, need) in st.items():
            mark = "   (run `atomscale-lab db upgrade`)" if have < need else ""
            print(f"  {comp:<12} v{have} (this release: v{need}){mark}")
    return 1 if behind else 0


def register(subparsers) -> None:
    """Add ``atomscale-lab db upgrade|status``."""
    from atomscale_lab.cli.common import add_format_option

    db = subparsers.add_parser(
        "db",
        help="the deployment database's schema (upgrade, status)",
        description="Schema versions of the deployment database (ATOMSCALE_DATABASE_URL, or the "
        "embedded SQLite registry).",
    )
    dbs = db.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    up = dbs.add_parser(
        "upgrade",
        help="apply missing migrations",
        description="Apply every missing migration, in order, one transaction per component.",
    )
    add_format_option(up)
    up.set_defaults(func=cmd_db_upgrade)
    st = dbs.add_parser(
        "status",
        help="schema versions",
        description="Each component's schema version; exit 1 if `db upgrade` is needed.",
    )
    add_format_option(st)
    st.set_defaults(func=cmd_db_status)

    def _help(args):
        db.print_help()
        return 2

    db.set_defaults(func=_help)
