"""The components of an ensemble bundle's ``configs/inference.json`` (``medseg export --format ensemble``).

An ensemble bundle holds its members under ``members/`` (each a checkpoint with its plain
inference settings) and lists them under the config id ``ensemble_members``. ``python -m
monai.bundle run --config_file ENSEMBLE/configs/inference.json`` runs it as a MONAI
``SupervisedEvaluator`` whose parts are:

* the dataset reads each case only (:func:`~medseg.inference.preprocess.loading_transforms`:
  channel-first, canonical channel order, the file's own grid);
* :class:`EnsembleInferer` gives each member the case with the member's own preprocessing
  (orientation, spacing or plan, normalisation), runs its sliding window, maps its
  probabilities back to the case's grid and averages them, as ``medseg infer`` does;
* :class:`EnsembleLabelsd` turns the mean into the first member's label values, and the
  bundle's ``PostprocessLabelsd`` and ``SaveImaged`` write the mask in the case's geometry.

The members are read as data (:func:`load_ensemble`: checkpoints with ``weights_only=True``,
plain JSON settings), never as configs, so a member's folder cannot run code.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, decollate_batch
from monai.inferers import Inferer
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from torch import nn

from medseg.inference.ensemble import EnsembleModel, bundle_members, check_members, preprocessing_key
from medseg.inference.model import load_inference_model
from medseg.inference.postprocess import probabilities_to_labels
from medseg.inference.predictor import SlidingWindowPredictor
from medseg.inference.preprocess import after_loading, invert_maps
from medseg.transforms import IMAGE

__all__ = ["EnsembleInferer", "EnsembleLabelsd", "EnsembleNetwork", "load_ensemble"]


def load_ensemble(bundle_root: str | Path) -> EnsembleModel:
    """The checked members of the ensemble bundle at ``bundle_root`` (its ``ensemble_members``).

    Raises:
        FileNotFoundError: ``bundle_root`` is not an ensemble bundle.
        MedsegError: naming the file, when the bundle lists no valid members or they do not
            segment the same thing.
    """
    root = Path(bundle_root)
    members = bundle_members(root)
    if members is None:
        raise FileNotFoundError(f"{root}: not an ensemble bundle (its configs/inference.json lists no ensemble_members)")
    return check_members([load_inference_model(m) for m in members], [str(m) for m in members])


class EnsembleNetwork(nn.Module):
    """The members' networks as one module: the mean of their probabilities on one input.

    For tools that take a bundle's ``network_def`` and call it on a window (all members must
    then accept the same input). The bundle's evaluator does not call it: its
    :class:`EnsembleInferer` gives each member its own preprocessing.
    """

    def __init__(self, ensemble: EnsembleModel) -> None:
        super().__init__()
        self.members = nn.ModuleList(m.network for m in ensemble.members)
        self.activations = [m.activation for m in ensemble.members]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the members' sigmoid (regions) or softmax (classes) outputs."""
        total = None
        for network, activation in zip(self.members, self.activations):
            out = network(x)
            out = out[0] if isinstance(out, (list, tuple)) else out  # deep supervision: the full-resolution head
            prob = torch.sigmoid(out) if activation == "sigmoid" else torch.softmax(out, dim=1)
            total = prob if total is None else total + prob
        assert total is not None  # an EnsembleModel has two members or more
        return total / len(self.members)


class EnsembleInferer(Inferer):
    """Each member on the case with its own preprocessing; the mean probabilities on the case's own grid.

    Args:
        ensemble: the members (:func:`load_ensemble`).
        device: where windows run (``"auto"``: CUDA when there is one).
        sw_batch_size: windows per forward pass (``None``: each member's own).
        overlap: window overlap (``None``: each member's own).
    """

    def __init__(self, ensemble: EnsembleModel, device: str | torch.device = "auto", sw_batch_size: int | None = None,
                 overlap: float | None = None) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.keys = [preprocessing_key(m) for m in ensemble.members]
        shared: dict[str, Any] = {}  # members with the same preprocessing share it (and its inverse)
        self.pipelines = [shared.setdefault(k, after_loading(m)) for k, m in zip(self.keys, ensemble.members)]
        self.predictors = [SlidingWindowPredictor(
            m.network, m.roi_size, m.sw_batch_size if sw_batch_size is None else sw_batch_size,
            m.overlap if overlap is None else overlap, activation=m.activation, device=device,
            mirror_axes=m.tta_axes, mode=m.blend_mode) for m in ensemble.members]

    def mean(self, image: MetaTensor) -> np.ndarray:
        """The members' mean probabilities ``(K, X, Y, Z)`` for one read case ``(C, X, Y, Z)``."""
        total: np.ndarray | None = None
        cached: dict[str, Any] = {}
        for key, pipeline, predictor in zip(self.keys, self.pipelines, self.predictors):
            if key not in cached:  # members with the same preprocessing prepare the case once
                cached = {key: pipeline({IMAGE: image})[IMAGE]}
            ready = cached[key]
            probabilities = invert_maps(predictor.predict(ready).mean, ready, pipeline, tuple(image.shape[1:]))
            total = probabilities if total is None else total + probabilities
        assert total is not None
        return total / len(self.predictors)

    def __call__(self, inputs: torch.Tensor, network: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The mean probabilities of a batch ``(B, C, X, Y, Z)`` of read cases, with their metadata.

        ``network`` (the bundle's ``network``, the same modules) is not called: each member's
        own network runs inside its predictor.
        """
        items = decollate_batch(inputs, detach=False) if inputs.ndim == 5 else [inputs]
        means = torch.stack([torch.from_numpy(self.mean(item)) for item in items])
        return convert_to_dst_type(means if inputs.ndim == 5 else means[0], inputs)[0]


class EnsembleLabelsd(MapTransform):
    """Mean probabilities ``(K, X, Y, Z)`` to the first member's label map ``(1, X, Y, Z)``, as ``medseg infer`` does.

    Args:
        keys: the probability keys (``pred``).
        ensemble: the members; the first one's task, convention and label values are written.
    """

    def __init__(self, keys: KeysCollection, ensemble: EnsembleModel) -> None:
        super().__init__(keys)
        self.model = ensemble.first

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            probabilities = d[key]
            array = probabilities.detach().cpu().numpy() if isinstance(probabilities, torch.Tensor) else probabilities
            labels = torch.as_tensor(probabilities_to_labels(np.asarray(array, dtype=np.float32), self.model)[None])
            d[key] = convert_to_dst_type(labels, probabilities, dtype=labels.dtype)[0] \
                if isinstance(probabilities, MetaTensor) else labels
        return d
