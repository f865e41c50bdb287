#!/bin/sh
# Set-up run first by the test command (README, .ci/run): the browser tests (tests/browser)
# drive Debian's Chromium headless through Playwright, whose own browser download is never
# used. Chromium is installed from Debian's packages when it is missing.
set -eu
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
fi
# The store tests and the several-process tests start their own PostgreSQL server (on
# loopback, in a temporary directory) from Debian's packages, installed when missing.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi
