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

_CLOUD_REGIONS = {
    "eu-west-2": "uk",  # London
    "ap-northeast-1": "jp",  # Tokyo
    "ap-northeast-3": "jp",  # Osaka
    "ap-southeast-2": "au",  # Sydney
    "ap-southeast-4": "au",  # Melbourne
}
_CLOUD_PREFIXES = (("us-", "us"), ("eu-", "eu"), ("ca-", "ca"), ("uk-", "uk"))


def residency_of(cloud_region: str | None) -> str | None:
    """The region (one of :data:`REGIONS`) an object store's region lies in, or None.

    ``eu-west-2`` (London) is ``uk``, other ``eu-*`` are ``eu``; ``us-*`` (incl. GovCloud) are
    ``us``; ``ca-*`` are ``ca``; Tokyo/Osaka are ``jp``, Sydney/Melbourne ``au``. A store that
    names one of :data:`REGIONS` itself (on-premises S3 servers) maps to it.
    """
    r = str(cloud_region or "").strip().lower()
    if r in REGIONS:
        return r
    if r in _CLOUD_REGIONS:
        return _CLOUD_REGIONS[r]
    for prefix, region in _CLOUD_PREFIXES:
        if r.startswith(prefix):
            return region
    return None


ENV_HOME = "ATOMSCALE_HOME"
ENV_ROOT_KEY = "ATOMSCALE_ROOT_KEY"
ENV_ROOT_KEY_FILE = "ATOMSCALE_ROOT_KEY_FILE"
ENV_DATA_ROOT = "ATOMSCALE_DATA_ROOT"
ENV_CONTEXT_ROOT = "ATOMSCALE_CONTEXT_ROOT"
ENV_REGION = "ATOMSCALE_REGION"


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
    data_root: Path  # or an ``S3Root`` for ``s3://bucket/prefix``
    context_root: Path  # likewise
    region: str = "us"
    extra: dict = field(default_factory=dict)

    @property
    def registry_path(self) -> Path:
        """SQLite file of the key registry and other registries."""
        return self.home / "registry.sqlite"

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

        data_root = _root(pick("data_root", ENV_DATA_ROOT, home / "data"), filecfg)
        context_root = _root(pick("context_root", ENV_CONTEXT_ROOT, home / "context"), filecfg)
        region = str(pick("region", ENV_REGION, "us")).lower()
        if region not in REGIONS:
            raise ConfigError(f"unknown region {region!r}; choose one of {', '.join(REGIONS)}")
        s = cls(
            home=home,
            data_root=data_root,
            context_root=context_root,
            region=region,
            extra={
                k: v
                for k, v in filecfg.items()
                if k not in ("data_root", "context_root", "region", "s3")
            },
        )
        s.check_roots()
        return s

    def check_roots(self) -> None:
        """Refuse a context root equal to, inside, or containing the data root (for
        ``s3://`` roots: the same bucket with one prefix inside the other)."""
        from atomscale_lab.vault.store.objects import S3Root

        d, c = self.data_root, self.context_root
        if isinstance(d, S3Root) or isinstance(c, S3Root):
            if isinstance(d, S3Root) and isinstance(c, S3Root) and d.overlaps(c):
                raise ConfigError(
                    f"the context root ({c}) must be separate from the data root ({d}): "
                    "neither may be the other or lie inside it"
                )
            return
        d, c = d.resolve(), c.resolve()
        if d == c or d in c.parents or c in d.parents:
            raise ConfigError(
                f"the context root ({c}) must be separate from the data root ({d}): "
                "neither may be the other or lie inside it"
            )


def _root(value, filecfg: dict):
    """A local path (``~`` expanded) or, for ``s3://bucket/prefix``, an ``S3Root`` configured
    from the AWS variables and the ``[s3]`` table of ``filecfg``."""
    if isinstance(value, str) and value.startswith("s3://"):
        from atomscale_lab.vault.store.objects import S3Config, S3Root

        return S3Root.parse(value, S3Config.load(filecfg))
    if not isinstance(value, (str, Path)):
        from atomscale_lab.vault.store.objects import S3Root

        if isinstance(value, S3Root):
            return value
    return Path(value).expanduser()


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
