"""``atomscale-lab`` commands of the hub integration (a CLI plug-in).

- ``atomscale-lab totp USER`` — the current TOTP code of a local identity-provider user (demo).
- ``atomscale-lab hub init|start`` — write a self-contained deployment; run the hub.
- ``atomscale-lab hub users add|list|remove|sync`` — identity-provider users and their Unix
  accounts.
- ``atomscale-lab hub provision ORG`` — the demo's users of an org (org-admin, scientist, viewer).
- ``atomscale-lab org add-support ORG`` — the org's support account: configuration and user
  management only (no data key, no data, no context).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from atomscale_lab.errors import ValidationError
from atomscale_lab.hub.users import ROLES, IdpUsers, check_name


def _users(args) -> IdpUsers:
    from atomscale_lab.hub.users import default_users_file

    return IdpUsers(
        getattr(args, "users_file", None) or default_users_file(getattr(args, "home", None))
    )


def _add_users_file(p) -> None:
    p.add_argument(
        "--users-file",
        help="the identity provider's users file (default: "
        "$ATOMSCALE_IDP_USERS or $ATOMSCALE_HOME/idp/users.json)",
    )


def _write_password(args, username: str, password: str) -> None:
    """Passwords go to --password-file (appended, 0600) or stdout, never to a log."""
    out = getattr(args, "password_file", None)
    if out:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(f"{username} {password}\n")
    else:
        sys.stdout.write(f"{username} {password}\n")


def _org_exists(args, org: str) -> None:
    from atomscale_lab.cli.common import open_vault

    v = open_vault(args)
    try:
        v.org_info(org)  # UnknownOrg with a clear message
    finally:
        v.close()


def _audit(args, org: str, action: str, **detail) -> None:
    from atomscale_lab.cli.common import actor, open_vault

    v = open_vault(args)
    try:
        v.audit(org).record(actor(args), action, "allowed", **detail)
    finally:
        v.close()


def _unix(args, username: str, org: str) -> None:
    if getattr(args, "unix", False):
        from atomscale_lab.hub.users import ensure_unix_user

        ensure_unix_user(username, org, args.home_base)


def cmd_totp(args) -> int:
    """Print the current TOTP code of a user (or, with --uri, the authenticator-app URI)."""
    users = _users(args)
    if args.uri:
        sys.stdout.write(
            users.totp(args.user).provisioning_uri(name=args.user, issuer_name="atomscale-lab")
            + "\n"
        )
    else:
        sys.stdout.write(users.totp_now(args.user) + "\n")
    return 0


def cmd_users_add(args) -> int:
    """Add an identity-provider user; prints ``user password`` once."""
    _org_exists(args, args.org)
    pw = _users(args).add(args.user, args.org, args.role, mfa=not args.no_mfa, replace=args.replace)
    _unix(args, args.user, args.org)
    _audit(
        args,
        args.org,
        "config.change",
        change="user.add",
        user=args.user,
        role=args.role,
        mfa=not args.no_mfa,
    )
    _write_password(args, args.user, pw)
    return 0


def cmd_users_list(args) -> int:
    """List users (no secrets)."""
    for u in _users(args).list(args.org):
        sys.stdout.write(
            f"{u['username']}\t{u['org']}\t{u['role']}\t{'mfa' if u['mfa'] else 'NO-MFA'}\n"
        )
    return 0


def cmd_users_remove(args) -> int:
    """Remove a user from the identity provider (and its Unix account with --unix)."""
    users = _users(args)
    org = users.get(args.user)["org"]
    users.remove(args.user)
    if args.unix:
        from atomscale_lab.hub.users import remove_unix_user

        remove_unix_user(args.user)
    _audit(args, org, "config.change", change="user.remove", user=args.user)
    return 0


def cmd_users_sync(args) -> int:
    """Create the Unix accounts of an org's users and its data server's service account, and
    give that account (only) the org's data folder."""
    from atomscale_lab.cli.common import open_vault
    from atomscale_lab.hub.users import ensure_unix_user, lock_home, share_org_data

    _org_exists(args, args.org)
    for u in _users(args).list(args.org):
        ensure_unix_user(u["username"], args.org, args.home_base)
    v = open_vault(args)
    try:
        if isinstance(v.settings.data_root, Path):  # an s3:// root has no Unix owners
            share_org_data(v.settings.data_root, args.org)
        lock_home(v.settings)
    finally:
        v.close()
    return 0


