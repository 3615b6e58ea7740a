#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/e2e/test_pages.py, driven by Playwright, which
# must never download a browser of its own).
#   .ci/chromium.sh   -> prints the chromium executable's path on stdout, or exits non-zero
# As redis.sh: every failure is reported on stderr and left to the caller, whose tests then
# skip with the reason; a missing browser must never fail CI.
set -uo pipefail

find_chromium() {
  command -v chromium || command -v chromium-browser
}

if ! find_chromium >/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "chromium.sh: installing chromium from Debian's packages" >&2
  timeout 900 bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
     apt-get install -y -qq --no-install-recommends chromium' >/dev/null 2>&1
fi
if ! path=$(find_chromium); then
  echo "chromium.sh: no chromium found" >&2
  exit 1
fi
# It must start here, not only exist: a broken install should skip the tests, not fail them.
# (Debian's wrapper script may print warnings of its own on stderr: only shown on failure.)
err=$(mktemp)
trap 'rm -f "$err"' EXIT
if ! version=$(timeout 60 "$path" --headless=new --no-sandbox --version 2>"$err"); then
  echo "chromium.sh: $path does not run:" >&2; tail -n 5 "$err" >&2
  exit 1
fi
echo "chromium.sh: $version" >&2
echo "$path"
