"""The ``atomscale-context`` hub service: context-label joins; the context key never leaves it.

``POST orgs/<org>/join`` ``{"run_ids": [...], "fields": [...], "purpose": "..."}`` →
``{"labels": [{"run_id": ..., <field>: ...}, ...]}`` — only for a token carrying
``custom:atomscale:context:join!group=org:<org>``. The org's :class:`ContextStore` audits every
join (``context.join``); refusals are audited here.
"""

from __future__ import annotations

import json
import logging

from tornado import web

from atomscale_lab.hub.services.base import ServiceApp, ServiceHandler

log = logging.getLogger("atomscale.hub.context")

NAME = "atomscale-context"
ORG = r"(?P<org>[a-z][a-z0-9-]{1,31})"
MAX_RUNS = 10_000


class JoinHandler(ServiceHandler):
    """``POST orgs/<org>/join``."""

    async def post(self, org):
        """Labels of the given runs, for a token with the org's context-join scope."""
        import pandas as pd

        model = await self.token_user()
        user = model["name"]
        perms = self.permissions(model, org)
        if "context:join" not in perms:
            if perms or any(o["name"] == org for o in self.vault.orgs()):
                self.deny(org, user, "context.join", "no context-join scope for this org")
            raise web.HTTPError(403, "no context-join scope for this org")
        self.known_org(org)
        doc = self.json_body()
        run_ids = doc.get("run_ids")
        fields = doc.get("fields")
        if not isinstance(run_ids, list) or not all(isinstance(r, str) for r in run_ids):
            raise web.HTTPError(400, "run_ids must be a list of strings")
        if len(run_ids) > MAX_RUNS:
            raise web.HTTPError(400, f"at most {MAX_RUNS} run ids per join")
        if not isinstance(fields, list) or not fields:
            raise web.HTTPError(400, "fields must be a non-empty list of label names")
        frame = pd.DataFrame({"run_id": pd.Series(list(dict.fromkeys(run_ids)), dtype=object)})
        joined = self.vault.context(org).join(
            frame, fields=fields, purpose=str(doc.get("purpose", "")), actor=user
        )
        self.finish(
            json.dumps({"labels": json.loads(joined.to_json(orient="records", date_format="iso"))})
        )


ROUTES = [(rf"orgs/{ORG}/join", JoinHandler)]

app = ServiceApp(NAME, ROUTES)


def main() -> None:
    """Run the service (started by the hub)."""
    app.run()


if __name__ == "__main__":
    main()
