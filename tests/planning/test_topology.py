"""DynUNet topology per axis, and the patch and batch that fit a memory budget."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.errors import InvalidValueError
from medseg.planning.topology import (
    build_planned_network,
    estimate_memory_bytes,
    fit_patch_and_batch,
    plan_topology,
)


def test_isotropic_patch_pools_every_axis_down_to_the_minimum_feature_map():
    top = plan_topology([1.0, 1.0, 1.0], [128, 128, 128])
    assert top.strides == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert top.kernel_size == [[3, 3, 3]] * 6
    assert top.filters == [32, 64, 128, 256, 320, 320]
    assert top.divisor == [32, 32, 32]


def test_a_coarse_axis_is_not_pooled_while_more_than_twice_the_finest():
    top = plan_topology([0.9, 0.9, 4.0], [160, 160, 40])
    # 0.9 -> 1.8 -> 3.6: the z axis (4 mm) stays until in-plane is within 2x of it.
    assert top.strides[1] == [2, 2, 1] and top.strides[2] == [2, 2, 1]
    assert top.strides[3] == [2, 2, 2]
    # A 1-wide kernel along z while z is more than twice as coarse, 3 from then on.
    assert top.kernel_size[0] == [3, 3, 1] and top.kernel_size[1] == [3, 3, 1]
    assert top.kernel_size[2] == [3, 3, 3]
    for level, stride in enumerate(top.strides):
        assert len(top.kernel_size[level]) == 3 and len(stride) == 3
    assert top.divisor[2] < top.divisor[0]


def test_no_axis_is_pooled_below_four_voxels():
    top = plan_topology([1.0, 1.0, 1.0], [64, 64, 8])
    pools = [round(math.log2(d)) for d in top.divisor]
    assert 8 / 2 ** pools[2] >= 4 and 64 / 2 ** pools[0] >= 4


def test_a_patch_too_small_to_pool_twice_still_gets_three_levels():
    top = plan_topology([1.0, 1.0, 1.0], [12, 12, 8])
    assert len(top.strides) == len(top.kernel_size) == len(top.filters) == 3
    assert top.strides[2] == [1, 1, 1]
    net = build_planned_network(top, in_channels=1, out_channels=2)
    with torch.no_grad():
        assert net.eval()(torch.zeros(1, 1, 12, 12, 8)).shape == (1, 2, 12, 12, 8)


def test_the_planned_network_runs_on_a_patch_of_the_planned_size():
    top = plan_topology([0.9, 0.9, 4.0], [32, 32, 8])
    net = build_planned_network(top, in_channels=2, out_channels=3)
    with torch.no_grad():
        out = net.eval()(torch.zeros(1, 2, 32, 32, 8))
    assert out.shape == (1, 3, 32, 32, 8)


@pytest.mark.parametrize("budget_gib", [2.0, 6.0, 16.0])
def test_patch_and_batch_fit_the_budget(budget_gib):
    budget = int(budget_gib * 2**30)
    patch, batch, top, memory = fit_patch_and_batch([1.0, 1.0, 1.0], [200, 200, 160], dataset_voxels=10**10,
                                                    in_channels=4, out_channels=4, budget_bytes=budget)
    assert estimate_memory_bytes(top, patch, batch, 4, 4) <= budget
    assert batch >= 2
    assert all(p % d == 0 for p, d in zip(patch, top.divisor))
    assert memory["estimated_gib"] <= budget_gib and memory["measured_gib"] is None


def test_more_memory_gives_a_larger_patch_up_to_the_median_shape():
    small, _, _, _ = fit_patch_and_batch([1.0, 1.0, 1.0], [200, 200, 160], 10**10, 4, 4, 2 * 2**30)
    large, _, _, _ = fit_patch_and_batch([1.0, 1.0, 1.0], [200, 200, 160], 10**10, 4, 4, 24 * 2**30)
    assert math.prod(large) > math.prod(small)
    tiny_data, _, _, _ = fit_patch_and_batch([1.0, 1.0, 1.0], [40, 40, 24], 10**6, 1, 2, 80 * 2**30)
    assert all(p <= 48 for p in tiny_data)  # never much larger than the median case


def test_batch_is_capped_at_five_percent_of_the_dataset():
    patch, batch, _, _ = fit_patch_and_batch([1.0, 1.0, 1.0], [48, 48, 48], dataset_voxels=100 * 48**3,
                                             in_channels=1, out_channels=2, budget_bytes=80 * 2**30)
    assert batch == max(2, round(100 * 48**3 * 0.05 / math.prod(patch)))


def test_a_budget_below_the_cuda_context_is_refused():
    with pytest.raises(InvalidValueError, match="CUDA context"):
        fit_patch_and_batch([1.0] * 3, [64] * 3, 10**6, 1, 2, 2**29)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_measured_step_fits_the_budget_on_a_gpu():
    patch, batch, top, memory = fit_patch_and_batch([1.0, 1.0, 1.0], [200, 200, 160], 10**10, 4, 4, 6 * 2**30,
                                                    device=torch.device("cuda"))
    assert memory["measured_gib"] is not None and memory["measured_gib"] <= 6.0
    assert batch >= 1 and all(p % d == 0 for p, d in zip(patch, top.divisor))
