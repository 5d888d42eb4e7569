#!/usr/bin/env bash
# Debian's chromium for the chat page's browser test (tests/serve/test_page.py). Playwright drives it through
# executable_path; we never let a test tool download its own browser.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  sudo apt-get update -q >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
else
  echo "install_chromium.sh: no chromium and no apt-get; the browser test will fail until chromium is on PATH" >&2
fi
