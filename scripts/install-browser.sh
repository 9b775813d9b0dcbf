#!/usr/bin/env bash
# Headless Chromium and chromedriver from Debian's packages, for the Events page browser test.
# Idempotent: does nothing when both are installed. Prints the two paths on success.
set -euo pipefail

find_bin() { command -v "$1" 2>/dev/null || true; }

if [[ -z "$(find_bin chromium)" || -z "$(find_bin chromedriver)" ]]; then
  if [[ "$(id -u)" != 0 ]]; then SUDO=sudo; else SUDO=; fi
  echo "installing chromium and chromium-driver (Debian packages) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
fi
echo "$(find_bin chromium)"
echo "$(find_bin chromedriver)"
