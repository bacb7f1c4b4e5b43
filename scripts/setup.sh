#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh machine: runs every step in scripts/setup.d in order.
set -euo pipefail
cd "$(dirname "$0")/.."
for step in scripts/setup.d/*.sh; do
  echo "== setup: $(basename "$step")"
  bash "$step"
done
