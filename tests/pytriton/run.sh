#!/usr/bin/env bash
# Tests steerlm against NeMo-Aligner's own Triton stack (PyTriton, which ships
# tritonserver):
# 1. PyTriton's client, as NeMo-Aligner's annotation script uses it, against a real
#    `steerlm serve`;
# 2. `steerlm annotate` against a real Triton reward server bound exactly as
#    NeMo-Aligner's reward_server.py binds its model (a lookup of the reference's scores
#    instead of a model): fresh, resumed and killed-then-rerun outputs must equal the
#    reference's bytes.
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
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Waits for PATTERN in FILE (at most 120 s), or fails showing the file.
wait_for() {
    for _ in $(seq 1 1200); do
        grep -q "$1" "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$1' in $2:"; cat "$2"; exit 1
}

# 1. PyTriton's client against steerlm serve.
"$steerlm" serve --model tests/fixtures/models/llama9 --device cpu --port 0 > "$work/serve.log" &
pids+=($!)
wait_for "http://" "$work/serve.log"
address="$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -1 | sed 's#http://##')"
"$venv/bin/python" tests/pytriton/annotation_client.py "$address" tests/fixtures/models/llama9/goldens.json

# 2. steerlm annotate against Triton. tritonserver's Python stub links libpython: use
# the venv interpreter's own, whatever else the system has.
libdir="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fixtures=tests/fixtures/conversions/annotate
"$venv/bin/python" tests/pytriton/reward_server.py "$fixtures/scores.jsonl" "$port" > "$work/triton.out" \
    2> "$work/triton.log" &
pids+=($!)
wait_for "^ready" "$work/triton.out" || { cat "$work/triton.log"; exit 1; }
server="http://127.0.0.1:$port"
passed=0
failed=0
check() { # NAME OURS GOLDEN
    if cmp -s "$2" "$3"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $1: $2 differs from $3"
    fi
}
"$steerlm" -q annotate --server "$server" --input-file "$fixtures/input.jsonl" --output-file "$work/fresh.jsonl"
check "annotate, fresh" "$work/fresh.jsonl" "$fixtures/expected/output_fresh.jsonl"
cp "$fixtures/existing_output.jsonl" "$work/resumed.jsonl"
"$steerlm" -q annotate --server "$server" --input-file "$fixtures/input.jsonl" --output-file "$work/resumed.jsonl"
check "annotate, resumed" "$work/resumed.jsonl" "$fixtures/expected/output_after_resume.jsonl"
# Killed (SIGKILL) early, then rerun, one record per request at a time.
"$steerlm" -q annotate --server "$server" --input-file "$fixtures/input.jsonl" --output-file "$work/killed.jsonl" \
    --concurrency 1 --sync-every 1 &
sleep 0.3
kill -9 $! 2>/dev/null || true
wait $! 2>/dev/null || true
"$steerlm" -q annotate --server "$server" --input-file "$fixtures/input.jsonl" --output-file "$work/killed.jsonl"
check "annotate, killed then rerun" "$work/killed.jsonl" "$fixtures/expected/output_fresh.jsonl"
# A model the server does not have: a clear error, no output.
if "$steerlm" -q annotate --server "$server" --model_name nope --input-file "$fixtures/input.jsonl" \
    --output-file "$work/none.jsonl" 2> "$work/none.err"; then
    failed=$((failed + 1)); echo "FAIL annotate, unknown model: succeeded"
elif grep -q "has no model \`nope\`" "$work/none.err" && [ ! -e "$work/none.jsonl" ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1)); echo "FAIL annotate, unknown model:"; cat "$work/none.err"
fi
echo "annotate against Triton: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
