#!/usr/bin/env bash
# The demo: provisions orgs with demo data in a throw-away home and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export ATOMSCALE_HOME="${ATOMSCALE_HOME:-$PWD/.atomscale/demo}"
mkdir -p "$ATOMSCALE_HOME"
KEYFILE="$ATOMSCALE_HOME/root.key"
if [ ! -s "$KEYFILE" ]; then
  (umask 077; .venv/bin/atomscale-lab root-key generate > "$KEYFILE")
fi
export ATOMSCALE_ROOT_KEY_FILE="$KEYFILE"
A=.venv/bin/atomscale-lab
seed=0
for org in acme beta; do
  seed=$((seed + 1))
  $A org show "$org" >/dev/null 2>&1 || {
    $A org create "$org" --region us && $A demo-data "$org" --runs 40 --seed "$seed"; }
done
$A org list
$A org show acme
$A audit verify acme
