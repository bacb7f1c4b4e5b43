"""Hub benchmarks: prints ``name: value`` lines.

- ``hub_ready_s``: hub + proxy + key, context, ingest and per-org data servers started until the
  services answer (includes provisioning two orgs);
- ``login_s_median``: the OIDC login (password + TOTP through the identity provider) — median;
- ``login_to_server_ready_s_median`` (goal ≤ 4 s, must stay < 8 s): login, then the user's
  server started and ready (spawned as its own Unix account; it fetches no key) — median of 5
  different users;
- ``key_service_roundtrip_ms_median``: the org's data server's key request (its own service
  token, as the data server sends it) through the proxy to the key service: token resolution at
  the hub on every request (the key service's token cache is off for this run), audit event
  written, keys unwrapped — median of 50;
- ``data_status_ms_median``: a user's ``status`` request through its server's pass-through to
  the org's data server — median of 50.

Held equal: one deployment, requests in sequence from one client, same token per series.
Needs root and ``make setup`` (Node packages in ``idp/``). Run: ``.venv/bin/python bench/hub.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from tests.support import hub_helpers as helpers  # noqa: E402
from tests.support.hubstack import _pids_of_uid, api, deployment  # noqa: E402

USERS = {f"bench-{i}": ("acme", "scientist") for i in range(5)}


def service_token(st, org: str) -> str:
    """The data server's own hub token, read from its process environment (needs root)."""
    for pid in _pids_of_uid(st.services[org].uid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"JUPYTERHUB_API_TOKEN="):
                return kv.split(b"=", 1)[1].decode()
    raise RuntimeError(f"no data server process of {org}")


def main() -> None:
    """Run the benchmarks against a throw-away deployment."""
    os.environ["ATOMSCALE_TOKEN_CACHE_SECONDS"] = "0"  # every key request resolves its token
    t0 = time.monotonic()
    with deployment(runs=20, extra_users=USERS) as st:
        print(f"hub_ready_s: {time.monotonic() - t0:.1f}  (includes provisioning two orgs)")
        logins, spawns, tokens = [], [], []
        for user in USERS:
            s = helpers.session(st.ca)
            t = time.monotonic()
            r = helpers.login(s, st.url, user, st.passwords[user], helpers.fresh_totp(st.idp, user))
            assert helpers.on_hub(r, st.url), r.text[-300:]
            logins.append(time.monotonic() - t)
            token = helpers.api_token(s, st.url, user)
            helpers.start_server(st.url, token, user, st.ca, timeout=120)
            spawns.append(time.monotonic() - t)
            tokens.append(token)
        print(f"login_s_median: {statistics.median(logins):.2f}")
        print(
            f"login_to_server_ready_s_median: {statistics.median(spawns):.1f}  (goal <= 4, "
            f"must stay < 8; min {min(spawns):.1f}, max {max(spawns):.1f})"
        )
        svc = service_token(st, "acme")
        rtts = []
        for _ in range(50):
            t = time.monotonic()
            r = api(st, svc, "GET", "/services/atomscale-keys/orgs/acme/keys")
            rtts.append((time.monotonic() - t) * 1000)
            assert r.status_code == 200, r.text
        print(
            f"key_service_roundtrip_ms_median: {statistics.median(rtts):.1f}  "
            "(service identity, no token cache)"
        )
        user = next(iter(USERS))
        lat = []
        for _ in range(50):
            t = time.monotonic()
            r = api(st, tokens[0], "GET", f"/user/{user}/atomscale/api/v1/status")
            lat.append((time.monotonic() - t) * 1000)
            assert r.status_code == 200, r.text
        print(
            f"data_status_ms_median: {statistics.median(lat):.1f}  "
            "(user server pass-through -> data server)"
        )


if __name__ == "__main__":
    main()
