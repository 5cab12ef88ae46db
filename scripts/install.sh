#!/usr/bin/env bash
# Install kachery and what it needs on Debian (as root, or with sudo available).
#
#   bash scripts/install.sh           the commands, the mount and the server
#   bash scripts/install.sh --test    ... plus what the test suite needs
#   bash scripts/install.sh --bench   ... plus what the benchmark scripts need
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(fuse3 libfuse3-3 ca-certificates)
extra=""
for arg in "$@"; do
  case "$arg" in
    --test) packages+=(sqlite3 curl tar findutils grep coreutils chromium chromium-driver); extra="[test]" ;;
    --bench) packages+=(sqlite3 curl openssl nginx); extra="[test,bench]" ;;
    *) echo "usage: $0 [--test] [--bench]" >&2; exit 2 ;;
  esac
done

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# compat mode installs a plain path entry: the default import-hook finder costs
# every command ~40 ms of start-up.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
  --config-settings editable_mode=compat -e ".${extra}"
