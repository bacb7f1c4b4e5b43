"""Helpers of the hub end-to-end tests (also used by ``bench/hub.py``): drive the OIDC login of
the bundled identity provider with plain HTTP, as a browser would, and call hub APIs."""

from __future__ import annotations

import re
import time
from html import unescape
from urllib.parse import urljoin, urlparse

import requests

FORM_ACTION = re.compile(r'<form[^>]*action="([^"]+)"')


class LoginFailed(AssertionError):
    """The login did not end on the hub; carries the last response."""

    def __init__(self, message, response):
        super().__init__(message)
        self.response = response


def session(ca) -> requests.Session:
    """A session that trusts only the stack's CA and ignores proxy/CA variables of the env."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(ca)
    return s


def _post_form(s, resp, data):
    m = FORM_ACTION.search(resp.text)
    if not m:
        raise LoginFailed(f"no form on {resp.url} (status {resp.status_code})", resp)
    return s.post(urljoin(resp.url, unescape(m.group(1))), data=data, verify=s.verify, timeout=60)


def login(s, hub_url, username, password, otp=None, *, next_path="/hub/home"):
    """Log in through the identity provider; ``otp`` is a code or a callable returning one.

    Returns the final response (on the hub when it worked, an error page otherwise).
    """
    r = s.get(f"{hub_url}/hub/oauth_login?next={next_path}", verify=s.verify, timeout=60)
    if "/interaction/" not in r.url:
        raise LoginFailed(f"expected the identity provider's login page, got {r.url}", r)
    r = _post_form(s, r, {"username": username, "password": password})
    if 'name="otp"' in r.text:
        code = otp() if callable(otp) else otp
        if code is None:
            raise LoginFailed("the identity provider asks for a TOTP code", r)
        r = _post_form(s, r, {"otp": code})
    return r


def on_hub(resp, hub_url) -> bool:
    """True if ``resp`` ended on the hub with a 2xx."""
    return resp.ok and urlparse(resp.url).netloc == urlparse(hub_url).netloc


def xsrf_headers(s, hub_url):
    """Headers carrying the hub's XSRF token (needed for cookie-authenticated API posts)."""
    tok = s.cookies.get("_xsrf", path="/hub/")
    return {"X-XSRFToken": tok} if tok else {}


def api_token(s, hub_url, username, note="e2e") -> str:
    """Create an API token of the logged-in user through the hub API (cookie auth)."""
    r = s.post(
        f"{hub_url}/hub/api/users/{username}/tokens",
        json={"note": note},
        headers={**xsrf_headers(s, hub_url), "Referer": f"{hub_url}/hub/token"},
        verify=s.verify,
        timeout=30,
    )
    r.raise_for_status()
    return r.json()["token"]


def start_server(hub_url, token, username, ca, timeout=90) -> float:
    """Start the user's server with the hub API and wait until it is ready; returns seconds."""
    s = session(ca)
    h = {"Authorization": f"token {token}"}
    t0 = time.monotonic()
    r = s.post(f"{hub_url}/hub/api/users/{username}/server", headers=h, timeout=60)
    if r.status_code not in (201, 202, 400):
        r.raise_for_status()
    while time.monotonic() - t0 < timeout:
        m = s.get(f"{hub_url}/hub/api/users/{username}", headers=h, timeout=30).json()
        srv = m.get("servers", {}).get("", {})
        if srv.get("ready"):
            return time.monotonic() - t0
        if not m.get("pending") and not srv:
            raise AssertionError(f"server of {username} is not starting: {m}")
        time.sleep(0.2)
    raise AssertionError(f"server of {username} not ready after {timeout} s")


_last_step: dict[str, int] = {}


def fresh_totp(idp_users, username):
    """A callable returning ``username``'s TOTP code, waiting for a new 30 s step if this
    process already used the current one (the identity provider refuses a replayed code)."""

    def code():
        totp = idp_users.totp(username)
        step = int(time.time()) // 30
        if _last_step.get(username) == step:
            time.sleep(30 - time.time() % 30 + 0.2)
            step = int(time.time()) // 30
        _last_step[username] = step
        return totp.at(step * 30)

    return code


def final_status(s, url, token=None) -> tuple[int, str]:
    """GET ``url`` following every redirect (the hub's OAuth hand-offs included) with session
    ``s`` (its cookies) and optionally a token; returns ``(final status, final URL)``."""
    headers = {"Authorization": f"token {token}"} if token else {}
    r = s.get(url, headers=headers, allow_redirects=True, timeout=60)
    return r.status_code, r.url


async def _execute(ws_url, token, ca, code, timeout) -> tuple[str, str]:
    import asyncio
    import json
    import uuid
    from datetime import UTC, datetime

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    req = HTTPRequest(
        ws_url, headers={"Authorization": f"token {token}"}, ca_certs=ca, request_timeout=timeout
    )
    ws = await websocket_connect(req)
    msg_id = uuid.uuid4().hex
    await ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "",
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                    "date": datetime.now(UTC).isoformat(),
                },
                "parent_header": {},
                "metadata": {},
                "channel": "shell",
                "buffers": [],
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
    )
    out, err = [], []
    deadline = time.monotonic() + timeout
    try:
        while True:
            raw = await asyncio.wait_for(ws.read_message(), max(deadline - time.monotonic(), 0.1))
            if raw is None:
                raise AssertionError("the kernel's websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                (out if content["name"] == "stdout" else err).append(content["text"])
            elif kind == "error":
                raise AssertionError(
                    "code failed in the kernel:\n" + "\n".join(content["traceback"])
                )
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out), "".join(err)
    finally:
        ws.close()


def run_in_kernel(hub_url, user, token, ca, code, timeout=120) -> str:
    """Start a real kernel in ``user``'s running server (kernels REST API), run ``code`` there
    (kernel websocket), stop the kernel; returns what the code printed on stdout."""
    import asyncio

    s = session(ca)
    h = {"Authorization": f"token {token}"}
    r = s.post(
        f"{hub_url}/user/{user}/api/kernels", headers=h, json={"name": "python3"}, timeout=60
    )
    assert r.status_code == 201, (r.status_code, r.text[:300])
    kid = r.json()["id"]
    try:
        ws_url = (
            hub_url.replace("https://", "wss://", 1) + f"/user/{user}/api/kernels/{kid}/channels"
        )
        out, _err = asyncio.run(_execute(ws_url, token, ca, code, timeout))
        return out
    finally:
        s.delete(f"{hub_url}/user/{user}/api/kernels/{kid}", headers=h, timeout=60)
