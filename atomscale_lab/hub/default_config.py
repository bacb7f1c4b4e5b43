"""JupyterHub configuration used by ``atomscale-lab hub start``: the deployment file given to the
hub (``--deployment``, from ``hub start --config``) or named by ``$ATOMSCALE_HUB_CONFIG``,
applied by :func:`atomscale_lab.hub.configure` (same as the repository's top-level
``jupyterhub_config.py``, but shipped inside the package)."""

from atomscale_lab.hub import configure, load_deployment

c = get_config()  # noqa: F821 - provided by JupyterHub when it loads this file
configure(c, load_deployment())
