"""Kubernetes manifests of two orgs and KubeSpawner user pods, checked strictly against the
Kubernetes schemas offline (``kubernetes-validate``) and for isolation between the orgs."""

import asyncio
import copy
from pathlib import Path
from unittest.mock import Mock
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from jupyterhub.objects import Hub, Server
from traitlets.config import Config

from atomscale_lab.cli.main import main
from atomscale_lab.hub.kube import AtomscaleKubeSpawner
from atomscale_lab.k8s import ORG_LABEL, K8sOptions, namespace_of, render

K8S_VERSION = kubernetes_validate.latest_version()
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
ORGS = ("acme", "beta")
SHARED_NAMESPACES = {"jhub", "kube-system", "atomscale-system", "ingress-nginx"}


def validate(obj):
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def pod_specs(objects):
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            yield o, o["spec"]["template"]["spec"]


def peers(policy):
    for rule in policy["spec"].get("ingress", []):
        yield from rule.get("from", [])
    for rule in policy["spec"].get("egress", []):
        yield from rule.get("to", [])


def assert_restricted(spec, org):
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert psc.get("runAsUser", 1) != 0
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc.get("privileged", False) is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host)
    assert not any("hostPath" in v for v in spec.get("volumes", []))
    assert spec["nodeSelector"] == {"atomscale-lab/org-pool": org}
    assert spec["tolerations"] == [
        {"key": "atomscale-lab/org", "operator": "Equal", "value": org, "effect": "NoSchedule"}
    ]


