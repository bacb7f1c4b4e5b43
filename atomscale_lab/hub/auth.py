"""AtomscaleAuthenticator: OpenID Connect login that refuses users without multi-factor auth.

On top of oauthenticator's generic OAuth2 flow it

- verifies the id_token's signature against the provider's JWKS (refetched when an unknown ``kid``
  appears, e.g. after the provider rotated its key), its ``iss``, ``aud`` and ``exp``;
- refuses the login unless the token says a second factor was used (``amr``/``acr``), and fails
  closed: a provider that does not say so is refused;
- maps the ``org`` and ``role`` claims to the hub groups ``org:<org>`` and ``role:<org>:<role>``
  (which carry the org's roles, see :mod:`atomscale_lab.hub.roles`), and refuses an org the
  deployment does not know with a 403 page that says so;
- validates the user-name claim (:func:`atomscale_lab.names.check_new_user`) and binds a hub user
  to the provider's stable subject (``iss`` + ``sub``) at first login: a changeable
  ``preferred_username`` renamed to someone else's name does not become that user;
- re-checks all of this whenever the hub refreshes the user (``auth_refresh_age``).

oauthenticator 17 has no OIDC discovery: the endpoints default from ``issuer`` with the paths of the
bundled identity provider; set them by hand for Keycloak, Okta, Entra ID or Google (``deploy/``).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable

import jwt
from oauthenticator.generic import GenericOAuthenticator
from tornado import web
from traitlets import Any, Bool, Int, List, Set, Unicode, default, observe

from atomscale_lab.errors import ValidationError
from atomscale_lab.hub.roles import ROLES
from atomscale_lab.names import check_new_user, hub_org_group, hub_role_group


class AuthRefused(web.HTTPError):
    """A login refused for a reason the user should read (shown on the hub's 403 page)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(status, message)
        self.reason = "Forbidden" if status == 403 else None
        # JupyterHub's error page shows `message` when set.
        self.message = message


class AtomscaleAuthenticator(GenericOAuthenticator):
    """OIDC authenticator with id_token verification, enforced MFA and org/role groups."""

    login_service = Unicode(
        "your organization's sign-in", config=True, help="Name shown on the hub's login button."
    )

    issuer = Unicode(
        config=True,
        help="""The identity provider's issuer URL; the id_token's ``iss`` must equal it.

        Endpoints default from it with the bundled provider's paths (``/auth``, ``/token``,
        ``/me``, ``/jwks``). Example::

            c.AtomscaleAuthenticator.issuer = "https://idp.lab.example"
        """,
    )

    jwks_url = Unicode(
        config=True,
        help="""URL of the provider's JSON Web Key Set (signing keys of id_tokens).

            c.AtomscaleAuthenticator.jwks_url = "https://login.example/.well-known/jwks.json"
        """,
    )

    ca_certs = Unicode(
        "",
        config=True,
        help="""PEM bundle trusted for the provider's https certificate (empty: the system's).

            c.AtomscaleAuthenticator.ca_certs = "/etc/atomscale/ca.crt"
        """,
    )

    require_mfa = Bool(
        True,
        config=True,
        help="""Refuse logins whose id_token does not show a second factor.

        Turning this off is for trying the hub against a provider that cannot report MFA; the
        hub then logs a warning at every login.
        """,
    )

    required_amr = List(
        Unicode(),
        ["mfa"],
        config=True,
        help="""``amr`` values (RFC 8176) any one of which proves MFA. Entra ID and Okta send
        ``mfa``; the bundled provider sends ``pwd``, ``otp`` and ``mfa``.

            c.AtomscaleAuthenticator.required_amr = ["mfa", "otp", "hwk"]
        """,
    )

    accepted_acr = List(
        Unicode(),
        [],
        config=True,
        help="""``acr`` values that also prove MFA, for providers that express it as an
        authentication level instead of ``amr`` (e.g. a Keycloak step-up level).

            c.AtomscaleAuthenticator.accepted_acr = ["gold"]
        """,
    )

    org_claim = Unicode("org", config=True, help="id_token claim naming the user's org.")
    role_claim = Unicode(
        "role", config=True, help=f"id_token claim naming the user's role ({', '.join(ROLES)})."
    )

    known_orgs = Set(
        Unicode(),
        config=True,
        help="""Orgs this deployment serves. A user whose org claim is not one of them is refused
        with a 403 page. ``jupyterhub_config.py`` fills it from the org registry.
        """,
    )

    bind_subject = Bool(
        True,
        config=True,
        help="""Bind each hub user to the identity provider's subject (``iss`` + ``sub``) of its
        first login, and refuse a later login (or refresh) whose user-name claim names that user
        but whose subject differs. Keep it on whenever ``username_claim`` is a claim users or
        admins can change (``preferred_username``, ``email``).
        """,
    )

    leeway = Int(30, config=True, help="Seconds of clock skew allowed on ``exp``/``iat``.")

    jwks_cooldown = Int(
        2,
        config=True,
        help="Minimum seconds between two JWKS refetches triggered by an unknown ``kid``.",
    )

    audit_hook = Any(
        None,
        config=True,
        allow_none=True,
        help="""Callable ``(org, actor, action, outcome, **detail)`` recording every login decision
        in the org's audit log (set by ``atomscale_lab.hub.configure``).""",
    )

    @default("any_allow_config")
    def _any_allow_config_default(self):
        # known_orgs is the allow list: only users of a served org get in
        return True

    @default("scope")
    def _scope_default(self):
        return ["openid", "profile", "email", "atomscale"]

    @default("username_claim")
    def _username_claim_default(self):
        return "preferred_username"

    @default("userdata_from_id_token")
    def _userdata_from_id_token_default(self):
        return True

    @default("manage_groups")
    def _manage_groups_default(self):
        return True

    @default("enable_auth_state")
    def _enable_auth_state_default(self):
        return True

    @default("basic_auth")
    def _basic_auth_default(self):
        return True

    @default("enable_pkce")
    def _enable_pkce_default(self):
        return True

    @default("authorize_url")
    def _authorize_url_default(self):
        return self.issuer.rstrip("/") + "/auth" if self.issuer else ""

    @default("token_url")
    def _token_url_default(self):
        return self.issuer.rstrip("/") + "/token" if self.issuer else ""

    @default("jwks_url")
    def _jwks_url_default(self):
        return self.issuer.rstrip("/") + "/jwks" if self.issuer else ""

    @default("http_request_kwargs")
    def _http_request_kwargs_default(self):
        return {"ca_certs": self.ca_certs} if self.ca_certs else {}

    @observe("require_mfa")
    def _warn_mfa_off(self, change):
        if not change["new"]:
            self.log.warning(
                "AtomscaleAuthenticator.require_mfa is off: logins without a "
                "second factor will be accepted"
            )

    @observe("enable_auth_state")
    def _need_auth_state(self, change):
        if not change["new"]:
            raise ValueError(
                "AtomscaleAuthenticator.enable_auth_state is required: the hub "
                "re-verifies the id_token and MFA when it refreshes a user"
            )

    _jwks_client = None

    # ------------------------------------------------------------------ id_token verification

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_certs or None)

    @property
    def jwks_client(self) -> jwt.PyJWKClient:
        """The JWKS client (caches keys, refetches once on an unknown kid)."""
        if self._jwks_client is None:
            if not self.jwks_url:
                raise ValueError("AtomscaleAuthenticator.jwks_url (or issuer) must be set")
            self._jwks_client = jwt.PyJWKClient(
                self.jwks_url,
                cache_keys=True,
                lifespan=300,
                timeout=10,
                ssl_context=self._ssl_context(),
                cooldown_duration=self.jwks_cooldown,
            )
        return self._jwks_client

    def verify_id_token(self, id_token: str) -> dict:
        """Return the claims of ``id_token`` after checking signature, iss, aud and exp.

        Raises :class:`AuthRefused` (403) with the reason; never logs the token.
        """
        if not self.issuer:
            raise ValueError("AtomscaleAuthenticator.issuer must be set")
        if not id_token:
            raise AuthRefused("The identity provider returned no id_token.")
        try:
            try:
                key = self.jwks_client.get_signing_key_from_jwt(id_token)
            except jwt.PyJWKClientError:
                # An unknown kid right after a fetch (the provider restarted with a new key):
                # the client refuses to refetch within its cooldown; wait it out once.
                time.sleep(self.jwks_cooldown + 0.1)
                key = self.jwks_client.get_signing_key_from_jwt(id_token)
            return jwt.decode(
                id_token,
                key.key,
                algorithms=["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"],
                audience=self.client_id,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthRefused("Your sign-in has expired. Please log in again.") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as e:
            self.log.warning("Refusing an id_token that failed verification: %s", e)
            raise AuthRefused(
                "The identity token could not be verified "
                f"({type(e).__name__}). Please log in again."
            ) from None

    def mfa_satisfied(self, claims: dict) -> bool:
        """True if the verified claims show a second factor (fails closed on absent claims)."""
        amr = claims.get("amr")
        if isinstance(amr, str):
            amr = [amr]
        if isinstance(amr, list) and set(map(str, amr)) & set(self.required_amr):
            return True
        return bool(self.accepted_acr) and claims.get("acr") in self.accepted_acr

    def org_and_role(self, claims: dict) -> tuple[str, str]:
        """The user's org and role from the claims; :class:`AuthRefused` if unknown."""
        org = _single(claims.get(self.org_claim), self.known_orgs)
        role = _single(claims.get(self.role_claim), set(ROLES))
        if not isinstance(org, str) or not org:
            raise AuthRefused(
                "Your account has no organization. Ask your administrator to assign you to one."
            )
        if org not in self.known_orgs:
            raise AuthRefused(
                f"Your organization {org!r} is not served by this hub. Ask your "
                "administrator to provision it."
            )
        if role not in ROLES:
            raise AuthRefused(
                f"Your account has no valid role in {org!r} (got {role!r}). Ask "
                "your organization's admin to assign one."
            )
        return org, role

    def _audit(self, org, actor, action, outcome, **detail):
        if self.audit_hook is None or not org:
            return
        try:
            self.audit_hook(org, actor, action, outcome, **detail)
        except Exception:
            # An audit failure must not hide the login decision; it is logged loudly.
            self.log.exception("could not record %s for %s in %s's audit log", action, actor, org)

    # ------------------------------------------------------------------ oauthenticator hooks

    def user_info_to_username(self, user_info):
        """The user-name claim, refused unless it is a valid, non-reserved user name."""
        name = super().user_info_to_username(user_info)
        try:
            return check_new_user(name)
        except ValidationError:
            self.log.warning("Refusing a login with an unusable user name claim %r", name)
            raise AuthRefused(
                f"Your user name {name!r} cannot be used on this hub (2-64 of "
                "a-z, 0-9 and '-', starting with a letter, not reserved). Ask "
                "your administrator."
            ) from None

    @staticmethod
    def subject(claims: dict) -> str:
        """The provider's stable identity of the user: ``<iss> <sub>``."""
        return f"{claims.get('iss')} {claims.get('sub')}"

    async def check_subject(self, user, claims: dict) -> None:
        """Refuse when hub ``user`` is bound to another subject than ``claims`` carry."""
        if not self.bind_subject or user is None:
            return
        state = await user.get_auth_state() or {}
        bound = (state.get("atomscale") or {}).get("subject")
        if bound is not None and bound != self.subject(claims):
            self.log.warning("Refusing %s: the identity provider's subject changed", user.name)
            info = state.get("atomscale") or {}
            if info.get("org") in self.known_orgs:
                self._audit(
                    info["org"], user.name, "auth.login", "denied", reason="subject mismatch"
                )
            raise AuthRefused(
                "This user name belongs to another account of the identity "
                "provider. Ask your administrator."
            )

    async def token_to_user(self, token_info):
        """Verified id_token claims (instead of oauthenticator's unverified decode)."""
        return await asyncio.to_thread(self.verify_id_token, token_info.get("id_token"))

    async def update_auth_model(self, auth_model):
        """Refuse without MFA or with an unknown org/role; record org and role for groups."""
        claims = auth_model["auth_state"][self.user_auth_state_key]
        name = auth_model["name"]
        org = claims.get(self.org_claim) if isinstance(claims.get(self.org_claim), str) else None
        if self.require_mfa and not self.mfa_satisfied(claims):
            self.log.warning(
                "Refusing %s: no second factor in the id_token (amr=%s)", name, claims.get("amr")
            )
            if org in self.known_orgs:
                self._audit(
                    org, name, "auth.login", "denied", reason="no mfa", amr=claims.get("amr")
                )
            raise AuthRefused(
                "This hub requires multi-factor authentication. Sign in again "
                "with your second factor (authenticator app code)."
            )
        try:
            org, role = self.org_and_role(claims)
        except AuthRefused as e:
            self.log.warning("Refusing %s: %s", name, e.message)
            if org in self.known_orgs:
                self._audit(org, name, "auth.login", "denied", reason="role")
            raise
        auth_model["auth_state"]["atomscale"] = {
            "org": org,
            "role": role,
            "subject": self.subject(claims),
        }
        return auth_model

    async def get_user_groups(self, auth_state):
        """``org:<org>`` and ``role:<org>:<role>`` from the verified claims."""
        info = auth_state.get("atomscale") or {}
        if not info.get("org"):
            return set()
        return {hub_org_group(info["org"]), hub_role_group(info["org"], info["role"])}

    async def check_allowed(self, username, auth_model):
        """Allowed when the verified claims passed :meth:`update_auth_model`."""
        if auth_model is None:
            return True
        info = (auth_model.get("auth_state") or {}).get("atomscale")
        if info and info.get("org") in self.known_orgs:
            return True
        return await super().check_allowed(username, auth_model)

    async def authenticate(self, handler, data=None, **kwargs):
        """The OAuth code exchange, then verification; every decision is audited."""
        model = await super().authenticate(handler, data, **kwargs)
        if handler is not None and hasattr(handler, "find_user"):
            await self.check_subject(
                handler.find_user(model["name"]), model["auth_state"][self.user_auth_state_key]
            )
        info = (model.get("auth_state") or {}).get("atomscale", {})
        self._audit(
            info.get("org"),
            model["name"],
            "auth.login",
            "allowed",
            role=info.get("role"),
            amr=model["auth_state"][self.user_auth_state_key].get("amr"),
        )
        return model

    async def refresh_user(self, user, handler=None, **kwargs):
        """Re-verify the stored id_token (and MFA, org, role); use the refresh token once it
        expired. Returns False (log in again) whenever verification fails."""
        auth_state = await user.get_auth_state()
        if not auth_state or not auth_state.get("token_response"):
            return False
        try:
            return await self._same_user(
                user, await self._token_to_auth_model(auth_state["token_response"])
            )
        except web.HTTPError as e:
            self.log.info(
                "Stored id_token of %s no longer valid (%s)",
                user.name,
                getattr(e, "message", e.status_code),
            )
        refresh_token = auth_state.get("refresh_token")
        if not refresh_token:
            return False
        try:
            token_info = await self.get_token_info(
                handler, self.build_refresh_token_request_params(refresh_token)
            )
            token_info.setdefault("refresh_token", refresh_token)
            return await self._same_user(user, await self._token_to_auth_model(token_info))
        except Exception as e:
            self.log.info(
                "Refreshing %s failed (%s): a new login is required", user.name, type(e).__name__
            )
            return False

    async def _same_user(self, user, model):
        """A refreshed model only if it still names ``user`` with the bound subject."""
        if model["name"] != user.name:
            raise AuthRefused("The identity provider now names this account differently.")
        await self.check_subject(user, model["auth_state"][self.user_auth_state_key])
        return model


def _single(value, known: set[str]):
    """A claim as one string: lists (Entra ID ``roles``, Keycloak groups) must hold exactly one
    known value; anything else is returned as is and refused by the caller."""
    if isinstance(value, list):
        hits = [v for v in value if isinstance(v, str) and v in known]
        if len(hits) == 1:
            return hits[0]
        return value[0] if len(value) == 1 else None
    return value


def audit_hook_for(vault_factory: Callable) -> Callable:
    """An ``audit_hook`` writing to the org's audit log of the vault ``vault_factory()`` returns."""

    def hook(org, actor, action, outcome, **detail):
        vault_factory().audit(org).record(actor, action, outcome, **detail)

    return hook
