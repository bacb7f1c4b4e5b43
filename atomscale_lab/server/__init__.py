"""The org's data API: :class:`~atomscale_lab.server.service.OrgService` (no HTTP), its routes
(:mod:`.handlers`) and the jupyter-server extension that hosts them (:mod:`.app`)."""
