#!/usr/bin/env bash
# Mesa 26's lavapipe: a software Vulkan driver that offers cooperative matrices (8x8x8
# f16 -> f32, subgroups of 8), so the tensor-core kernels run on a machine without a GPU.
# Debian bookworm's Mesa (22.3) offers none, and Mesa 26 needs a newer glibc than
# bookworm's. So it lives in a Debian trixie root of its own (debootstrap, Mesa from
# trixie-backports), and programs run with that root's loader and libraries. Nothing is
# installed on the machine itself except debootstrap.
#
#   scripts/lavapipe-26.sh install           make the root, once (about 2 minutes, 750 MB)
#   scripts/lavapipe-26.sh run PROGRAM ARGS  run PROGRAM on that driver
#
# `run` serves as a cargo runner:
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/lavapipe-26.sh run" \
#       cargo test -p steerlm-model --lib -- tensor_core
# The root is target/lavapipe-26, or $STEERLM_LAVAPIPE_ROOT.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${STEERLM_LAVAPIPE_ROOT:-$repo/target/lavapipe-26}"
mirror="${STEERLM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The oldest Mesa whose lavapipe offers VK_KHR_cooperative_matrix to wgpu.
minimum="26.1"

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_x86_64() {
    if [ "$(uname -m)" != "x86_64" ]; then
        echo "lavapipe-26.sh: only x86_64 machines are supported (this is $(uname -m))" >&2
        exit 1
    fi
}

install_root() {
    need_x86_64
    if [ -e "$root/.ready" ]; then
        return
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "lavapipe-26.sh: making the trixie root needs root (debootstrap and chroot); run as root" >&2
            exit 1
        fi
        sudo="sudo"
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq debootstrap >/dev/null
    fi
    # A half-made root from an interrupted run is started over.
    $sudo rm -rf "$root"
    mkdir -p "$(dirname "$root")"
    echo "lavapipe-26.sh: making a Debian trixie root in $root" >&2
    $sudo debootstrap --variant=minbase trixie "$root" "$mirror" >"$root.log" 2>&1 || {
        tail -20 "$root.log" >&2
        echo "lavapipe-26.sh: debootstrap failed (log: $root.log)" >&2
        exit 1
    }
    echo "deb $mirror trixie-backports main" | $sudo tee "$root/etc/apt/sources.list.d/backports.list" >/dev/null
    $sudo chroot "$root" apt-get update -qq
    $sudo chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t trixie-backports mesa-vulkan-drivers libvulkan1 >>"$root.log" 2>&1 || {
        tail -20 "$root.log" >&2
        echo "lavapipe-26.sh: installing Mesa from trixie-backports failed (log: $root.log)" >&2
        exit 1
    }
    local version
    version="$($sudo chroot "$root" dpkg-query -W -f '${Version}' mesa-vulkan-drivers)"
    if ! dpkg --compare-versions "$version" ge "$minimum"; then
        echo "lavapipe-26.sh: trixie-backports has Mesa $version; cooperative matrices need $minimum or later" >&2
        exit 1
    fi
    $sudo rm -rf "$root/var/cache/apt/archives"/*.deb
    echo "$version" | $sudo tee "$root/.ready" >/dev/null
    echo "lavapipe-26.sh: Mesa $version ready" >&2
}

run_program() {
    need_x86_64
    if [ ! -e "$root/.ready" ]; then
        echo "lavapipe-26.sh: no root in $root; run \`scripts/lavapipe-26.sh install\` first" >&2
        exit 1
    fi
    # The root's own loader and libraries (glibc, libvulkan, LLVM); only its lavapipe as
    # the Vulkan driver, and no implicit layers from the machine's /usr/share/vulkan.
    local libs="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu"
    exec env VK_ICD_FILENAMES="$root/usr/share/vulkan/icd.d/lvp_icd.json" \
        VK_LOADER_LAYERS_DISABLE='~implicit~' WGPU_BACKEND=vulkan \
        "$root/lib64/ld-linux-x86-64.so.2" --library-path "$libs" "$@"
}

case "${1:-}" in
install) install_root ;;
run)
    shift
    [ $# -gt 0 ] || usage
    run_program "$@"
    ;;
*) usage ;;
esac
