"""The hub process: JupyterHub with one fix for hub-managed services under ``internal_ssl``.

JupyterHub 6.1.1 waits for a managed service with a URL using the TLS context of its own
*listening* socket, so the check never connects ("Cannot create a client socket with a
PROTOCOL_TLS_SERVER context") and the hub gives up on the service. :class:`AtomscaleHub` lets the
hub build the client-side context instead. Run it as ``python -m atomscale_lab.hub.app -f
jupyterhub_config.py`` (or ``atomscale-lab hub start``).
"""

from __future__ import annotations

from jupyterhub.app import JupyterHub


class AtomscaleHub(JupyterHub):
    """JupyterHub whose managed-service readiness check uses a client TLS context."""

    async def start_service(self, service_name, service, ssl_context=None):
        """Start or poll a service; ``ssl_context`` is rebuilt for the client side."""
        return await super().start_service(service_name, service, None)


main = AtomscaleHub.launch_instance

if __name__ == "__main__":
    main()
