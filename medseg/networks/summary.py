"""Parameter counts of the registered networks at their documented default configuration."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from medseg.errors import MedsegError
from medseg.networks.registry import build_network, list_networks, network_info

__all__ = ["count_parameters", "parameter_table"]

# Channel counts of the table: BraTS-like 3D (4 MRI sequences -> 3 regions) and
# ISIC-like 2D (RGB -> lesion / background).
TABLE_CHANNELS: dict[int, tuple[int, int]] = {2: (3, 2), 3: (4, 3)}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_table(names: Iterable[str] | None = None) -> str:
    """A markdown table of parameter counts per network and spatial dimension.

    Each network is built with its registered ``default_kwargs`` and the channel counts of
    :data:`TABLE_CHANNELS` (2D: 3 -> 2, 3D: 4 -> 3).

    Args:
        names: the networks to include. Defaults to every registered network.

    Returns:
        The table as markdown text, one row per network.
    """
    rows = [
        "| network | dims | default config | params 2D (3->2) | params 3D (4->3) | reference |",
        "|---|---|---|---|---|---|",
    ]
    for name in names if names is not None else list_networks():
        info = network_info(name)
        counts: dict[int, str] = {}
        for dims in (2, 3):
            if dims not in info.spatial_dims:
                counts[dims] = "n/a"
                continue
            cin, cout = TABLE_CHANNELS[dims]
            try:
                model = build_network(
                    name, spatial_dims=dims, in_channels=cin, out_channels=cout, **info.default_kwargs
                )
            except MedsegError as err:  # a missing optional dependency
                counts[dims] = f"unavailable ({err})"
                continue
            counts[dims] = f"{count_parameters(model):,}"
        config = ", ".join(f"{k}={_short(v)}" for k, v in info.default_kwargs.items())
        dims_text = "/".join(f"{d}D" for d in info.spatial_dims)
        rows.append(f"| `{name}` | {dims_text} | {config} | {counts[2]} | {counts[3]} | {info.paper} |")
    return "\n".join(rows)


def _short(value: Any) -> str:
    return str(tuple(value)) if isinstance(value, list) else str(value)
