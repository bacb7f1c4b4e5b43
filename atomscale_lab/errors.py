"""Exceptions of atomscale-lab's pure logic.

Every layer raises these; the CLI turns them into one-line messages and exit codes, the HTTP
handlers into status codes (see ``HTTP_STATUS``). Messages are written for the person who has to act
on them and never contain key material.
"""


class AtomscaleError(Exception):
    """Base class: a condition the user or admin can understand and act on."""

    exit_code = 1


class ConfigError(AtomscaleError):
    """Configuration is missing or malformed (root key, home, deployment file)."""

    exit_code = 2


class RootKeyError(ConfigError):
    """The root key is missing, malformed, or does not unwrap the stored keys."""


class UnknownOrg(AtomscaleError):
    """The organization does not exist (or was deleted)."""

    exit_code = 3


class OrgExists(AtomscaleError):
    """An organization of that name already exists."""


class ResidencyError(AtomscaleError):
    """A region does not match the storage roots' declared region."""


class ValidationError(AtomscaleError):
    """Input is malformed; the message names the field (and row, where there is one)."""

    def __init__(self, message, *, field=None, row=None):
        super().__init__(message)
        self.field = field
        self.row = row


class NotFound(AtomscaleError):
    """A run, item or dataset does not exist."""

    exit_code = 3


class KeyUnavailable(AtomscaleError):
    """The key needed to read or write is missing, wrong, or was destroyed."""

    exit_code = 4


class IntegrityError(AtomscaleError):
    """Stored data or a log failed verification (tampered, planted, rolled back, truncated)."""

    exit_code = 5


class PermissionDenied(AtomscaleError):
    """The caller lacks the scope or role for this action."""

    exit_code = 6


class Conflict(AtomscaleError):
    """The request collides with what exists (e.g. an item id that is already stored)."""

    http_status = 409


class TooLarge(ValidationError):
    """A request body or frame exceeds the size a route accepts."""

    http_status = 413


HTTP_STATUS = {
    ValidationError: 400,
    PermissionDenied: 403,
    NotFound: 404,
    UnknownOrg: 404,
    OrgExists: 409,
    ResidencyError: 409,
    KeyUnavailable: 503,
    IntegrityError: 500,
    ConfigError: 500,
}


def http_status(exc):
    """Return the HTTP status code that best represents ``exc``.

    A subclass may set a class attribute ``http_status`` to name its own code (e.g. 413, 429).
    """
    own = getattr(type(exc), "http_status", None)
    if isinstance(own, int):
        return own
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500
