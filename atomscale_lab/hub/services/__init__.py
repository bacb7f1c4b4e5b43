"""Hub-managed services: ``atomscale-keys`` (org data keys, audit sink) and ``atomscale-context``
(context-label joins). Run as ``python -m atomscale_lab.hub.services.keys`` / ``.context``."""
