"""The command-line options of the ingest service, shared by ``python -m atomscale_lab.ingest`` and
``atomscale-lab ingest serve`` (kept apart from the service so that the admin command's parser
stays cheap to build)."""

from __future__ import annotations


def add_serve_arguments(p):
    """Options of ``ingest serve`` (also of ``python -m atomscale_lab.ingest.service``)."""
    p.add_argument(
        "--host", "--ip", dest="host", default=None, help="address to bind (default 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=None, help="port (default 8443)")
    p.add_argument("--certfile", help="TLS certificate (PEM); made at start if omitted")
    p.add_argument("--keyfile", help="TLS private key (PEM) of --certfile")
    p.add_argument(
        "--plain-http",
        "--http",
        dest="plain_http",
        action="store_true",
        help="serve plain HTTP (loopback only, behind a TLS-terminating proxy)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help="folder of this replica's WAL, state and TLS files (default: $ATOMSCALE_HOME/ingest)",
    )
    p.add_argument("--base-url", default=None, help="URL prefix (default: hub service prefix)")
    p.add_argument(
        "--flush-interval",
        type=float,
        default=0.5,
        help="seconds between WAL flushes into the store (default 0.5)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=120.0,
        help="seconds without a batch before a stream is interrupted (default 120)",
    )
    p.add_argument(
        "--compact-interval",
        type=float,
        default=120.0,
        help="seconds between compactions (default 120)",
    )
    p.add_argument(
        "--max-body",
        type=int,
        default=64 * 1024 * 1024,
        help="largest batch body in bytes (default 64 MiB)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=10,
        help="failed authentications per client per minute before 429 (default 10)",
    )
    p.add_argument(
        "--behind-proxy",
        action="store_true",
        help="a proxy on this machine (loopback) forwards requests: take the client "
        "address from the X-Forwarded-For entry it appends",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDR[/BITS]",
        help="an address or network of a proxy whose X-Forwarded-For is believed "
        "(repeatable; also $ATOMSCALE_INGEST_TRUSTED_PROXIES, comma-separated); "
        "without one the client is the connection's peer address",
    )
    p.add_argument(
        "--max-decoded",
        type=int,
        default=64 * 1024 * 1024,
        help="largest decoded size of one Arrow batch in bytes (default 64 MiB)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=300.0,
        help="seconds a request may take to send its whole body before the connection is "
        "closed and its slots freed (default 300: 64 MiB at ~220 kB/s)",
    )
    p.add_argument(
        "--max-client-connections",
        type=int,
        default=16,
        help="concurrent requests per client address (default 16)",
    )
    p.add_argument(
        "--max-key-connections",
        type=int,
        default=32,
        help="concurrent requests per API key (default 32)",
    )
    return p
