#!/usr/bin/env bash
# Tests the Node host from a clean checkout:
#   examples/node/run-tests.sh WASM_DIR
# WASM_DIR holds the components: `steerlm export-components DIR` writes them, and a
# cargo build leaves them in target/components/wasm32-wasip2/wasm/.
# Installs the pinned packages (package-lock.json), transpiles the components into
# generated/, and runs test.mjs with node's test runner.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 WASM_DIR" >&2
    exit 2
fi
wasm_dir="$(cd "$1" && pwd)"
cd "$(dirname "$0")"

npm ci --no-audit --no-fund
node transpile.mjs "$wasm_dir"
node --test test.mjs
