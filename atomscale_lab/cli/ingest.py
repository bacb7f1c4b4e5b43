"""Commands ``atomscale-lab apikey …`` and ``atomscale-lab ingest …`` (a plug-in of the CLI)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers, org_subparsers=None):
    """Add ``apikey create|list|revoke`` and ``ingest serve|import`` to the admin command."""
    from atomscale_lab.cli.common import add_format_option, add_org_argument
    from atomscale_lab.ingest.options import add_serve_arguments

    ak = subparsers.add_parser(
        "apikey",
        help="issue, list and revoke org API keys for instruments",
        description="API keys let instrument PCs stream into one org. A key is shown once, "
        "when it is created; only a peppered hash of it is stored.",
    )
    aks = ak.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    c = aks.add_parser(
        "create",
        help="issue a key (printed once)",
        description="Issue an API key for one org; it is printed once, on stdout.",
    )
    add_org_argument(c, dest="org")
    c.add_argument(
        "--scope",
        required=True,
        help="comma-separated: ingest:process, ingest:tool_state, ingest:metrology, "
        "read:process, read:tool_state, read:metrology",
    )
    c.add_argument("--expires", required=True, help="lifetime, e.g. 90d, 12h (at most 730d)")
    c.add_argument("--name", default="", help="a label, e.g. the instrument")
    c.set_defaults(func=cmd_apikey_create)
    ls = aks.add_parser(
        "list",
        help="list an org's keys (never the keys themselves)",
        description="List an org's keys: prefix, name, scopes, dates, state.",
    )
    add_org_argument(ls, dest="org")
    add_format_option(ls)
    ls.set_defaults(func=cmd_apikey_list)
    rv = aks.add_parser(
        "revoke",
        help="revoke a key by its prefix",
        description="Revoke a key at once; instruments using it get 401.",
    )
    add_org_argument(rv, dest="org")
    rv.add_argument("prefix", help="the key's prefix, as `apikey list` shows it")
    rv.set_defaults(func=cmd_apikey_revoke)
    ak.set_defaults(func=lambda args: (ak.print_help(sys.stderr), 2)[1])

    ing = subparsers.add_parser(
        "ingest",
        help="run the ingest service or import tool logs",
        description="The ingest service (instruments stream into it) "
        "and the import of tool-log files.",
    )
    ings = ing.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    sv = ings.add_parser(
        "serve",
        help="run the HTTPS ingest service",
        description="Serve the ingest API over HTTPS until SIGTERM. A "
        "self-signed certificate is made in $ATOMSCALE_HOME/ingest/"
        "tls when --certfile is not given.",
    )
    add_serve_arguments(sv)
    sv.set_defaults(func=cmd_ingest_serve)
    im = ings.add_parser(
        "import",
        help="import a CSV or Parquet tool log (all or nothing)",
        description="Validate every row of FILE, then store it in one commit. "
        "A malformed value is reported with its line and column "
        "and nothing is stored. Importing rows the run already "
        "has is detected: a file imported before is skipped (exit "
        "0), one that overlaps stored rows only in part is refused "
        "(exit 1); nothing is ever stored twice.",
    )
    add_org_argument(im, dest="org", optional=True)
    im.add_argument("file", metavar="FILE", nargs="?", help="the CSV, TSV or Parquet file")
    im.add_argument("--org", dest="org_option", help=argparse.SUPPRESS)  # deprecated spelling
    im.add_argument(
        "--category",
        required=True,
        choices=["process", "tool_state", "metrology"],
        help="what the file holds: process series, tool state or metrology",
    )
    im.add_argument("--run", required=True, help="the run id the rows belong to")
    im.add_argument("--tool", help="the tool (instrument) name, for tool_state logs")
    im.add_argument(
        "--timezone",
        default="UTC",
        help="timezone of times written without an offset (default UTC)",
    )
    for field, what in (
        ("project", "project"),
        ("sample", "sample id"),
        ("method", "growth method (MBE, PLD, sputtering …)"),
        ("operator", "operator"),
    ):
        im.add_argument(
            f"--{field}",
            metavar="TEXT",
            help=f"set the run record's {what} (a new run's, or replace it)",
        )
    im.set_defaults(func=cmd_ingest_import)
    ing.set_defaults(func=lambda args: (ing.print_help(sys.stderr), 2)[1])


def _keys(args):
    from atomscale_lab.cli import common as cli
    from atomscale_lab.ingest.apikeys import for_vault

    return for_vault(cli.open_vault(args))


def cmd_apikey_create(args) -> int:
    """Print a new key once (stdout); what to do with it goes to stderr."""
    from atomscale_lab.cli import common as cli
    from atomscale_lab.ingest.apikeys import parse_duration

    keys = _keys(args)
    key, rec = keys.create(
        args.org, args.scope, parse_duration(args.expires), name=args.name, actor=cli.actor(args)
    )
    sys.stdout.write(key + "\n")
    sys.stderr.write(
        f"API key {rec['prefix']} for org {rec['org']} ({', '.join(rec['scopes'])}),"
        f" expires {rec['expires']}. It is shown only now: store it on the "
        "instrument PC (e.g. a file readable only by the logger).\n"
    )
    return 0


def cmd_apikey_list(args) -> int:
    """List keys: prefix, name, scopes, created, expires, last used, state."""
    from atomscale_lab.cli import common as cli

    rows = _keys(args).list(args.org)
    if args.format == "json":
        cli.print_json(rows)
        return 0
    head = ("PREFIX", "NAME", "SCOPES", "CREATED", "EXPIRES", "LAST USED", "STATE")
    table = [head] + [
        (
            r["prefix"],
            r["name"] or "-",
            ",".join(r["scopes"]),
            r["created"][:16],
            r["expires"][:16],
            (r["last_used"] or "never")[:16],
            r["state"] + (f" {r['revoked'][:10]}" if r["revoked"] else ""),
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        sys.stdout.write(
            "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n"
        )
    return 0


def cmd_apikey_revoke(args) -> int:
    """Revoke a key by prefix."""
    from atomscale_lab.cli import common as cli

    rec = _keys(args).revoke(args.org, args.prefix, actor=cli.actor(args))
    sys.stdout.write(f"revoked API key {rec['prefix']} of org {rec['org']}\n")
    return 0


def cmd_ingest_serve(args) -> int:
    """Run the service until SIGTERM."""
    import asyncio
    import logging

    from atomscale_lab.cli import common as cli
    from atomscale_lab.ingest.service import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args, vault=cli.open_vault(args)))
    return 0


def cmd_ingest_import(args) -> int:
    """Import a file through the vault (needs the root key)."""
    from atomscale_lab.cli import common as cli
    from atomscale_lab.ingest.importer import import_file

    org, file = args.org, args.file
    if args.org_option is not None:  # the old `ingest import FILE --org ORG`
        if file is not None and org is not None:
            raise cli.UsageError("give the org once: `ingest import ORG FILE`")
        org, file = args.org_option, file or org
    if org is None or file is None:
        raise cli.UsageError(
            "usage: atomscale-lab ingest import ORG FILE --category ... --run RUN_ID"
        )
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    meta = {k: getattr(args, k) for k in ("project", "sample", "method", "operator")}
    vault = cli.open_vault(args)
    with cli.progress(args, unit=" rows", desc=f"import {path.name}") as bar:
        summary = import_file(
            vault,
            path,
            org,
            args.category,
            args.run,
            tool=args.tool,
            tz=args.timezone,
            actor=cli.actor(args),
            progress=bar.update,
            metadata=meta,
        )
    if summary.get("skipped"):
        sys.stdout.write(
            f"skipped {path.name}: its {summary['rows']} rows are already stored "
            f"for run {summary['run_id']} in {org}/{summary['table']}\n"
        )
        return 0
    sys.stdout.write(
        f"imported {summary['rows']} rows into {org}/{summary['table']} "
        f"for run {summary['run_id']}" + (" (new run record)" if summary["new_run"] else "") + "\n"
    )
    return 0
