"""``atomscale-lab``: the admin command of a deployment.

Every command reads the deployment from ``ATOMSCALE_HOME`` (or ``--home``) and the root key from
``ATOMSCALE_ROOT_KEY`` / ``ATOMSCALE_ROOT_KEY_FILE``. Errors a user can act on print one line,
``atomscale-lab: error: <message>``, and exit with the error's ``exit_code``
(see :mod:`atomscale_lab.errors`); progress bars go to stderr, results to stdout.

Plug-ins
--------
Other parts of the package add commands without this module knowing them. After the built-in
parsers exist, each module named in :data:`PLUGINS` that is installed is imported and its
``register(subparsers, org_subparsers)`` is called:

- ``subparsers`` is the top-level ``add_subparsers()`` object (add ``lab``, ``ingest`` …);
- ``org_subparsers`` is the one of ``atomscale-lab org`` (add ``org add-support`` …).

A ``register`` that takes only one argument is called with ``subparsers`` alone. Each command
parser sets ``func=handler`` with ``set_defaults``; ``handler(args)`` returns an exit code (or
None for 0) and raises :class:`~atomscale_lab.errors.AtomscaleError` for user errors. Handlers get
the deployment with :func:`open_vault`, the audit actor with :func:`actor`, and long work shows
:func:`progress` bars. Example::

    def register(subparsers, org_subparsers):
        p = org_subparsers.add_parser("add-support", help="...")
        p.add_argument("name", help="org name")
        p.set_defaults(func=lambda args: cli.open_vault(args).add_support(args.name))
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path

from atomscale_lab import __version__
from atomscale_lab.cli.common import (
    PROG,
    CliError,
    UsageError,
    _human,
    _Parser,
    actor,
    add_format_option,
    add_org_argument,
    open_vault,
    print_json,
    progress,
    warn,
)
from atomscale_lab.errors import AtomscaleError, NotFound, RootKeyError, ValidationError

PLUGINS = ["atomscale_lab.cli.lab", "atomscale_lab.cli.ingest", "atomscale_lab.cli.hub"]
PLUGINS += ["atomscale_lab.cli.kms", "atomscale_lab.cli.k8s", "atomscale_lab.cli.db"]
"""Modules that may add commands through ``register(subparsers, org_subparsers)``."""
ENV_NEW_ROOT_KEY = "ATOMSCALE_NEW_ROOT_KEY"


def cmd_root_key_generate(args) -> int:
    """Print a new root key (stdout only, so it can be redirected into a protected file)."""
    from atomscale_lab.vault.kms import generate_root_key

    sys.stdout.write(generate_root_key() + "\n")
    if sys.stdout.isatty():
        warn(
            "this is a secret: store it in a file only you can read and point "
            "ATOMSCALE_ROOT_KEY_FILE at it"
        )
    return 0


def cmd_root_key_rotate(args) -> int:
    """Re-wrap every org key under a new root key."""
    from atomscale_lab.vault.kms import LocalKms

    if args.new_key_file:
        try:
            text = Path(args.new_key_file).read_text().strip()
        except OSError as e:
            raise RootKeyError(
                f"cannot read the new root key file {args.new_key_file}: {e.strerror}"
            ) from None
    else:
        text = os.environ.get(ENV_NEW_ROOT_KEY, "").strip()
    if not text:
        raise RootKeyError(
            f"no new root key: set {ENV_NEW_ROOT_KEY} or pass --new-key-file "
            "(make one with `atomscale-lab root-key generate`)"
        )
    new_kms = LocalKms(text)
    vault = open_vault(args)
    if not isinstance(vault.kms, LocalKms):
        raise RootKeyError(
            "the root key is kept by an external KMS (ATOMSCALE_KMS); rotate it "
            "with `atomscale-lab kms rotate`"
        )
    if getattr(vault.kms, "key_id", None) == new_kms.key_id:
        raise ValidationError("the new root key is the one in use; generate a new one")
    n = vault.rotate_root_key(new_kms, actor=actor(args))
    print(f"re-wrapped {n} keys under the new root key ({new_kms.key_id})")
    sys.stderr.write(
        "Now replace the root key in ATOMSCALE_ROOT_KEY / ATOMSCALE_ROOT_KEY_FILE "
        "with the new one and destroy the old key.\n"
    )
    return 0


# -- org -------------------------------------------------------------------------------------------


def cmd_org_create(args) -> int:
    """Create an org with fresh keys."""
    org = open_vault(args).create_org(args.name, args.region, actor=actor(args))
    print(f"created org {org['name']} (region {org['region']})")
    return 0


def cmd_org_list(args) -> int:
    """List live orgs (with --all, deleted ones too)."""
    vault = open_vault(args)
    orgs = vault.orgs(include_deleted=True) if args.all else vault.orgs()
    if args.format == "json":
        print_json(orgs)
        return 0
    if not orgs:
        print("no orgs yet (create one with `atomscale-lab org create NAME --region REGION`)")
        return 0
    width = max(len(o["name"]) for o in orgs)
    extra = f"{'':<18}  DELETED" if args.all else ""
    print(f"{'NAME':<{width}}  REGION  CREATED{extra}")
    for o in orgs:
        tail = f"  {o.get('deleted') or '-'}" if args.all else ""
        print(f"{o['name']:<{width}}  {o['region']:<6}  {o['created']}{tail}")
    return 0


def cmd_org_show(args) -> int:
    """Show an org's region, keys (fingerprints only) and tables."""
    info = open_vault(args).org_info(args.name)
    if args.format == "json":
        print_json(info)
        return 0
    print(f"org       {info['name']}")
    print(f"region    {info['region']}")
    print(f"created   {info['created']}")
    print(f"data      {info['data_root']}")
    print(f"context   {info['context_root']}")
    print("keys")
    for purpose, versions in info["keys"].items():
        vs = ", ".join(f"v{k['version']} {k['fingerprint']}" for k in versions)
        print(f"  {purpose:<8}{vs}")
    print("tables")
    width = max(len(t) for t in info["tables"])
    for name, t in info["tables"].items():
        print(
            f"  {name:<{width}}  {t['rows']:>10,} rows  {t['files']:>5} files  "
            f"{_human(t['bytes']):>9}"
        )
    tot = info["totals"]
    print(
        f"  {'total':<{width}}  {tot['rows']:>10,} rows  {tot['files']:>5} files  "
        f"{_human(tot['bytes']):>9}"
    )
    return 0


