"""Every operation of the REST API × every role × own org / another org: the status the role table
implies, and every refusal one audit event in the served org's log naming the user."""

import pytest

from atomscale_lab.permissions import PERMISSIONS, ROLE_PERMISSIONS
from atomscale_lab.server import handlers
from tests.support import role_matrix
from tests.support.roles import sample_request, user_name


def test_the_matrix_covers_every_route_role_and_permission():
    ops = role_matrix.operations()
    served = {(t, m) for t, h in handlers.ROUTES for m in role_matrix.METHODS if m in vars(h)}
    assert set(ops) == served and len(ops) == len(served)
    assert len(role_matrix.cases()) == len(ops) * len(ROLE_PERMISSIONS) * 2
    # each permission of the role table gates at least one operation
    used = set().union(*(role_matrix.required_permissions(t, m) for t, m in ops))
    assert used == set(PERMISSIONS)
    # nobody outside the org may do anything; inside, the role table decides
    for case in role_matrix.cases():
        if not case.same_org:
            assert case.expected == 403, case
        else:
            assert case.allowed == bool(ROLE_PERMISSIONS[case.role] & case.permissions), case


def test_expected_status_follows_the_role_table():
    # spot checks of the generator against the architecture's table
    assert role_matrix.expected_status("metrology", "post", "scientist", True) == 201
    assert role_matrix.expected_status("metrology", "post", "viewer", True) == 403
    assert role_matrix.expected_status("config", "put", "support", True) == 200
    assert role_matrix.expected_status("config", "put", "scientist", True) == 403
    assert role_matrix.expected_status("config", "get", "viewer", True) == 200
    assert role_matrix.expected_status("runs", "get", "support", True) == 403
    assert role_matrix.expected_status("audit", "get", "scientist", True) == 200
    assert role_matrix.expected_status("audit", "get", "viewer", True) == 403
    assert role_matrix.expected_status("status", "get", "org-admin", False) == 403


@pytest.mark.parametrize("same_org", [True, False], ids=["own-org", "other-org"])
@pytest.mark.parametrize("role", role_matrix.roles())
async def test_role_matrix(call, audit_lines, role, same_org):
    user = user_name(role, "acme" if same_org else "beta")
    wrong = []
    for case in role_matrix.cases(role, same_org):
        req = sample_request(case.template, case.method)
        before = {org: len(audit_lines(org)) for org in ("acme", "beta")}
        code, body = await call(
            user,
            req["method"],
            *req["path"],
            params=req["params"],
            body=req.get("body"),
            headers=req["headers"],
        )
        new = audit_lines("acme")[before["acme"] :]
        denied = [(e["actor"], e["action"]) for e in new if e["outcome"] == "denied"]
        if code != case.expected:
            wrong.append(f"{case}: {code} (expected {case.expected}) {body[:200]!r}")
        if case.allowed and denied:
            wrong.append(f"{case}: allowed, yet refusals were audited: {denied}")
        allowed = [(e["actor"], e["action"]) for e in new if e["outcome"] == "allowed"]
        if (
            case.allowed
            and case.audit_action in role_matrix.AUDITED_WHEN_ALLOWED
            and (user, case.audit_action) not in allowed
        ):
            wrong.append(f"{case}: allowed but no {case.audit_action} event of {user}: {allowed}")
        if any(actor != user for actor, _ in allowed + denied):
            wrong.append(f"{case}: an event names someone else: {allowed + denied}")
        if not case.allowed and denied != [(user, case.audit_action)]:
            wrong.append(
                f"{case}: expected one {case.audit_action} refusal of {user} in acme's "
                f"log, got {denied}"
            )
        if len(audit_lines("beta")) != before["beta"]:
            wrong.append(f"{case}: an event went to beta's log")
    assert not wrong, "\n".join(wrong)


async def test_a_user_of_no_org_is_refused_everything_and_audited(call, audit_lines):
    wrong = []
    for template, method in role_matrix.operations():
        req = sample_request(template, method)
        before = len(audit_lines("acme"))
        code, _ = await call(
            "stranger",
            req["method"],
            *req["path"],
            params=req["params"],
            body=req.get("body"),
            headers=req["headers"],
        )
        denied = [
            (e["actor"], e["action"])
            for e in audit_lines("acme")[before:]
            if e["outcome"] == "denied"
        ]
        if code != 403 or denied != [("stranger", role_matrix.audit_action(template, method))]:
            wrong.append(f"{method.upper()} {template}: {code}, {denied}")
    assert not wrong, "\n".join(wrong)
