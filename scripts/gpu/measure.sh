#!/usr/bin/env bash
# Runs on a lent GPU machine, from the project root, with .gpu/ packed by scripts/gpu/pack.sh:
# measures the wgpu path against itself (kernel variants, an older build) and against
# transformers on CUDA, in one call, writing everything under OUT as it goes (a call cut off
# by its time limit still returns what it finished). OUT/summary.txt has the figures.
#
# Usage: bash scripts/gpu/measure.sh OUT "SHAPE:N:L:VARIANTS ..." ["MxNxK ..."]
#   SHAPE     smol135m, llama1b or llama8b (../shared/gpu/make_model.py: random bf16 weights)
#   N, L      texts per run and tokens per text; each variant runs N and 2N texts, so model
#             loading and shader compilation cancel in the steady figure
#   VARIANTS  comma-separated; each is `base` or knobs joined by `+`:
#             f16act (STEERLM_F16_ACTIVATIONS=1), tile=NAME (STEERLM_COOP_TILE),
#             loadsfirst (STEERLM_FLASH_LOADS_FIRST=1), onepass (STEERLM_FLASH_ONE_PASS=1),
#             group=N (STEERLM_TILE_GROUP=N), checks (STEERLM_SHADER_CHECKS=full),
#             nochecks (STEERLM_SHADER_CHECKS=none),
#             bt=N (--batch-tokens N), f32 (--precision f32), old (.gpu/steerlm-old)
#   MxNxK     gpu-info --bench shapes, for both binaries, and the new one again with
#             STEERLM_SHADER_CHECKS=none on the first (default: three Llama MLP shapes;
#             "" skips the bench)
# Environment: NOTORCH="SHAPE ..." skips transformers for those shapes.
# Per variant: steady tokens/s, GPU-bound tokens/s (tokens over the summed kernel time of
# --profile), matmul TFLOP/s, max |score - base| and max |score - transformers f32|.
set -u
OUT=${1:?usage: measure.sh OUT "SHAPE:N:L:VARIANTS ..." ["MxNxK ..."]}
SPECS=${2:-}
BENCH=${3-4096x8192x2048 4096x14336x4096 4096x4096x14336}
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
say() { echo "$*" | tee -a "$SUMMARY"; }

# The Vulkan loader (the machine has NVIDIA's driver but not always the loader).
for f in .gpu/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
ldconfig
export WGPU_BACKEND=vulkan XDG_RUNTIME_DIR
XDG_RUNTIME_DIR=$(mktemp -d)
ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | grep -q json ||
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
W=/tmp/measure
mkdir -p $W
for b in steerlm steerlm-old; do
    [ -f .gpu/$b.xz ] && xz -dc .gpu/$b.xz > $W/$b && chmod +x $W/$b
done
NEW=$W/steerlm
OLD=$W/steerlm-old
[ -x "$OLD" ] || OLD=
SHARED=${SHARED:-.gpu}
TOK=$PWD/.gpu/tokenizer.json

command -v nvidia-smi >/dev/null && say "== $(nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader)"
$NEW gpu-info > "$OUT/gpu-info.txt" 2>&1
grep -E "adapter|matmul|attention" "$OUT/gpu-info.txt" | head -12 | tee -a "$SUMMARY"

# The kernels alone: the new build, the old one, and (first shape only) the new build without
# naga's index clamps.
first_shape=${BENCH%% *}
for shape in $BENCH; do
    runs="new old"
    [ "$shape" = "$first_shape" ] && runs="new new-nochecks old"
    for run in $runs; do
        bin=$NEW checks=
        case $run in
            new-nochecks) checks=none ;;
            old) bin=$OLD; [ -n "$bin" ] || continue ;;
        esac
        name=$(basename "$bin")${checks:+-nochecks}
        STEERLM_SHADER_CHECKS=$checks $bin gpu-info --json --bench --bench-shape "$shape" > "$OUT/bench-$name-$shape.json" 2>&1
        python3 - "$OUT/bench-$name-$shape.json" "$name" <<'PY' | tee -a "$SUMMARY"
import json, sys
try:
    rows = json.load(open(sys.argv[1]))["matmul_bench"]
except Exception as e:
    sys.exit(f"{sys.argv[2]}: no bench ({e})")
for r in rows:
    print(f"bench {sys.argv[2]:<12} {r['shape']:<16} {r['gflops']:9.1f} GFLOP/s  {r['variant']}")
PY
    done
done

