"""The role matrix against the real hub: every operation of the REST API × every role × own org /
another org, sent with each user's own hub token to org ``acme``'s data server (directly, and for
acme's members also through their own server's pass-through). Statuses come from the role table
(``tests/support/role_matrix.py``); every refusal must be one audit event naming the user in acme's
log, and nothing may land in the user's own org's log."""

from __future__ import annotations

import pytest

from tests.support import hub_helpers as helpers
from tests.support import role_matrix
from tests.support.roles import PATH_VALUES, sample_request

SERVED = "acme"
OTHER = "beta"
NO_SCOPE = "auth.server"
"""The data server refuses a caller without any scope in its org before routing (403), recorded
under this action whatever the route."""


def hub_expectation(template: str, method: str, role: str, user_org: str) -> tuple[int, str]:
    """``(status, action a refusal is audited under)`` at ``SERVED``'s data server for ``role``
    of ``user_org``: the role table decides for a caller with some permission in the org; a
    caller with none is refused by the server's gate."""
    if not role_matrix.granted(role, user_org, SERVED):
        return role_matrix.REFUSED, NO_SCOPE
    return (
        role_matrix.expected_status(template, method, role, user_org == SERVED),
        role_matrix.audit_action(template, method),
    )


def test_expectations_cover_both_gates():
    # every role of another org meets the gate; the role table decides for members
    for role in role_matrix.roles():
        assert hub_expectation("status", "get", role, OTHER) == (403, NO_SCOPE)
        assert role_matrix.granted(role, SERVED, SERVED), role
    assert hub_expectation("metrology", "post", "viewer", SERVED) == (403, "data.write")
    assert hub_expectation("metrology", "post", "scientist", SERVED)[0] == 201


def _sample_ids(stack) -> dict[str, str]:
    """Ids of the served org's demo data for the sample requests' stand-ins: a run with a RHEED
    series and a metrology item of it."""
    v = stack.vault()
    try:
        st = v.store(SERVED)
        items = st.table("metrology/items").read(columns=["item_id", "run_id"]).to_pylist()
        process = set(
            st.table("process/series")
            .read(columns=["run_id"])
            .column("run_id")
            .unique()
            .to_pylist()
        )
    finally:
        v.close()
    item = next(i for i in items if i["run_id"] in process)
    return {PATH_VALUES["run_id"]: item["run_id"], PATH_VALUES["item_id"]: item["item_id"]}


def _concrete(req: dict, ids: dict[str, str]) -> dict:
    """``sample_request``'s stand-in ids replaced by the served org's."""

    def sub(text):
        for a, b in ids.items():
            text = text.replace(a, b)
        return text

    out = dict(
        req,
        path=[sub(x) for x in req["path"]],
        params={k: sub(v) for k, v in req["params"].items()},
    )
    if isinstance(req.get("body"), str):
        out["body"] = sub(req["body"])
    return out


def _count(audit, user):
    return len(audit.events(actor=user, limit=100_000))


@pytest.mark.parametrize("user_org", [SERVED, OTHER], ids=["own-org", "other-org"])
@pytest.mark.parametrize("role", role_matrix.roles())
def test_role_matrix_at_the_data_server(stack, logged_in, running, role, user_org):
    user = stack.user(user_org, role)
    bases = [f"/services/atomscale-data-{SERVED}/atomscale/api/v1/"]
    if user_org == SERVED:
        token = running(user)
        bases.append(f"/user/{user}/atomscale/api/v1/")
    else:
        _, token = logged_in(user)
    http = helpers.session(stack.ca)
    ids = _sample_ids(stack)
    vault = stack.vault()
    served_log, own_log = vault.audit(SERVED), vault.audit(user_org)
    wrong = []
    try:
        for template, method in role_matrix.operations():
            status, action = hub_expectation(template, method, role, user_org)
            allowed = status < 400
            for base in bases:
                req = _concrete(sample_request(template, method), ids)
                where = f"{method.upper()} {base}{template} as {user}"
                before = _count(served_log, user)
                before_own = _count(own_log, user) if user_org != SERVED else None
                r = http.request(
                    req["method"],
                    stack.url + base + "/".join(req["path"]),
                    params=req["params"],
                    data=req.get("body"),
                    headers={**req["headers"], "Authorization": f"token {token}"},
                    allow_redirects=False,
                    timeout=60,
                )
                new = served_log.events(actor=user, limit=100_000)
                new = new[: len(new) - before]
                denied = [e["action"] for e in new if e["outcome"] == "denied"]
                granted = [e["action"] for e in new if e["outcome"] == "allowed"]
                if r.status_code != status:
                    wrong.append(f"{where}: {r.status_code} (expected {status}) {r.text[:160]}")
                if allowed and denied:
                    wrong.append(f"{where}: allowed, yet refusals were audited: {denied}")
                if allowed and action in role_matrix.AUDITED_WHEN_ALLOWED and action not in granted:
                    wrong.append(f"{where}: allowed but no {action} event: {granted}")
                if not allowed and denied != [action]:
                    wrong.append(
                        f"{where}: expected one {action} refusal in {SERVED}'s log, got {denied}"
                    )
                if before_own is not None and _count(own_log, user) != before_own:
                    wrong.append(f"{where}: an event went to {user_org}'s log")
    finally:
        vault.close()
    assert not wrong, "\n".join(wrong)
