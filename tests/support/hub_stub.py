"""A stand-in for JupyterHub's ``HubAuth`` in in-process service tests: tokens resolved from a
table, so that scopes no real role carries (look-alike filters, unfiltered scopes, a service
identity) can be tried."""

from __future__ import annotations

import re


class StubHubAuth:
    """Resolves tokens from a dict, like HubAuth.user_for_token."""

    auth_header_pat = re.compile(r"(?:token|bearer)\s+(.+)", re.IGNORECASE)

    def __init__(self, tokens):
        self.tokens = tokens

    async def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        """The model of ``token`` in the table, None if it is not there."""
        return self.tokens.get(token)
