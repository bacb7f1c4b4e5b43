"""AtomscaleKubeSpawner: user servers as Kubernetes pods, one namespace per org.

Used with Zero to JupyterHub (``deploy/k8s/values.yaml``) instead of :class:`AtomscaleSpawner`.
Whatever the configuration says, every user pod

- runs in its org's namespace ``atomscale-<org>`` (the org from the user's ``org:<org>`` hub
  group, exactly one), labelled ``atomscale-lab/org=<org>`` so the org's NetworkPolicies (from
  ``atomscale-lab k8s render ORG``) select it;
- has no service-account token (``automountServiceAccountToken: false``);
- runs under the "restricted" Pod Security Standard: non-root, no privilege escalation, all
  capabilities dropped, RuntimeDefault seccomp, read-only root file system (``/tmp`` an emptyDir;
  :attr:`read_only_root_filesystem` can relax only that), no host namespaces or host paths;
- is placed on the org's node pool (``nodeSelector`` + ``tolerations``) when one is configured;
- gets the org's data server address and none of the hub's secrets in its environment.

The namespaces, NetworkPolicies and the hub's Role in each namespace come from
``atomscale-lab k8s render ORG``; this spawner never creates namespaces.
"""

from __future__ import annotations

from kubespawner import KubeSpawner
from traitlets import Bool, Unicode, default

from atomscale_lab.hub.roles import org_roles_of
from atomscale_lab.hub.spawner import SECRET_PREFIXES
from atomscale_lab.k8s import (
    DATA_PORT,
    ORG_LABEL,
    K8sOptions,
    data_server_name,
    namespace_of,
)

_DEFAULTS = K8sOptions()
SECRETS = SECRET_PREFIXES
"""Variables never passed to a user pod (the hub's KMS and cloud credentials among them)."""
TMP = "/tmp"  # noqa: S108 - an emptyDir of the pod, not the host's /tmp