def cmd_org_rotate_key(args) -> int:
    """Add a data-key version; optionally re-encrypt every file under it."""
    vault = open_vault(args)
    bars: dict = {}

    def on_progress(table, done, total):
        bar = bars.get(table)
        if bar is None:
            bar = bars[table] = progress(
                args, total=total, desc=f"re-encrypting {table}", unit="file"
            )
        bar.n = done
        bar.refresh()

    try:
        v = vault.rotate_data_key(
            args.name,
            rewrite=args.rewrite,
            actor=actor(args),
            progress=on_progress if args.rewrite else None,
        )
    finally:
        for bar in bars.values():
            bar.close()
    if args.rewrite:
        print(f"org {args.name}: data key v{v}; every file re-encrypted under it")
    else:
        print(
            f"org {args.name}: data key v{v} for new writes; existing files stay under their "
            "version (use --rewrite to re-encrypt them)"
        )
    return 0


def cmd_org_verify(args) -> int:
    """Verify an org's audit chain, commit logs and files."""
    vault = open_vault(args)
    with progress(args, desc="verifying", unit="table") as bar:

        def step(table):
            bar.set_postfix_str(table)
            bar.update(1)

        result = vault.verify_org(args.name, deep=args.deep, actor=actor(args), progress=step)
    print(f"org {args.name}: audit log {result['audit']} events verified")
    for table, files in result["tables"].items():
        print(f"  {table}: {files} files verified" + (" (decrypted in full)" if args.deep else ""))
    return 0


def cmd_org_migrate(args) -> int:
    """Give an org from before commit-log signing its signing key and seal its tables."""
    vault = open_vault(args)
    result = vault.migrate_org(args.name, actor=actor(args))
    if result["created_key"]:
        print(f"org {args.name}: commit-log signing key created")
    for table in result["sealed"]:
        print(f"  {table}: history verified and sealed by a signed checkpoint")
    if not result["created_key"] and not result["sealed"]:
        print(f"org {args.name}: already migrated (every commit log is signed)")
    return 0


