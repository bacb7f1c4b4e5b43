"""An org's workspace configuration: what support or an org admin sets up and every member sees.

The settings are plain, non-secret display preferences (instrument display names, the default
project, unit preferences, the sidebar's page size). They are kept by the deployment (the vault
registry), never in the data root and never in a file a user account can write; they are read
and changed only through :class:`~atomscale_lab.server.access.OrgAccess`. This module is the one
place
that knows their names, types and limits.
"""

from __future__ import annotations

import json
import re
from copy import deepcopy

from atomscale_lab.errors import TooLarge, ValidationError

MAX_BYTES = 16 * 1024
"""Largest accepted configuration document (JSON, UTF-8)."""
MAX_INSTRUMENTS = 200
MAX_NAME = 80
MIN_PAGE_SIZE, MAX_PAGE_SIZE = 10, 500

UNIT_CHOICES = {
    "temperature": ("degC", "K"),
    "pressure": ("Torr", "mbar", "Pa"),
    "thickness": ("nm", "angstrom"),
}
"""Unit preferences and the values each may take (the first is the default)."""

DEFAULTS = {
    "instrument_names": {},
    "default_project": None,
    "units": {k: v[0] for k, v in UNIT_CHOICES.items()},
    "sidebar_page_size": 50,
}
"""Every setting with its default; a stored document holds only settings that differ."""

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def defaults() -> dict:
    """A fresh copy of the defaults."""
    return deepcopy(DEFAULTS)


def _text(value, name: str, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty string", field=name)
    value = value.strip()
    if len(value) > limit or any(ord(c) < 32 for c in value):
        raise ValidationError(f"{name} must be at most {limit} printable characters", field=name)
    return value


def _instrument_names(value) -> dict:
    if not isinstance(value, dict):
        raise ValidationError(
            "instrument_names must be an object {instrument id: display name}",
            field="instrument_names",
        )
    if len(value) > MAX_INSTRUMENTS:
        raise ValidationError(
            f"instrument_names may name at most {MAX_INSTRUMENTS} instruments",
            field="instrument_names",
        )
    out = {}
    for key, name in value.items():
        if not isinstance(key, str) or not _ID.match(key):
            raise ValidationError(
                f"instrument id {key!r} is not valid (letters, digits and "
                "._:- up to 64 characters)",
                field="instrument_names",
            )
        out[key] = _text(name, f"instrument_names.{key}")
    return dict(sorted(out.items()))


def _units(value) -> dict:
    if not isinstance(value, dict):
        raise ValidationError("units must be an object {quantity: unit}", field="units")
    out = dict(DEFAULTS["units"])
    for quantity, unit in value.items():
        if quantity not in UNIT_CHOICES:
            raise ValidationError(
                f"unknown unit preference {quantity!r}; expected one of {', '.join(UNIT_CHOICES)}",
                field=f"units.{quantity}",
            )
        if unit not in UNIT_CHOICES[quantity]:
            raise ValidationError(
                f"units.{quantity} must be one of "
                f"{', '.join(UNIT_CHOICES[quantity])}, not {unit!r}",
                field=f"units.{quantity}",
            )
        out[quantity] = unit
    return out


def _page_size(value) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_PAGE_SIZE <= value <= MAX_PAGE_SIZE
    ):
        raise ValidationError(
            f"sidebar_page_size must be an integer from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}",
            field="sidebar_page_size",
        )
    return value


_CHECKS = {
    "instrument_names": _instrument_names,
    "default_project": lambda v: None if v is None else _text(v, "default_project", 64),
    "units": _units,
    "sidebar_page_size": _page_size,
}


def validate(doc) -> dict:
    """A complete, normalised configuration from ``doc`` (missing settings take defaults).

    Raises ``ValidationError`` naming the first bad setting, ``TooLarge`` above ``MAX_BYTES``.
    """
    if not isinstance(doc, dict):
        raise ValidationError("the configuration must be a JSON object of settings")
    size = len(json.dumps(doc, ensure_ascii=False).encode())
    if size > MAX_BYTES:
        raise TooLarge(f"the configuration is {size} bytes; at most {MAX_BYTES} are accepted")
    unknown = sorted(set(doc) - set(DEFAULTS))
    if unknown:
        raise ValidationError(
            f"unknown setting {unknown[0]!r}; the settings are {', '.join(DEFAULTS)}",
            field=unknown[0],
        )
    out = defaults()
    for name, value in doc.items():
        out[name] = _CHECKS[name](value) if value is not None else DEFAULTS[name]
    return out


def merge(current: dict, changes) -> dict:
    """``current`` with the settings in ``changes`` replaced (``null`` restores a default)."""
    if not isinstance(changes, dict):
        raise ValidationError("the changes must be a JSON object of settings")
    return validate({**current, **changes})


def changed_keys(old: dict, new: dict) -> list[str]:
    """Names of the settings whose value differs between two complete configurations."""
    return sorted(k for k in DEFAULTS if old.get(k) != new.get(k))
