#!/usr/bin/env bash
# Makes sure the local PostgreSQL cluster runs, for the tests' PostgreSQL dialect (tests/pgdb.py
# connects to $DOCKWORKER_TEST_PG_URL, by default postgresql://postgres@127.0.0.1:5432/test).
# Installs PostgreSQL when it is missing and starts the cluster when it is down. Safe to run again.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pg_ctlcluster >/dev/null; then
  echo "Installing postgresql"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
fi
version="$(ls /etc/postgresql | sort -V | tail -n 1)"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "Starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 -p 5432 && exit 0
  sleep 0.2
done
echo "PostgreSQL $version does not accept connections on 127.0.0.1:5432" >&2
exit 1
