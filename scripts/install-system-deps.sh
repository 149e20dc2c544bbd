#!/usr/bin/env bash
# Install the Debian packages (bookworm's; the libpcap sources come from trixie) needed to build and run rpcapsvc's
# reference peers (libpcap's rpcapd and the rpcap-peer-client), tshark, tcpreplay...
#
# Usage: sudo scripts/install-system-deps.sh [run|test]
#   run   only what the daemon needs to install and run (pcapy-ng comes as a
#         wheel with its own libpcap: no compiler, no libpcap-dev)
#   test  (the default) everything the tests need as well
# Idempotent: returns quickly, and needs no root, when every package is already installed.
set -euo pipefail

PROFILE=${1:-test}
case "$PROFILE" in
    run) PACKAGES=(python3-venv) ;;
    test)
        PACKAGES=(
            build-essential flex bison libssl-dev libcrypt-dev libpcap-dev
            tcpdump tcpreplay tshark iproute2 iputils-ping dpkg-dev python3-venv
        )
        ;;
    *) echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac

log() { echo "[install-system-deps] $*"; }

have_python_venv() {
    # A Python that is not Debian's (pyenv, a venv's) has venv built in.
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ "$PROFILE" == run && ${#missing[@]} -gt 0 ]] && have_python_venv; then
    missing=()
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    log "all packages already installed ($PROFILE): ${PACKAGES[*]}"
    exit 0
fi
log "missing packages: ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    log "installing them needs root (try: sudo $0 $PROFILE)" >&2
    exit 1
fi

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
