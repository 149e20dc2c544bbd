#!/usr/bin/env bash
# Install the Debian packages (bookworm's; the libpcap sources come from trixie) needed to build and run rpcapsvc's
# reference peers (libpcap's rpcapd and the rpcap-peer-client), tshark, tcpreplay...
#
# Usage: sudo scripts/install-system-deps.sh
# Idempotent: returns quickly when every package is already installed.
set -euo pipefail

PACKAGES=(
    build-essential flex bison libssl-dev libcrypt-dev libpcap-dev
    tcpdump tcpreplay tshark iproute2 iputils-ping dpkg-dev python3-venv
)

log() { echo "[install-system-deps] $*"; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (try: sudo $0)" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    log "all packages already installed: ${PACKAGES[*]}"
    exit 0
fi
log "missing packages: ${missing[*]}"

export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer "no" up front.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections

# Another apt/dpkg run may hold the lock: wait for it (up to 10 minutes).
APT_OPTS=(-y -o DPkg::Lock::Timeout=600)

log "apt-get update"
apt-get "${APT_OPTS[@]}" update
log "apt-get install ${missing[*]}"
apt-get "${APT_OPTS[@]}" install "${missing[@]}"
log "done"
