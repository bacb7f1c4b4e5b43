"""The login in a real browser: headless Chromium driven by playwright-core (``idp/node_modules``)
through the hub's login page, the identity provider's password and TOTP steps, into JupyterLab.
Screenshots go to ``artifacts/``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atomscale_lab.hub.stack import REPO
from tests.support import hub_helpers as helpers

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _spki_pin(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_login_with_totp_in_chromium_reaches_jupyterlab(stack):
    assert Path("/usr/bin/chromium").exists(), "chromium is missing: run `make setup`"
    shots = REPO / "artifacts"
    shots.mkdir(exist_ok=True)
    for old in shots.glob("hub-*.png"):
        old.unlink()
    user = "beta-admin"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": tempfile.mkdtemp(prefix="chromium-home-"),
        "IDP_DIR": str(REPO / "idp"),
        "HUB_URL": stack.url,
        "LOGIN_USER": user,
        "LOGIN_PASSWORD": stack.passwords[user],
        "LOGIN_OTP": helpers.fresh_totp(stack.idp, user)(),
        "SPKI_PIN": _spki_pin(stack.st.certs / "server.crt"),
        "SHOTS": str(shots),
        "PROFILE": tempfile.mkdtemp(prefix="chromium-profile-"),
    }
    r = subprocess.run(
        ["node", str(Path(__file__).with_name("browser_login.mjs"))],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, f"{r.stderr}\n{stack.log_tail(30)}"
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert f"/user/{user}/lab" in result["url"]
    for name in ("hub-idp-password.png", "hub-idp-totp.png", "hub-lab.png"):
        png = (shots / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
    # the login went through MFA and is on record
    events = stack.audit_events("beta", actor=user, action="auth.login")
    assert events and events[0]["outcome"] == "allowed" and "mfa" in events[0]["detail"]["amr"]
