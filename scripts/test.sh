#!/usr/bin/env bash
# Runs every check and every test tier against the real Docker engine (set up first).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

printf '\033[1m==> ruff\033[0m\n'
ruff check src tests bench
ruff format --check src tests bench
printf '\033[1m==> mypy --strict\033[0m\n'
mypy
printf '\033[1m==> PostgreSQL (the store tests run on it too)\033[0m\n'
bash scripts/postgres.sh
printf '\033[1m==> pytest (unit, integration, acceptance)\033[0m\n'
python -m pytest tests "$@"
