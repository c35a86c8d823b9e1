"""What the bench measures of the host: its fp32 matmul roofline, its memory copy bandwidth, its
CPU, and the FLOPs one training image costs (the roofline share's numerator)."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path


def train_flops_per_image(image_size: int) -> float:
    """FLOPs (2 per multiply-add) of one training image: forward, weight grads, input grads.

    Backward costs two forward passes for every layer except the first convolution, whose input
    (the image) needs no gradient: 2 x (3 x forward - conv1) multiply-adds.
    """
    from leafnet.model import LeafNet

    net = LeafNet(image_size)
    conv1 = image_size**2 * net.conv2d.out_channels * net.in_channels * 9
    return 2.0 * (3 * net.forward_flops() - conv1)


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """Median GFLOP/s of an fp32 n x n matmul on this process' threads: the compute roofline."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def copy_gbs(megabytes: int = 512, repeats: int = 5) -> float:
    """Median GB/s of copying a `megabytes` buffer on this process' threads, reads and writes
    counted: the memory bandwidth a step that streams its activations through DRAM gets."""
    import torch

    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / statistics.median(times) / 1e9


def host_sample() -> dict[str, float]:
    """One sample of the roofline and the copy bandwidth (taken between the bench's rounds)."""
    return {"matmul_gflops": matmul_gflops(), "copy_gbs": copy_gbs()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