def cmd_org_delete(args) -> int:
    """Crypto-shred an org: destroy its keys, then remove its files."""
    if not args.shred:
        raise CliError(
            f"refusing to delete org {args.name!r} without --shred: deletion destroys the org's "
            "keys, which makes all of its data permanently unreadable; pass --shred to confirm"
        )
    vault = open_vault(args)
    vault.org_region(args.name)  # UnknownOrg before asking anything
    if not args.yes:
        sys.stderr.write(
            f"This destroys every key of org {args.name!r}: its data, context labels and audit "
            "trail become unreadable for good.\n"
            f"Type the org name ({args.name}) to confirm: "
        )
        sys.stderr.flush()
        answer = sys.stdin.readline().strip()
        if answer != args.name:
            raise CliError("not confirmed; nothing was deleted")
    vault.delete_org(args.name, shred=True, actor=actor(args))
    print(f"org {args.name} deleted; its keys were destroyed")
    return 0


# -- data ------------------------------------------------------------------------------------------


def cmd_demo_data(args) -> int:
    """Write deterministic demo runs into an org."""
    from atomscale_lab.cli import demo

    if args.runs < 1 or args.runs > 100_000:
        raise ValidationError("--runs must be between 1 and 100000", field="runs")
    if args.points < 60 or args.points > 1_000_000:
        raise ValidationError("--points must be between 60 and 1000000", field="points")
    vault = open_vault(args)
    tables = [*vault.store(args.name).tables(), vault.context(args.name).table]
    existing = sum(t.num_rows() for t in tables)
    if existing:
        raise CliError(
            f"org {args.name!r} already has data ({existing:,} rows); demo data goes "
            "into an empty org (create a new org for it)"
        )
    quiet = getattr(args, "quiet", False)
    written = demo.generate(
        vault,
        args.name,
        runs=args.runs,
        seed=args.seed,
        points_per_run=args.points,
        progress=not quiet and sys.stderr.isatty(),
        actor=actor(args),
    )
    parts = ", ".join(f"{k} {v:,}" for k, v in written.items())
    print(f"org {args.name}: wrote {args.runs} demo runs (seed {args.seed}): {parts}")
    return 0


def cmd_context_show(args) -> int:
    """Show the context labels of one run (audited as ``context.read``)."""
    vault = open_vault(args)
    ctx = vault.context(args.name)
    purpose = args.purpose or "admin inspection with `atomscale-lab context show`"
    frame = ctx.get([args.run], actor=actor(args), purpose=purpose)
    if frame.empty:
        raise NotFound(f"no context labels for run {args.run!r} in org {args.name!r}")
    row = frame.iloc[0].to_dict()
    doc = {
        k: (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v)
        for k, v in row.items()
    }
    if args.format == "json":
        print_json(doc)
        return 0
    for k, v in doc.items():
        if isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        print(f"{k:<16}{'' if v is None else v}")
    return 0


CONTEXT_SET_FIELDS = (
    "sample",
    "material_system",
    "film",
    "substrate",
    "layer_stack",
    "target_formula",
    "tags",
    "notes",
)


def cmd_context_set(args) -> int:
    """Set some context labels of one run (audited as ``context.write``); others are kept."""
    from atomscale_lab.vault import context_io

    updates = {f: getattr(args, f) for f in CONTEXT_SET_FIELDS if getattr(args, f) is not None}
    if not updates:
        raise UsageError("name at least one label to set, e.g. --material-system GaAs/AlGaAs")
    vault = open_vault(args)
    if args.run not in vault.store(args.name).table("process/runs").run_ids():
        raise NotFound(f"run {args.run!r} not found in org {args.name!r}")
    ctx = vault.context(args.name)
    who = actor(args)
    current = ctx.get([args.run], actor=who, purpose="context set: keep the labels not changed")
    rec = context_io.merge(current.iloc[0].to_dict() if len(current) else None, updates)
    ctx.put([{"run_id": args.run, **rec}], actor=who)
    print(f"set {', '.join(updates)} of run {args.run} in org {args.name}")
    return 0


def cmd_context_import(args) -> int:
    """Import context labels from a file, all or nothing (audited as ``context.write``)."""
    from atomscale_lab.vault import context_io

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(2, "No such file", str(path))
    rows = context_io.read_labels(path)
    vault = open_vault(args)
    known = set(vault.store(args.name).table("process/runs").run_ids())
    missing = [r["run_id"] for r in rows if r["run_id"] not in known]
    if missing and not args.allow_unknown_runs:
        raise NotFound(
            f"{len(missing)} run(s) of {path.name} are not in org {args.name!r} "
            f"(first: {missing[0]!r}); nothing was imported (pass "
            "--allow-unknown-runs to label runs that arrive later)"
        )
    ctx = vault.context(args.name)
    who = actor(args)
    current = ctx.get(
        [r["run_id"] for r in rows],
        actor=who,
        purpose="context import: keep the labels the file does not name",
    )
    by_run = {r["run_id"]: r for r in current.to_dict("records")}
    merged = [
        {
            "run_id": r["run_id"],
            **context_io.merge(
                by_run.get(r["run_id"]),
                {k: ("" if v is None else v) for k, v in r.items() if k != "run_id"},
            ),
        }
        for r in rows
    ]
    n = ctx.put(merged, actor=who)
    print(f"imported labels of {n} run(s) into org {args.name} from {path.name}")
    return 0


