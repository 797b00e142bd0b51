"""Export every registered network to TorchScript and ONNX and measure parity with PyTorch (fp32, CPU).

By default uses each network's tiny registered ``smoke_kwargs`` (as the tests do) so that it
runs in a few minutes on 2 CPU cores; ``--default-config`` uses each network's documented
default configuration (``docs/networks.md``) with larger inputs. Writes a JSON file under
``benchmarks/results/`` and a markdown table on stdout. Run from the repository root::

    python benchmarks/export_parity.py
    python benchmarks/export_parity.py --default-config --dims 2
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from medseg.errors import MedsegError
from medseg.export import ExportNotSupported, check_parity, export_onnx, export_torchscript
from medseg.networks import build_network, list_networks, network_info
from medseg.utils.atomic import atomic_write_text

EDGE = {"flexible_unet": 32, "deeplabv3plus": 32, "swinunetr": 64}
EXPORTERS = {"torchscript": (export_torchscript, ".ts"), "onnx": (export_onnx, ".onnx")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--default-config", action="store_true", help="documented default widths, 64-voxel inputs"
    )
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 3], help="spatial dimensions to export")
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: benchmarks/results/export_parity_*.json)"
    )
    args = parser.parse_args()
    tag = "default" if args.default_config else "small"
    dims_tag = "" if set(args.dims) == {2, 3} else "".join(f"{d}d" for d in sorted(args.dims))
    out = args.out or Path(f"benchmarks/results/export_parity_{tag}{dims_tag}_cpu.json")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in list_networks():
            for dims in [d for d in network_info(name).spatial_dims if d in args.dims]:
                edge = 64 if args.default_config else EDGE.get(name, 16)
                info = network_info(name)
                config = info.default_kwargs if args.default_config else info.smoke_kwargs
                shape = (1, 2) + (edge,) * dims
                for fmt, (export, suffix) in EXPORTERS.items():
                    row = {"network": name, "dims": dims, "format": fmt, "input_shape": list(shape)}
                    start = time.perf_counter()
                    try:
                        torch.manual_seed(0)
                        model = build_network(
                            name, spatial_dims=dims, in_channels=2, out_channels=3, **config
                        )
                        example = torch.randn(shape, generator=torch.Generator().manual_seed(1))
                        path = export(model.eval(), example, Path(work) / f"{name}{dims}{suffix}", name=name)
                        row["max_abs_diff"] = check_parity(model, path, example)
                        row["fixed_shape"] = network_info(name).fixed_export_shape
                    except (ExportNotSupported, MedsegError) as err:
                        row["error"] = str(err)
                    row["seconds"] = round(time.perf_counter() - start, 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    result = {"config": tag, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "rows": rows}
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print("\n| network | dims | TorchScript max abs diff | ONNX (onnxruntime) max abs diff |")
    print("|---|---|---|---|")
    for name in list_networks():
        for dims in [d for d in network_info(name).spatial_dims if d in args.dims]:
            cells = []
            for fmt in EXPORTERS:
                row = next(r for r in rows if (r["network"], r["dims"], r["format"]) == (name, dims, fmt))
                cells.append(
                    f"{row['max_abs_diff']:.1e}" if "max_abs_diff" in row else f"fails: {row['error'][:60]}"
                )
            print(f"| `{name}` | {dims}D | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
