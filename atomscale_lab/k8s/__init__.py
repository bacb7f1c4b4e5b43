"""Kubernetes manifests of one org (``atomscale-lab k8s render ORG``).

Pure logic: builds plain dicts (one per Kubernetes object), knows nothing of a cluster. Each org
gets its own namespace ``atomscale-<org>`` holding

- the user pods (placed there by :class:`atomscale_lab.hub.kube.AtomscaleKubeSpawner`), and a Role
  that lets the hub's service account manage them;
- the org's data server ``atomscale-data-<org>``: a Deployment with replicas (stateless readers),
  a Service and a PodDisruptionBudget;
- the org's ingest: a StatefulSet with one write-ahead-log volume per replica; the replica that
  owns the org holds its lease in the shared PostgreSQL database (an advisory lock, see
  ``atomscale_lab.ingest.lease``), so ingest needs no Kubernetes API token;
- NetworkPolicies: everything denied by default; user pods reach only their org's data server,
  the hub's API and DNS; the data server and ingest are reached only from the org's user pods and
  the hub's namespace.

Every pod runs with the "restricted" Pod Security Standard (non-root, no privilege escalation, all
capabilities dropped, RuntimeDefault seccomp, read-only root file system) and on the org's node
pool (``nodeSelector`` + ``tolerations``) when one is configured. No secret is in a manifest: the
data server and ingest read theirs from a Secret named after them, made by the operator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from atomscale_lab.errors import ValidationError

ORG_LABEL = "atomscale-lab/org"
PART_OF = {"app.kubernetes.io/part-of": "atomscale-lab"}
USER_POD = {"component": "singleuser-server"}
"""The label Zero to JupyterHub (KubeSpawner) puts on user pods."""
DATA_PORT = 8080
INGEST_PORT = 8443
USER_PORT = 8888
HUB_API_PORT = 8081
TMP = "/tmp"  # noqa: S108 - an emptyDir of the pod, not a host folder
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 - inside a pod; NetworkPolicies limit who connects
_ORG = re.compile(r"^[a-z][a-z0-9-]{1,31}$")


@dataclass
class K8sOptions:
    """Settings of the rendered manifests (defaults suit a Zero to JupyterHub release ``hub``)."""

    image: str = "ghcr.io/atomscale-lab/atomscale-lab:latest"
    hub_namespace: str = "jhub"
    """Namespace of the Zero to JupyterHub release (hub and proxy pods)."""
    data_replicas: int = 2
    ingest_replicas: int = 2
    data_command: list[str] = field(
        default_factory=lambda: ["python", "-m", "atomscale_lab.hub.services.data"]
    )
    """The per-org data server's command (it listens on ``JUPYTERHUB_SERVICE_URL``)."""
    ingest_command: list[str] = field(
        default_factory=lambda: [
            "atomscale-lab",
            "ingest",
            "serve",
            "--host",
            ANY_ADDRESS,
            "--port",
            str(INGEST_PORT),
        ]
    )
    node_pool_label: str | None = "atomscale-lab/org-pool"
    """Node label whose value is the org; ``None``: no per-org node pool."""
    node_pool_taint: str | None = "atomscale-lab/org"
    """Taint key (value = org, effect NoSchedule) tolerated by the org's pods; ``None``: none."""
    wal_size: str = "20Gi"
    storage_class: str | None = None
    services_namespace: str | None = "atomscale-system"
    """Namespace of in-cluster PostgreSQL / OpenBao / object storage that servers may reach."""
    external_cidrs: list[str] = field(default_factory=list)
    """Outside addresses (cloud KMS, S3) servers may reach on 443."""
    api_server_cidrs: list[str] = field(default_factory=list)
    """Where ingest may reach the Kubernetes API (none by default: its lease is in PostgreSQL)."""
    ingress_namespace: str | None = "ingress-nginx"
    """Namespace of the ingress controller that forwards instrument traffic to ingest."""
    uid: int = 1000
    gid: int = 1000


