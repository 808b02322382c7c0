#!/usr/bin/env bash
# The steps of github-workflow.yml on this machine, against the simulated provider
# (`tallygate sim` on a free loopback port, stopped at the end):
#
#   bash examples/ci/run-local.sh [WORKDIR]
#
# WORKDIR (default: a new temporary directory) receives a copy of this example, a git
# history for --compare-to, the generated files, the cache and the ledger. TALLYGATE and
# PYTHON name the commands to use (default: tallygate, python3).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-$(mktemp -d)}"
tg="${TALLYGATE:-tallygate}"
py="${PYTHON:-python3}"

mkdir -p "$work"
cp -R "$here/tallygate.yaml" "$here/spec.md" "$here/prompts" "$work/"
cd "$work"

port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$tg" sim --port "$port" >sim.log 2>&1 &
sim_pid=$!
trap 'kill "$sim_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done

export OPENAI_BASE_URL="http://127.0.0.1:$port/v1" OPENAI_API_KEY="sk-sim"
export TALLYGATE_CACHE_KEY="local-cache-key"

# The base commit a pull request is compared with.
git_() { git -c user.name=ci -c user.email=ci@localhost -c init.defaultBranch=main "$@"; }
git_ init -q && git_ add -A && git_ commit -q -m "base"

echo "== Prompt budgets"
"$tg" check --config tallygate.yaml --compare-to HEAD

echo "== Plan (no calls)"
"$tg" gen spec.md --out generated --dry-run

echo "== Chunk spec & call AI"
"$tg" gen spec.md --out generated --cache .tallygate-cache --run local-1

echo "== The next pipeline: every piece from the cache"
"$tg" gen spec.md --out generated --cache .tallygate-cache --run local-2

echo "== Usage"
"$tg" report --by run
