#!/usr/bin/env bash
# Runs every test on a fresh machine. It installs what the tests need first: the
# wasm32-wasip2 target (components) and, without a GPU, Mesa's software Vulkan driver
# (lavapipe) so the wgpu shaders are tested too. Then `cargo test`, then the tensor-core
# kernels on Mesa 26's lavapipe (a Debian trixie root in target/lavapipe-26), then the
# PyTriton client test (its virtualenv is made in target/pytriton-venv on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null 2>&1; then
    rustup target add wasm32-wasip2 >/dev/null
fi

# lavapipe: a Vulkan adapter on the CPU, for the wgpu tests.
if [ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan}"
# A private runtime dir keeps Mesa quiet and quick to start.
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -w "${XDG_RUNTIME_DIR}" ]; then
    export XDG_RUNTIME_DIR="$(mktemp -d)"
    chmod 700 "$XDG_RUNTIME_DIR"
fi

cargo test --workspace --locked "$@"

# The tensor-core kernels (cooperative matrices), which bookworm's lavapipe lacks, on Mesa
# 26's lavapipe: built for its 8x8x8 matrices and subgroups of 8 (scripts/lavapipe-26.sh).
# Here a SKIPPED is a failure. (On a GPU with tensor cores `cargo test` above ran them at
# 16x16.) STEERLM_SKIP_LAVAPIPE_26=1 leaves this out, saying so.
tensor_core_tests=(cooperative_matches_cpu_or_says_it_was_skipped
    tensor_core_flash_attention_matches_the_cpu_or_says_it_was_skipped
    flash_kernels_pass_their_load_time_check
    wgpu_tensor_cores_match_transformers_within_the_f16_tolerance)
if [ -n "${STEERLM_SKIP_LAVAPIPE_26:-}" ]; then
    echo "SKIPPED: the tensor-core kernels on Mesa 26's lavapipe (STEERLM_SKIP_LAVAPIPE_26 is set)"
else
    scripts/lavapipe-26.sh install
    log="target/lavapipe-26-tests.log"
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/lavapipe-26.sh run" \
        cargo test --locked -p steerlm-model --lib -- --nocapture "${tensor_core_tests[@]}" 2>&1 | tee "$log" |
        grep -E "SKIPPED|cooperative|tensor-core flash|tensor cores|test result"
    if grep -q SKIPPED "$log" || ! grep -q "test result: ok. ${#tensor_core_tests[@]} passed" "$log"; then
        echo "the tensor-core tests did not all run on Mesa 26's lavapipe (log: $log)" >&2
        exit 1
    fi
fi

# NeMo-Aligner's own annotation client (PyTriton's FuturesModelClient, from PyPI)
# against a real `steerlm serve`.
tests/pytriton/run.sh target/debug/steerlm

# The same .wasm files in other hosts, against the same goldens: Node through jco
# (npm installs the pinned packages) and Python through wasmtime-py (a venv in target/).
if ! command -v npm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi
components="target/exported-components"
target/debug/steerlm --quiet export-components "$components"
examples/node/run-tests.sh "$components"
examples/python/run-tests.sh "$components" target/python-venv
