#!/usr/bin/env bash
# Runs every check and every test tier against the real Docker engine (set up first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
if ! command -v chromium >/dev/null; then  # the /docs page is checked as Chromium renders it
  printf '\033[1m==> Installing chromium (for the /docs test)\033[0m\n'
  if [ "$(id -u)" = 0 ]; then sudo_=(); else sudo_=(sudo); fi
  "${sudo_[@]}" apt-get update -q && "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi

printf '\033[1m==> ruff\033[0m\n'
ruff check src tests bench
ruff format --check src tests bench
printf '\033[1m==> mypy --strict\033[0m\n'
mypy
printf '\033[1m==> PostgreSQL (the store tests run on it too)\033[0m\n'
bash scripts/postgres.sh
printf '\033[1m==> pytest (unit, integration, acceptance)\033[0m\n'
python -m pytest tests "$@"
