"""JupyterHub integration: OIDC authenticator with enforced MFA, org roles, per-org Unix users,
and the hub-managed key and context services.

``configure(c, deployment)`` applies a deployment file (see ``deploy/atomscale-hub.toml``) to a
JupyterHub config object; ``jupyterhub_config.py`` at the top of the repository is a thin caller.
"""

from atomscale_lab.hub.config import configure, load_deployment

__all__ = ["configure", "load_deployment"]
