#!/usr/bin/env bash
# Runs the PyTriton annotation client against a real `steerlm serve`.
# Usage: tests/pytriton/run.sh PATH/TO/steerlm
# Creates target/pytriton-venv with nvidia-pytriton on first use.
set -euo pipefail
cd "$(dirname "$0")/../.."
steerlm="$1"
venv=target/pytriton-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pytriton" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check nvidia-pytriton
fi
log="$(mktemp)"
"$steerlm" serve --model tests/fixtures/models/llama9 --device cpu --port 0 > "$log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
    grep -q "http://" "$log" && break
    sleep 0.1
done
address="$(grep -o 'http://[0-9.:]*' "$log" | head -1 | sed 's#http://##')"
[ -n "$address" ] || { echo "steerlm serve did not start"; cat "$log"; exit 1; }
"$venv/bin/python" tests/pytriton/annotation_client.py "$address" tests/fixtures/models/llama9/goldens.json
