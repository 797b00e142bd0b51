#!/usr/bin/env bash
# Every GPU benchmark of the project, in one command, on a fresh GPU machine with no network.
#
#   bash benchmarks/gpu_suite.sh [RESULTS_DIR]        (from the repository root; default benchmarks/results/gpu)
#
# The machine's Python needs a CUDA build of torch; what else medseg needs and the machine lacks
# (monai, nibabel, SimpleITK, pytorch-ignite, fire, termcolor, isal, pydicom) comes as wheels in
# ./.whl/ (benchmarks/README.md says how to fill it).
#
# The steps (what is timed runs alone on the machine; what is not timed is overlapped):
#   1. install the wheels and put the tree on PYTHONPATH (nothing is downloaded);
#   2. untimed, at once: the GPU tests (pytest -m gpu: parity of the device-side stages with
#      MONAI's transforms, the network placed while the first case is read, the 512-cube memory
#      bound, the autocast policy, the training fast path on CUDA); the synthetic BraTS-size cases
#      in two process pools (about 25 s a case on one core), the 4 cases of the weights first;
#      and, as soon as those are written, the shared reference weights both pipelines load;
#   3. inference, timed: a folder of CASES cases in fresh processes against stock MONAI and the
#      I/O floor; one new scan in a fresh process; what a fresh process's start-up is made of;
#      then in one warm process (inference_warm.py) the per-case times, the per-stage breakdown
#      and the network's levers (precision, channels_last_3d, cudnn.benchmark, sw batch size);
#   4. training: medseg's recipe against the stock model-zoo recipe (fp16 AMP as the zoo runs it,
#      and fp32), with each lever (precision, device_augment, channels_last, fused Adam, host
#      synchronisation per step), then torch.compile last, plain and with CUDA graphs (minutes);
#   5. torch.compile of the inference network, with the time left.
# Each step is bounded in time and all of them by one deadline (a step that would start after it
# is skipped, one that runs into it is stopped, and every step writes its results as it goes).
# The JSONs and markdown tables land in RESULTS_DIR, with the device and package versions; a log
# of the whole run in RESULTS_DIR/suite.log, and each step's seconds and outcome in
# RESULTS_DIR/suite_steps.json.
#
# Knobs (environment): MEDSEG_SUITE_CASES (20), MEDSEG_SUITE_SHAPE ("240 240 155"),
# MEDSEG_SUITE_DEVICE (cuda), MEDSEG_SUITE_WORK (/tmp/medseg-gpu-suite), MEDSEG_SUITE_STEPS (60:
# reference-weight steps), MEDSEG_SUITE_ROI (the window; default the bundles' 240 240 160),
# MEDSEG_SUITE_LIMIT_S (seconds per step, 300), MEDSEG_SUITE_DEADLINE_S (seconds for the whole
# suite, 540), MEDSEG_SUITE_WEIGHT_CROP (64), MEDSEG_SUITE_TRAIN_CASES (4),
# MEDSEG_SUITE_TRAIN_STEPS (10 measured steps per arm), MEDSEG_SUITE_COMPILE (1: also time
# torch.compile), MEDSEG_SUITE_TESTS (1: run the GPU tests), MEDSEG_SUITE_TESTS_LIMIT_S (150: their
# bound), MEDSEG_SUITE_WHEELS (.whl: the folder of carried wheels), PYTHON (python3). A CPU smoke
# run of the plumbing (benchmarks/README.md):
#   MEDSEG_SUITE_DEVICE=cpu MEDSEG_SUITE_CASES=2 MEDSEG_SUITE_SHAPE="48 48 32" MEDSEG_SUITE_STEPS=2 \
#   MEDSEG_SUITE_ROI="48 48 32" MEDSEG_SUITE_WEIGHT_CROP=32 MEDSEG_SUITE_TRAIN_STEPS=2 MEDSEG_SUITE_COMPILE=0 \
#   bash benchmarks/gpu_suite.sh /tmp/suite-smoke
# The whole script is one function, read in full before it runs (an edit during a run cannot break it).
main() {
set -uo pipefail
cd "$(dirname "$0")/.."

RESULTS=${1:-benchmarks/results/gpu}
CASES=${MEDSEG_SUITE_CASES:-20}
SHAPE=${MEDSEG_SUITE_SHAPE:-"240 240 155"}
DEVICE=${MEDSEG_SUITE_DEVICE:-cuda}
WORK=${MEDSEG_SUITE_WORK:-/tmp/medseg-gpu-suite}
STEPS=${MEDSEG_SUITE_STEPS:-60}
ROI=${MEDSEG_SUITE_ROI:-}
LIMIT=${MEDSEG_SUITE_LIMIT_S:-300}
DEADLINE=${MEDSEG_SUITE_DEADLINE_S:-540}
WEIGHT_CROP=${MEDSEG_SUITE_WEIGHT_CROP:-64}
TRAIN_CASES=${MEDSEG_SUITE_TRAIN_CASES:-4}
TRAIN_STEPS=${MEDSEG_SUITE_TRAIN_STEPS:-10}
COMPILE=${MEDSEG_SUITE_COMPILE:-1}
PY=${PYTHON:-python3}
WHEELS=${MEDSEG_SUITE_WHEELS:-.whl}
TESTS=${MEDSEG_SUITE_TESTS:-1}
SUFFIX=$([ "$DEVICE" = cpu ] && echo cpu || echo gpu)
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS" "$WORK"
LOG="$RESULTS/suite.log"
STEPS_TSV="$WORK/steps.tsv"  # one line per step: name, seconds, outcome (background steps write here too)
: > "$STEPS_TSV"
exec > >(tee -a "$LOG") 2>&1
tee_pid=$!
rm -f "$RESULTS/gpu_tests.log" "$RESULTS/gpu_tests.xml"  # not a former run's
# kill_tree PID: the process and everything it started (timeout runs its command in a process group of
# its own, so killing a background step's shell alone would leave it running).
kill_tree() {
    local child
    for child in $(pgrep -P "$1"); do kill_tree "$child"; done
    kill -TERM "$1" 2> /dev/null
}
background=()
on_exit() {
    local pid
    for pid in "${background[@]}"; do kill_tree "$pid"; done
    exec >&- 2>&-  # let tee see the end of the log, and wait for it to write it all
    wait "$tee_pid" 2> /dev/null
}
trap on_exit EXIT
started=$(date +%s)
note() { echo "[gpu_suite $(( $(date +%s) - started )) s] $*"; }
# bounded NAME COMMAND...: run a step under the smaller of LIMIT (or STEP_LIMIT, given on the call) and
# the time left before DEADLINE; STEP_OUTPUT, given on the call, takes the command's output instead of the log.
bounded() {
    local name=$1; shift
    local left=$(( DEADLINE - ($(date +%s) - started) ))
    local step=${STEP_LIMIT:-$LIMIT}
    local limit=$(( left < step ? left : step ))
    if (( limit < 20 )); then
        note "SKIPPED $name: ${left} s left before the suite's deadline"
        printf '%s\t0\tskipped: deadline\n' "$name" >> "$STEPS_TSV"
        return 0
    fi
    note "$name (at most $limit s)"
    local t0 rc outcome=ok
    t0=$(date +%s)
    if [ -n "${STEP_OUTPUT:-}" ]; then
        timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$STEP_OUTPUT" 2>&1
    else
        timeout --signal=TERM --kill-after=10 "$limit" "$@"
    fi
    rc=$?
    if (( rc != 0 )); then
        outcome="exit $rc$( (( rc == 124 || rc == 137 )) && echo ': stopped at its time limit')"
        note "FAILED $name: $outcome"
    fi
    note "$name: $(( $(date +%s) - t0 )) s"
    printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$outcome" >> "$STEPS_TSV"
    return 0
}
# write_cases DIR N SEED WORKERS: synthetic BraTS-size cases in a process pool (complete ones are kept).
write_cases() {
    "$PY" - "$@" $SHAPE <<'EOF'
import sys

sys.path.insert(0, "benchmarks")
from common import write_brats_cases

out, cases, seed, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
write_brats_cases(out, cases, tuple(int(s) for s in sys.argv[5:8]), seed=seed, workers=workers)
EOF
}

# 1. The carried wheels, then the tree itself (no build, no network).
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    note "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels"
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
        || { note "could not install the carried wheels"; exit 1; }
    "$PY" -m compileall -q -j 0 "$WORK/site" > /dev/null  # on every core, not by each module's first import
    export PYTHONPATH="$WORK/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The tree's byte code, as an installed package has it (where PYTHONDONTWRITEBYTECODE is set, every
# fresh process would otherwise compile medseg's modules again, inside the timed start-up).
"$PY" -m compileall -q -j 0 medseg benchmarks > /dev/null
"$PY" - "$DEVICE" <<'EOF' || { note "the environment is not usable"; exit 1; }
import sys

import monai
import torch

import medseg

device = sys.argv[1]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu_suite: MEDSEG_SUITE_DEVICE=cuda but torch sees no CUDA device")
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"gpu_suite: medseg {medseg.__version__}, torch {torch.__version__}, monai {monai.__version__}, {name}")
EOF
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# 2. Untimed work, overlapped: the GPU tests; the cases of the weights (seed 1) and of the
#    benchmarks (seed 0) in two pools; the weights as soon as their cases are written.
if [ "$DEVICE" != cpu ] && [ "$TESTS" = 1 ]; then
    STEP_LIMIT=${MEDSEG_SUITE_TESTS_LIMIT_S:-150} STEP_OUTPUT="$RESULTS/gpu_tests.log" bounded "GPU tests (pytest -m gpu)" "$PY" -m pytest -q -rA -m gpu -p no:cacheprovider \
        --continue-on-collection-errors --junitxml="$RESULTS/gpu_tests.xml" tests/inference/test_device_stages.py \
        tests/inference/test_predictor.py tests/test_device_policy.py tests/engine/test_fastpath.py \
        tests/engine/test_compile_route.py &
    background+=($!)
