#!/usr/bin/env bash
# What the browser tests need: Debian's Chromium and ChromeDriver, and Playwright (the Python
# package only — it drives /usr/bin/chromium; `playwright install` downloads browsers and is
# never run). Idempotent: installs only what is missing.
#   usage: tests/browser/setup.sh [VENV]   (default .venv)
set -euo pipefail
VENV="${1:-.venv}"

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-cache show chromium >/dev/null 2>&1; then
        $SUDO apt-get update -q
    fi
    if ! $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; then
        # a stale package list: refresh once and retry
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
    fi
fi
/usr/bin/chromium --version

if ! "$VENV/bin/python" -c "import playwright" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q "playwright>=1.45"
fi
"$VENV/bin/python" -c "from importlib.metadata import version; print('playwright', version('playwright'))"
