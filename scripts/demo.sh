#!/usr/bin/env bash
# The main job, end to end: set up, start dockworker, upload the example worker, queue tasks
# and show their logs. The service then keeps running until Ctrl-C (DEMO_EXIT=1: stop at once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export PATH="$PWD/.venv/bin:$PATH"
DATA_DIR="${DOCKWORKER_DATA_DIR:-$PWD/data}"
PORT="${DOCKWORKER_PORT:-8080}"
export DOCKWORKER_IRON_JSON="$DATA_DIR/iron.json"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

say "Starting dockworker on http://127.0.0.1:$PORT (data in $DATA_DIR)"
dockworker up --data-dir "$DATA_DIR" --port "$PORT" &
service=$!
trap 'kill -TERM $service 2>/dev/null; wait $service 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  kill -0 "$service" 2>/dev/null || { echo "dockworker up exited; is port $PORT taken?" >&2; exit 1; }
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && [ -f "$DATA_DIR/iron.json" ] && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$PORT/health" >/dev/null || { echo "dockworker did not become healthy" >&2; exit 1; }

say "Uploading examples/hello as code package 'hello' (python stack)"
dockworker upload examples/hello --name hello --stack python --command "python3 hello.py" \
  --worker-config '{"greeting": "Hello"}'

say "Queueing three tasks and following the first one live"
dockworker queue hello --payload '{"name": "Ada"}' --wait
second=$(dockworker queue hello --payload '{"name": "Grace"}')
third=$(dockworker queue hello --payload '{"name": "Linus", "exit_code": 3}')
for task in "$second" "$third"; do
  until dockworker status "$task" | grep -qE '^status: (complete|error|timeout|cancelled|killed)$'; do sleep 0.2; done
  say "Log of task $task"
  dockworker log "$task"
  dockworker status "$task" | grep -E '^(status|msg|duration):'
done

say "The latest tasks"
dockworker tasks --per-page 5
say "IronWorker clients can use $DATA_DIR/iron.json; API docs: http://127.0.0.1:$PORT/docs"
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
say "dockworker keeps running; press Ctrl-C to stop it"
wait $service
