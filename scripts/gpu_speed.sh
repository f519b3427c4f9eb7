#!/usr/bin/env bash
# Issue 26's GPU measurements in one call of at most 8 minutes: the template against a plain PyTorch loop (A0, bf16,
# 32x32) in speed=fast and speed=compiled at batch 128 and 512, model.block=linear_add and every other block kind
# with speed=compiled, and a profile of one compiled template step. Needs no Hydra. Results: $OUT/gpu_speed.md (the
# tables, each step's exit code and seconds), $OUT/gpu_speed.log (everything printed).
#
#   OUT=/path/to/out bash scripts/gpu_speed.sh              # on the GPU machine, from the repository root
#   OUT=/tmp/smoke bash scripts/gpu_speed.sh --cpu-smoke    # every step at toy sizes on a CPU: checks the script
#
# Steps run in order of importance, each under `timeout`; a step that would start with less than 20 s of the budget
# left is skipped and says so, so the tail (the other block kinds) is what a slow machine gives up.
set -u
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
REPORT="$OUT/gpu_speed.md"
LOG="$OUT/gpu_speed.log"
BUDGET_S=${BUDGET_S:-470}
SCALE=1  # step time limits are sized for the GPU

if [ "${1:-}" = "--cpu-smoke" ]; then
    # tiny network, a handful of steps, the compiled path through aot_eager (inductor on a CPU compiles for minutes)
    BASE=(--model tiny --device cpu --workers 0 --compile-backend aot_eager)
    B128=(--batch-size 8) B512=(--batch-size 16)
    MAIN=(--steps 4 --warmup 2 --repeats 2) SHORT=(--steps 3 --warmup 2 --repeats 1)
    PROFILE=(--steps 6 --warmup 2 --profile-steps 2)
    WHERE="CPU smoke run (toy sizes: the figures mean nothing)"
    SCALE=10 BUDGET_S=${BUDGET_S_SMOKE:-3600}  # a shared CPU: no budget worth keeping, only hang protection
else
    BASE=(--model A0 --device cuda --workers 4)
    B128=(--batch-size 128) B512=(--batch-size 512)
    MAIN=(--steps 150 --warmup 15 --repeats 3) SHORT=(--steps 100 --warmup 15 --repeats 1)
    PROFILE=(--steps 30 --warmup 15 --profile-steps 5)
    WHERE="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
fi

START=$(date +%s)
{
    echo "# Template vs plain loop: $WHERE"
    echo
    echo "$(date -u +%FT%TZ), $($PY -c 'import torch, lightning; print(f"torch {torch.__version__}, lightning {lightning.__version__}")' 2>&1), $(nproc) CPUs, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
} > "$REPORT"
: > "$LOG"

# step NAME LIMIT_S COMMAND...: run under timeout, append its markdown lines (| and # lines) to the report
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START)))
    if [ "$left" -lt 20 ]; then
        printf '\n## %s\n\nskipped: %s s of the %s s budget left\n' "$name" "$left" "$BUDGET_S" >> "$REPORT"
        return
    fi
    limit=$((limit * SCALE))
    [ "$limit" -gt "$left" ] && limit=$left
    printf '\n## %s\n\n`%s`\n\n' "$name" "$*" >> "$REPORT"
    echo "=== $name: $*" >> "$LOG"
    local t0 rc
    t0=$(date +%s)
    timeout -k 5 "$limit" "$@" > "$OUT/.step.out" 2>> "$LOG"
    rc=$?
    cat "$OUT/.step.out" >> "$LOG"
    grep -E '^(\||#|[0-9]+ (img/s|steps)|GPU busy)' "$OUT/.step.out" >> "$REPORT"
    local skipped
    skipped=$(grep -c "skipping cudagraphs" "$LOG" || true)
    printf '\n(exit %s%s, %s s; "skipping cudagraphs" lines in the log so far: %s)\n' "$rc" \
        "$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo ": timed out after $limit s")" "$(($(date +%s) - t0))" \
        "$skipped" >> "$REPORT"
    rm -f "$OUT/.step.out"
}

TT=benchmarks/train_throughput.py
export TORCH_LOGS=cudagraphs  # a "skipping cudagraphs" line names why a compiled step did not replay graphs
step "speed=fast, batch 128" 60 "$PY" "$TT" "${BASE[@]}" "${B128[@]}" "${MAIN[@]}" --presets fast --blocks repvgg
step "speed=compiled, batch 128" 130 "$PY" "$TT" "${BASE[@]}" "${B128[@]}" "${MAIN[@]}" --presets compiled --blocks repvgg
step "model.block=linear_add speed=compiled, batch 128" 90 "$PY" "$TT" "${BASE[@]}" "${B128[@]}" "${SHORT[@]}" \
    --presets compiled --blocks linear_add
step "profile of a compiled template step, batch 128" 60 "$PY" benchmarks/step_profile.py "${BASE[@]}" "${B128[@]}" \
    "${PROFILE[@]}" --presets compiled --blocks repvgg
step "speed=fast, batch 512" 50 "$PY" "$TT" "${BASE[@]}" "${B512[@]}" "${MAIN[@]}" --presets fast --blocks repvgg
step "speed=compiled, batch 512" 90 "$PY" "$TT" "${BASE[@]}" "${B512[@]}" "${SHORT[@]}" --presets compiled --blocks repvgg
OTHER_KINDS=$("$PY" -c "from reparam.blocks import BLOCKS; print(*(k for k in BLOCKS if k not in ('repvgg', 'linear_add')))")
for kind in $OTHER_KINDS; do
    step "model.block=$kind speed=compiled, batch 128" 70 "$PY" "$TT" "${BASE[@]}" "${B128[@]}" "${SHORT[@]}" \
        --presets compiled --blocks "$kind"
done
printf '\ntotal %s s\n' "$(($(date +%s) - START))" >> "$REPORT"
cat "$REPORT"
