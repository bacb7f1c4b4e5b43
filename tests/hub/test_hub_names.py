"""User and org names: injective Unix names, hub groups that cannot be confused, reserved names,
collisions refused at creation, and the authenticator's user-name claim checked and bound."""

from __future__ import annotations

import asyncio
import random
import re

import pytest

from atomscale_lab import names
from atomscale_lab.errors import ValidationError
from atomscale_lab.hub import users as hub_users
from atomscale_lab.hub.roles import org_roles, org_roles_of, permissions_from_scopes
from atomscale_lab.hub.users import IdpUsers, check_name, org_group, unix_name

UNIX_RE = re.compile(r"^[a-z_][a-z0-9_-]*$")  # Debian's useradd/groupadd NAME_REGEX


def _random_names(n: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-"
    out = set()
    # Many share long heads, the case that truncation used to merge.
    heads = ["materials-growth-lab-scientist", "northwestern-university-mse", "a", "ab-"]
    while len(out) < n:
        head = rnd.choice(heads + [""])
        tail = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 12)))
        name = (head + tail)[:32]
        if not name[0].isalpha():
            name = "x" + name[1:]
        if names.NAME_RE.match(name):
            out.add(name)
    return sorted(out)


def test_long_user_and_org_names_get_distinct_unix_names():
    a, b = "materials-growth-lab-scientist1", "materials-growth-lab-scientist2"
    assert unix_name(a) != unix_name(b)
    o1, o2 = "northwestern-university-mse1", "northwestern-university-mse2"
    assert org_group(o1) != org_group(o2)
    for n in (unix_name(a), unix_name(b), org_group(o1), org_group(o2)):
        assert len(n) <= 32 and UNIX_RE.match(n), n
    # readable: the head of the name survives
    assert unix_name(a).startswith("as-materials-growth")
    assert unix_name("acme-scientist") == "as-acme-scientist"
    assert org_group("acme") == "as-org-acme"
    # the provisioning names of a long org (<org>-scientist) are valid and map apart too
    long_org = "northwestern-university-mse1"
    users = [f"{long_org}-{r}" for r in ("admin", "scientist", "viewer", "support")]
    assert [check_name(u) for u in users] == users
    assert len({unix_name(u) for u in users}) == 4


def test_unix_names_are_injective_over_many_names():
    pool = _random_names(3000)
    for fn in (unix_name, org_group):
        mapped = {}
        for n in pool:
            u = fn(n)
            assert len(u) <= 32 and UNIX_RE.match(u), u
            assert mapped.setdefault(u, n) == n, f"{n} and {mapped[u]} share {u}"


def test_a_short_name_cannot_imitate_a_shortened_one():
    long = "materials-growth-lab-scientist1"
    short = unix_name(long)[3:]  # what an attacker would register to land on the same account
    with pytest.raises(ValidationError):
        check_name(short)


def test_member_and_role_groups_never_collide():
    # An org named like "<org>-admin" must not make its members org-admins of "<org>".
    assert org_roles_of(["org:org-admin"]) == {}
    assert org_roles_of([names.hub_org_group("acme-admin")]) == {}
    assert org_roles_of([names.hub_role_group("acme", "org-admin")]) == {"acme": {"org-admin"}}
    for role in org_roles("acme"):
        for g in role["groups"]:
            assert names.org_of_group(g) is None  # a role group is never a member group
    with pytest.raises(ValidationError):
        names.hub_org_group("acme:org-admin")


def test_org_scope_filter_matches_the_member_group():
    scope = [s for s in org_roles("acme")[0]["scopes"] if "data:read" in s][0]
    assert scope.endswith("!group=" + names.hub_org_group("acme"))
    assert permissions_from_scopes([scope], "acme") == {"data:read"}


@pytest.mark.parametrize(
    "org", ["org", "role", "hub", "atomscale-keys", "atomscale", "svc-acme", "org-admin", "role-x"]
)
def test_reserved_org_names_are_refused(vault, org):
    with pytest.raises(ValidationError, match="reserved"):
        vault.create_org(org, "us")
    assert org not in {o["name"] for o in vault.orgs()}
    vault.create_org("acme-lab", "us")  # an ordinary name still works


