"""The fused second max-pool + ReLU equals the layers, forward and backward, and LeafNet uses it
only where nothing watches or records the layer."""

from __future__ import annotations

import os
import platform
import shlex

import pytest
import torch
import torch.nn.functional as F

from leafnet import kernels
from leafnet.model import LeafNet
from leafnet.pooling import pool_relu, pool_relu_takes

pytestmark = pytest.mark.skipif(kernels.pool_relu() is None, reason="no C compiler here")


def _batch(shape: tuple[int, ...]) -> torch.Tensor:
    """Small integers (ties in most windows), negatives (ReLU's zeros) and NaNs, channels-last."""
    torch.manual_seed(0)
    x = torch.randint(-3, 4, shape).float()
    x[0, 0, 0, 1] = float("nan")
    if shape[2] > 5 and shape[3] > 5:
        x[-1, -1, 4, 4] = x[-1, -1, 5, 5] = float("nan")  # two in one window
    return x.contiguous(memory_format=torch.channels_last)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0)) and torch.equal(a.isnan(), b.isnan())


def _through(x: torch.Tensor, grad: torch.Tensor, fused: bool):
    """Output, input gradient and no-gradient output, through pool_relu or the layers."""
    x = x.detach().requires_grad_()
    layers = lambda t: torch.relu(F.max_pool2d(t, 2))  # noqa: E731
    out = pool_relu(x) if fused else layers(x)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    with torch.no_grad():
        again = pool_relu(x) if fused else layers(x)
    return out.detach(), grad_x, again


@pytest.mark.parametrize(
    "shape",
    [
        (3, 16, 13, 11),  # odd height and width: the last row and column are never pooled
        (2, 32, 12, 12),  # two vectors of channels
        (1, 16, 3, 2),  # one window
    ],
)
def test_the_fused_pool_equals_max_pool_then_relu(shape: tuple[int, ...]) -> None:
    """The same maximum (the first greatest, or a NaN), ReLU's zeros, and the gradient at the
    same place of each window, zero elsewhere (the unpooled edge too); without a gradient too."""
    x = _batch(shape)
    n, c, h, w = shape
    grad = torch.randn(n, c, h // 2, w // 2)
    want = _through(x, grad, fused=False)
    got = _through(x, grad, fused=True)
    for have, expected in zip(got, want, strict=True):
        assert _same(have, expected)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert (got[1] != 0).any() and (got[0] == 0).any()  # gradients flowed; ReLU zeroed some


def test_the_fused_pool_takes_only_what_its_kernel_computes() -> None:
    x = torch.rand(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    assert pool_relu_takes(x)
    assert not pool_relu_takes(x.contiguous())  # NCHW
    assert not pool_relu_takes(x.double())
    assert not pool_relu_takes(x[:, :8])  # channels not a multiple of 16
    with pytest.raises(ValueError, match="pool_relu_takes"):
        pool_relu(x.contiguous())


def test_the_avx2_build_gives_the_native_builds_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel built for an x86 CPU with AVX2 and no AVX-512 (8 floats a vector, its own way
    of widening the codes) gives the native build's outputs and gradients, bit for bit."""
    cc = kernels.compiler()
    if platform.machine().lower() not in ("x86_64", "amd64") or cc is None:
        pytest.skip("not an x86 machine with a C compiler")
    monkeypatch.setenv("CC", shlex.join([*cc, "-mno-avx512f"]))
    native = kernels.pool_relu()
    kernels.pool_relu.cache_clear()
    try:
        avx2 = kernels.pool_relu()
    finally:
        kernels.pool_relu.cache_clear()
        os.environ.pop("CC")
    if avx2 is None:
        pytest.skip("this CPU has no AVX2")
    x = _batch((3, 32, 13, 11))
    grad = torch.randn(3, 32, 6, 5)
    results = []
    for kernel in (native, avx2):
        monkeypatch.setattr(kernels, "pool_relu", lambda kernel=kernel: kernel)
        results.append(_through(x, grad, fused=True))
    for a, b in zip(*results, strict=True):
        assert _same(a, b)


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Note each call into the kernel."""
    kernel = kernels.pool_relu()
    assert kernel is not None
    calls: list[str] = []
    counted = kernels.PoolReLU(
        lambda *a: calls.append("forward") or kernel.forward(*a),
        lambda *a: calls.append("backward") or kernel.backward(*a),
    )
    monkeypatch.setattr(kernels, "pool_relu", lambda: counted)
    return calls


@pytest.mark.parametrize("watched", ["nothing", "hook", "layers", "trace"])
def test_leafnet_fuses_the_pool_unless_something_watches_or_records_it(
    monkeypatch: pytest.MonkeyPatch, watched: str
) -> None:
    """Training and prediction go through the kernel with the layers' logits and gradients; a
    hook on the max-pool layer, banding switched off (the bench's layer-by-layer baseline) or a
    TorchScript trace keep the layer."""
    torch.manual_seed(0)
    net = LeafNet(image_size=48).to(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 2])
    seen: list[torch.Tensor] = []
    if watched == "hook":
        net.max_pooling2d_1.register_forward_hook(lambda m, i, o: seen.append(o))
    monkeypatch.setattr(LeafNet, "banded", watched != "layers")
    with monkeypatch.context() as m:
        m.setattr(LeafNet, "_fuse_pool", lambda self, x: False)
        F.cross_entropy(net(x), y).backward()
        reference = {k: p.grad.clone() for k, p in net.named_parameters()}
        net.zero_grad()
    calls = _calls(monkeypatch)
    if watched == "trace":
        torch.jit.trace(net.eval(), x, check_trace=False)
        assert calls == []
        return
    logits = net(x)
    F.cross_entropy(logits, y).backward()
    assert set(calls) == (set() if watched in ("hook", "layers") else {"forward", "backward"})
    for name, p in net.named_parameters():
        assert torch.equal(p.grad, reference[name]), name
    if watched == "hook":
        assert seen and seen[-1].shape[-1] == 8  # the layer ran and its hook saw its output