fi
CORES=$(nproc)
WEIGHT_CASES=$(( CASES < 4 ? CASES : 4 ))
BENCH_WORKERS=$(( CORES > WEIGHT_CASES + 1 ? CORES - WEIGHT_CASES : 1 ))
note "writing $CASES cases of $SHAPE ($BENCH_WORKERS processes) and $WEIGHT_CASES for the weights"
write_cases "$WORK/data" "$CASES" 0 "$BENCH_WORKERS" &
cases_pid=$!
write_cases "$WORK/train" "$WEIGHT_CASES" 1 "$WEIGHT_CASES" || { note "could not write the weights' cases"; exit 1; }
note "the weights' cases are written"
bounded "reference weights ($STEPS steps)" "$PY" benchmarks/reference_weights.py --data "$WORK/train" \
    --out "$WORK/weights" --steps "$STEPS" --crop "$WEIGHT_CROP" --batch 2 &
background+=($!)
wait "$cases_pid" || { note "could not write the benchmark cases"; exit 1; }
note "the benchmark cases are written"
wait "${background[@]}"
[ -f "$RESULTS/gpu_tests.log" ] && tail -n 5 "$RESULTS/gpu_tests.log"

ROI_ARGS=()
[ -n "$ROI" ] && ROI_ARGS=(--roi $ROI)
# 3. Inference, timed: a folder and one scan in fresh processes, the start-up, then one warm process.
bounded "inference: a folder of $CASES cases, fresh processes" "$PY" benchmarks/inference_vs_stock.py \
    --data "$WORK/data" --weights "$WORK/weights" --shape $SHAPE --cases "$CASES" --repeats 1 --device "$DEVICE" \
    "${ROI_ARGS[@]}" --out "$RESULTS/inference_folder_$SUFFIX.json" --note "benchmarks/gpu_suite.sh"
