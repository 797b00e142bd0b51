#!/usr/bin/env bash
# Every GPU benchmark of the project, in one command, on a fresh GPU machine with no network.
#
#   bash benchmarks/gpu_suite.sh [RESULTS_DIR]        (from the repository root; default benchmarks/results/gpu)
#
# The machine's Python needs a CUDA build of torch; what else medseg needs and the machine lacks
# (monai, nibabel, SimpleITK, pytorch-ignite, fire, termcolor, isal, pydicom) comes as wheels in
# ./.whl/ (benchmarks/README.md says how to fill it). The steps, in order of importance, each
# bounded in time and all of them by one deadline (a step that would start after it is skipped,
# one that runs into it is stopped, and every step writes its results as it goes):
#   1. install the wheels and put the tree on PYTHONPATH (nothing is downloaded);
#   2. write the synthetic BraTS-size cases in a process pool (about 25 s a case on one core);
#   3. train the shared reference weights both inference pipelines load;
#   4. inference: a folder of CASES cases in fresh processes against stock MONAI and the I/O floor;
#      one new scan in a fresh process; what a fresh process's start-up is made of; the in-process
#      per-case times; the per-stage breakdown; the
#      network's levers (precision, channels_last_3d, cudnn.benchmark, sw batch size);
#   5. the GPU tests (pytest -m gpu: parity of the device-side stages with MONAI's transforms, the
#      network placed while the first case is read, the 512-cube memory bound, the autocast policy,
#      the training fast path on CUDA);
#   6. training: medseg's recipe against the stock model-zoo recipe (fp16 AMP as the zoo runs it,
#      and fp32), with each lever (precision, device_augment, channels_last, fused Adam, host
#      synchronisation per step), then torch.compile last (its compilation is minutes);
#   7. torch.compile of the inference network, with the time left.
# The JSONs and markdown tables land in RESULTS_DIR, with the device and package versions, and a
# log of the whole run in RESULTS_DIR/suite.log.
#
# Knobs (environment): MEDSEG_SUITE_CASES (20), MEDSEG_SUITE_SHAPE ("240 240 155"),
# MEDSEG_SUITE_DEVICE (cuda), MEDSEG_SUITE_WORK (/tmp/medseg-gpu-suite), MEDSEG_SUITE_STEPS (120:
# reference-weight steps), MEDSEG_SUITE_ROI (the window; default the bundles' 240 240 160),
# MEDSEG_SUITE_LIMIT_S (seconds per step, 300), MEDSEG_SUITE_DEADLINE_S (seconds for the whole
# suite, 540), MEDSEG_SUITE_WEIGHT_CROP (64), MEDSEG_SUITE_TRAIN_STEPS (15 measured steps per arm),
# MEDSEG_SUITE_COMPILE (1: also time torch.compile), MEDSEG_SUITE_TESTS (1: run the GPU tests),
# MEDSEG_SUITE_WHEELS (.whl: the folder of carried wheels), PYTHON (python3). A CPU smoke run of the
# plumbing (about 8 minutes on 2 cores; benchmarks/README.md):
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
STEPS=${MEDSEG_SUITE_STEPS:-120}
ROI=${MEDSEG_SUITE_ROI:-}
LIMIT=${MEDSEG_SUITE_LIMIT_S:-300}
DEADLINE=${MEDSEG_SUITE_DEADLINE_S:-540}
WEIGHT_CROP=${MEDSEG_SUITE_WEIGHT_CROP:-64}
TRAIN_STEPS=${MEDSEG_SUITE_TRAIN_STEPS:-15}
COMPILE=${MEDSEG_SUITE_COMPILE:-1}
PY=${PYTHON:-python3}
WHEELS=${MEDSEG_SUITE_WHEELS:-.whl}
TESTS=${MEDSEG_SUITE_TESTS:-1}
SUFFIX=$([ "$DEVICE" = cpu ] && echo cpu || echo gpu)
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS" "$WORK"
LOG="$RESULTS/suite.log"
exec > >(tee -a "$LOG") 2>&1
started=$(date +%s)
failed=()
note() { echo "[gpu_suite $(( $(date +%s) - started )) s] $*"; }
# bounded NAME COMMAND...: run a step under the smaller of LIMIT and the time left before DEADLINE.
bounded() {
    local name=$1; shift
    local left=$(( DEADLINE - ($(date +%s) - started) ))
    local limit=$(( left < LIMIT ? left : LIMIT ))
    if (( limit < 20 )); then
        note "SKIPPED $name: ${left} s left before the suite's deadline"
        failed+=("$name (skipped: deadline)")
        return 0
    fi
    note "$name (at most $limit s)"
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    local rc=$?
    if (( rc != 0 )); then
        note "FAILED $name: exit status $rc$( (( rc == 124 || rc == 137 )) && echo ' (stopped at its time limit)')"
        failed+=("$name (exit $rc)")
    fi
    return 0
}

# 1. The carried wheels, then the tree itself (no build, no network).
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    note "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels"
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WHEELS"/*.whl \
        || { note "could not install the carried wheels"; exit 1; }
    export PYTHONPATH="$WORK/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
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

