"""Build networks by name: a decorator registers a builder, ``build_network`` calls it.

After timm's registry: every network is registered with the spatial dimensions it supports,
so the test suite can loop over ``list_networks()`` and test a new network the moment it
exists. The config keys of a bundle are exactly the builder's arguments::

    {"_target_": "medseg.networks.build_network", "name": "attention_unet3d",
     "spatial_dims": 3, "in_channels": 4, "out_channels": 3}
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from medseg.errors import InvalidTypeError, InvalidValueError

__all__ = [
    "NetworkInfo",
    "build_network",
    "list_networks",
    "network_info",
    "network_info_for_module",
    "network_size_divisor",
    "register_network",
]


@dataclass(frozen=True)
class NetworkInfo:
    """What the registry knows about one network.

    Attributes:
        name: the registry name, e.g. ``"light_unet"``.
        builder: the callable that ``build_network`` calls with the config keys.
        spatial_dims: the values of ``spatial_dims`` the network supports, e.g. ``(2, 3)``.
        wraps: for a thin wrapper, the MONAI class whose constructor accepts the extra keys.
        fixed_export_shape: exporting bakes the example's input shape into the graph (the
            network turns sizes into Python numbers), so an export only runs at that shape.
        paper: the citation for the architecture.
        default_kwargs: the keys (besides ``spatial_dims``, ``in_channels`` and
            ``out_channels``) of the documented default configuration used for the
            parameter table in ``docs/networks.md``.
        smoke_kwargs: a tiny configuration (a few thousand parameters, built and run in
            well under a second on a CPU) with which the test suite and the export
            benchmark cover every registered network; ``None`` fails those tests.
        size_divisor: 2D inputs must be multiples of this (``int``), or a function of the
            constructor arguments giving it; 32 (five halvings, as ResNet-style encoders)
            unless a network registers its own. Read with :func:`network_size_divisor`.
    """

    name: str
    builder: Callable[..., nn.Module]
    spatial_dims: tuple[int, ...]
    wraps: type | None = None
    fixed_export_shape: bool = False
    paper: str = ""
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    smoke_kwargs: dict[str, Any] | None = None
    size_divisor: int | Callable[[dict[str, Any]], int] = 32


_REGISTRY: dict[str, NetworkInfo] = {}


def register_network(
    name: str,
    spatial_dims: tuple[int, ...] = (2, 3),
    *,
    wraps: type | None = None,
    fixed_export_shape: bool = False,
    paper: str = "",
    default_kwargs: dict[str, Any] | None = None,
    smoke_kwargs: dict[str, Any] | None = None,
    size_divisor: int | Callable[[dict[str, Any]], int] = 32,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a network class or builder function under ``name``.

    Args:
        name: the registry name; must be new.
        spatial_dims: the supported values of ``spatial_dims``.
        wraps: the MONAI class a wrapper forwards ``**kwargs`` to, so that unknown keys
            can be reported against its constructor.
        fixed_export_shape: see :class:`NetworkInfo`.
        paper: the citation shown in the docs table.
        default_kwargs: the documented default configuration (width arguments).
        smoke_kwargs: a tiny configuration for tests (see :class:`NetworkInfo`).
        size_divisor: see :class:`NetworkInfo`.

    Returns:
        A decorator that records the builder and returns it unchanged.
    """
    if not spatial_dims or any(d not in (1, 2, 3) for d in spatial_dims):
        raise InvalidValueError(f"`spatial_dims` must list values among 1, 2, 3, got {spatial_dims}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise InvalidValueError(f"network name {name!r} is already registered (by {_REGISTRY[name].builder!r})")
        _REGISTRY[name] = NetworkInfo(
            name=name,
            builder=builder,
            spatial_dims=tuple(spatial_dims),
            wraps=wraps,
            fixed_export_shape=fixed_export_shape,
            paper=paper,
            default_kwargs=dict(default_kwargs or {}),
            smoke_kwargs=dict(smoke_kwargs) if smoke_kwargs is not None else None,
            size_divisor=size_divisor,
        )
        return builder

    return decorator


def list_networks() -> list[str]:
    """Return the registered network names, sorted."""
    return sorted(_REGISTRY)


def network_info(name: str) -> NetworkInfo:
    """Return the :class:`NetworkInfo` registered under ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    if not isinstance(name, str):
        raise InvalidTypeError(f"network `name` must be a string, got {type(name).__name__}: {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidValueError(f"unknown network {name!r}; valid names are: {', '.join(list_networks())}") from None


def network_size_divisor(name: str, kwargs: dict[str, Any] | None = None) -> int:
    """The number the input sizes of network ``name`` built with ``kwargs`` must be multiples of.

    Raises:
        ValueError: ``name`` is not registered.
    """
    divisor = network_info(name).size_divisor
    return int(divisor(dict(kwargs or {})) if callable(divisor) else divisor)


def network_info_for_module(model: nn.Module) -> NetworkInfo | None:
    """The registry entry whose class (or wrapped MONAI class) built ``model``; ``None`` if there is none."""
    for info in _REGISTRY.values():
        if type(model) is info.builder or (info.wraps is not None and type(model) is info.wraps):
            return info
    return None


def _accepted_arguments(info: NetworkInfo) -> tuple[set[str], bool]:
    """Names the builder accepts, and whether it accepts any keyword at all.

    A wrapper's ``**kwargs`` is resolved against the MONAI class it forwards to, so a typo
    in a config key is reported here rather than deep inside MONAI.
    """
    targets = [info.builder] + ([info.wraps] if info.wraps is not None else [])
    names: set[str] = set()
    open_ended = False
    for target in targets:
        for param in inspect.signature(target).parameters.values():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = open_ended or target is targets[-1]
            elif param.kind is not inspect.Parameter.VAR_POSITIONAL and param.name != "self":
                names.add(param.name)
    return names, open_ended


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Build the network registered under ``name`` with the given constructor arguments.

    Args:
        name: a name from :func:`list_networks`.
        **kwargs: the constructor arguments, e.g. ``spatial_dims=3, in_channels=4,
            out_channels=3``; exactly the keys of the bundle config.

    Returns:
        The network, an ``nn.Module`` mapping ``(B, in_channels, *spatial)`` to
        ``(B, out_channels, *spatial)``.

    Raises:
        ValueError: unknown name (the valid names are listed) or unsupported ``spatial_dims``.
        TypeError: an argument the network does not take (its arguments are listed).
    """
    info = network_info(name)
    accepted, open_ended = _accepted_arguments(info)
    unknown = sorted(set(kwargs) - accepted)
    if unknown and not open_ended:
        raise InvalidTypeError(
            f"network {name!r} got unknown argument(s) {unknown}; it accepts: {', '.join(sorted(accepted))}"
        )
    dims = kwargs.get("spatial_dims", inspect.signature(info.builder).parameters.get("spatial_dims"))
    if isinstance(dims, inspect.Parameter):
        dims = dims.default
    if dims is not inspect.Parameter.empty and dims is not None and dims not in info.spatial_dims:
        raise InvalidValueError(f"network {name!r} supports spatial_dims in {info.spatial_dims}, got {dims!r}")
    return info.builder(**kwargs)
