"""What a kernel uses: :class:`~atomscale_lab.client.workspace.Workspace` (the org's data through
its Jupyter server's REST API), the notebook widgets (:mod:`.widgets`) and run comparison
(:mod:`.compare`). Nothing here holds a key or imports the vault or the server."""
