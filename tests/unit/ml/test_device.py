"""The device rules: CPU precision, the float32 depthwise rule, settings for a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskfind_pipeline.ml.device import DeviceSettings, depthwise_in_float32, select_device


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 5, padding=2, groups=8),  # depthwise
        nn.Conv2d(8, 8, 3, padding=1, groups=2),  # grouped, not depthwise
        nn.Conv2d(8, 1, 1),
    )


def _bf16_cpu() -> DeviceSettings:
    return DeviceSettings(torch.device("cpu"), torch.bfloat16, False, True, False)


def test_only_depthwise_convolutions_leave_autocast() -> None:
    net = _net()
    inputs = torch.randn(2, 3, 16, 16)
    keys, before = list(net.state_dict()), net(inputs)
    assert depthwise_in_float32(net) == 1
    assert depthwise_in_float32(net) == 0, "idempotent"
    assert list(net.state_dict()) == keys
    assert isinstance(net[1], nn.Conv2d) and type(net[1]) is not nn.Conv2d
    assert type(net[2]) is nn.Conv2d
    torch.testing.assert_close(net(inputs), before, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = net[0](inputs)
        depthwise = net[1](hidden)
        grouped = net[2](depthwise)
    assert (depthwise.dtype, grouped.dtype) == (torch.float32, torch.bfloat16)


def test_a_depthwise_model_trains_under_bf16_autocast() -> None:
    net = _net()
    _bf16_cpu().prepare(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net(torch.randn(2, 3, 16, 16)).float().square().mean()
    loss.backward()
    assert net[1].weight.grad is not None and net[1].weight.grad.dtype == torch.float32


@pytest.mark.parametrize(
    ("settings", "swapped"),
    [
        (_bf16_cpu(), True),
        (select_device("cpu", mixed_precision=False), False),
    ],
)
def test_prepare_applies_the_rule_only_to_bf16_on_cpu(
    settings: DeviceSettings, swapped: bool
) -> None:
    net = _net()
    assert settings.prepare(net) is net
    assert (type(net[1]) is not nn.Conv2d) == swapped
    first = net[0]
    assert isinstance(first, nn.Conv2d)
    assert first.weight.is_contiguous(memory_format=torch.channels_last)
