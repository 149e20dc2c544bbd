#!/usr/bin/env bash
# Build the reference RPCAP peers for rpcapsvc's interop tests and benchmarks:
#   PREFIX/bin/rpcapd             libpcap's own RPCAP daemon
#   PREFIX/bin/rpcap-peer-client  interop/rpcap-peer-client.c, statically linked
#                                 against a libpcap built with --enable-remote
# from Debian's libpcap source package (trixie's 1.10.5-2; fallback: bookworm's),
# and
#   PREFIX/bin/extrahop-rpcapd    ExtraHop's fork of rpcapd (WinPcap-era libpcap
#                                 1.0 + udpstr), statically linked, from the
#                                 tarball in <repo>/../shared/peers/
#
# Usage: scripts/build-reference-peers.sh [PREFIX]      (default: <repo>/.peers)
# Env:   LIBPCAP_DEB_VERSION (default 1.10.5-2) picks the trixie source version.
#        EXTRAHOP_TARBALL overrides the path of the ExtraHop rpcapd tarball.
#
# Idempotent: does nothing when all programs exist and are newer than their
# sources (for the fork: built from a tarball with the same sha256). Fetching
# the libpcap source needs root (it adds a deb-src entry and runs apt-get
# update); once PREFIX/src holds the source, rebuilding does not. The fork
# needs no network. Build trees live in PREFIX/src, never in the repo.
# Never touches the system's libpcap: everything goes into PREFIX.
# Needs: scripts/install-system-deps.sh (build-essential flex bison libssl-dev
# libcrypt-dev dpkg-dev).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${1:-$REPO/.peers}
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
SRCDIR=$PREFIX/src
CLIENT_SRC=$REPO/interop/rpcap-peer-client.c
SELF=$REPO/scripts/build-reference-peers.sh
RPCAPD=$PREFIX/bin/rpcapd
CLIENT=$PREFIX/bin/rpcap-peer-client
STAMP=$PREFIX/.libpcap-built       # names the libpcap source dir that was built
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EXTRAHOP_TARBALL=${EXTRAHOP_TARBALL:-$SCRIPT_DIR/../../shared/peers/extrahop-rpcapd-9b0a405.tar.gz}
EXTRAHOP_RPCAPD=$PREFIX/bin/extrahop-rpcapd
EXTRAHOP_STAMP=$PREFIX/.extrahop-built   # sha256 of the tarball it was built from

WANT_VERSION=${LIBPCAP_DEB_VERSION:-1.10.5-2}   # trixie; override for testing the fallback
DEBSRC_FILE=/etc/apt/sources.list.d/rpcapsvc-deb-src.sources
DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources
JOBS=$(nproc 2>/dev/null || echo 2)

log() { echo "[build-reference-peers] $*"; }
die() { echo "[build-reference-peers] ERROR: $*" >&2; exit 1; }

# --- up to date? -----------------------------------------------------------
# $1 is newer than every file given after it (and they all exist).
newer_than_all() {
    local target=$1; shift
    [[ -e $target ]] || return 1
    local f
    for f in "$@"; do
        [[ -e $f && $target -nt $f ]] || return 1
    done
}

libpcap_src_dir() {
    # The extracted source tree we built from last time (if any).
    [[ -f $STAMP ]] && cat "$STAMP"
}

libpcap_up_to_date() {
    local src
    src=$(libpcap_src_dir) || return 1
    [[ -d $src && -x $RPCAPD && -f $PREFIX/lib/libpcap.a ]] || return 1
    # rpcapd must be newer than the source files it was built from.
    [[ -z $(find "$src" -newer "$RPCAPD" -type f \
              \( -name '*.c' -o -name '*.h' -o -name '*.y' -o -name '*.l' \
                 -o -name 'configure' -o -name 'Makefile.in' \) -print -quit) ]] \
        && newer_than_all "$RPCAPD" "$SELF"
}

client_up_to_date() {
    newer_than_all "$CLIENT" "$CLIENT_SRC" "$SELF" "$PREFIX/lib/libpcap.a"
}

tarball_sha256() {
    sha256sum "$EXTRAHOP_TARBALL" | cut -d' ' -f1
}

extrahop_up_to_date() {
    [[ -x $EXTRAHOP_RPCAPD && -f $EXTRAHOP_STAMP && -f $EXTRAHOP_TARBALL ]] || return 1
    [[ $(cat "$EXTRAHOP_STAMP") == "$(tarball_sha256)" ]] || return 1
    newer_than_all "$EXTRAHOP_RPCAPD" "$SELF"
}

if libpcap_up_to_date && client_up_to_date && extrahop_up_to_date; then
    log "up to date: $RPCAPD, $CLIENT and $EXTRAHOP_RPCAPD (delete $PREFIX to force a rebuild)"
    exit 0
fi

# --- fetch the libpcap source package ----------------------------------------
add_deb_src() {  # $1 = suite
    [[ $(id -u) -eq 0 ]] || die "adding a deb-src entry needs root (or put an extracted libpcap source under $SRCDIR)"
    [[ -f $DEBIAN_SOURCES ]] || die "$DEBIAN_SOURCES not found: cannot tell which mirror to use"
    # Copy the mirror (URIs) and Signed-By of the first stanza of debian.sources.
    local uris signed
    uris=$(awk 'BEGIN{RS=""} NR==1{print; exit}' "$DEBIAN_SOURCES" | sed -n 's/^URIs:[[:space:]]*//p' | head -1)
    signed=$(awk 'BEGIN{RS=""} NR==1{print; exit}' "$DEBIAN_SOURCES" | sed -n 's/^Signed-By:[[:space:]]*//p' | head -1)
    [[ -n $uris ]] || die "no URIs: line in the first stanza of $DEBIAN_SOURCES"
    log "writing $DEBSRC_FILE (deb-src $uris $1 main)"
    {
        echo "# Added by rpcapsvc scripts/build-reference-peers.sh: libpcap source package"
        echo "Types: deb-src"
        echo "URIs: $uris"
        echo "Suites: $1"
        echo "Components: main"
        [[ -n $signed ]] && echo "Signed-By: $signed"
    } > "$DEBSRC_FILE"
    log "apt-get update (deb-src $1 only)"
    # Only refresh our own entry; keep every other list as it is.
    apt-get -o DPkg::Lock::Timeout=600 \
        -o Dir::Etc::sourcelist="$DEBSRC_FILE" -o Dir::Etc::sourceparts=- \
        -o APT::Get::List-Cleanup=0 update
}

fetch_source() {
    mkdir -p "$SRCDIR"
    local existing
    existing=$(find "$SRCDIR" -maxdepth 1 -type d -name 'libpcap-1.*' | sort -V | tail -1)
    if [[ -n $existing && -f $existing/pcap-rpcap.c ]]; then
        log "using libpcap source already in $existing"
        LIBPCAP_SRC=$existing
        return
    fi
    # apt-get source runs as root: let _apt read/write the download dir.
    chmod 755 "$PREFIX" "$SRCDIR" 2>/dev/null || true
    if add_deb_src trixie && (cd "$SRCDIR" && apt-get source "libpcap=$WANT_VERSION"); then
        log "fetched libpcap $WANT_VERSION (trixie)"
    else
        log "trixie's libpcap $WANT_VERSION unavailable; falling back to bookworm's"
        add_deb_src bookworm
        (cd "$SRCDIR" && apt-get source libpcap/bookworm) || die "apt-get source libpcap failed"
    fi
    LIBPCAP_SRC=$(find "$SRCDIR" -maxdepth 1 -type d -name 'libpcap-1.*' | sort -V | tail -1)
    [[ -n $LIBPCAP_SRC && -f $LIBPCAP_SRC/pcap-rpcap.c ]] || die "no libpcap source tree in $SRCDIR"
}

START=$(date +%s)

# --- build libpcap (static, remote capture) and rpcapd ----------------------
if libpcap_up_to_date; then
    log "libpcap and rpcapd up to date in $PREFIX"
else
    fetch_source
    log "building $(basename "$LIBPCAP_SRC") into $PREFIX (static library, --enable-remote)"
    (
        cd "$LIBPCAP_SRC"
        [[ -f Makefile ]] && make distclean >/dev/null 2>&1 || true
        log "configure"
        ./configure --quiet --prefix="$PREFIX" --enable-remote --disable-shared \
            --disable-dbus --disable-rdma --disable-bluetooth --disable-netmap \
            --without-dag --without-septel --without-snf --without-turbocap
        log "make -j$JOBS (libpcap + rpcapd)"
        make -s -j"$JOBS"
        log "make install"
        make -s install
    )
    grep -q '^#define ENABLE_REMOTE' "$LIBPCAP_SRC/config.h" \
        || die "libpcap was configured without remote capture"
    # --enable-remote makes the top-level make build and install rpcapd/ (into sbin).
    if [[ ! -x $PREFIX/sbin/rpcapd ]]; then
        log "building rpcapd/ separately"
        make -s -C "$LIBPCAP_SRC/rpcapd" -j"$JOBS"
        make -s -C "$LIBPCAP_SRC/rpcapd" install
    fi
    [[ -x $PREFIX/sbin/rpcapd ]] || die "rpcapd was not built"
    mkdir -p "$PREFIX/bin"
    ln -sfn ../sbin/rpcapd "$RPCAPD"
    touch "$PREFIX/sbin/rpcapd"
    echo "$LIBPCAP_SRC" > "$STAMP"
    log "rpcapd: $RPCAPD -> $PREFIX/sbin/rpcapd"
fi

# --- build the client ----------------------------------------------------------
if client_up_to_date; then
    log "client up to date: $CLIENT"
else
    log "compiling $CLIENT"
    # Static libpcap, shared everything else (libssl, libcrypto, ...).
    PCAP_CFLAGS=$("$PREFIX/bin/pcap-config" --cflags)
    PCAP_LIBS=$("$PREFIX/bin/pcap-config" --static-pcap-only --libs 2>/dev/null) \
        || PCAP_LIBS=$("$PREFIX/bin/pcap-config" --static --libs)
    # Link $PREFIX/lib/libpcap.a by full path so the system's libpcap.so can never be picked.
    PCAP_LIBS=${PCAP_LIBS//-lpcap/$PREFIX/lib/libpcap.a}
    PCAP_LIBS=${PCAP_LIBS//-L$PREFIX\/lib/}
    # shellcheck disable=SC2086
    cc -std=gnu11 -O2 -g -Wall -Wextra -Werror $PCAP_CFLAGS -o "$CLIENT.tmp" "$CLIENT_SRC" $PCAP_LIBS
    mv -f "$CLIENT.tmp" "$CLIENT"
    if ldd "$CLIENT" 2>/dev/null | grep -q 'libpcap'; then
        die "$CLIENT is linked against a shared libpcap"
    fi
fi

# --- ExtraHop's fork of rpcapd ------------------------------------------------
# Recipe: shared/notes/reference-peers.md, "ExtraHop's fork of rpcapd". Its
# WinPcap-era libpcap 1.0 builds with today's gcc only with -fcommon, gnu89 and
# <linux/sockios.h>; the daemon is linked statically against that libpcap.a.
extrahop_fail() {  # $1 = what failed, $2 = log file
    echo "[build-reference-peers] ---- last lines of $2 ----" >&2
    tail -n 25 "$2" >&2 || true
    die "ExtraHop rpcapd: $1 failed (full log: $2)"
}

build_extrahop() {
    [[ -f $EXTRAHOP_TARBALL ]] \
        || die "ExtraHop rpcapd tarball not found: $EXTRAHOP_TARBALL (expected in shared/peers/ beside the repo; set EXTRAHOP_TARBALL to override)"
    local tool
    for tool in gcc make flex bison ar ranlib sha256sum; do
        command -v "$tool" >/dev/null \
            || die "ExtraHop rpcapd needs '$tool': run scripts/install-system-deps.sh (build-essential flex bison libcrypt-dev)"
    done
    # The daemon links -lcrypt -static: it needs the static libcrypt and libc.
    local lib
    for lib in libcrypt.a libc.a; do
        [[ $(gcc -print-file-name="$lib") == /* ]] \
            || die "ExtraHop rpcapd needs $lib for its static link: install libcrypt-dev and build-essential (scripts/install-system-deps.sh)"
    done

    local name build lp logf sha
    name=$(basename "$EXTRAHOP_TARBALL"); name=${name%.tar.gz}; name=${name%.tgz}
    build=$SRCDIR/$name
    lp=$build/winpcap/wpcap/libpcap
    logf=$build/build.log
    sha=$(tarball_sha256)
    log "building ExtraHop rpcapd from $(basename "$EXTRAHOP_TARBALL") in $build"
    # Always from a fresh extraction: the tree is small and configure is not re-entrant.
    rm -rf "$build"
    mkdir -p "$build"
    tar -xzf "$EXTRAHOP_TARBALL" -C "$build" --strip-components=1 \
        || die "cannot extract $EXTRAHOP_TARBALL"
    [[ -f $lp/configure && -f $lp/rpcapd/Makefile ]] \
        || die "$EXTRAHOP_TARBALL does not hold winpcap/wpcap/libpcap/{configure,rpcapd/Makefile}"
    : > "$logf"

    # The tarball's scripts come without exec bits.
    (cd "$lp" && chmod +x configure runlex.sh mkdep install-sh config.guess config.sub) \
        || die "chmod +x of the configure scripts in $lp failed"

    local pcap_cflags="-O2 -g -fcommon -std=gnu89 -include linux/sockios.h"
    log "ExtraHop libpcap 1.0: configure --with-pcap=linux"
    (cd "$lp" && CFLAGS=$pcap_cflags ./configure --with-pcap=linux) >>"$logf" 2>&1 \
        || extrahop_fail "configure of its libpcap" "$logf"
    grep -q 'checking if remote capture is supported\.\.\. yes' "$logf" \
        || extrahop_fail "its libpcap was configured without remote capture; configure" "$logf"
    log "ExtraHop libpcap 1.0: make libpcap.a"
    (cd "$lp" && make libpcap.a CCOPT="$pcap_cflags") >>"$logf" 2>&1 \
        || extrahop_fail "make libpcap.a" "$logf"
    [[ -f $lp/libpcap.a ]] || extrahop_fail "make libpcap.a (no libpcap.a)" "$logf"

    log "ExtraHop rpcapd: make PLATFORM=linux executable (static)"
    # CFLAGS on the command line replaces the Makefile's, -pthread included.
    make -C "$lp/rpcapd" PLATFORM=linux executable \
        CFLAGS="-DHAVE_REMOTE -DHAVE_SNPRINTF -D_GNU_SOURCE=1 -O3 -g -pthread -fcommon -include stdint.h" \
        >>"$logf" 2>&1 \
        || extrahop_fail "make of the daemon" "$logf"
    [[ -x $lp/rpcapd/rpcapd ]] || extrahop_fail "make of the daemon (no rpcapd binary)" "$logf"
    # It prints its usage and exits 0; check it is the fork (udpstr's -t, -i).
    local usage
    usage=$("$lp/rpcapd/rpcapd" -h 2>&1) || true
    [[ $usage == *'ExtraHop non-standard option'* ]] \
        || extrahop_fail "running '$lp/rpcapd/rpcapd -h' (not the ExtraHop fork?)" "$logf"

    mkdir -p "$PREFIX/bin"
    install -m 755 "$lp/rpcapd/rpcapd" "$EXTRAHOP_RPCAPD.tmp"
    mv -f "$EXTRAHOP_RPCAPD.tmp" "$EXTRAHOP_RPCAPD"
    echo "$sha" > "$EXTRAHOP_STAMP"
    log "extrahop-rpcapd: $EXTRAHOP_RPCAPD"
}

if extrahop_up_to_date; then
    log "ExtraHop rpcapd up to date: $EXTRAHOP_RPCAPD"
else
    build_extrahop
fi

log "done in $(( $(date +%s) - START ))s"
log "  $RPCAPD ($("$PREFIX/bin/pcap-config" --version 2>/dev/null || echo '?'))"
log "  $CLIENT"
log "  $EXTRAHOP_RPCAPD (ExtraHop fork, $(basename "$EXTRAHOP_TARBALL"))"
