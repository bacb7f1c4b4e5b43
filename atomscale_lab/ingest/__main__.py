"""``python -m atomscale_lab.ingest``: run the ingest service (as a JupyterHub-managed service)."""

import sys

from .service import main

sys.exit(main())
