"""``atomscale-lab k8s render ORG`` (a CLI plug-in): print an org's Kubernetes manifests."""

from __future__ import annotations

import shlex
import sys

from atomscale_lab.k8s import K8sOptions, render, to_yaml


def cmd_k8s_render(args) -> int:
    """Print the org's manifests as a YAML stream (for ``kubectl apply -f -``)."""
    opts = K8sOptions(
        hub_namespace=args.hub_namespace,
        data_replicas=args.data_replicas,
        ingest_replicas=args.ingest_replicas,
        wal_size=args.wal_size,
        storage_class=args.storage_class,
        node_pool_label=args.node_pool_label or None,
        node_pool_taint=args.node_pool_taint or None,
        services_namespace=args.services_namespace or None,
        external_cidrs=list(args.external_cidr or []),
        ingress_namespace=args.ingress_namespace or None,
    )
    if args.image:
        opts.image = args.image
    if args.data_command:
        opts.data_command = shlex.split(args.data_command)
    if args.ingest_command:
        opts.ingest_command = shlex.split(args.ingest_command)
    if args.api_server_cidr:
        opts.api_server_cidrs = list(args.api_server_cidr)
    sys.stdout.write(to_yaml(render(args.org, opts)))
    return 0


def register(subparsers) -> None:
    """Add ``atomscale-lab k8s``."""
    from atomscale_lab.cli.common import _Parser

    d = K8sOptions()
    k = subparsers.add_parser(
        "k8s",
        help="Kubernetes manifests of an org",
        description="Manifests for running an org on Kubernetes next to "
        "a Zero to JupyterHub release (deploy/k8s/).",
    )
    ks = k.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
    r = ks.add_parser(
        "render",
        help="print an org's manifests (YAML)",
        description="Print the org's namespace, NetworkPolicies, data server "
        "Deployment and ingest StatefulSet as YAML; apply them with "
        "`kubectl apply -f -`. Secrets are not part of it.",
    )
    r.add_argument("org", metavar="ORG", help="org name")
    r.add_argument("--image", help=f"container image (default {d.image})")
    r.add_argument(
        "--hub-namespace",
        default=d.hub_namespace,
        help=f"namespace of the JupyterHub release (default {d.hub_namespace})",
    )
    r.add_argument(
        "--data-replicas",
        type=int,
        default=d.data_replicas,
        help=f"data server replicas (default {d.data_replicas})",
    )
    r.add_argument(
        "--ingest-replicas",
        type=int,
        default=d.ingest_replicas,
        help=f"ingest replicas (default {d.ingest_replicas})",
    )
    r.add_argument(
        "--data-command",
        help="data server command line (default: " + shlex.join(d.data_command) + ")",
    )
    r.add_argument(
        "--ingest-command",
        help="ingest command line (default: " + shlex.join(d.ingest_command) + ")",
    )
    r.add_argument(
        "--wal-size",
        default=d.wal_size,
        help=f"WAL volume per ingest replica (default {d.wal_size})",
    )
    r.add_argument("--storage-class", help="storage class of the WAL volumes")
    r.add_argument(
        "--node-pool-label",
        default=d.node_pool_label,
        help=f"node label naming the org's pool (default {d.node_pool_label}; '' for none)",
    )
    r.add_argument(
        "--node-pool-taint",
        default=d.node_pool_taint,
        help=f"taint key of the org's pool (default {d.node_pool_taint}; '' for none)",
    )
    r.add_argument(
        "--services-namespace",
        default=d.services_namespace,
        help="namespace of in-cluster PostgreSQL/OpenBao/object storage (default "
        f"{d.services_namespace}; '' for none)",
    )
    r.add_argument(
        "--external-cidr",
        action="append",
        metavar="CIDR",
        help="outside addresses servers may reach on 443 (cloud KMS, S3); repeatable",
    )
    r.add_argument(
        "--api-server-cidr",
        action="append",
        metavar="CIDR",
        help="let ingest reach the Kubernetes API at this network (default: not at all; its "
        "lease is in PostgreSQL); repeatable",
    )
    r.add_argument(
        "--ingress-namespace",
        default=d.ingress_namespace,
        help=f"ingress controller namespace (default {d.ingress_namespace})",
    )
    r.set_defaults(func=cmd_k8s_render)

    def show(args):
        k.print_help()
        return 2

    k.set_defaults(func=show)