def namespace_of(org: str) -> str:
    """The Kubernetes namespace of an org."""
    return f"atomscale-{org}"


def data_server_name(org: str) -> str:
    """The name of the org's data server (Deployment, Service, hub service)."""
    return f"atomscale-data-{org}"


def ingest_name(org: str) -> str:
    """The name of the org's ingest StatefulSet and Service."""
    return f"atomscale-ingest-{org}"


def check_org(org: str) -> str:
    """Refuse an org name that is not a valid org (and so not a valid namespace suffix)."""
    if not isinstance(org, str) or not _ORG.match(org):
        raise ValidationError(
            f"invalid org name {org!r}: 2-32 of a-z, 0-9, '-', starting with a letter", field="org"
        )
    return org


def org_labels(org: str, **extra: str) -> dict[str, str]:
    """The labels every object of the org carries."""
    return {**PART_OF, ORG_LABEL: org, **extra}


def pod_security_context(opts: K8sOptions) -> dict:
    """Pod-level settings of the restricted Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": opts.uid,
        "runAsGroup": opts.gid,
        "fsGroup": opts.gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(read_only_root: bool = True) -> dict:
    """Container-level settings of the restricted Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def node_placement(org: str, opts: K8sOptions) -> dict:
    """``nodeSelector`` and ``tolerations`` that keep the org's pods on its node pool."""
    out: dict = {}
    if opts.node_pool_label:
        out["nodeSelector"] = {opts.node_pool_label: org}
    if opts.node_pool_taint:
        out["tolerations"] = [
            {"key": opts.node_pool_taint, "operator": "Equal", "value": org, "effect": "NoSchedule"}
        ]
    return out


def _meta(name: str, org: str, **labels: str) -> dict:
    return {"name": name, "namespace": namespace_of(org), "labels": org_labels(org, **labels)}


def _dns_egress() -> dict:
    return {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def _hub_peer(opts: K8sOptions, component: str) -> dict:
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": opts.hub_namespace}},
        "podSelector": {"matchLabels": {"component": component}},
    }


def _backing_egress(opts: K8sOptions) -> list[dict]:
    rules = []
    if opts.services_namespace:
        rules.append(
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": opts.services_namespace}
                        }
                    }
                ]
            }
        )
    if opts.external_cidrs:
        rules.append(
            {
                "to": [{"ipBlock": {"cidr": c}} for c in opts.external_cidrs],
                "ports": [{"protocol": "TCP", "port": 443}],
            }
        )
    return rules


