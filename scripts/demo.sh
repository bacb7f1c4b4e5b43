#!/usr/bin/env bash
# The demo deployment, in one command (`make demo`): two orgs (acme, beta) with demo data, their
# users (org-admin, scientist, viewer, support) as per-user Unix accounts, the bundled identity
# provider (password + TOTP) and JupyterHub with the key and context services, all over https on
# 127.0.0.1. Prints the URL, the users, their passwords and how to get TOTP codes.
# Ctrl-C stops everything this script started. Needs root (Unix accounts, setuid spawning).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
if [ "$(id -u)" != 0 ]; then
  echo "demo: run as root (it creates per-user Unix accounts and spawns servers as them)" >&2
  exit 1
fi
export ATOMSCALE_HOME="${ATOMSCALE_HOME:-$REPO/.atomscale/demo}"
HUB_PORT="${DEMO_HUB_PORT:-8000}"
IDP_PORT="${DEMO_IDP_PORT:-8443}"
HOME_BASE="${DEMO_HOME_BASE:-/home/atomscale}"
A="$REPO/.venv/bin/atomscale-lab"
mkdir -p "$ATOMSCALE_HOME"
KEYFILE="$ATOMSCALE_HOME/root.key"
if [ ! -s "$KEYFILE" ]; then
  (umask 077; "$A" root-key generate > "$KEYFILE")
fi
export ATOMSCALE_ROOT_KEY_FILE="$KEYFILE"
export ATOMSCALE_ACTOR=demo

echo "== orgs and demo data"
for org in acme beta; do
  "$A" org show "$org" >/dev/null 2>&1 || { "$A" org create "$org" --region us && "$A" demo-data "$org" --runs 40; }
done

echo "== users (identity provider + Unix accounts under $HOME_BASE)"
PASSWORDS="$ATOMSCALE_HOME/demo-passwords.txt"
(umask 077; : > "$PASSWORDS")
for org in acme beta; do
  "$A" hub provision "$org" --replace --unix --home-base "$HOME_BASE" --password-file "$PASSWORDS"
  "$A" org add-support "$org" --replace --unix --home-base "$HOME_BASE" --password-file "$PASSWORDS"
  "$A" hub users sync "$org" --home-base "$HOME_BASE"
done

echo "== certificates and deployment"
STACK="$ATOMSCALE_HOME/stack"
"$A" hub init "$STACK" --port "$HUB_PORT" --idp-port "$IDP_PORT" --create-unix-users \
  --home-base "$HOME_BASE" >/dev/null
LOGS="$ATOMSCALE_HOME/logs"
mkdir -p "$LOGS"

PIDS=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "== stopping"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  echo "stopped."
  exit 0
}
trap stop INT TERM EXIT

# Commands and environments of the two processes come from atomscale_lab.hub.stack.
run() {  # run <idp|hub> : exec the process with its environment
  exec "$REPO/.venv/bin/python" - "$1" "$STACK" <<'PY'
import os, sys
from atomscale_lab.hub.stack import hub_process, idp_process, load_stack
st = load_stack(sys.argv[2], os.environ["ATOMSCALE_HOME"])
argv, env = (idp_process if sys.argv[1] == "idp" else hub_process)(st)
os.makedirs(st.root / "hub" / "state", exist_ok=True)
os.chdir(st.root / "hub" / "state")
os.execvpe(argv[0], argv, env)
PY
}
echo "== starting the identity provider and the hub (logs in $LOGS)"
run idp > "$LOGS/idp.log" 2>&1 &
PIDS+=($!)
run hub > "$LOGS/hub.log" 2>&1 &
PIDS+=($!)

URL="https://127.0.0.1:$HUB_PORT"
for _ in $(seq 240); do
  if curl -sf --cacert "$STACK/certs/ca.crt" "$URL/services/atomscale-context/health" >/dev/null 2>&1; then
    break
  fi
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "demo: a process exited; see $LOGS" >&2; tail -20 "$LOGS"/*.log >&2; exit 1; }
  done
  sleep 0.5
done
curl -sf --cacert "$STACK/certs/ca.crt" "$URL/hub/api" >/dev/null || { echo "demo: hub not ready; see $LOGS" >&2; exit 1; }

cat <<TXT

================================================================================
 atomscale-lab demo is running:   $URL
 (certificate from the demo's own CA: $STACK/certs/ca.crt — import it or accept the warning)

 Users (password, new at every start; then a TOTP code):
$(sed 's/^/   /' "$PASSWORDS")

 TOTP code of a user (changes every 30 s; each code works once):
   ATOMSCALE_HOME=$ATOMSCALE_HOME $A totp acme-scientist
 or add the user's secret to an authenticator app (see docs/hub.md).

 Roles: *-admin = org-admin, *-scientist, *-viewer, *-support (no data, no key).
 Audit trail:  ATOMSCALE_HOME=$ATOMSCALE_HOME ATOMSCALE_ROOT_KEY_FILE=$KEYFILE $A audit show acme
 Ctrl-C stops the hub, its servers and the identity provider.
================================================================================
TXT
wait -n "${PIDS[@]}" || true
echo "demo: a process exited; see $LOGS" >&2