# One variant of one model: score N and 2N texts, keep the 2N run's scores and profile.
run_variant() { # run_variant MODEL VARIANT -> $W/VARIANT.{a,b}.out, $OUT/SHAPE-VARIANT.log
    local model=$1 variant=$2 bin=$NEW args=() envs=() knob
    [ "$variant" = base ] || for knob in ${variant//+/ }; do
        case $knob in
            f16act) envs+=(STEERLM_F16_ACTIVATIONS=1) ;;
            tile=*) envs+=(STEERLM_COOP_TILE=${knob#tile=}) ;;
            loadsfirst) envs+=(STEERLM_FLASH_LOADS_FIRST=1) ;;
            onepass) envs+=(STEERLM_FLASH_ONE_PASS=1) ;;
            group=*) envs+=(STEERLM_TILE_GROUP=${knob#group=}) ;;
            checks) envs+=(STEERLM_SHADER_CHECKS=full) ;;
            nochecks) envs+=(STEERLM_SHADER_CHECKS=none) ;;
            bt=*) args+=(--batch-tokens "${knob#bt=}") ;;
            f32) args+=(--precision f32) ;;
            old) bin=${OLD:-missing-old-binary} ;;
            *) echo "unknown knob $knob in $variant" >&2; return 1 ;;
        esac
    done
    local log=$OUT/$shape-$variant.log start end
    : > "$log"
    for set in a b; do
        start=$(date +%s.%N)
        env "${envs[@]}" timeout 300 "$bin" score --device wgpu --profile "${args[@]}" --model "$model" \
            --input-file $W/$set.jsonl --output-file "$W/$variant.$set.out" >> "$log" 2>&1
        echo "$set exit $?" >> "$log"
        end=$(date +%s.%N)
        echo "$set wall $(python3 -c "print($end - $start)")" >> "$log"
    done
}

for spec in $SPECS; do
    IFS=: read -r shape n L variants <<< "$spec"
    M=$W/$shape
    say "== $shape: $n and $((2 * n)) texts x $L tokens"
    [ -d "$M" ] || python3 $SHARED/make_model.py "$M" "$shape" "$TOK" > "$OUT/$shape-make.log" 2>&1 ||
        { say "make_model failed: $(tail -2 "$OUT/$shape-make.log")"; continue; }
    python3 $SHARED/make_texts.py "$TOK" "$n" "$L" $W/a.jsonl
    python3 $SHARED/make_texts.py "$TOK" $((2 * n)) "$L" $W/b.jsonl
    torch=
    if [[ " ${NOTORCH:-} " != *" $shape "* ]]; then
        for run in "f32 8" "bf16 8" "bf16 32"; do
            read -r dtype batch <<< "$run"
            python3 $SHARED/torch_score.py "$M" $W/b.jsonl "$W/torch-$dtype-$batch.out" "$dtype" "$batch" 2>&1 |
                tail -1 | tee -a "$SUMMARY"
        done
        torch=$W/torch-f32-8.out
        say "transformers bf16 vs f32: $(python3 $SHARED/compare.py $W/torch-bf16-8.out "$torch")"
    fi
    for variant in ${variants//,/ }; do
        run_variant "$M" "$variant" || { say "$variant: skipped"; continue; }
        log=$OUT/$shape-$variant.log
        python3 - "$log" "$n" "$L" "$variant" "$W/$variant.b.out" "$W/base.b.out" "$torch" <<'PY' | tee -a "$SUMMARY"
import json, re, sys
log, n, L, variant, out, base, torch = sys.argv[1:8]
n, L = int(n), int(L)
text = open(log).read()
walls = dict(re.findall(r"^(a|b) wall ([\d.]+)$", text, re.M))
exits = dict(re.findall(r"^(a|b) exit (\d+)$", text, re.M))
if exits.get("a") != "0" or exits.get("b") != "0" or "a" not in walls or "b" not in walls:
    print(f"{variant:<24} failed: {text.strip().splitlines()[-3:] if text.strip() else 'no output'}")
    sys.exit()
# Twice the texts should take longer; when noise says otherwise there is no steady figure.
extra = float(walls["b"]) - float(walls["a"])
steady = n * L / extra if extra > 0 else float("nan")
# The 2N run's profile is the last table in the log.
last = re.split(r"^kernel\s+dispatches.*$", text, flags=re.M)[-1]
total = re.search(r"^total\s+([\d.]+)", last, re.M)
gpu_bound = 2 * n * L / (float(total.group(1)) / 1e3) if total else float("nan")
matmul = [(name, float(ms), rate) for name, ms, rate in
          re.findall(r"^(matmul\S*)\s+\d+\s+([\d.]+)\s+[\d.]+%\s+([\d.]+)", last, re.M)]
def diff(a, b):
    try:
        ra = [json.loads(l)["scores"] for l in open(a)]
        rb = [json.loads(l)["scores"] for l in open(b)]
        return f"{max(abs(x - y) for p, q in zip(ra, rb) for x, y in zip(p, q)):.3g}"
    except Exception:
        return "-"
kernels = ", ".join(f"{name} {ms:.0f} ms {float(rate):.2f} TFLOP/s" for name, ms, rate in matmul)
print(f"{variant:<24} steady {steady:9.0f} tok/s  GPU-bound {gpu_bound:9.0f} tok/s  "
      f"|d base| {diff(out, base)}  |d torch f32| {diff(out, torch) if torch else '-'}  [{kernels}]")
PY
    done
    rm -rf "$M" $W/*.out
done
say "== done"