def test_org_group_collision_is_refused_at_creation(vault, monkeypatch):
    # Simulate a hash collision: the mapping truncates like the old one did.
    monkeypatch.setattr(names, "unix_org_group", lambda org: f"as-org-{org}"[:32])
    vault.create_org("northwestern-university-mse1", "us")
    with pytest.raises(ValidationError, match="Unix name"):
        vault.create_org("northwestern-university-mse2", "us")
    assert [o["name"] for o in vault.orgs()] == ["northwestern-university-mse1"]


def test_user_collision_and_reserved_user_names_are_refused(tmp_path, monkeypatch):
    users = IdpUsers(tmp_path / "users.json")
    users.add("materials-growth-lab-scientist1", "acme", "scientist")
    users.add("materials-growth-lab-scientist2", "acme", "scientist")  # distinct accounts
    monkeypatch.setattr(hub_users, "unix_name", lambda u: f"as-{u}"[:32])
    with pytest.raises(ValidationError, match="Unix name"):
        users.add("materials-growth-lab-scientist3", "acme", "scientist")
    for reserved in ("atomscale-keys", "svc-acme", "org-acme"):
        with pytest.raises(ValidationError, match="reserved"):
            users.add(reserved, "acme", "scientist")
    assert set(users.load()) == {
        "materials-growth-lab-scientist1",
        "materials-growth-lab-scientist2",
    }


def test_an_existing_unix_account_of_someone_else_is_not_reused(monkeypatch, tmp_path):
    import pwd

    class Pw:
        pw_gecos, pw_dir, pw_uid = "atomscale-lab other-user", str(tmp_path), 0

    monkeypatch.setattr(hub_users, "ensure_org_group", lambda org: 0)
    monkeypatch.setattr(pwd, "getpwnam", lambda name: Pw)
    with pytest.raises(ValidationError, match="does not belong"):
        hub_users.ensure_unix_user("acme-scientist", "acme", tmp_path / "homes")


# --------------------------------------------------------------------------- authenticator


def test_authenticator_refuses_invalid_or_reserved_user_name_claims():
    from atomscale_lab.hub.auth import AtomscaleAuthenticator, AuthRefused

    a = AtomscaleAuthenticator(issuer="https://idp.test", client_id="x", known_orgs={"acme"})
    assert a.user_info_to_username({"preferred_username": "acme-scientist"}) == "acme-scientist"
    for bad in (
        "Root",
        "a" * 70,
        "acme_scientist",
        "../etc",
        "atomscale-keys",
        "x",
        "acme:org-admin",
    ):
        with pytest.raises(AuthRefused):
            a.user_info_to_username({"preferred_username": bad})


class _Bound:
    name = "acme-scientist"

    def __init__(self, subject):
        self.subject = subject

    async def get_auth_state(self):
        return {"atomscale": {"org": "acme", "role": "scientist", "subject": self.subject}}


def test_authenticator_binds_the_user_to_its_subject():
    from atomscale_lab.hub.auth import AtomscaleAuthenticator, AuthRefused

    a = AtomscaleAuthenticator(issuer="https://idp.test", client_id="x", known_orgs={"acme"})
    seen = []
    a.audit_hook = lambda org, actor, action, outcome, **d: seen.append(
        (actor, outcome, d.get("reason"))
    )
    owner = {"iss": "https://idp.test", "sub": "u1"}
    bound = _Bound(a.subject(owner))
    asyncio.run(a.check_subject(bound, owner))  # the same subject: fine
    asyncio.run(a.check_subject(None, owner))  # a new hub user: bound at this login
    with pytest.raises(AuthRefused, match="another account"):
        asyncio.run(a.check_subject(bound, {"iss": "https://idp.test", "sub": "u2"}))
    assert seen == [("acme-scientist", "denied", "subject mismatch")]