class AtomscaleKubeSpawner(KubeSpawner):
    """KubeSpawner that puts each user's pod in its org's namespace, hardened (see module doc)."""

    org_node_pool_label = Unicode(
        _DEFAULTS.node_pool_label or "",
        config=True,
        help="Node label whose value is the org (nodeSelector); empty: no per-org node pool.",
    )
    org_node_pool_taint = Unicode(
        _DEFAULTS.node_pool_taint or "",
        config=True,
        help="Taint key (value = org, NoSchedule) the org's pods tolerate; empty: none.",
    )
    read_only_root_filesystem = Bool(
        True,
        config=True,
        help="Mount the image's root file system read-only (home is a volume, /tmp an emptyDir).",
    )

    @default("enable_user_namespaces")
    def _one_reflector_for_all_namespaces(self):
        # Pods live in one namespace per org: one watch across namespaces (the hub's service
        # account needs list/watch on pods cluster-wide, deploy/k8s/hub-rbac.yaml).
        return True

    @default("service_account")
    def _org_user_account(self):
        # Made in each org namespace by `k8s render`, itself without a token.
        return "atomscale-user"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            self._use_org_namespace(self.org)
        except (RuntimeError, AttributeError, TypeError):
            pass  # a user without an org is refused at start, not when the hub loads

    @property
    def org(self) -> str:
        """The user's org, from its ``org:<org>`` hub groups; refuses none or several."""
        orgs = set(org_roles_of(self.user.groups))
        if len(orgs) != 1:
            raise RuntimeError(
                f"user {self.user.name} must belong to exactly one org "
                f"(orgs: {sorted(orgs) or 'none'})"
            )
        return orgs.pop()

    def _use_org_namespace(self, org: str) -> None:
        ns = namespace_of(org)
        if self.namespace != ns:
            self.namespace = ns
            self.dns_name = self.dns_name_template.format(namespace=ns, name=self.pod_name)

    async def _ensure_namespace(self):
        """Namespaces are made by ``atomscale-lab k8s render``; the hub may not create them."""
        return None

    def get_env(self):
        """The hub's variables minus anything secret, plus the org and its data server."""
        env = super().get_env()
        for k in list(env):
            if k.startswith(SECRETS):
                del env[k]
        org = self.org
        env["ATOMSCALE_ORG"] = org
        env["ATOMSCALE_ROLE"] = ",".join(sorted(org_roles_of(self.user.groups).get(org, ())))
        env["ATOMSCALE_DATA_SERVER_URL"] = (
            f"http://{data_server_name(org)}.{namespace_of(org)}.svc.cluster.local:{DATA_PORT}"
        )
        return env

    async def get_pod_manifest(self):
        """KubeSpawner's pod, moved to the org's namespace and hardened (see module doc)."""
        org = self.org
        self._use_org_namespace(org)
        pod = await super().get_pod_manifest()
        return self.harden(pod, org)

    def harden(self, pod, org: str):
        """Apply the org label, node pool and restricted security settings to a ``V1Pod``."""
        from kubernetes_asyncio.client import models as m
        from kubespawner.utils import get_k8s_model as model

        pod.metadata.labels = {**(pod.metadata.labels or {}), ORG_LABEL: org}
        spec = pod.spec
        spec.automount_service_account_token = False
        spec.host_network = spec.host_pid = spec.host_ipc = False
        spec.share_process_namespace = None
        spec.enable_service_links = False
        spec.volumes = [model(m.V1Volume, v) for v in spec.volumes or []]
        if any(v.host_path for v in spec.volumes):
            raise RuntimeError("user pods may not mount host paths")

        psc = model(m.V1PodSecurityContext, spec.security_context or {})
        if psc.run_as_user == 0 or psc.run_as_group == 0:
            raise RuntimeError("user pods may not run as root (uid/gid 0)")
        psc.run_as_non_root = True
        psc.seccomp_profile = m.V1SeccompProfile(type="RuntimeDefault")
        spec.security_context = psc

        for c in [*(spec.containers or []), *(spec.init_containers or [])]:
            sc = model(m.V1SecurityContext, c.security_context or {})
            if sc.run_as_user == 0 or sc.run_as_group == 0:
                raise RuntimeError(f"container {c.name} may not run as root (uid/gid 0)")
            sc.run_as_non_root = True
            sc.privileged = False
            sc.allow_privilege_escalation = False
            sc.capabilities = m.V1Capabilities(drop=["ALL"])
            sc.seccomp_profile = m.V1SeccompProfile(type="RuntimeDefault")
            sc.read_only_root_filesystem = bool(self.read_only_root_filesystem)
            c.security_context = sc

        if self.read_only_root_filesystem:
            volumes = spec.volumes
            if not any(v.name == "atomscale-tmp" for v in volumes):
                volumes.append(
                    m.V1Volume(
                        name="atomscale-tmp", empty_dir=m.V1EmptyDirVolumeSource(size_limit="1Gi")
                    )
                )
            spec.volumes = volumes
            for c in spec.containers or []:
                mounts = [model(m.V1VolumeMount, vm) for vm in c.volume_mounts or []]
                if not any(vm.mount_path == TMP for vm in mounts):
                    mounts.append(m.V1VolumeMount(name="atomscale-tmp", mount_path=TMP))
                c.volume_mounts = mounts

        if self.org_node_pool_label:
            spec.node_selector = {**(spec.node_selector or {}), self.org_node_pool_label: org}
        if self.org_node_pool_taint:
            tolerations = [model(m.V1Toleration, t) for t in spec.tolerations or []]
            tolerations = [t for t in tolerations if t.key != self.org_node_pool_taint]
            tolerations.append(
                m.V1Toleration(
                    key=self.org_node_pool_taint, operator="Equal", value=org, effect="NoSchedule"
                )
            )
            spec.tolerations = tolerations
        return pod

    async def start(self):
        """Refuse a user without exactly one org, then spawn in the org's namespace."""
        self._use_org_namespace(self.org)
        return await super().start()
