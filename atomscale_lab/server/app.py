"""The jupyter-server extension: serves one org's data API (``/atomscale/api/v1``) from an
:class:`~atomscale_lab.server.service.OrgService` built from configuration::

    c.AtomscaleLab.org = "acme"
    c.AtomscaleLab.access_class = "atomscale_lab.hub.access.HubAccess"   # default: local vault
"""

from __future__ import annotations

import os
import threading
import time

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Float, TraitError, Type, Unicode, default

from atomscale_lab.errors import AtomscaleError, KeyUnavailable
from atomscale_lab.server.service import OrgService


class AtomscaleLab(ExtensionApp):
    """Serve one org's encrypted datasets to this Jupyter server's users (``/atomscale/api/v1``)."""

    name = "atomscale_lab"
    load_other_extensions = True

    org = Unicode(
        config=True,
        help="""The organization this server serves (default: $ATOMSCALE_ORG).

        c.AtomscaleLab.org = "acme"
        """,
    )

    @default("org")
    def _default_org(self):
        return os.environ.get("ATOMSCALE_ORG", "")

    access_class = Type(
        "atomscale_lab.server.access.LocalAccess",
        klass=object,
        config=True,
        help="""The OrgAccess implementation (a class or its import string): where keys,
        permissions, context
        and audit come from. The default reads the local vault (single-user mode, root key in
        the environment); on JupyterHub use the hub's:

        c.AtomscaleLab.access_class = "atomscale_lab.hub.access.HubAccess"
        """,
    )

    access_kwargs = Dict(
        config=True,
        help="""Extra keyword arguments for the access class (after the org name).""",
    )

    scrub_root_key = Bool(
        True,
        config=True,
        help="""Remove ATOMSCALE_ROOT_KEY / ATOMSCALE_ROOT_KEY_FILE from this process's environment
        once the org key is loaded, so kernels started by this server do not inherit them.""",
    )

    export_url = Bool(
        True,
        config=True,
        help="""Set ATOMSCALE_LAB_URL in this process's environment so that kernels started by
        this server find its REST API (the token is not exported).""",
    )

    refresh_interval = Float(
        1.0,
        config=True,
        help="""Seconds between checks of the runs table's commit log for new runs.""",
    )

    def initialize_settings(self):
        """Build the OrgAccess and the OrgService (keys fetched once, held in memory)."""
        self.service: OrgService | None = None
        self._access = None
        self.service_error: str | None = None
        self._retry_at = 0.0
        self._service_lock = threading.Lock()
        if not self.org:
            self.service_error = (
                "no org configured: set c.AtomscaleLab.org or $ATOMSCALE_ORG "
                "(or start with `atomscale-lab lab ORG`)"
            )
            self.log.warning("atomscale_lab: %s", self.service_error)
        else:
            self._start_service()
        self.settings["atomscale_lab"] = self
        if self.export_url and self.serverapp is not None:
            try:
                os.environ["ATOMSCALE_LAB_URL"] = self.serverapp.connection_url
            except Exception as e:  # noqa: BLE001 - only a convenience for kernels
                self.log.debug("atomscale_lab: no server URL to export: %s", e)

    def _start_service(self) -> None:
        try:
            if self._access is None:
                self._access = self.access_class(self.org, **self.access_kwargs)
            access = self._access
            self.service = OrgService(access, refresh_interval=self.refresh_interval)
            self.service_error = None
            self.log.info(
                "atomscale_lab: serving org %s (%s, key v%s)",
                self.org,
                type(access).__name__,
                self.service.key_version,
            )
            threading.Thread(
                target=self._warm, args=(self.service,), daemon=True, name="atomscale-warm"
            ).start()
        except (AtomscaleError, ImportError, ValueError, TypeError, TraitError) as e:
            self.service_error = f"org {self.org!r} is not available: {e}"
            self._error_exc = e
            self._retry_at = time.monotonic() + 10
            self.log.error("atomscale_lab: %s", self.service_error)
        finally:
            # the access object holds what it needs; kernels started later must not inherit it
            if self.scrub_root_key:
                for var in ("ATOMSCALE_ROOT_KEY", "ATOMSCALE_ROOT_KEY_FILE"):
                    os.environ.pop(var, None)

    def _warm(self, service: OrgService) -> None:
        # build the run catalogue before the first request needs it
        try:
            service.runs.get()
            service.metrology_index.get()
        except Exception as e:  # noqa: BLE001 - requests will raise it properly
            self.log.warning("atomscale_lab: could not index org %s yet: %s", self.org, e)

    def get_service(self) -> OrgService:
        """The running service; raises ``KeyUnavailable`` (503) with the start-up error."""
        if self.service is None and self.org and time.monotonic() >= self._retry_at:
            with self._service_lock:
                if self.service is None:
                    self._start_service()
        if self.service is None:
            err = getattr(self, "_error_exc", None)
            if isinstance(err, AtomscaleError) and not isinstance(err, KeyUnavailable):
                raise type(err)(self.service_error)
            raise KeyUnavailable(self.service_error or "the org's data is not available")
        return self.service

    def initialize_handlers(self):
        """Register the REST handlers under ``/atomscale/api/v1``."""
        from atomscale_lab.server.handlers import default_handlers

        self.handlers.extend(default_handlers)
