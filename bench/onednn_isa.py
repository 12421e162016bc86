"""Does `ONEDNN_MAX_CPU_ISA` make oneDNN emulate bfloat16? bf16 vs float32 conv forward+backward.

Three 64-channel 3x3 convolutions on a batch of 8 at 64², channels_last, float32 against bf16
autocast, each timed as the best of two rounds of three steps; also what torch answers to
`torch.ops.mkldnn._is_mkldnn_bf16_supported()` (what `ml.device.cpu_has_native_bf16` asks).
Run it once per ISA value in a fresh process (oneDNN reads the variable once):

    for isa in "" AVX512_CORE_VNNI AVX512_CORE AVX2; do
        ONEDNN_MAX_CPU_ISA=$isa OMP_NUM_THREADS=2 python -m bench.onednn_isa; done
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn


def main() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1)
    ).to(memory_format=torch.channels_last)  # pyright: ignore[reportCallIssue]
    x = torch.randn(8, 64, 64, 64).contiguous(memory_format=torch.channels_last)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = net(x)
        y.float().mean().backward()

    seconds: dict[bool, list[float]] = {False: [], True: []}
    for bf16 in (False, True, False, True):
        step(bf16)
        start = time.perf_counter()
        for _ in range(3):
            step(bf16)
        seconds[bf16].append((time.perf_counter() - start) / 3)
    fp32, bf16 = min(seconds[False]), min(seconds[True])
    print(
        f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA') or '(unset)'}: "
        f"float32 {fp32:.3f} s, bf16 {bf16:.3f} s per step, bf16/float32 {bf16 / fp32:.2f}; "
        f"torch reports bf16 supported: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}"
    )


if __name__ == "__main__":
    main()
