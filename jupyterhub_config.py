"""JupyterHub configuration of atomscale-lab.

Everything comes from the deployment file given to the hub (``--deployment=FILE``), else the one
named by ``$ATOMSCALE_HUB_CONFIG`` (default ``deploy/atomscale-hub.toml``); see ``docs/hub.md``.
Secrets come from the environment: ``OAUTH_CLIENT_SECRET``, ``JUPYTERHUB_CRYPT_KEY`` and the root
key for the hub services.
Run with ``atomscale-lab hub start`` (or
``python -m atomscale_lab.hub.app -f jupyterhub_config.py``).
"""

from atomscale_lab.hub import configure, load_deployment

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
configure(c, load_deployment())
