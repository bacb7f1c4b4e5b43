"""Where things live and which region they are in, from the environment and an optional file.

Resolution order for every setting: explicit argument > environment variable > ``atomscale.toml``
in the home folder > default. Nothing here reads key material except ``load_root_key_text`` which
returns the raw text for :mod:`atomscale_lab.vault.crypto` to parse.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from atomscale_lab.errors import ConfigError, RootKeyError

REGIONS = ("us", "eu", "uk", "ca", "jp", "au")
"""Regions a storage root may declare."""

ENV_HOME = "ATOMSCALE_HOME"
ENV_ROOT_KEY = "ATOMSCALE_ROOT_KEY"
ENV_ROOT_KEY_FILE = "ATOMSCALE_ROOT_KEY_FILE"
ENV_DATA_ROOT = "ATOMSCALE_DATA_ROOT"
ENV_CONTEXT_ROOT = "ATOMSCALE_CONTEXT_ROOT"
ENV_REGION = "ATOMSCALE_REGION"
ENV_DATABASE_URL = "ATOMSCALE_DATABASE_URL"


def default_home() -> Path:
    """The home folder: ``$ATOMSCALE_HOME`` or ``~/.atomscale``."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".atomscale").expanduser()


@dataclass
class Settings:
    """Paths and the declared region of one deployment.

    ``home`` holds ``registry.sqlite`` (keys, orgs, API keys, log heads) and ``audit/``; the data
    and context roots default to ``home/data`` and ``home/context`` and must never overlap.
    """

    home: Path
    data_root: Path
    context_root: Path
    region: str = "us"
    extra: dict = field(default_factory=dict)
    database_url: str | None = None
    """``postgresql://...``: the registries, heads and the audit chain live in PostgreSQL
    (``ATOMSCALE_DATABASE_URL`` or ``database_url`` in ``atomscale.toml``); None: SQLite."""

    @property
    def registry_path(self) -> Path:
        """SQLite file of the key registry and other registries."""
        return self.home / "registry.sqlite"

    @property
    def database(self) -> Path | str:
        """Where the registries live: the PostgreSQL URL, else the SQLite registry file."""
        return self.database_url or self.registry_path

    @property
    def audit_root(self) -> Path:
        """Folder of the per-org audit logs."""
        return self.home / "audit"

    @classmethod
    def load(cls, home: str | Path | None = None, **overrides) -> Settings:
        """Build settings from arguments, the environment and ``<home>/atomscale.toml``."""
        home = Path(home).expanduser() if home else default_home()
        filecfg: dict = {}
        cfg_path = home / "atomscale.toml"
        if cfg_path.exists():
            try:
                filecfg = tomllib.loads(cfg_path.read_text())
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{cfg_path} is not valid TOML: {e}") from None

        def pick(name, env, default):
            if overrides.get(name) is not None:
                return overrides[name]
            if os.environ.get(env):
                return os.environ[env]
            return filecfg.get(name, default)

        data_root = Path(pick("data_root", ENV_DATA_ROOT, home / "data")).expanduser()
        context_root = Path(pick("context_root", ENV_CONTEXT_ROOT, home / "context")).expanduser()
        region = str(pick("region", ENV_REGION, "us")).lower()
        if region not in REGIONS:
            raise ConfigError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
        database_url = pick("database_url", ENV_DATABASE_URL, None) or None
        if database_url is not None and not str(database_url).startswith(
            ("postgresql://", "postgres://")
        ):
            raise ConfigError(
                f"{ENV_DATABASE_URL} / database_url must be a postgresql:// URL "
                "(leave it unset for the embedded SQLite registry)"
            )
        s = cls(
            home=home,
            data_root=data_root,
            context_root=context_root,
            region=region,
            extra={
                k: v
                for k, v in filecfg.items()
                if k not in ("data_root", "context_root", "region", "database_url")
            },
            database_url=database_url,
        )
        s.check_roots()
        return s

    def check_roots(self) -> None:
        """Refuse a context root equal to, inside, or containing the data root."""
        d, c = self.data_root.resolve(), self.context_root.resolve()
        if d == c or d in c.parents or c in d.parents:
            raise ConfigError(
                f"the context root ({c}) must be separate from the data root ({d}): "
                "neither may be the other or lie inside it"
            )


def load_root_key_text(explicit: str | None = None) -> str:
    """Return the root key text from an argument, ``ATOMSCALE_ROOT_KEY`` or its ``_FILE`` variant.

    Raises :class:`RootKeyError` with a one-line hint when none is set.
    """
    if explicit:
        return explicit.strip()
    if os.environ.get(ENV_ROOT_KEY):
        return os.environ[ENV_ROOT_KEY].strip()
    path = os.environ.get(ENV_ROOT_KEY_FILE)
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise RootKeyError(f"cannot read the root key file {path}: {e.strerror}") from None
    raise RootKeyError(
        "no root key: set ATOMSCALE_ROOT_KEY or ATOMSCALE_ROOT_KEY_FILE "
        "(make one with `atomscale-lab root-key generate`)"
    )