def cmd_provision(args) -> int:
    """Create ``<org>-admin``, ``<org>-scientist``, ``<org>-viewer`` (passwords printed once)."""
    _org_exists(args, args.org)
    users = _users(args)
    existing = users.load()
    for role, name in (("org-admin", "admin"), ("scientist", "scientist"), ("viewer", "viewer")):
        username = f"{args.org}-{name}"
        if username in existing and not args.replace:
            continue
        pw = users.add(username, args.org, role, replace=True)
        _unix(args, username, args.org)
        _audit(args, args.org, "config.change", change="user.add", user=username, role=role)
        _write_password(args, username, pw)
    return 0


def cmd_add_support(args) -> int:
    """The org's support account: role ``support`` (configuration and users; no data scopes)."""
    check_name(args.org, "org")
    _org_exists(args, args.org)
    username = args.user or f"{args.org}-support"
    users = _users(args)
    if username in users.load() and not args.replace:
        raise ValidationError(
            f"{username!r} already exists (use --replace to reset it)", field="user"
        )
    pw = users.add(username, args.org, "support", replace=True)
    _unix(args, username, args.org)
    _audit(args, args.org, "config.change", change="support.add", user=username)
    _write_password(args, username, pw)
    return 0


def cmd_init(args) -> int:
    """Write a self-contained deployment (certificates, IdP clients, deployment file)."""
    from atomscale_lab.hub.stack import init_stack
    from atomscale_lab.vault.settings import default_home

    st = init_stack(
        args.root,
        args.home or default_home(),
        ports={"public": args.port, "idp": args.idp_port},
        create_unix_users=args.create_unix_users,
        home_base=args.home_base,
    )
    sys.stdout.write(f"{st.deployment_file}\n")
    return 0


def cmd_start(args) -> int:
    """Run the hub (with the deployment file in $ATOMSCALE_HUB_CONFIG or --config)."""
    if args.config:
        os.environ["ATOMSCALE_HUB_CONFIG"] = str(Path(args.config).resolve())
    from atomscale_lab.hub.app import AtomscaleHub

    AtomscaleHub.launch_instance(["-f", str(Path(__file__).with_name("default_config.py"))])
    return 0


