#!/usr/bin/env bash
# Chromium for the browser tests (driven by playwright-core; Playwright's own browser download
# is not used). Idempotent: does nothing when chromium is already installed.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi
