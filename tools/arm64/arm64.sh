#!/usr/bin/env bash
# The arm64 (Graviton) engine layer with its C kernels, built and tested on an x86_64 Debian/Ubuntu
# machine without Docker: a cross compiler from the distribution, the TARGET's CPython 3.13
# headers, and the kernel parity tests run under qemu-user.  `make arm64-test` = `arm64.sh all`.
#
#   tools/arm64/arm64.sh [all|host-tools|rootfs|site|layer|check|test|run ARGS...]   (default: all)
#
#   host-tools  apt-get install what is missing of gcc-aarch64-linux-gnu, qemu-user-static,
#               debootstrap, debian-archive-keyring (root or sudo)
#   rootfs      Debian trixie arm64 userland with python3.13 and libpython3.13-dev (its headers carry
#               the aarch64 pyconfig.h) in $CACHE/rootfs: `debootstrap --foreign` only downloads,
#               then every .deb is unpacked with `dpkg-deb -x`.  No second stage and no chroot: both
#               need the kernel to run arm64 binaries (binfmt_misc), which a container may not offer
#               (`chroot ROOTFS /bin/true` -> "Exec format error"); qemu runs the ELF directly instead.
#   site        aarch64 wheels of numpy, opencv-python-headless, scikit-image and pytest at the
#               versions of requirements/dev.lock, resolved and unpacked by the HOST's pip into $CACHE/site
#   layer       the engine layer for arm64 through layers/engine/Makefile (HARMONY_ARCH=arm64,
#               ARM64_SYSROOT=$CACHE/rootfs, REQUIRE_KERNELS=1) into $CACHE/layer
#   check       the layer's _kernels is an aarch64 ELF needing glibc <= 2.34 (Lambda's python3.13
#               runtime, Amazon Linux 2023) and no libgcc popcount helper
#   test        tests/engine/test_kernel_levels.py under qemu-aarch64 against the layer's package:
#               every level (neon, portable) exact against OpenCV's matcher, numpy and scikit-image,
#               bit-identical to each other, HARMONY_KERNEL handling
#   run ARGS    the emulated python3.13 with the layer and site on its path (e.g. run -c '...')
#
# Cache ($CACHE, default ~/.cache/harmony-arm64): rootfs ~250 MB, site ~400 MB; each part is
# rebuilt only when its inputs (suite, pins) change.  On this project's 2-core machine: cold ~4 min,
# warm ~3 min, nearly all of it the emulated test.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${CACHE:-$HOME/.cache/harmony-arm64}
SUITE=${SUITE:-trixie}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
HOST_PYTHON=${HOST_PYTHON:-python3}
ROOTFS=$CACHE/rootfs
SITE=$CACHE/site
LAYER=$CACHE/layer
KERNELS_SO=$LAYER/python/harmony_image/_kernels.cpython-313-aarch64-linux-gnu.so
MAX_GLIBC=2.34
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
LOCK=$REPO/requirements/dev.lock

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
say() { printf '== %s\n' "$*" >&2; }
timed() { # timed NAME FUNCTION: run it, print its wall time
    local name=$1 t0 ms
    shift
    t0=$(date +%s%N)
    "$@"
    ms=$((($(date +%s%N) - t0) / 1000000))
    printf '== %-10s %4d.%d s\n' "$name" $((ms / 1000)) $((ms % 1000 / 100)) >&2
}
pin() { sed -n "s/^$1==\([^ ;]*\).*/\1/p" "$LOCK" | head -n1; }

# the emulated interpreter: qemu-user runs the aarch64 ELF directly, -L loads its dynamic linker
# and libraries from the rootfs; .pyc files go to the cache
QEMU_PYTHON="qemu-aarch64-static -L $ROOTFS $ROOTFS/usr/bin/python3.13"
qpython() {
    PYTHONPYCACHEPREFIX="$CACHE/pycache" PYTHONPATH="$LAYER/python:$SITE" PYTHONNOUSERSITE=1 \
        $QEMU_PYTHON "$@"
}

host_tools() {
    local missing=
    command -v aarch64-linux-gnu-gcc >/dev/null || missing="$missing gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
    command -v qemu-aarch64-static >/dev/null || missing="$missing qemu-user-static"
    command -v debootstrap >/dev/null || missing="$missing debootstrap"
    [ -f "$KEYRING" ] || missing="$missing debian-archive-keyring"
    "$HOST_PYTHON" -m pip --version >/dev/null 2>&1 || missing="$missing python3-pip"
    if [ -n "$missing" ]; then
        say "apt-get install$missing"
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
}

rootfs() {
    local stamp="$ROOTFS/.harmony-rootfs-$SUITE"
    if [ -f "$stamp" ]; then
        say "rootfs: cached ($ROOTFS)"
        return
    fi
    $SUDO rm -rf "$ROOTFS"
    mkdir -p "$CACHE"
    # --foreign: download and unpack the essential packages only, run nothing of the target
    $SUDO debootstrap --arch=arm64 --foreign --variant=minbase --keyring="$KEYRING" \
        --include=python3.13,libpython3.13-dev "$SUITE" "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        {
            tail -20 "$CACHE/debootstrap.log" >&2
            exit 1
        }
    for deb in "$ROOTFS"/var/cache/apt/archives/*.deb; do $SUDO dpkg-deb -x "$deb" "$ROOTFS"; done
    $SUDO rm -f "$ROOTFS"/var/cache/apt/archives/*.deb
    [ "$(id -u)" = 0 ] || $SUDO chown -R "$(id -u):$(id -g)" "$ROOTFS"
    test -f "$ROOTFS/usr/include/aarch64-linux-gnu/python3.13/pyconfig.h"
    $QEMU_PYTHON -c 'import platform, sys; print("rootfs:", platform.machine(), "Python", sys.version.split()[0])'
    touch "$stamp"
}

site() {
    local pins stamp
    pins="numpy==$(pin numpy) opencv-python-headless==$(pin opencv-python-headless) scikit-image==$(pin scikit-image) pytest==$(pin pytest)"
    stamp="$SITE/.harmony-site-$(echo "$pins" | md5sum | cut -c1-12)"
    if [ -f "$stamp" ]; then
        say "site: cached ($pins)"
        return
    fi
    rm -rf "$SITE"
    # the host's pip resolves and unpacks aarch64 cp313 wheels; nothing runs under emulation
    "$HOST_PYTHON" -m pip install -q --disable-pip-version-check --target "$SITE" --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        --python-version 3.13 --implementation cp --abi cp313 --abi abi3 --abi none $pins
    touch "$stamp"
    say "site: $pins"
}

layer() {
    make -s -C "$REPO/src" -f "$REPO/layers/engine/Makefile" build-EngineLayer HARMONY_ARCH=arm64 \
        ARM64_SYSROOT="$ROOTFS" REQUIRE_KERNELS=1 ARTIFACTS_DIR="$LAYER" | grep -v '^  python/' >&2
}

check() {
    local need
    file "$KERNELS_SO" | grep -q 'ARM aarch64' || {
        say "ERROR: $KERNELS_SO is not an aarch64 ELF"
        exit 1
    }
    need=$(aarch64-linux-gnu-objdump -T "$KERNELS_SO" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
    if [ "$(printf '%s\n%s\n' "$need" "$MAX_GLIBC" | sort -V | tail -n1)" != "$MAX_GLIBC" ]; then
        say "ERROR: $KERNELS_SO needs GLIBC_$need > $MAX_GLIBC (Lambda python3.13)"
        exit 1
    fi
    if aarch64-linux-gnu-objdump -d "$KERNELS_SO" | grep -q '__popcount'; then
        say "ERROR: $KERNELS_SO calls libgcc's popcount helper"
        exit 1
    fi
    say "layer kernels: $(basename "$KERNELS_SO"), aarch64, needs GLIBC_$need (<= $MAX_GLIBC)"
}

test_levels() {
    # a child Python must be started through qemu too: the guest cannot exec an aarch64 ELF itself
    (cd "$REPO" && KERNEL_TEST_PYTHON="$QEMU_PYTHON" qpython -m pytest -q -p no:cacheprovider --noconftest \
        --durations=8 tests/engine/test_kernel_levels.py)
}

cmd=${1:-all}
[ $# -gt 0 ] && shift
case $cmd in
host-tools) timed host-tools host_tools ;;
rootfs) timed rootfs rootfs ;;
site) timed site site ;;
layer) timed layer layer ;;
check) timed check check ;;
test) timed test test_levels ;;
run) qpython "$@" ;;
all)
    t0=$(date +%s)
    timed host-tools host_tools
    timed rootfs rootfs
    timed site site
    timed layer layer
    timed check check
    timed test test_levels
    say "arm64 layer kernels built and tested under qemu in $(($(date +%s) - t0)) s"
    ;;
*)
    echo "usage: $0 [all|host-tools|rootfs|site|layer|check|test|run ARGS...]" >&2
    exit 2
    ;;
esac