bounded "inference: one new scan, fresh process" "$PY" benchmarks/inference_vs_stock.py --data "$WORK/data" \
    --weights "$WORK/weights" --shape $SHAPE --cases 1 --repeats 1 --device "$DEVICE" "${ROI_ARGS[@]}" \
    --out "$RESULTS/inference_single_$SUFFIX.json" --note "benchmarks/gpu_suite.sh"
bounded "start-up of a fresh process, step by step" "$PY" benchmarks/startup.py --repeats 1 \
    --out "$RESULTS/startup_$SUFFIX.json"
bounded "inference in one warm process: per case, stage by stage, the network's levers" "$PY" \
    benchmarks/inference_warm.py --data "$WORK/data" --weights "$WORK/weights" --shape $SHAPE "${ROI_ARGS[@]}" \
    --cases "$(( CASES < 5 ? CASES : 5 ))" --stage-cases "$(( CASES < 4 ? CASES - 1 : 3 ))" --device "$DEVICE" \
    --results "$RESULTS" --suffix "$SUFFIX"

# 4. Training throughput against the stock recipe, lever by lever (torch.compile last).
CROP=$([ "$DEVICE" = cpu ] && echo "$SHAPE" || echo "224 224 144")
LEVERS=(precision device_augment channels_last fused_adam sync_every_step)
[ "$COMPILE" = 1 ] && LEVERS+=(compile cuda_graphs)
bounded "training: medseg against the stock recipe" "$PY" benchmarks/training_vs_stock.py --data "$WORK/data" \
    --shape $SHAPE --cases "$(( CASES < TRAIN_CASES ? CASES : TRAIN_CASES ))" --crop $CROP --steps "$TRAIN_STEPS" \
    --warmup 2 --workers "$(( CORES < 4 ? CORES : 4 ))" --levers "${LEVERS[@]}" \
    --out "$RESULTS/training_$SUFFIX.json" --note "benchmarks/gpu_suite.sh"

# 5. torch.compile of the inference network (minutes of compilation: only with the time left).
if [ "$COMPILE" = 1 ]; then
    bounded "inference: the network compiled" "$PY" benchmarks/inference_network_levers.py --data "$WORK/data" \
        --weights "$WORK/weights" --shape $SHAPE "${ROI_ARGS[@]}" --repeats 3 --device "$DEVICE" --compile-only \
        --out "$RESULTS/inference_network_compile_$SUFFIX.json"
fi

total=$(( $(date +%s) - started ))
"$PY" - "$STEPS_TSV" "$RESULTS/suite_steps.json" "$total" "$DEADLINE" <<'EOF'
import json
import sys

steps = [dict(zip(("step", "seconds", "outcome"), line.rstrip("\n").split("\t")))
         for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
for step in steps:
    step["seconds"] = int(step["seconds"])
with open(sys.argv[2], "w", encoding="utf-8") as handle:
    json.dump({"total_seconds": int(sys.argv[3]), "deadline_seconds": int(sys.argv[4]), "steps": steps}, handle,
              indent=2)
EOF
note "done in $total s: $(ls "$RESULTS" | tr '\n' ' ')"
not_ok=$(awk -F'\t' '$3 != "ok" {printf "%s (%s); ", $1, $3}' "$STEPS_TSV")
if [ -n "$not_ok" ]; then
    note "steps that failed or were skipped: $not_ok"
    exit 1
fi
}

main "$@"