# -- audit -----------------------------------------------------------------------------------------


def _audit_of(args):
    vault = open_vault(args)
    if getattr(args, "all", False):
        raise UsageError("--all only works with `audit verify`")
    if args.deployment:
        return vault.system_audit(), "the deployment"
    if not args.name:
        raise UsageError("name an org (or pass --deployment)")
    return vault.audit(args.name), f"org {args.name}"


def cmd_audit_verify(args) -> int:
    """Verify an audit log's hash chain, MACs and recorded head (``--all``: every log)."""
    if args.all:
        vault = open_vault(args)
        logs = [(vault.system_audit(), "the deployment")]
        logs += [(vault.audit(o["name"]), f"org {o['name']}") for o in vault.orgs()]
        failed = 0
        for log, what in logs:
            try:
                n = log.verify()
                print(f"audit log of {what}: {n} events, hash chain and MACs verified")
            except AtomscaleError as e:
                failed = failed or e.exit_code
                sys.stderr.write(f"{PROG}: error: {' '.join(str(e).split())}\n")
        return failed
    log, what = _audit_of(args)
    n = log.verify()
    print(f"audit log of {what}: {n} events, hash chain and MACs verified")
    return 0


def cmd_audit_show(args) -> int:
    """Print recent audit events, most recent first."""
    if args.limit < 1:
        raise ValidationError("--limit must be at least 1", field="limit")
    log, _ = _audit_of(args)
    events = log.events(limit=args.limit, action=args.action, actor=args.actor)
    if args.format == "json":
        print_json(events)
        return 0
    for e in events:
        detail = json.dumps(e["detail"], sort_keys=True, separators=(",", ":"))
        print(
            f"{e['seq']:>6}  {e['ts'][:19]}Z  {e['actor']:<12} {e['action']:<18} "
            f"{e['outcome']:<8} {detail}"
        )
    return 0


# -- parser ----------------------------------------------------------------------------------------


