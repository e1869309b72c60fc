"""IoU, the learning-rate schedule and the GPU sizing against hand-computed references."""

from __future__ import annotations

import math

import pytest
import torch

from dojo.hardware import load_system
from dojo.train import iou, lr_at
from dojo.train.simulated import common_batch, gpu_count_for_power


def test_iou_by_hand() -> None:
    pred = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    truth = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.bool)
    # intersection: (0,0), (1,1) = 2 cells; union: (0,0), (0,1), (1,1), (1,2) = 4 cells
    assert iou(pred, truth) == 0.5
    assert iou(truth, truth) == 1.0
    assert iou(~truth, truth) == 0.0
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert iou(empty, empty) == 1.0  # nothing to find, nothing claimed
    assert iou(empty, truth) == 0.0


def test_iou_pools_cells_over_the_whole_set() -> None:
    # Sample 1: 1 of 1 right; sample 2: 0 of 3. Pooled: 1 / 4, not the mean of 1 and 0.
    pred = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    truth = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    assert iou(pred, truth) == pytest.approx(0.25)


def test_learning_rate_schedule_closed_form() -> None:
    base, steps, warmup = 1e-2, 101, 10
    assert lr_at(0, steps, base, warmup) == pytest.approx(base / 10)
    assert lr_at(warmup - 1, steps, base, warmup) == pytest.approx(base)
    assert lr_at(warmup, steps, base, warmup) == pytest.approx(base)
    assert lr_at(steps - 1, steps, base, warmup) == pytest.approx(base / 10)
    mid = warmup + (steps - 1 - warmup) / 2  # halfway through the decay: cos = 0
    assert lr_at(int(mid), steps, base, warmup) == pytest.approx(
        base * (0.1 + 0.45 * (1 + math.cos(math.pi * (int(mid) - warmup) / (steps - 1 - warmup)))))
    assert lr_at(int(mid), steps, base, warmup) == pytest.approx(0.55 * base, rel=0.02)


def test_gpu_cluster_of_the_same_power_as_v1() -> None:
    # Published: V1 matrix 102 kW (system file); a DGX H100 server of 8 GPUs 10.2 kW.
    assert gpu_count_for_power(load_system("v1")) == round(102_000 / (10_200 / 8))


def test_common_batch() -> None:
    assert common_batch(150, 80) == 1200
    assert common_batch(150, 150) == 150
    assert common_batch(4093, 4091) == 4093  # lcm beyond the limit: the first system's count
