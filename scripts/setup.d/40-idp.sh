#!/usr/bin/env bash
# Node packages of idp/: the OpenID Connect provider used by the demo and the tests, the hub's
# configurable-http-proxy, and playwright-core for the browser test.
set -euo pipefail
cd "$(dirname "$0")/../../idp"
if ! command -v npm >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
stamp=node_modules/.atomscale-installed
if [ -f "$stamp" ] && [ "$stamp" -nt package-lock.json ] && [ "$stamp" -nt package.json ]; then
  exit 0
fi
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
touch "$stamp"
