#!/usr/bin/env bash
# Prepares this machine for dockworker: system packages, a safely configured Docker engine,
# a virtualenv with dockworker installed, and the stack images. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_packages=()
command -v dockerd >/dev/null || need_packages+=(docker.io)
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static || need_packages+=(busybox-static)
command -v debootstrap >/dev/null || need_packages+=(debootstrap)
command -v file >/dev/null || need_packages+=(file)
# The HUD's browser tests drive Debian's Chromium through Playwright (no browser download).
[ -x /usr/bin/chromium ] || need_packages+=(chromium)
# the OCI backend (--runtime oci): the OCI runtimes themselves, run without dockerd
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need_packages+=(runc)
command -v crun >/dev/null || need_packages+=(crun)
if [ ${#need_packages[@]} -gt 0 ]; then
  say "Installing ${need_packages[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_packages[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  say "Starting the Docker engine (no bridge, no iptables: task containers get no network)"
  as_root sh -c 'nohup dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    >/var/log/dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi

if [ ! -x .venv/bin/dockworker ] || [ pyproject.toml -nt .venv/.installed ]; then
  say "Installing dockworker into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".[test]"
  touch .venv/.installed
fi

say "Building every stack (cached: an up-to-date image is not rebuilt; a few minutes the first time)"
.venv/bin/dockworker stacks build --all