# 2. Data: the benchmark cases (seed 0) and, for the weights, other cases (seed 1), in one pool.
note "writing $CASES cases of $SHAPE (+ 4 for the weights) in a process pool"
"$PY" - "$WORK" "$CASES" $SHAPE <<'EOF' || { note "could not write the cases"; exit 1; }
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, "benchmarks")
from common import _write_case

work, cases, shape = Path(sys.argv[1]), int(sys.argv[2]), tuple(int(s) for s in sys.argv[3:6])
jobs = [(work / "data", i, shape, 0, True) for i in range(cases)] + \
       [(work / "train", i, shape, 1, True) for i in range(min(cases, 4))]
with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
    list(pool.map(_write_case, *zip(*jobs)))
EOF

# 3. The shared weights (medseg bundle and plain state_dict for the stock config).
bounded "reference weights ($STEPS steps)" "$PY" benchmarks/reference_weights.py --data "$WORK/train" \
    --out "$WORK/weights" --steps "$STEPS" --crop "$WEIGHT_CROP" --batch 2

ROI_ARGS=()
[ -n "$ROI" ] && ROI_ARGS=(--roi $ROI)
# 4. Inference: a folder, one scan, in process, stage by stage.
bounded "inference: a folder of $CASES cases, fresh processes" "$PY" benchmarks/inference_vs_stock.py \
    --data "$WORK/data" --weights "$WORK/weights" --shape $SHAPE --cases "$CASES" --repeats 1 --device "$DEVICE" \
    "${ROI_ARGS[@]}" --out "$RESULTS/inference_folder_$SUFFIX.json" --note "benchmarks/gpu_suite.sh"
bounded "inference: one new scan, fresh process" "$PY" benchmarks/inference_vs_stock.py --data "$WORK/data" \
    --weights "$WORK/weights" --shape $SHAPE --cases 1 --repeats 1 --device "$DEVICE" "${ROI_ARGS[@]}" \
    --out "$RESULTS/inference_single_$SUFFIX.json" --note "benchmarks/gpu_suite.sh"
bounded "start-up of a fresh process, step by step" "$PY" benchmarks/startup.py --repeats 1 \
    --out "$RESULTS/startup_$SUFFIX.json"
bounded "inference: in one process" "$PY" benchmarks/inference_in_process.py --data "$WORK/data" \
    --weights "$WORK/weights" --shape $SHAPE --cases "$(( CASES < 5 ? CASES : 5 ))" --repeats 1 --device "$DEVICE" \
    --out "$RESULTS/inference_in_process_$SUFFIX.json"
bounded "inference: stage by stage" "$PY" benchmarks/stage_breakdown.py --data "$WORK/data" \
    --weights "$WORK/weights" --shape $SHAPE --cases "$(( CASES < 4 ? CASES - 1 : 3 ))" --device "$DEVICE" \
    --out "$RESULTS/stage_breakdown_$SUFFIX.json"
bounded "inference: the network, lever by lever" "$PY" benchmarks/inference_network_levers.py --data "$WORK/data" \
    --weights "$WORK/weights" --shape $SHAPE "${ROI_ARGS[@]}" --repeats 3 --device "$DEVICE" \
    --out "$RESULTS/inference_network_levers_$SUFFIX.json"

# 5. The GPU tests: parity of the device-side stages with MONAI's transforms on this device.
if [ "$DEVICE" != cpu ] && [ "$TESTS" = 1 ]; then
    bounded "GPU tests (pytest -m gpu)" "$PY" -m pytest -q -rA -m gpu -p no:cacheprovider \
        --continue-on-collection-errors --junitxml="$RESULTS/gpu_tests.xml" tests/inference/test_device_stages.py \
        tests/inference/test_predictor.py tests/test_device_policy.py tests/engine/test_fastpath.py
fi

# 6. Training throughput against the stock recipe, lever by lever (torch.compile last).
CROP=$([ "$DEVICE" = cpu ] && echo "$SHAPE" || echo "224 224 144")
LEVERS=(precision device_augment channels_last fused_adam sync_every_step)
[ "$COMPILE" = 1 ] && LEVERS+=(compile)
bounded "training: medseg against the stock recipe" "$PY" benchmarks/training_vs_stock.py --data "$WORK/data" \
    --shape $SHAPE --cases "$(( CASES < 8 ? CASES : 8 ))" --crop $CROP --steps "$TRAIN_STEPS" --warmup 2 \
    --workers "$(( $(nproc) < 4 ? $(nproc) : 4 ))" --levers "${LEVERS[@]}" \
    --out "$RESULTS/training_$SUFFIX.json" --note "benchmarks/gpu_suite.sh"

# 7. torch.compile of the inference network (minutes of compilation: only with the time left).
if [ "$COMPILE" = 1 ]; then
    bounded "inference: the network compiled" "$PY" benchmarks/inference_network_levers.py --data "$WORK/data" \
        --weights "$WORK/weights" --shape $SHAPE "${ROI_ARGS[@]}" --repeats 3 --device "$DEVICE" --compile \
        --out "$RESULTS/inference_network_compile_$SUFFIX.json"
fi

note "done: $(ls "$RESULTS" | tr '\n' ' ')"
if (( ${#failed[@]} )); then
    note "steps that failed or were skipped: ${failed[*]}"
    exit 1
fi
}

main "$@"
