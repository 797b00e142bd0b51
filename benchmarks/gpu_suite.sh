#!/usr/bin/env bash
# Every GPU benchmark of the project, in one command, on a fresh GPU machine with no network.
#
#   bash benchmarks/gpu_suite.sh [RESULTS_DIR]        (from the repository root; default benchmarks/results/gpu)
#
# The machine's Python needs a CUDA build of torch; what else medseg needs and the machine lacks
# (monai, nibabel, SimpleITK, pytorch-ignite, fire, termcolor, ...) comes as wheels in ./.whl/
# (benchmarks/README.md says how to fill it). The steps, each bounded in time:
#   1. install the wheels and put the tree on PYTHONPATH (nothing is downloaded);
#   2. write the synthetic BraTS-size cases in a process pool (about 25 s a case on one core);
#   3. train the shared reference weights both inference pipelines load;
#   4. inference: a folder of CASES cases in fresh processes against stock MONAI and the I/O floor,
#      one new scan in a fresh process, and the in-process per-case times, all on one device;
#   5. training: medseg's recipe against the stock model-zoo recipe, steps per second.
# The JSONs and markdown tables land in RESULTS_DIR, with the device and package versions.
#
# Knobs (environment): MEDSEG_SUITE_CASES (20), MEDSEG_SUITE_SHAPE ("240 240 155"),
# MEDSEG_SUITE_DEVICE (cuda), MEDSEG_SUITE_WORK (/tmp/medseg-gpu-suite), MEDSEG_SUITE_STEPS (120:
# reference-weight steps), MEDSEG_SUITE_ROI (the window; default the bundles' 240 240 160),
# MEDSEG_SUITE_LIMIT_S (seconds per step, 300), MEDSEG_SUITE_WEIGHT_CROP (64). A CPU smoke run of
# the plumbing (about 6 minutes on 2 cores; benchmarks/README.md):
#   MEDSEG_SUITE_DEVICE=cpu MEDSEG_SUITE_CASES=2 MEDSEG_SUITE_SHAPE="48 48 32" MEDSEG_SUITE_STEPS=2 \
#   MEDSEG_SUITE_ROI="48 48 32" MEDSEG_SUITE_WEIGHT_CROP=32 bash benchmarks/gpu_suite.sh /tmp/suite-smoke
set -euo pipefail
cd "$(dirname "$0")/.."

RESULTS=${1:-benchmarks/results/gpu}
CASES=${MEDSEG_SUITE_CASES:-20}
SHAPE=${MEDSEG_SUITE_SHAPE:-"240 240 155"}
DEVICE=${MEDSEG_SUITE_DEVICE:-cuda}
WORK=${MEDSEG_SUITE_WORK:-/tmp/medseg-gpu-suite}
STEPS=${MEDSEG_SUITE_STEPS:-120}
ROI=${MEDSEG_SUITE_ROI:-}
LIMIT=${MEDSEG_SUITE_LIMIT_S:-300}
WEIGHT_CROP=${MEDSEG_SUITE_WEIGHT_CROP:-64}
SUFFIX=$([ "$DEVICE" = cpu ] && echo cpu || echo gpu)
mkdir -p "$RESULTS" "$WORK"
started=$(date +%s)
step() { echo "[gpu_suite $(( $(date +%s) - started )) s] $*" >&2; }

# 1. The carried wheels, then the tree itself (no build, no network).
if compgen -G ".whl/*.whl" > /dev/null; then
    step "installing $(ls .whl/*.whl | wc -l) carried wheels"
    python -m pip install --quiet --no-index --no-deps --find-links .whl .whl/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - "$DEVICE" <<'EOF'
import sys

import monai
import torch

import medseg

device = sys.argv[1]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu_suite: MEDSEG_SUITE_DEVICE=cuda but torch sees no CUDA device")
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"gpu_suite: medseg {medseg.__version__}, torch {torch.__version__}, monai {monai.__version__}, {name}",
      file=sys.stderr)
EOF

# 2. Data: the benchmark cases (seed 0) and, for the weights, other cases (seed 1).
step "writing $CASES cases of $SHAPE in a process pool"
python - "$WORK" "$CASES" $SHAPE <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "benchmarks")
from common import write_brats_cases

work, cases, shape = Path(sys.argv[1]), int(sys.argv[2]), tuple(int(s) for s in sys.argv[3:6])
write_brats_cases(work / "data", cases, shape, seed=0)
write_brats_cases(work / "train", min(cases, 6), shape, seed=1)
EOF

# 3. The shared weights (medseg bundle and plain state_dict for the stock config).
step "training the reference weights ($STEPS steps)"
timeout "$LIMIT" python benchmarks/reference_weights.py --data "$WORK/train" --out "$WORK/weights" \
    --steps "$STEPS" --crop "$WEIGHT_CROP" --batch 2

ROI_ARGS=()
[ -n "$ROI" ] && ROI_ARGS=(--roi $ROI)
# 4. Inference: a folder, one scan, in process.
step "inference: a folder of $CASES cases, fresh processes"
timeout "$LIMIT" python benchmarks/inference_vs_stock.py --data "$WORK/data" --weights "$WORK/weights" \
    --shape $SHAPE --cases "$CASES" --repeats 2 --device "$DEVICE" "${ROI_ARGS[@]}" \
    --out "$RESULTS/inference_folder_$SUFFIX.json" --note "benchmarks/gpu_suite.sh"
step "inference: one new scan, fresh process"
timeout "$LIMIT" python benchmarks/inference_vs_stock.py --data "$WORK/data" --weights "$WORK/weights" \
    --shape $SHAPE --cases 1 --repeats 3 --device "$DEVICE" "${ROI_ARGS[@]}" \
    --out "$RESULTS/inference_single_$SUFFIX.json" --note "benchmarks/gpu_suite.sh"
step "inference: in one process, per case"
timeout "$LIMIT" python benchmarks/inference_in_process.py --data "$WORK/data" --weights "$WORK/weights" \
    --shape $SHAPE --cases "$(( CASES < 5 ? CASES : 5 ))" --repeats 2 --device "$DEVICE" \
    --out "$RESULTS/inference_in_process_$SUFFIX.json"

# 5. Training throughput against the stock recipe.
step "training: medseg against the stock recipe"
CROP=$([ "$DEVICE" = cpu ] && echo "$SHAPE" || echo "224 224 144")
timeout "$LIMIT" python benchmarks/training_vs_stock.py --data "$WORK/data" --shape $SHAPE \
    --cases "$(( CASES < 8 ? CASES : 8 ))" --crop $CROP --steps 20 --warmup 2 \
    --workers "$(( $(nproc) < 4 ? $(nproc) : 4 ))" --out "$RESULTS/training_$SUFFIX.json" \
    --note "benchmarks/gpu_suite.sh"

step "done: $(ls "$RESULTS" | tr '\n' ' ')"