def network_policies(org: str, opts: K8sOptions) -> list[dict]:
    """Default deny, and the few paths the org's pods need (all within the org or to the hub)."""
    data = {"app.kubernetes.io/name": "atomscale-data"}
    ingest = {"app.kubernetes.io/name": "atomscale-ingest"}
    own_users = {"podSelector": {"matchLabels": {**USER_POD, ORG_LABEL: org}}}

    def policy(name, selector, ingress, egress):
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(name, org),
            "spec": {
                "podSelector": selector,
                "policyTypes": ["Ingress", "Egress"],
                "ingress": ingress,
                "egress": egress,
            },
        }

    return [
        policy("default-deny", {}, [], []),
        policy(
            "user-pods",
            {"matchLabels": {**USER_POD, ORG_LABEL: org}},
            [
                {
                    "from": [_hub_peer(opts, "proxy"), _hub_peer(opts, "hub")],
                    "ports": [{"protocol": "TCP", "port": USER_PORT}],
                }
            ],
            [
                {
                    "to": [{"podSelector": {"matchLabels": {**data, ORG_LABEL: org}}}],
                    "ports": [{"protocol": "TCP", "port": DATA_PORT}],
                },
                {
                    "to": [_hub_peer(opts, "hub")],
                    "ports": [{"protocol": "TCP", "port": HUB_API_PORT}],
                },
                _dns_egress(),
            ],
        ),
        policy(
            "data-server",
            {"matchLabels": {**data, ORG_LABEL: org}},
            [
                {
                    "from": [own_users, _hub_peer(opts, "hub"), _hub_peer(opts, "proxy")],
                    "ports": [{"protocol": "TCP", "port": DATA_PORT}],
                }
            ],
            [
                {
                    "to": [_hub_peer(opts, "hub")],
                    "ports": [{"protocol": "TCP", "port": HUB_API_PORT}],
                },
                _dns_egress(),
                *_backing_egress(opts),
            ],
        ),
        policy(
            "ingest",
            {"matchLabels": {**ingest, ORG_LABEL: org}},
            [
                {
                    "from": [_hub_peer(opts, "proxy")]
                    + (
                        [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {
                                        "kubernetes.io/metadata.name": opts.ingress_namespace
                                    }
                                }
                            }
                        ]
                        if opts.ingress_namespace
                        else []
                    ),
                    "ports": [{"protocol": "TCP", "port": INGEST_PORT}],
                }
            ],
            [_dns_egress(), *_backing_egress(opts)]
            + (
                [
                    {
                        "to": [{"ipBlock": {"cidr": c}} for c in opts.api_server_cidrs],
                        "ports": [
                            {"protocol": "TCP", "port": 443},
                            {"protocol": "TCP", "port": 6443},
                        ],
                    }
                ]
                if opts.api_server_cidrs
                else []
            ),
        ),
    ]


def _container(
    name: str, command: list[str], port: int, env: list[dict], mounts: list[dict], opts: K8sOptions
) -> dict:
    return {
        "name": name,
        "image": opts.image,
        "command": list(command),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "envFrom": [{"secretRef": {"name": f"{name}-env", "optional": False}}],
        "volumeMounts": [{"name": "tmp", "mountPath": TMP}, *mounts],
        "securityContext": container_security_context(True),
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "4Gi"}},
    }


def _env(org: str, name: str, port: int, opts: K8sOptions) -> list[dict]:
    hub_api = f"http://hub.{opts.hub_namespace}.svc.cluster.local:{HUB_API_PORT}/hub/api"
    return [
        {"name": "ATOMSCALE_ORG", "value": org},
        {"name": "ATOMSCALE_HOME", "value": "/var/lib/atomscale"},
        {"name": "JUPYTERHUB_SERVICE_NAME", "value": name},
        {"name": "JUPYTERHUB_SERVICE_URL", "value": f"http://{ANY_ADDRESS}:{port}"},
        {"name": "JUPYTERHUB_SERVICE_PREFIX", "value": f"/services/{name}/"},
        {"name": "JUPYTERHUB_API_URL", "value": hub_api},
        {"name": "HOME", "value": TMP},
    ]


def data_server(org: str, opts: K8sOptions) -> list[dict]:
    """The org's data server: Deployment (replicas), Service, PodDisruptionBudget."""
    name = data_server_name(org)
    sel = {"app.kubernetes.io/name": "atomscale-data", ORG_LABEL: org}
    pod_spec = {
        "serviceAccountName": "atomscale-data",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(opts),
        **node_placement(org, opts),
        "containers": [
            {
                **_container(
                    name,
                    opts.data_command,
                    DATA_PORT,
                    _env(org, name, DATA_PORT, opts),
                    [{"name": "state", "mountPath": "/var/lib/atomscale"}],
                    opts,
                ),
                "readinessProbe": {"tcpSocket": {"port": DATA_PORT}, "periodSeconds": 5},
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "state", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(name, org, **{"app.kubernetes.io/name": "atomscale-data"}),
            "spec": {
                "replicas": opts.data_replicas,
                "selector": {"matchLabels": sel},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
                },
                "template": {"metadata": {"labels": org_labels(org, **sel)}, "spec": pod_spec},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, org, **{"app.kubernetes.io/name": "atomscale-data"}),
            "spec": {
                "selector": sel,
                "ports": [
                    {"name": "http", "port": DATA_PORT, "targetPort": DATA_PORT, "protocol": "TCP"}
                ],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": _meta(name, org, **{"app.kubernetes.io/name": "atomscale-data"}),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": sel}},
        },
    ]


