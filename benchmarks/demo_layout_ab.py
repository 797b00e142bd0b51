"""Does the channels-last training layout change accuracy? ``medseg demo`` with and without it, two training seeds.

The demo (16 synthetic 64x64x48 cases, 100 epochs of attention_unet3d on the CPU, 3 held-out
cases) is trained four times: training seed 0 and 1, ``channels_last`` true and false; the
held-out mean Dice per region and the stage times are written to ``--out``. One forward and
backward pass gives the same gradients in both layouts to about 1e-5 (relative), so what
differs is the 100-epoch trajectory, which the seed moves as much.

    MEDSEG_TRUSTED_BUNDLES=/tmp/ab python benchmarks/demo_layout_ab.py --work /tmp/ab \
        --out benchmarks/results/demo_layout_ab_cpu.json
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from common import environment

from medseg.demo import run_demo

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--work", type=Path, required=True, help="scratch folder (must be in MEDSEG_TRUSTED_BUNDLES)")
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
env = environment()
src = Path(__file__).resolve().parents[1] / "bundles" / "brats_attention_unet3d"
out = {}
for seed in (0, 1):
    for cl in (True, False):
        b = args.work / f"bundle_{seed}_{cl}"
        if b.exists():
            shutil.rmtree(b)
        shutil.copytree(src, b)
        cfg = json.loads((b / "configs" / "demo.json").read_text())
        cfg["train"].update({"seed": seed, "channels_last": cl})
        (b / "configs" / "demo.json").write_text(json.dumps(cfg))
        r = run_demo(args.work / f"work_{seed}_{cl}", bundle=b, tracking_uri=None, log=lambda m: None)
        out[f"seed{seed}_cl{cl}"] = {"dice": r.mean_dice, "seconds": r.seconds}
        print(seed, cl, r.mean_dice, {k: round(v) for k, v in r.seconds.items()}, flush=True)
args.out.write_text(json.dumps({"benchmark": "demo_layout_ab", "environment": env, "runs": out}, indent=1))
print("wrote", args.out, file=sys.stderr)
