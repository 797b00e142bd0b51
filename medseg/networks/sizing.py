"""How large a network a spec asks for, found without taking its memory.

A checkpoint's network spec is data from outside: a 1.7 KB file can ask for a network of 7 GB.
:func:`check_network_size` builds the network on torch's ``meta`` device, where tensors have
shapes but no data, counts its parameters and refuses more than
:func:`medseg.utils.limits.max_parameters`, before anything is allocated.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from medseg.errors import MedsegError
from medseg.networks.registry import build_network
from medseg.utils.limits import MAX_NETWORK_TENSORS, MAX_PARAMETERS_ENV, max_parameters

__all__ = ["check_network_size"]


_CONSTRUCTORS = frozenset({
    torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.eye, torch.arange,
    torch.range, torch.linspace, torch.logspace, torch.rand, torch.randn, torch.randint, torch.randperm,
    torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor,
})
_SMALL_REAL = 4096  # elements: tensors this small are made for real in the second attempt ...
_SMALL_REAL_BUDGET = 1 << 22  # ... up to this many elements (16 MB of float32) in all


class _TooLarge(Exception):
    """The build was stopped: it created more elements or tensors than allowed (the message says which)."""


class _MetaBuild(TorchFunctionMode):
    """Make every new tensor on the meta device (shapes, no memory), and stop a build that grows too large.

    Args:
        max_elements: stop once the tensors made hold more elements than this.
        small_real: make tensors of up to ``_SMALL_REAL`` elements for real (within
            ``_SMALL_REAL_BUDGET``), for builders that read a value back, as MONAI's
            SwinUNETR does with ``.item()`` on its drop-path schedule.
    """

    def __init__(self, max_elements: int, small_real: bool = False) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.small_real = small_real
        self.elements = 0
        self.tensors = 0
        self.real = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's
        kwargs = dict(kwargs or {})
        if func not in _CONSTRUCTORS:
            return func(*args, **kwargs)
        wanted = kwargs.get("device")
        kwargs["device"] = "meta"
        out = func(*args, **kwargs)
        size = out.numel() if isinstance(out, torch.Tensor) else 0
        self.elements += size
        self.tensors += 1
        if self.elements > self.max_elements:
            raise _TooLarge(f"more than {self.max_elements:,} parameters, the limit "
                            f"(set {MAX_PARAMETERS_ENV} to change it)")
        if self.tensors > MAX_NETWORK_TENSORS:
            raise _TooLarge(f"more than {MAX_NETWORK_TENSORS:,} tensors "
                            "(registered networks have a few hundred)")
        if self.small_real and size <= _SMALL_REAL and self.real + size <= _SMALL_REAL_BUDGET:
            self.real += size
            kwargs["device"] = wanted
            out = func(*args, **kwargs)
        return out


def _meta_size(name: str, kwargs: dict[str, Any], limit: int, small_real: bool) -> int:
    """Parameters and buffer elements of the network, built under :class:`_MetaBuild`."""
    # fork_rng: the real build that follows draws the same random numbers as without this one.
    with torch.random.fork_rng(devices=[]), _MetaBuild(limit, small_real):
        model = build_network(name, **kwargs)
    return sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())


def check_network_size(network: dict[str, Any], source: str | os.PathLike[str] = "checkpoint") -> int:
    """Count the parameters of the network a spec describes, without memory, and refuse too many.

    The network is built on torch's ``meta`` device, where tensors have shapes but no data;
    a build creating more than the limit's elements, or more than
    :data:`~medseg.utils.limits.MAX_NETWORK_TENSORS` tensors, is stopped there. A builder
    that reads a tensor's value back (``.item()``) is built again with its small tensors
    made for real.

    Args:
        network: ``{"name": <registry name>, "kwargs": {<constructor arguments>}}``.
        source: the checkpoint file, named in the messages.

    Returns:
        The parameters and buffer elements of the network.

    Raises:
        MedsegError: more than :func:`~medseg.utils.limits.max_parameters`, naming ``source``
            and the count; or a build that fails for another reason than the spec's arguments.
        ValueError, TypeError: the spec's own errors, as :func:`~medseg.networks.build_network` raises them.
    """
    name, kwargs = network["name"], network.get("kwargs", {})
    limit = max_parameters()
    count = None
    for small_real in (False, True):
        try:
            count = _meta_size(name, kwargs, limit, small_real)
            break
        except _TooLarge as err:
            raise MedsegError(f"{source}: network too large: {name!r} with the checkpoint's arguments "
                              f"has {err}; it was not built") from None
        except (ValueError, TypeError) as err:
            if "meta" not in str(err).lower():
                raise  # the spec's own error, exactly as building it for real would raise it
            failure: Exception = err
        except Exception as err:  # noqa: BLE001 - e.g. .item() on a meta tensor: retried, small ones real
            failure = err
    if count is None:
        first = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
        raise MedsegError(f"{source}: network {name!r} cannot be sized before it is built, so it is not "
                          f"built: {type(failure).__name__}: {first}") from failure
    if count > limit:
        raise MedsegError(f"{source}: network too large: {name!r} with the checkpoint's arguments has "
                          f"{count:,} parameters, more than the limit {limit:,} "
                          f"(set {MAX_PARAMETERS_ENV} to change it); it was not built")
    return count
