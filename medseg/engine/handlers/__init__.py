"""Small ignite handlers, one concern each, attached to MONAI's engines from bundle configs."""

from medseg.engine.handlers.grad_clip import GradientClipHandler
from medseg.engine.handlers.nan_guard import NaNGuardHandler, NonFiniteLossError
from medseg.engine.handlers.throughput import ThroughputHandler

__all__ = ["GradientClipHandler", "NaNGuardHandler", "NonFiniteLossError", "ThroughputHandler"]
