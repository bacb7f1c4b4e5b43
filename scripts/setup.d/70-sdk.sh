#!/usr/bin/env bash
# A separate virtual environment with the hosted platform's Python SDK (`atomscale` from PyPI):
# a test dependency only, used by tests/sdk and bench/sdk.py as a client in a subprocess, so that
# its own dependencies never mix with the project's.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
SDK_SPEC="atomscale>=0.21,<0.22"
[ -x .venv-sdk/bin/python ] || "$PY" -m venv .venv-sdk
if ! .venv-sdk/bin/python -c 'import atomscale, atomscale.streaming' 2>/dev/null; then
  .venv-sdk/bin/python -m pip install -q --upgrade pip
  .venv-sdk/bin/python -m pip install -q "$SDK_SPEC"
fi