def build_parser():
    """The argument parser; returns ``(parser, subparsers, org_subparsers)``."""
    p = _Parser(
        prog=PROG,
        description=(
            "Administer an atomscale-lab deployment: root key, orgs, keys, demo data, exports, "
            "context labels and audit trails."
        ),
        epilog=(
            "Environment: ATOMSCALE_HOME (deployment folder), ATOMSCALE_ROOT_KEY or "
            "ATOMSCALE_ROOT_KEY_FILE (root key), ATOMSCALE_DATA_ROOT / "
            "ATOMSCALE_CONTEXT_ROOT / ATOMSCALE_REGION (storage roots and their region). "
            "Exit codes: 0 success, 1 refused or invalid input, 2 configuration or root "
            "key problem (or bad usage), 3 unknown org/run, 4 key unavailable, "
            "5 integrity failure, 6 permission denied."
        ),
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--home",
        metavar="PATH",
        help="deployment folder (default: $ATOMSCALE_HOME or ~/.atomscale)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    rk = sub.add_parser(
        "root-key",
        help="generate or rotate the deployment's root key",
        description="The root key wraps every org key; it never leaves the admin side.",
    )
    rks = rk.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    g = rks.add_parser(
        "generate",
        help="print a new root key to stdout",
        description="Print a new random root key. Redirect it into a file "
        "readable only by the hub's user, e.g. `(umask 077; "
        "atomscale-lab root-key generate > root.key)`.",
    )
    g.set_defaults(func=cmd_root_key_generate)
    r = rks.add_parser(
        "rotate",
        help="re-wrap every key under a new root key",
        description=f"Re-wrap every org key under a new root key, read from "
        f"${ENV_NEW_ROOT_KEY} or --new-key-file; the current key "
        "comes from ATOMSCALE_ROOT_KEY(_FILE). No data is rewritten.",
    )
    r.add_argument("--new-key-file", metavar="PATH", help="file holding the new root key")
    r.set_defaults(func=cmd_root_key_rotate)

    org = sub.add_parser(
        "org",
        help="create, list, show, rotate keys of and delete orgs",
        description="Organizations: each has its own data, context and audit "
        "keys and its own folders under the storage roots.",
    )
    orgs = org.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    c = orgs.add_parser(
        "create",
        help="create an org with fresh keys",
        description="Create an org. Its region must be the region the storage "
        "roots are declared in (data residency).",
    )
    add_org_argument(c, help="org name: 2-32 of a-z, 0-9, '-', starting with a letter")
    c.add_argument(
        "--region",
        required=True,
        help="the org's data region (us, eu, uk, ca, jp, au); must match the storage roots",
    )
    c.set_defaults(func=cmd_org_create)
    ls = orgs.add_parser("list", help="list orgs", description="List live orgs.")
    add_format_option(ls)
    ls.add_argument("--all", action="store_true", help="include deleted orgs")
    ls.set_defaults(func=cmd_org_list)
    s = orgs.add_parser(
        "show",
        help="region, key fingerprints and table sizes of an org",
        description="Show an org's region, key versions with fingerprints (never "
        "key material) and per-table rows, files and bytes.",
    )
    add_org_argument(s)
    add_format_option(s)
    s.set_defaults(func=cmd_org_show)
    rot = orgs.add_parser(
        "rotate-key",
        help="new data-key version for an org",
        description="Add a data-key and a signing-key version used for new "
        "writes (each commit log gets a line signed with the new "
        "key); old versions stay readable. --rewrite "
        "re-encrypts every file under the new version.",
    )
    add_org_argument(rot)
    rot.add_argument(
        "--rewrite", action="store_true", help="re-encrypt all existing files under the new key"
    )
    rot.set_defaults(func=cmd_org_rotate_key)
    ver = orgs.add_parser(
        "verify",
        help="verify an org's audit log, commit logs and files",
        description="Check the org's audit chain, every table's signed "
        "commit log and checkpoint and each listed file's size "
        "and fingerprint, and refuse unlisted plaintext files; "
        "exit 5 on the first fault. --deep decrypts every "
        "file in full.",
    )
    add_org_argument(ver)
    ver.add_argument("--deep", action="store_true", help="decrypt and authenticate every page")
    ver.set_defaults(func=cmd_org_verify)
    mig = orgs.add_parser(
        "migrate",
        help="sign the commit logs of an org made before signing",
        description="Create the org's commit-log signing key if it has none, "
        "verify each table's HMAC-chained history, seal it with "
        "a signed line and restart the log from a signed "
        "checkpoint (dropping the lines whose statistics were in "
        "plaintext). Idempotent; also done on the org's first use "
        "by a writer.",
    )
    add_org_argument(mig)
    mig.set_defaults(func=cmd_org_migrate)
    d = orgs.add_parser(
        "delete",
        help="crypto-shred an org",
        description="Delete an org by destroying its keys (crypto-shredding): "
        "its data, labels and audit trail become unreadable, then "
        "its folders are removed. Asks for the org name unless "
        "--yes is given. The deletion is recorded in the deployment "
        "audit log.",
    )
    add_org_argument(d)
    d.add_argument(
        "--shred",
        action="store_true",
        help="required: confirms that the org's keys are to be destroyed",
    )
    d.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    d.set_defaults(func=cmd_org_delete)

    dd = sub.add_parser(
        "demo-data",
        help="write demo growth runs into an org",
        description="Write deterministic demo runs (MBE, PLD, sputtering: RHEED, "
        "tool state, XRD/XPS/AFM, context labels) into an org.",
    )
    add_org_argument(dd)
    dd.add_argument("--runs", type=int, default=40, help="number of runs (default 40)")
    dd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    dd.add_argument("--points", type=int, default=600, help="RHEED samples per run (default 600)")
    dd.set_defaults(func=cmd_demo_data)

    from atomscale_lab.cli.export import add_export_parser

    add_export_parser(sub)

    cx = sub.add_parser(
        "context",
        help="context labels (materials-system labels)",
        description="Context labels live in a separate store under a separate "
        "key; every read is audited.",
    )
    cxs = cx.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    cs = cxs.add_parser(
        "show",
        help="show the labels of one run (audited)",
        description="Show the context labels of one run; recorded in the org's "
        "audit log as context.read with the purpose.",
    )
    add_org_argument(cs)
    cs.add_argument("--run", required=True, metavar="RUN_ID", help="the run's id")
    add_format_option(cs)
    cs.add_argument("--purpose", help="why the labels are needed (recorded in the audit log)")
    cs.set_defaults(func=cmd_context_show)
    cse = cxs.add_parser(
        "set",
        help="set context labels of one run (audited)",
        description="Set some labels of one run in the context store (encrypted "
        "under the org's context key, recorded as context.write). "
        "Labels not named keep their value; an empty value clears "
        "one. List labels (--layer-stack, --tags) are ';'-separated.",
    )
    add_org_argument(cse)
    cse.add_argument("--run", required=True, metavar="RUN_ID", help="the run's id")
    for f in CONTEXT_SET_FIELDS:
        cse.add_argument(
            f"--{f.replace('_', '-')}",
            dest=f,
            metavar="TEXT",
            help=f"the run's {f.replace('_', ' ')}"
            + (" (';'-separated)" if f in ("layer_stack", "tags") else ""),
        )
    cse.set_defaults(func=cmd_context_set)
    ci = cxs.add_parser(
        "import",
        help="import context labels from a CSV/JSON/Parquet file",
        description="Import labels for many runs at once, all or nothing: a "
        "run_id column and any of the label columns (sample, "
        "material_system, film, substrate, layer_stack, "
        "target_formula, tags, notes). Columns the file has replace "
        "the stored labels (an empty cell clears one); the others "
        "are kept. List columns are JSON arrays or ';'-separated.",
    )
    add_org_argument(ci)
    ci.add_argument("file", metavar="FILE", help="the label file (.csv, .tsv, .json, .parquet)")
    ci.add_argument(
        "--allow-unknown-runs",
        action="store_true",
        help="also label run ids the org does not have yet",
    )
    ci.set_defaults(func=cmd_context_import)

    au = sub.add_parser(
        "audit",
        help="verify or show audit trails",
        description="Each org has a hash-chained, MACed audit log; the "
        "deployment has one for org creation/deletion and root-key "
        "rotation (--deployment).",
    )
    aus = au.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    av = aus.add_parser(
        "verify",
        help="check an audit log's chain, MACs and head",
        description="Exit 0 if every line is intact; exit 5 naming the first "
        "edited, deleted, reordered or missing line.",
    )
    add_org_argument(av, optional=True)
    av.add_argument("--deployment", action="store_true", help="the deployment log")
    av.add_argument(
        "--all", action="store_true", help="the deployment log and every org's (one line each)"
    )
    av.set_defaults(func=cmd_audit_verify)
    ash = aus.add_parser(
        "show",
        help="recent audit events, newest first",
        description="Print recent audit events, newest first.",
    )
    add_org_argument(ash, optional=True)
    ash.add_argument("--deployment", action="store_true", help="the deployment log")
    ash.add_argument("--limit", type=int, default=50, help="number of events (default 50)")
    ash.add_argument("--action", help="only this action (e.g. context.join, data.*)")
    ash.add_argument("--actor", help="only this actor")
    add_format_option(ash)
    ash.set_defaults(func=cmd_audit_show)

    for group in (rk, org, cx, au):
        group.set_defaults(func=_help_of(group))
    return p, sub, orgs


