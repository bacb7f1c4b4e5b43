"""Hub benchmarks: prints ``name: value`` lines.

- ``hub_ready_s``: hub + proxy + key and context services started until the services answer;
- ``login_s_median``: the OIDC login (password + TOTP through the identity provider) — median;
- ``login_to_server_ready_s_median`` (goal < 8 s): login, then the user's server started and
  ready (spawned as its own Unix account, org key fetched from the key service) — median of 5
  different users;
- ``key_service_roundtrip_ms_median``: a user server's key request through the proxy to the key
  service (token resolution at the hub, audit event written) — median of 50.

Needs root and ``make setup`` (Node packages in ``idp/``). Run: ``.venv/bin/python bench/hub.py``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "hub"))

import hub_helpers as helpers  # noqa: E402
from hubstack import api, deployment  # noqa: E402

USERS = {f"bench-{i}": ("acme", "scientist") for i in range(5)}


def main() -> None:
    """Run the benchmarks against a throw-away deployment."""
    t0 = time.monotonic()
    with deployment(runs=20, extra_users=USERS) as st:
        print(f"hub_ready_s: {time.monotonic() - t0:.1f}  (includes provisioning two orgs)")
        logins, spawns, tokens = [], [], []
        for user in USERS:
            s = helpers.session(st.ca)
            t = time.monotonic()
            r = helpers.login(s, st.url, user, st.passwords[user],
                              helpers.fresh_totp(st.idp, user))
            assert helpers.on_hub(r, st.url), r.text[-300:]
            logins.append(time.monotonic() - t)
            token = helpers.api_token(s, st.url, user)
            helpers.start_server(st.url, token, user, st.ca, timeout=120)
            spawns.append(time.monotonic() - t)
            tokens.append(token)
        print(f"login_s_median: {statistics.median(logins):.2f}")
        print(f"login_to_server_ready_s_median: {statistics.median(spawns):.1f}  (goal < 8; "
              f"min {min(spawns):.1f}, max {max(spawns):.1f})")
        rtts = []
        for _ in range(50):
            t = time.monotonic()
            r = api(st, tokens[0], "GET", "/services/atomscale-keys/orgs/acme/keys")
            assert r.status_code == 200
            rtts.append((time.monotonic() - t) * 1000)
        print(f"key_service_roundtrip_ms_median: {statistics.median(rtts):.1f}")
        r = api(st, tokens[0], "GET", f"/user/{next(iter(USERS))}/atomscale/api/v1/status")
        assert r.status_code == 200, r.text


if __name__ == "__main__":
    main()