def register(subparsers, org_subparsers) -> None:
    """Add ``totp``, ``hub …`` and ``org add-support``."""
    t = subparsers.add_parser(
        "totp",
        help="print a local identity-provider user's TOTP code",
        description="Print the current 6-digit TOTP code of a user of the "
        "bundled identity provider (demo deployments; real "
        "users use their authenticator app).",
    )
    t.add_argument("user", help="the identity-provider user name")
    t.add_argument(
        "--uri",
        action="store_true",
        help="print the otpauth:// URI to add the user to an authenticator app "
        "(it contains the user's TOTP secret)",
    )
    _add_users_file(t)
    t.set_defaults(func=cmd_totp)

    hub = subparsers.add_parser("hub", help="JupyterHub deployment: init, start, users")
    hs = hub.add_subparsers(dest="hub_command", metavar="COMMAND")
    hub.set_defaults(func=lambda a: hub.print_help(sys.stderr) or 2)

    i = hs.add_parser("init", help="write a self-contained deployment (certs, IdP, hub)")
    i.add_argument("root", help="folder for certificates, IdP clients, the deployment file")
    i.add_argument("--port", type=int, default=8000, help="hub https port (default 8000)")
    i.add_argument("--idp-port", type=int, default=8443, help="IdP https port (default 8443)")
    i.add_argument(
        "--create-unix-users",
        action="store_true",
        help="let the spawner create missing Unix accounts",
    )
    i.add_argument(
        "--home-base",
        default="/home/atomscale",
        help="parent of per-org home folders (default /home/atomscale)",
    )
    i.set_defaults(func=cmd_init)

    s = hs.add_parser("start", help="run the hub")
    s.add_argument("--config", help="deployment file (default $ATOMSCALE_HUB_CONFIG)")
    s.set_defaults(func=cmd_start)

    def unix_opts(p):
        p.add_argument(
            "--unix",
            action="store_true",
            help="also create (or remove) the Unix account (needs root)",
        )
        p.add_argument(
            "--home-base",
            default="/home/atomscale",
            help="parent of per-org home folders (default /home/atomscale)",
        )

    users = hs.add_parser("users", help="identity-provider users and Unix accounts")
    us = users.add_subparsers(dest="users_command", metavar="COMMAND")
    users.set_defaults(func=lambda a: users.print_help(sys.stderr) or 2)
    a = us.add_parser("add", help="add a user (prints the password once)")
    a.add_argument("user", help="the new user's name")
    a.add_argument("--org", required=True, metavar="ORG", help="the org the user belongs to")
    a.add_argument("--role", required=True, choices=ROLES, help="the user's role in the org")
    a.add_argument(
        "--no-mfa",
        action="store_true",
        help="let this user sign in without TOTP (the hub will refuse it)",
    )
    a.add_argument("--replace", action="store_true", help="reset an existing user")
    a.add_argument("--password-file", help="append 'user password' here (0600) instead of stdout")
    unix_opts(a)
    _add_users_file(a)
    a.set_defaults(func=cmd_users_add)
    ls = us.add_parser("list", help="list users (no secrets)")
    ls.add_argument("--org", metavar="ORG", help="only users of this org")
    _add_users_file(ls)
    ls.set_defaults(func=cmd_users_list)
    rm = us.add_parser("remove", help="remove a user")
    rm.add_argument("user", help="the user's name")
    unix_opts(rm)
    _add_users_file(rm)
    rm.set_defaults(func=cmd_users_remove)
    sy = us.add_parser(
        "sync",
        help="create an org's Unix accounts (users and its data "
        "server's service account); hand it the org's data folder",
    )
    sy.add_argument("org", metavar="ORG", help="org name")
    sy.add_argument(
        "--home-base",
        default="/home/atomscale",
        help="parent of per-org home folders (default /home/atomscale)",
    )
    _add_users_file(sy)
    sy.set_defaults(func=cmd_users_sync)

    pv = hs.add_parser("provision", help="create an org's demo users (admin, scientist, viewer)")
    pv.add_argument("org", metavar="ORG", help="org name")
    pv.add_argument("--replace", action="store_true", help="reset existing demo users")
    pv.add_argument(
        "--password-file", help="append 'user password' lines here (0600) instead of stdout"
    )
    unix_opts(pv)
    _add_users_file(pv)
    pv.set_defaults(func=cmd_provision)

    sp = org_subparsers.add_parser(
        "add-support",
        help="create the org's support account (config and users; no data)",
        description="Create the org's support account: it can change the workspace's "
        "configuration and see the org's users and servers, but holds no data, "
        "key or context scope. Prints the password once.",
    )
    sp.add_argument("org", metavar="ORG", help="org name")
    sp.add_argument("--user", help="account name (default <org>-support)")
    sp.add_argument("--replace", action="store_true", help="reset an existing account")
    sp.add_argument("--password-file", help="append 'user password' here (0600) instead of stdout")
    unix_opts(sp)
    _add_users_file(sp)
    sp.set_defaults(func=cmd_add_support)