@pytest.mark.parametrize("org", ORGS)
def test_org_manifests_are_valid_restricted_and_isolated(org):
    objects = render(org, K8sOptions(data_replicas=3, ingest_replicas=2))
    other = next(o for o in ORGS if o != org)
    for o in objects:
        validate(o)
        assert o["metadata"]["labels"][ORG_LABEL] == org
        if o["kind"] == "Namespace":
            assert o["metadata"]["name"] == namespace_of(org)
            assert o["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert o["metadata"]["namespace"] == namespace_of(org)
        assert other not in yaml.safe_dump(o)
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "Namespace"

    for o, spec in pod_specs(objects):
        assert_restricted(spec, org)
        assert o["spec"]["template"]["metadata"]["labels"][ORG_LABEL] == org
        if o["kind"] == "Deployment":
            assert o["metadata"]["name"] == f"atomscale-data-{org}"
            assert o["spec"]["replicas"] == 3
            assert spec["automountServiceAccountToken"] is False
        else:
            assert o["spec"]["replicas"] == 2
            (claim,) = o["spec"]["volumeClaimTemplates"]
            mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
            assert mounts[claim["metadata"]["name"]] == "/var/lib/atomscale/ingest"
    # the org lease is a PostgreSQL advisory lock: no pod of the org has a Kubernetes API token
    assert not [
        o for o in objects if o["kind"] in ("Lease", "Role") and "lease" in yaml.safe_dump(o)
    ]
    for o, spec in pod_specs(objects):
        assert spec["automountServiceAccountToken"] is False, o["metadata"]["name"]
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert accounts and all(a["automountServiceAccountToken"] is False for a in accounts)

    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    deny = policies.pop("default-deny")["spec"]
    assert deny["podSelector"] == {} and deny["ingress"] == [] and deny["egress"] == []
    for p in policies.values():
        assert p["spec"]["podSelector"]["matchLabels"][ORG_LABEL] == org
        for peer in peers(p):
            ns = peer.get("namespaceSelector")
            if ns is not None:  # only the hub's and shared infrastructure namespaces
                assert ns["matchLabels"]["kubernetes.io/metadata.name"] in SHARED_NAMESPACES
            elif "podSelector" in peer:  # same namespace: only this org's pods
                assert peer["podSelector"]["matchLabels"][ORG_LABEL] == org
    # User pods reach the org's data server, the hub API and DNS: nothing else.
    user_egress = policies["user-pods"]["spec"]["egress"]
    targets = [
        (
            tuple(sorted(peer.get("podSelector", {}).get("matchLabels", {}).items())),
            tuple(p["port"] for p in rule["ports"]),
        )
        for rule in user_egress
        for peer in rule["to"]
    ]
    assert targets == [
        ((("app.kubernetes.io/name", "atomscale-data"), (ORG_LABEL, org)), (8080,)),
        ((("component", "hub"),), (8081,)),
        ((("k8s-app", "kube-dns"),), (53, 53)),
    ]


def test_strict_validation_catches_mistakes():
    deployment = next(o for o in render("acme") if o["kind"] == "Deployment")
    validate(deployment)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["automountServiceAcountToken"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(typo)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong_type)


def test_cli_render_prints_the_manifests(capsys):
    assert (
        main(
            [
                "k8s",
                "render",
                "beta",
                "--data-replicas",
                "4",
                "--data-command",
                "python -m atomscale_lab.hub.services.data --org beta",
            ]
        )
        == 0
    )
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    expected = render(
        "beta",
        K8sOptions(
            data_replicas=4,
            data_command=["python", "-m", "atomscale_lab.hub.services.data", "--org", "beta"],
        ),
    )
    assert docs == expected
    assert main(["k8s", "render", "Not_An_Org"]) == 1
    assert capsys.readouterr().out == ""


def test_deploy_files_are_valid(monkeypatch):
    for doc in yaml.safe_load_all((DEPLOY / "hub-rbac.yaml").read_text()):
        validate(doc)
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    cls = values["hub"]["config"]["JupyterHub"]["spawner_class"]
    assert cls == "atomscale_lab.hub.kube.AtomscaleKubeSpawner"
    su = values["singleuser"]
    assert su["extraPodConfig"]["automountServiceAccountToken"] is False
    assert su["cloudMetadata"]["blockWithIptables"] is False  # its init container is privileged
    assert su["allowPrivilegeEscalation"] is False
    c = Config()
    monkeypatch.setenv("ATOMSCALE_ORGS", values["hub"]["extraEnv"]["ATOMSCALE_ORGS"])
    exec(values["hub"]["extraConfig"]["atomscale-lab"], {"c": c})
    assert {r["name"] for r in c.JupyterHub.load_roles} >= {"acme-scientist", "beta-viewer"}
    assert c.AtomscaleAuthenticator.known_orgs == {"acme", "beta"}
    assert values["hub"]["config"]["AtomscaleAuthenticator"]["require_mfa"] is True
    # JupyterHub's own database on PostgreSQL, its password from a Secret, never in the values
    db = values["hub"]["db"]
    assert db["type"] == "other" and db["url"].startswith("postgresql+psycopg://")
    assert urlsplit(db["url"]).password is None and urlsplit(db["url"]).path == "/jupyterhub"
    assert values["hub"]["extraEnv"]["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
    assert {"protocol": "TCP", "port": 5432} in [
        p for rule in values["hub"]["networkPolicy"]["egress"] for p in rule["ports"]
    ]


class _Group:
    def __init__(self, name):
        self.name = name


class _User(Mock):
    server = Server()

    @property
    def escaped_name(self):
        return self.name

    @property
    def url(self):
        return self.server.url


def _user(name, *groups):
    u = _User()
    u.name = name
    u.groups = [_Group(g) for g in groups]
    return u


def pod_of(user, config=None, **traits):
    """The pod manifest of ``user`` as a dict, built offline."""
    from kubernetes_asyncio.client import ApiClient

    async def build():
        sp = AtomscaleKubeSpawner(
            user=user, hub=Hub(), config=config or Config(), _mock=True, **traits
        )
        try:
            pod = await sp.get_pod_manifest()
            return sp, ApiClient().sanitize_for_serialization(pod)
        finally:
            await sp.api.api_client.close()

    return asyncio.run(build())


def hostile_config():
    """What a careless (or hostile) values file could set: none of it may survive."""
    c = Config()
    c.KubeSpawner.privileged = True
    c.KubeSpawner.allow_privilege_escalation = True
    c.KubeSpawner.automount_service_account_token = True
    c.KubeSpawner.container_security_context = {
        "capabilities": {"add": ["NET_ADMIN"]},
        "readOnlyRootFilesystem": False,
    }
    c.KubeSpawner.extra_pod_config = {"hostNetwork": True, "hostPID": True}
    c.KubeSpawner.node_selector = {"atomscale-lab/org-pool": "beta"}
    c.KubeSpawner.tolerations = [
        {"key": "atomscale-lab/org", "operator": "Equal", "value": "beta", "effect": "NoSchedule"}
    ]
    c.KubeSpawner.environment = {
        "ATOMSCALE_ROOT_KEY": "ask1:secret",
        "VAULT_TOKEN": "s.x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "LAB_NAME": "thin films",
    }
    c.KubeSpawner.uid = 1000
    c.KubeSpawner.fs_gid = 1000
    return c


@pytest.mark.parametrize("config", [None, "hostile"])
def test_user_pods_of_two_orgs(kubeconfig, config):
    cfg = hostile_config() if config else None
    sp_a, pod_a = pod_of(_user("alice", "org:acme", "role:acme:scientist"), cfg)
    sp_b, pod_b = pod_of(_user("bob", "org:beta", "role:beta:viewer"), cfg)
    for org, sp, pod in (("acme", sp_a, pod_a), ("beta", sp_b, pod_b)):
        validate(pod)
        assert sp.namespace == namespace_of(org)
        assert pod["metadata"]["labels"][ORG_LABEL] == org
        assert pod["metadata"]["labels"]["component"] == "singleuser-server"
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == "atomscale-user"
        assert_restricted(spec, org)
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["ATOMSCALE_ORG"] == org
        assert env["ATOMSCALE_DATA_SERVER_URL"] == (
            f"http://atomscale-data-{org}.atomscale-{org}.svc.cluster.local:8080"
        )
        assert not any(k.startswith(("ATOMSCALE_ROOT_KEY", "VAULT_", "AWS_")) for k in env)
        mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        assert "/tmp" in mounts
    assert sp_a.namespace != sp_b.namespace
    if config:
        assert {e["name"]: e.get("value") for e in pod_a["spec"]["containers"][0]["env"]}[
            "LAB_NAME"
        ] == "thin films"


def test_user_pod_refusals(kubeconfig):
    with pytest.raises(RuntimeError, match="exactly one org"):
        pod_of(_user("nobody"))
    with pytest.raises(RuntimeError, match="exactly one org"):
        pod_of(_user("both", "role:acme:scientist", "role:beta:viewer"))
    c = Config()
    c.KubeSpawner.uid = 0
    with pytest.raises(RuntimeError, match="root"):
        pod_of(_user("alice", "role:acme:scientist"), c)
    c = Config()
    c.KubeSpawner.volumes = [{"name": "host", "hostPath": {"path": "/"}}]
    with pytest.raises(RuntimeError, match="host paths"):
        pod_of(_user("alice", "role:acme:scientist"), c)