def ingest(org: str, opts: K8sOptions) -> list[dict]:
    """The org's ingest: StatefulSet (one WAL volume per replica) and Service. Replicas share
    the state database (``ATOMSCALE_DATABASE_URL`` from their Secret); the org's lease is a
    PostgreSQL advisory lock held by one replica at a time."""
    name = ingest_name(org)
    sel = {"app.kubernetes.io/name": "atomscale-ingest", ORG_LABEL: org}
    env = _env(org, name, INGEST_PORT, opts) + [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    claim = {
        "metadata": {"name": "wal", "labels": org_labels(org, **sel)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": opts.wal_size}},
        },
    }
    if opts.storage_class:
        claim["spec"]["storageClassName"] = opts.storage_class
    pod_spec = {
        "serviceAccountName": "atomscale-ingest",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(opts),
        **node_placement(org, opts),
        "containers": [
            {
                **_container(
                    name,
                    opts.ingest_command,
                    INGEST_PORT,
                    env,
                    [{"name": "wal", "mountPath": "/var/lib/atomscale/ingest"}],
                    opts,
                ),
                "readinessProbe": {"tcpSocket": {"port": INGEST_PORT}, "periodSeconds": 5},
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, org, **{"app.kubernetes.io/name": "atomscale-ingest"}),
            "spec": {
                "clusterIP": "None",
                "selector": sel,
                "ports": [
                    {
                        "name": "https",
                        "port": INGEST_PORT,
                        "targetPort": INGEST_PORT,
                        "protocol": "TCP",
                    }
                ],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta(name, org, **{"app.kubernetes.io/name": "atomscale-ingest"}),
            "spec": {
                "serviceName": name,
                "replicas": opts.ingest_replicas,
                "selector": {"matchLabels": sel},
                "podManagementPolicy": "Parallel",
                "template": {"metadata": {"labels": org_labels(org, **sel)}, "spec": pod_spec},
                "volumeClaimTemplates": [claim],
            },
        },
    ]


def namespace(org: str) -> list[dict]:
    """The org's namespace (Pod Security "restricted" enforced) and its service accounts."""
    ns = namespace_of(org)
    psa = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "audit", "warn")}
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {**org_labels(org), **psa}},
        },
        *(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": _meta(sa, org),
                "automountServiceAccountToken": False,
            }
            for sa in ("atomscale-user", "atomscale-data", "atomscale-ingest")
        ),
    ]


def hub_access(org: str, opts: K8sOptions, hub_service_account: str = "hub") -> list[dict]:
    """A Role in the org's namespace for the hub's service account to run user pods there."""
    rules = [
        {
            "apiGroups": [""],
            "resources": ["pods", "persistentvolumeclaims", "services", "secrets"],
            "verbs": ["get", "watch", "list", "create", "delete", "patch"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]},
    ]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta("atomscale-hub-spawner", org),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta("atomscale-hub-spawner", org),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "atomscale-hub-spawner",
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": hub_service_account,
                    "namespace": opts.hub_namespace,
                }
            ],
        },
    ]


def render(org: str, opts: K8sOptions | None = None) -> list[dict]:
    """Every manifest of one org, in the order ``kubectl apply`` needs (namespace first)."""
    check_org(org)
    opts = opts or K8sOptions()
    if opts.data_replicas < 1 or opts.ingest_replicas < 1:
        raise ValidationError("replicas must be at least 1", field="replicas")
    return [
        *namespace(org),
        *hub_access(org, opts),
        *network_policies(org, opts),
        *data_server(org, opts),
        *ingest(org, opts),
    ]


def to_yaml(objects: list[dict]) -> str:
    """A multi-document YAML stream of ``objects``."""
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
