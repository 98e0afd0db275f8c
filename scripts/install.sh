#!/usr/bin/env bash
# Installs pyd's system dependencies (Debian) and pyd itself with every built-in plugin into a
# virtualenv (default: ./.venv). Idempotent. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PYD_VENV:-$PWD/.venv}

if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        busybox-static iptables nftables iproute2 kmod libcap-dev libseccomp2 >/dev/null
fi

python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e .
for plugin in plugins/*/; do
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$plugin"
done
echo "pyd installed in $venv (CLI: $venv/bin/pyd)"
