#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what the build needs
# first (the wasm32-wasip2 target for the components), then `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null 2>&1; then
    rustup target add wasm32-wasip2 >/dev/null
fi

cargo test --workspace --locked "$@"
