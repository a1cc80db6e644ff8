#!/usr/bin/env bash
# Tests the Python host:
#   examples/python/run-tests.sh WASM_DIR VENV_DIR
# WASM_DIR holds the components (`steerlm export-components DIR`, or a cargo build's
# target/components/wasm32-wasip2/wasm/). VENV_DIR is made on first use, with the
# pinned wasmtime from requirements.txt (a wheel that bundles its native library).
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 WASM_DIR VENV_DIR" >&2
    exit 2
fi
export STEERLM_WASM_DIR="$(cd "$1" && pwd)"
mkdir -p "$2"
venv="$(cd "$2" && pwd)"
cd "$(dirname "$0")"

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
"$venv/bin/python" -m unittest -v test_convert
