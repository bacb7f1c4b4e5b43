"""The hub process: JupyterHub with fixes for hub-managed services and server start-up.

- JupyterHub 6.1.1 waits for a managed service with a URL using the TLS context of its own
  *listening* socket, so the check never connects ("Cannot create a client socket with a
  PROTOCOL_TLS_SERVER context") and the hub gives up on the service. :class:`AtomscaleHub` lets
  the hub build the client-side context instead.
- A managed service with a ``user`` (the per-org data servers run as their org's service
  account) gets internal TLS files only the hub's account can read. :class:`ServiceSpawner`
  hands the key and certificate to that account (in a folder of its own, ``0700``).
- The hub waits for a new server or service with an exponential back-off up to 5 s between
  checks, so a server that came up just after a check was seen up to seconds late.
  :func:`wait_for_http_server` checks every 0.05-0.25 s instead.

Run it as ``python -m atomscale_lab.hub.app -f jupyterhub_config.py`` (or ``atomscale-lab hub
start``).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import time
from pathlib import Path

from jupyterhub import app as _hub_app
from jupyterhub import objects as _objects
from jupyterhub import utils as _utils
from jupyterhub.app import JupyterHub
from jupyterhub.services import service as _service
from traitlets import Dict, Unicode


async def wait_for_http_server(url, timeout=10, ssl_context=None):
    """Wait until ``url`` answers with any non-5xx status (as JupyterHub's own check), polling
    every 0.05 s at first and at most every 0.25 s; raises ``TimeoutError`` after ``timeout``."""
    kw = {"allow_redirects": False}
    if ssl_context:
        kw["ssl"] = ssl_context
    deadline = time.monotonic() + timeout
    wait = 0.05
    while True:
        try:
            r = await _utils.fetch(url, raise_for_status=False, **kw)
        except Exception:  # noqa: BLE001 - not up yet (refused, reset, TLS not ready)
            r = None
        if r is not None and r.status < 500:
            return r
        if time.monotonic() + wait > deadline:
            raise TimeoutError(f"Server at {url} didn't respond in {timeout} seconds")
        await asyncio.sleep(wait)
        wait = min(wait * 1.5, 0.25)


_objects.wait_for_http_server = wait_for_http_server


class ServiceSpawner(_service._ServiceSpawner):
    """The spawner of managed services, staging internal TLS files for a service's own user."""

    async def create_certs(self):
        """Create the certificates; for a service with a user, copy them where only it reads."""
        paths = await super().create_certs()
        if not self.user.name:
            return paths
        pw = pwd.getpwnam(self.user.name)
        out = Path(self.internal_certs_location).parent / "service-certs" / self.user.name
        out.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(out.parent, 0o711)  # noqa: S103 - traverse only
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(mode=0o700)
        staged = {}
        for kind in ("keyfile", "certfile", "cafile"):
            dst = out / Path(paths[kind]).name
            shutil.copyfile(paths[kind], dst)
            os.chown(dst, pw.pw_uid, pw.pw_gid)
            os.chmod(dst, 0o600)
            staged[kind] = str(dst)
        os.chown(out, pw.pw_uid, pw.pw_gid)
        return staged


_service._ServiceSpawner = ServiceSpawner


class AtomscaleHub(JupyterHub):
    """JupyterHub whose managed-service readiness check uses a client TLS context, and which
    names atomscale-lab's deployment file (``--deployment``) for its configuration file."""

    aliases = Dict({**_hub_app.aliases, "deployment": "AtomscaleHub.deployment_file"})

    deployment_file = Unicode(
        "",
        config=True,
        help="""The atomscale-lab deployment file (TOML) the configuration file applies.

        Empty: ``$ATOMSCALE_HUB_CONFIG``, else ``deploy/atomscale-hub.toml``. On the command
        line: ``--deployment=/etc/atomscale/atomscale-hub.toml``.
        """,
    )

    async def start_service(self, service_name, service, ssl_context=None):
        """Start or poll a service; ``ssl_context`` is rebuilt for the client side."""
        return await super().start_service(service_name, service, None)


def hub_argv(deployment: str | Path | None = None) -> list[str]:
    """The command line of ``atomscale-lab hub start``: the packaged configuration file and,
    if given, the deployment file (an absolute path, so the hub's working folder does not
    matter)."""
    argv = ["-f", str(Path(__file__).with_name("default_config.py"))]
    if deployment:
        argv.append(f"--deployment={Path(deployment).resolve()}")
    return argv


main = AtomscaleHub.launch_instance

if __name__ == "__main__":
    main()
