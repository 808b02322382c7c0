#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite.
# Python deps go into .venv (Playwright for Python among them, which drives the system's
# Chromium: never `playwright install`); redis-server, PostgreSQL and Chromium come from
# the OS packages when missing. The tests start their own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
[ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_pkgs+=(postgresql)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_pkgs[@]}"
fi
# Debian's postgresql package creates this user; the tests run the server as it.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql --shell /bin/sh postgres
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"

# The real coding-agent CLIs for tests/gateway/test_real_agents.py, pinned, from the npm
# registry (they ship native binaries in platform packages; no install script is needed).
# Node.js and npm come from the OS packages when missing. TALLYGATE_SKIP_AGENT_CLIS=1
# leaves them out on purpose (those tests then say they were skipped, and why).
if [ "${TALLYGATE_SKIP_AGENT_CLIS:-0}" != "1" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q nodejs npm
  fi
  [ -x .agent-clis/node_modules/.bin/claude ] && [ -x .agent-clis/node_modules/.bin/codex ] || \
    timeout 600 npm install --silent --no-audit --no-fund --ignore-scripts \
      --prefix .agent-clis @anthropic-ai/claude-code@2.1.328 @openai/codex@0.169.0
fi

.venv/bin/ruff check src tests bench
# Two worker processes by default (TALLYGATE_TEST_WORKERS=0 runs in this process): most
# tests wait on sockets and subprocesses, so two share the cores well (about half the time).
# Each worker starts its own Redis and PostgreSQL on free ports. An idle worker takes
# tests from the other's queue (worksteal): a few multi-second tests no longer end the run
# on one worker while the other waits.
workers="${TALLYGATE_TEST_WORKERS:-2}"
if [ "$workers" = "0" ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest -n "$workers" --dist worksteal "$@"
fi
