"""Additive attention gate for U-Net skip connections (Oktay et al., MIDL 2018).

MONAI's ``AttentionUnet`` has an attention block, but it upsamples the gating signal to the
skip's resolution first, keeps no record of its coefficients and cannot have them set;
this gate follows the paper (the skip is subsampled to the gating signal's grid, the
coefficients are resampled back) and exposes the coefficients so tests and users can
inspect or override them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from torch import nn

from medseg.errors import InvalidValueError

__all__ = ["AttentionGate"]

_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


class AttentionGate(nn.Module):
    """Additive attention gate: ``x_hat = W(x * alpha)``, ``alpha = sigmoid(psi(relu(theta(x) + phi(g))))``.

    Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas", MIDL 2018
    (arXiv:1804.03999), section 2 and Fig. 2.

    The gate keeps the coefficients of its last forward pass in ``last_coefficients``
    ``(B, 1, *S_x)`` (detached; not kept while tracing for export). Setting
    ``coefficient_override`` to a tensor broadcastable to ``(B, 1, *S_x)`` or to a float
    replaces the computed coefficients, e.g. ``1.0`` turns the gate into a plain skip
    connection (followed by ``W``); ``None`` (default) restores normal behaviour.

    Args:
        spatial_dims: 2 or 3.
        skip_channels: channels ``C_x`` of the skip features ``x``.
        gate_channels: channels ``C_g`` of the gating signal ``g`` (the coarser decoder features).
        inter_channels: channels of the additive attention space. Defaults to ``max(C_x // 2, 1)``.
        subsample: the stride between ``x``'s grid and ``g``'s grid (the encoder stride). Defaults to 2.
        norm: MONAI norm name for the output transform ``W``. Defaults to instance norm.

    Shapes:
        ``x``: ``(B, C_x, *S_x)``; ``g``: ``(B, C_g, *S_x / subsample)`` -> ``(B, C_x, *S_x)``.
    """

    __jit_ignored_attributes__ = ["last_coefficients", "coefficient_override"]

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        gate_channels: int,
        inter_channels: int | None = None,
        subsample: int = 2,
        norm: str | tuple = ("instance", {"affine": True}),
    ) -> None:
        super().__init__()
        if spatial_dims not in _INTERP:
            raise InvalidValueError(f"`spatial_dims` must be 1, 2 or 3, got {spatial_dims}")
        if subsample < 1:
            raise InvalidValueError(f"`subsample` must be >= 1, got {subsample}")
        inter = inter_channels if inter_channels is not None else max(skip_channels // 2, 1)
        if min(skip_channels, gate_channels, inter) < 1:
            raise InvalidValueError(
                f"channel counts must be >= 1, got skip_channels={skip_channels}, "
                f"gate_channels={gate_channels}, inter_channels={inter}"
            )
        conv = Conv[Conv.CONV, spatial_dims]
        self.theta = conv(skip_channels, inter, kernel_size=subsample, stride=subsample, bias=False)
        self.phi = conv(gate_channels, inter, kernel_size=1, bias=True)
        self.psi = conv(inter, 1, kernel_size=1, bias=True)
        self.out = Convolution(spatial_dims, skip_channels, skip_channels, kernel_size=1, norm=norm, act=None)
        self.mode = _INTERP[spatial_dims]
        self.last_coefficients: torch.Tensor | None = None  # see __jit_ignored_attributes__
        self.coefficient_override: torch.Tensor | float | None = None

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Compute the attention coefficients ``alpha`` ``(B, 1, *S_x)`` in ``(0, 1)``."""
        f = F.relu(self.theta(x) + self.phi(g))
        alpha = torch.sigmoid(self.psi(f))
        return F.interpolate(alpha, size=x.shape[2:], mode=self.mode, align_corners=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Gate the skip features ``x`` ``(B, C_x, *S_x)`` with the gating signal ``g``."""
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            alpha = self.coefficients(x, g)  # exported graphs have no override or recording
        else:
            alpha = self._eager_coefficients(x, g)
        return self.out(x * alpha)

    @torch.jit.unused
    def _eager_coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # Recording and overriding the coefficients lets tests and users inspect what the gates
        # do; TorchScript cannot type these Optional attributes, so it never compiles this method.
        if self.coefficient_override is not None:
            alpha = torch.as_tensor(self.coefficient_override, dtype=x.dtype, device=x.device)
            alpha = alpha.expand(x.shape[0], 1, *x.shape[2:]) if alpha.dim() == 0 else alpha
        else:
            alpha = self.coefficients(x, g)
        self.last_coefficients = alpha.detach()
        return alpha
