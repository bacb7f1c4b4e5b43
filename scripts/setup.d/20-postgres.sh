#!/usr/bin/env bash
# PostgreSQL server binaries (Debian's postgresql, version 15 here) for the tests' private
# cluster and the scale-out benchmarks; no cluster is created or started here.
set -euo pipefail
if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "PostgreSQL is missing: install Debian's postgresql package (as root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
