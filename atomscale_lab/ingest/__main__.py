"""``python -m atomscale_lab.ingest``: run the ingest service (as a JupyterHub-managed service)."""

import sys

from atomscale_lab.ingest.service import main

sys.exit(main())
