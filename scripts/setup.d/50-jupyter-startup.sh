#!/usr/bin/env bash
# Faster Jupyter server start-up (every hub spawn): jsonschema's optional IRI format checker
# `rfc3987-syntax` (pulled in through jupyter_events -> jsonschema[format-nongpl]) compiles ~35
# Earley grammars at import, 4-7 s on a 2-core machine, for a format no Jupyter schema uses.
# Without it jsonschema simply skips the "iri" format check. Re-run after every install.
set -euo pipefail
cd "$(dirname "$0")/../.."
if .venv/bin/python -c 'import importlib.util,sys; sys.exit(importlib.util.find_spec("rfc3987_syntax") is None)'; then
  .venv/bin/python -m pip uninstall -q -y rfc3987-syntax
fi
