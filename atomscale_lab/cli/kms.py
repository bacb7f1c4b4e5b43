"""``atomscale-lab kms`` commands (a CLI plug-in): the root key in an external KMS.

- ``kms status`` — the KMS in use and how many stored keys each wrapping-key version made;
- ``kms init`` — create the plug-in's wrapping key if it has none (Vault transit), then check it;
- ``kms rotate [--retire]`` — a new wrapping-key version inside the KMS, then every org key
  re-wrapped under it (inside the KMS); ``--retire`` then forbids decryption with older versions;
- ``kms rewrap`` — only the re-wrap (after a rotation made in the KMS itself);
- ``kms migrate --to module:Class`` — move every org key from the KMS in use (e.g. the local root
  key) to another plug-in.
"""

from __future__ import annotations

import importlib
import os

from atomscale_lab.errors import ConfigError, ValidationError


def _spec_class(spec: str):
    mod, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"cannot load the KMS plug-in {spec!r}: {e}") from None


def cmd_kms_status(args) -> int:
    """Print the KMS in use and the wrapping-key ids of the stored keys (no material)."""
    from atomscale_lab.cli import common as cli

    vault = cli.open_vault(args)
    try:
        doc = {
            "kms": type(vault.kms).__name__,
            "key_id": vault.kms.key_id,
            "stored_keys": vault.keys.kms_key_ids(),
        }
    finally:
        vault.close()
    if args.format == "json":
        cli.print_json(doc)
        return 0
    print(f"kms       {doc['kms']}")
    print(f"key id    {doc['key_id']}")
    for kid, n in sorted(doc["stored_keys"].items()):
        mark = "" if kid == doc["key_id"] else "   (older wrapping key: run `kms rewrap`)"
        print(f"  {n:>5} keys wrapped by {kid}{mark}")
    return 0


def cmd_kms_init(args) -> int:
    """Create the wrapping key where the plug-in can (Vault transit), then check it."""
    from atomscale_lab.vault.kms import ENV_KMS, load_kms

    spec = os.environ.get(ENV_KMS, "").strip()
    if not spec:
        raise ConfigError(
            f"{ENV_KMS} is not set: the local root key needs no init "
            "(see `atomscale-lab root-key generate`)"
        )
    cls = _spec_class(spec)
    if hasattr(cls, "ensure_key"):
        kms = cls.from_env(check=False)
        created = kms.ensure_key()
        print(f"{'created' if created else 'found'} wrapping key {kms.key_id}")
    else:
        kms = load_kms()
        print(f"found wrapping key {kms.key_id}")
    return 0


def cmd_kms_rotate(args) -> int:
    """Rotate the wrapping key in the KMS and re-wrap every stored key under the new version."""
    from atomscale_lab.cli import common as cli

    vault = cli.open_vault(args)
    try:
        kms = vault.kms
        if args.retire and not hasattr(kms, "retire_before"):
            raise ConfigError(
                f"{type(kms).__name__} keeps old key versions itself; "
                "--retire is for Vault transit keys"
            )
        n = vault.rotate_kms_key(rotate=not args.rewrap_only, actor=cli.actor(args))
        print(f"re-wrapped {n} keys under {kms.key_id}")
        if args.retire:
            left = {k: c for k, c in vault.keys.kms_key_ids().items() if k != kms.key_id}
            if left:
                raise ValidationError(
                    f"{sum(left.values())} keys are still wrapped by older "
                    "versions; not retiring them"
                )
            kms.retire_before(kms.latest_version)
            print(f"older versions of the wrapping key can no longer decrypt ({kms.key_id})")
    finally:
        vault.close()
    return 0


def cmd_kms_migrate(args) -> int:
    """Re-wrap every stored key from the KMS in use to the plug-in named by ``--to``."""
    from atomscale_lab.cli import common as cli
    from atomscale_lab.vault.kms import load_kms

    new_kms = load_kms(args.to)
    vault = cli.open_vault(args)
    try:
        if vault.kms.key_id == new_kms.key_id:
            raise ValidationError(f"the keys are already wrapped by {new_kms.key_id}")
        n = vault.rotate_root_key(new_kms, actor=cli.actor(args))
    finally:
        vault.close()
    print(f"re-wrapped {n} keys under {new_kms.key_id}")
    print(f"Now set ATOMSCALE_KMS={args.to} for the hub services and the admin commands.")
    return 0


def register(subparsers) -> None:
    """Add ``atomscale-lab kms``."""
    from atomscale_lab.cli import common as cli
    from atomscale_lab.cli.common import _Parser

    k = subparsers.add_parser(
        "kms",
        help="the root key in an external KMS (Vault/OpenBao transit, AWS KMS)",
        description="With ATOMSCALE_KMS=atomscale_lab.vault.kms.transit:VaultTransitKms or "
        "atomscale_lab.vault.kms.aws:AwsKms the root key stays inside the KMS; these "
        "commands create, rotate and re-wrap under it.",
    )
    ks = k.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    s = ks.add_parser(
        "status",
        help="the KMS in use and which key version wraps the stored keys",
        description="Print the KMS plug-in, its current wrapping-key id and how "
        "many stored keys each wrapping-key id made.",
    )
    cli.add_format_option(s)
    s.set_defaults(func=cmd_kms_status)
    i = ks.add_parser(
        "init",
        help="create the wrapping key (Vault transit) and check it",
        description="Create the transit key (derived, aes256-gcm96, not "
        "exportable) if it is missing; check the key of any plug-in.",
    )
    i.set_defaults(func=cmd_kms_init)
    r = ks.add_parser(
        "rotate",
        help="rotate the wrapping key and re-wrap every org key",
        description="Make a new version of the wrapping key inside the KMS, then "
        "re-wrap every stored org key under it (inside the KMS: the org "
        "keys never leave it). No data is rewritten.",
    )
    r.add_argument(
        "--rewrap-only",
        action="store_true",
        help="do not rotate; only re-wrap under the newest version",
    )
    r.add_argument(
        "--retire",
        action="store_true",
        help="afterwards forbid decryption with older versions (Vault transit)",
    )
    r.set_defaults(func=cmd_kms_rotate)
    rw = ks.add_parser(
        "rewrap",
        help="re-wrap every org key under the newest key version",
        description="Re-wrap every stored org key under the newest version of "
        "the wrapping key (after a rotation made in the KMS).",
    )
    rw.set_defaults(func=cmd_kms_rotate, rewrap_only=True, retire=False)
    m = ks.add_parser(
        "migrate",
        help="move every org key to another KMS plug-in",
        description="Re-wrap every stored org key from the KMS in use (e.g. the "
        "local root key) to the plug-in named by --to, whose settings "
        "come from the environment.",
    )
    m.add_argument(
        "--to",
        required=True,
        metavar="MODULE:CLASS",
        help="e.g. atomscale_lab.vault.kms.transit:VaultTransitKms",
    )
    m.set_defaults(func=cmd_kms_migrate)

    def show(args):
        k.print_help()
        return 2

    k.set_defaults(func=show)
