#!/usr/bin/env bash
# System packages the browser tests need (Debian/Ubuntu): Chromium for Playwright.
# Playwright never downloads its own browser here; tests use /usr/bin/chromium.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
  echo "setup-system: chromium is missing and this user cannot install packages; install 'chromium'" >&2
  exit 1
fi
echo "setup-system: installing chromium (apt)"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq chromium >/dev/null
