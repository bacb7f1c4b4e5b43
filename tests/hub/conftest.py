"""Fixtures of the hub end-to-end suite (the deployment itself is in ``hubstack.py``).

- ``stack`` (session): the running deployment of :func:`hubstack.deployment` — vault with orgs
  ``acme`` and ``beta``, the bundled identity provider, the hub with its proxy and services —
  started once and stopped by pid at the end.
- ``logged_in`` (session): ``logged_in(user)`` logs a user in once and returns
  ``(requests session, API token)``.
- ``running`` (session): ``running(user)`` also starts the user's server once and returns the token.
"""

from __future__ import annotations

import os

import pytest

from atomscale_lab.hub.stack import REPO
from tests.support import hub_helpers as helpers
from tests.support.hubstack import deployment


@pytest.fixture(scope="session")
def stack():
    """Start the whole deployment once (see the module docstring)."""
    if os.geteuid() != 0:
        pytest.fail("the hub suite needs root: the hub runs servers as per-user Unix accounts")
    if not (REPO / "idp" / "node_modules" / "oidc-provider").exists():
        pytest.fail("idp/node_modules is missing: run `make setup` (scripts/setup.d/40-idp.sh)")
    with deployment() as s:
        yield s


@pytest.fixture(scope="session")
def logged_in(stack):
    """``logged_in(user)`` → ``(session, token)``, logging in once per user."""

    def get(user):
        if user not in stack.sessions:
            s = helpers.session(stack.ca)
            r = helpers.login(
                s, stack.url, user, stack.passwords[user], helpers.fresh_totp(stack.idp, user)
            )
            assert helpers.on_hub(r, stack.url), (r.status_code, r.url, r.text[-500:])
            stack.sessions[user] = (s, helpers.api_token(s, stack.url, user))
        return stack.sessions[user]

    return get


@pytest.fixture(scope="session")
def running(stack, logged_in):
    """``running(user)`` → API token of ``user`` whose server has been started and is ready."""
    started = {}

    def get(user):
        s, token = logged_in(user)
        if user not in started:
            try:
                started[user] = helpers.start_server(stack.url, token, user, stack.ca)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{stack.log_tail()}") from None
        return token

    return get