def _help_of(parser):
    def show(args):
        parser.print_help(sys.stderr)
        return 2

    return show


def load_plugins(subparsers, org_subparsers) -> list[str]:
    """Import the installed :data:`PLUGINS` and let each register its commands."""
    loaded = []
    for name in PLUGINS:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            warn(f"commands of {name} are unavailable: {e}")
            continue
        register = getattr(mod, "register", None)
        if register is None:
            continue
        try:
            params = inspect.signature(register).parameters
            takes_two = len(params) >= 2 or any(
                p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values()
            )
        except (TypeError, ValueError):
            takes_two = True
        if takes_two:
            register(subparsers, org_subparsers)
        else:
            register(subparsers)
        loaded.append(name)
    return loaded


def main(argv=None) -> int:
    """Entry point of the ``atomscale-lab`` console script."""
    parser, sub, orgs = build_parser()
    load_plugins(sub, orgs)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        rc = func(args)
    except AtomscaleError as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        sys.stderr.write(f"{PROG}: error: {msg}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: error: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`): not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the exit-time flush
        except OSError:
            pass
        return 0
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        sys.stderr.write(f"{PROG}: error: {e.strerror or e}{where}\n")
        return 1
    return 0 if rc is None else int(rc)


if __name__ == "__main__":
    sys.exit(main())
