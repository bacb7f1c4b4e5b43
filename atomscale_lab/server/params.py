"""Query-parameter checks of the data API: every route's parameters are parsed here, by the
service, so that a bad value is one ``ValidationError`` (HTTP 400) naming the parameter."""

from __future__ import annotations

from datetime import UTC, datetime

from atomscale_lab.errors import ValidationError


def parse_time(value: str | None, name: str) -> datetime | None:
    """Parse an ISO 8601 time (``Z`` or an offset; naive means UTC); ``ValidationError`` if bad."""
    if value is None or value == "":
        return None
    try:
        t = datetime.fromisoformat(value.strip().replace(" ", "+") if "T" in value else value)
    except ValueError:
        raise ValidationError(
            f"{name}={value!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)", field=name
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_int(
    value: str | None, name: str, default: int, lo: int = 1, hi: int | None = None
) -> int:
    """Parse an integer parameter within ``[lo, hi]``; ``ValidationError`` naming the limits."""
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise ValidationError(f"{name}={value!r} is not an integer", field=name) from None
    if n < lo or (hi is not None and n > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ValidationError(f"{name} must be {limit} (got {n})", field=name)
    return n


def parse_list(value: str | None) -> tuple[str, ...]:
    """A comma-separated parameter as a tuple of non-empty, stripped values."""
    if not value:
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_float(value: str | None, name: str, lo: float, hi: float) -> float | None:
    """Parse a number within ``[lo, hi]`` (None when absent); ``ValidationError`` otherwise."""
    if value in (None, ""):
        return None
    try:
        v = float(value)
    except ValueError:
        raise ValidationError(f"{name} must be a number", field=name) from None
    if not lo <= v <= hi:
        raise ValidationError(f"{name} must be between {lo} and {hi}", field=name)
    return v


def check_params(params: dict, allowed: set[str]) -> None:
    """Refuse a parameter outside ``allowed``, naming the ones expected."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValidationError(
            f"unknown parameter {unknown[0]!r}; expected one of {', '.join(sorted(allowed))}",
            field=unknown[0],
        )


def parse_bool(value: str | None, name: str) -> bool:
    """Parse ``1/true/yes`` or ``0/false/no`` (absent: False); ``ValidationError`` otherwise."""
    if value is None or value == "":
        return False
    v = value.lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no"):
        return False
    raise ValidationError(f"{name} must be true or false", field=name)
