#!/usr/bin/env bash
# The JupyterLab extension: Node packages, build, and installation into .venv.
#
# 10-python.sh's editable install already builds the extension when node is present (the hatch
# jupyter-builder hook); this step makes sure of it on any machine: it installs the Node packages
# from the lockfile when they are missing or older than it, rebuilds when a source is newer than
# the build, and re-installs the package (so the wheel's shared-data puts the build into
# .venv/share/jupyter/labextensions) when the installed copy differs from the build.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
if ! command -v npm >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
export PATH="$ROOT/.venv/bin:$PATH"
OUT="$ROOT/atomscale_lab/labextension"
cd labextension
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f "$OUT/static/style.js" ] \
   || [ -n "$(find src style schema package.json tsconfig.json -newer "$OUT/package.json" -print -quit)" ]; then
  LOG=$(mktemp)
  npm run --silent build >"$LOG" 2>&1 || { cat "$LOG" >&2; rm -f "$LOG"; exit 1; }
  rm -f "$LOG"
fi
cd "$ROOT"
INSTALLED=.venv/share/jupyter/labextensions/atomscale-lab
if ! cmp -s "$OUT/package.json" "$INSTALLED/package.json" \
   || ! cmp -s labextension/install.json "$INSTALLED/install.json"; then
  .venv/bin/python -m pip install -q --no-deps -e .
fi
if ! .venv/bin/jupyter labextension list 2>&1 | sed 's/\x1b\[[0-9;]*m//g' \
     | grep -Eq '^\s*atomscale-lab v[^ ]+ enabled +OK'; then
  echo "the atomscale-lab JupyterLab extension is not installed and enabled:" >&2
  .venv/bin/jupyter labextension list >&2 || true
  exit 1
fi
