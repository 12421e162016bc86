"""The device rules: CPU precision, the float32 depthwise rule, settings for a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskfind_pipeline.ml.device import (
    Placement,
    cpu_has_native_bf16,
    depthwise_in_float32,
    select_device,
)


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 8, 5, padding=2, groups=8),  # depthwise
        nn.Conv2d(8, 8, 3, padding=1, groups=2),  # grouped, not depthwise
        nn.Conv2d(8, 1, 1),
    )


def _bf16_cpu() -> Placement:
    return Placement(torch.device("cpu"), torch.bfloat16, False, True, False)


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
    ("placement", "swapped"),
    [
        (_bf16_cpu(), True),
        (select_device("cpu", mixed_precision=False), False),
    ],
)
def test_prepare_applies_the_rule_only_to_bf16_on_cpu(placement: Placement, swapped: bool) -> None:
    net = _net()
    assert placement.prepare(net) is net
    assert (type(net[1]) is not nn.Conv2d) == swapped
    first = net[0]
    assert isinstance(first, nn.Conv2d)
    assert first.weight.is_contiguous(memory_format=torch.channels_last)


def _onednn_reports(monkeypatch: pytest.MonkeyPatch, answer: bool | type[Exception]) -> None:
    """Make oneDNN's bfloat16 query (what `cpu_has_native_bf16` asks) answer `answer`, or raise
    it, whatever this machine's CPU is."""

    def query() -> bool:
        if isinstance(answer, bool):
            return answer
        raise answer("no oneDNN here")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", query, raising=False)


@pytest.mark.parametrize(
    ("native_bf16", "mixed_precision", "autocast_dtype"),
    [
        (True, True, torch.bfloat16),
        (False, True, None),
        (True, False, None),
        (False, False, None),
    ],
    ids=["bf16-cpu", "plain-cpu", "bf16-cpu-float32", "plain-cpu-float32"],
)
def test_cpu_settings_follow_the_bf16_rule(
    monkeypatch: pytest.MonkeyPatch,
    native_bf16: bool,
    mixed_precision: bool,
    autocast_dtype: torch.dtype | None,
) -> None:
    _onednn_reports(monkeypatch, native_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    placement = select_device(None, mixed_precision=mixed_precision)
    claimed = autocast_dtype is torch.bfloat16
    assert placement == Placement(
        device=torch.device("cpu"),
        autocast_dtype=autocast_dtype,
        grad_scaler=False,
        channels_last=True,
        pin_memory=False,
        needs_measurement=claimed,  # oneDNN's claim alone does not decide (ml.precision)
    )
    assert placement.memory_format is torch.channels_last
    precision = "bfloat16" if claimed else "float32"
    described = placement.describe() | {"threads": "-"}
    assert {k: described[k] for k in ("device", "precision", "channels_last", "threads")} == {
        "device": "cpu",
        "precision": precision,
        "channels_last": "true",
        "threads": "-",
    }
    assert ("precision_source" in described) == (not claimed)
    linear = nn.Linear(4, 2)
    with placement.autocast():
        out = linear(torch.randn(3, 4))
    assert out.dtype == (autocast_dtype or torch.float32)


@pytest.mark.parametrize("failure", [RuntimeError, AttributeError])
def test_a_cpu_without_an_answer_from_onednn_trains_in_float32(
    monkeypatch: pytest.MonkeyPatch, failure: type[Exception]
) -> None:
    _onednn_reports(monkeypatch, failure)
    assert not cpu_has_native_bf16()
    assert select_device("cpu").autocast_dtype is None
