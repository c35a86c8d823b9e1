"""The fused second max-pool + ReLU equals the layers, forward and backward; the fused second block
(conv + max-pool + ReLU, no gradient) equals them up to rounding; LeafNet uses each only where
nothing watches or records the layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fixtures_kernels import avx2_build

from leafnet import kernels
from leafnet.model import LeafNet
from leafnet.pooling import (
    SECOND_BLOCK_ROWS,
    pool_relu,
    pool_relu_takes,
    second_block,
    second_block_takes,
)

pytestmark = pytest.mark.skipif(kernels.pool_relu() is None, reason="no C compiler here")


def _batch(shape: tuple[int, ...]) -> torch.Tensor:
    """Small integers (ties in most windows), negatives (ReLU's zeros) and NaNs, channels-last."""
    torch.manual_seed(0)
    x = torch.randint(-3, 4, shape).float()
    x[x == 0] = torch.tensor([0.0, -0.0]).repeat((x == 0).sum().item())[: (x == 0).sum().item()]
    x[0, 0, 0, 1] = float("nan")
    if shape[2] > 5 and shape[3] > 5:
        x[-1, -1, 4, 4] = x[-1, -1, 5, 5] = float("nan")  # two in one window
    return x.contiguous(memory_format=torch.channels_last)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaNs in the same places and zeros of the same sign."""
    same_values = torch.equal(a.nan_to_num(7.0), b.nan_to_num(7.0))
    return (
        same_values and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.signbit(), b.signbit())
    )


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
    grad[0, 0] = -0.0  # max-pool's backward adds into zeros: +0.0
    want = _through(x, grad, fused=False)
    got = _through(x, grad, fused=True)
    for have, expected in zip(got, want, strict=True):
        assert _same(have, expected)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert (got[1] != 0).any() and (got[0] == 0).any()  # gradients flowed; ReLU zeroed some


def test_the_fused_pool_copies_nothing_beside_its_kernel() -> None:
    """Forward and backward allocate their outputs channels-last and let the kernel write them:
    no copy of the input gradient (as large as the conv output it pools) or of the codes."""
    x = _batch((2, 16, 12, 12)).requires_grad_()
    grad = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.profiler.profile() as prof:
        out = pool_relu(x)
        out.backward(grad)
    ops = {event.name for event in prof.events()}
    assert "_PoolReLUBackward" in ops  # the kernel's backward ran under the profiler
    assert not ops & {"aten::copy_", "aten::clone", "aten::contiguous"}


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
    native = kernels.pool_relu()
    avx2 = avx2_build(kernels.pool_relu)
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
    n = max(2, torch.get_num_threads())  # an image per core at least, as the kernel takes them
    x = torch.rand(n, 3, 48, 48).contiguous(memory_format=torch.channels_last)
    y = torch.arange(n) % 3
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


def test_the_fused_pool_refuses_what_it_cannot_record_or_differentiate_twice() -> None:
    """A trace records no C call (pool_relu_takes says no, pool_relu raises); fewer than 2 x 2
    positions is max-pool's error, not an empty output; a second derivative raises rather than
    coming out as zeros; outputs take the input's dtype whatever the default is."""
    x = torch.rand(2, 16, 6, 6).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="pool_relu_takes"):
        torch.jit.trace(pool_relu, (x,), check_trace=False)
    assert not pool_relu_takes(x[:, :, :1])
    y = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(pool_relu(y).sum(), y, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert torch.equal(pool_relu(x), torch.relu(F.max_pool2d(x, 2)))
        y = x.detach().requires_grad_()
        (g,) = torch.autograd.grad(pool_relu(y).sum(), y)
        assert g.dtype == torch.float32
    finally:
        torch.set_default_dtype(previous)


def test_one_photo_pools_through_the_layers_across_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel gives each core whole images: a batch with fewer images than cores (one photo to
    predict) keeps the layers, which split an image across them. (Where the second block's
    kernel is not built, as here, prediction pools through this one.)"""
    net = LeafNet(image_size=48).to(memory_format=torch.channels_last).eval()
    monkeypatch.setattr(kernels, "second_block", lambda: None)
    calls = _calls(monkeypatch)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    with torch.no_grad():
        net(torch.rand(1, 3, 48, 48).contiguous(memory_format=torch.channels_last))
        assert calls == []
        net(torch.rand(2, 3, 48, 48).contiguous(memory_format=torch.channels_last))
    assert calls == ["forward", "forward"]


second_block_kernel = pytest.mark.skipif(
    kernels.second_block() is None, reason="the second block's kernel is built for AVX-512 only"
)


def _layers(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1), 2))


@second_block_kernel
@pytest.mark.parametrize(
    ("shape", "filters"),
    [
        ((3, 32, 13, 11), 16),  # odd height and width: the last conv row and column never pooled
        ((2, 32, 12, 10), 16),  # even: the 'same' padding's last row and column are read
        ((1, 32, 2 * SECOND_BLOCK_ROWS + 6, 21), 32),  # bands of rows; two vectors of filters
        ((1, 32, 3, 2), 16),  # one window
    ],
)
def test_the_fused_second_block_equals_conv_then_max_pool_then_relu(
    shape: tuple[int, ...], filters: int
) -> None:
    """With small integers every sum is exact in any order: the same values, maxima (the first
    greatest, or a NaN) and ReLU zeros as the layers, bit for bit, in every position of every
    band. With real-valued inputs, the same up to rounding."""
    torch.manual_seed(0)
    w = torch.randint(-2, 3, (filters, 32, 3, 3)).float()
    b = torch.randint(-3, 4, (filters,)).float()
    x = _batch(shape)
    if shape[0] > 1:
        # A NaN reaches the 3 x 3 conv outputs around it: this one only the bottom left of
        # pooled position (2, 3), the next only the top right of (5, 0): each place's NaN rule
        # counts. (Image 0, which _batch's NaNs leave alone there.)
        x[0, 1, 6, 5] = x[0, 2, 9, 2] = float("nan")
    with torch.no_grad():
        got, want = second_block(x, w, b), _layers(x, w, b)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert _same(got, want)
    if shape[2] > 3:  # more than one window: each case met
        assert (got == 0).any() and (got > 0).any() and got.isnan().any()
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(filters, 32, 3, 3) / 17, torch.randn(filters)
    with torch.no_grad():
        torch.testing.assert_close(second_block(x, w, b), _layers(x, w, b), rtol=1e-5, atol=1e-5)


@second_block_kernel
def test_the_second_block_takes_only_what_its_kernel_computes() -> None:
    x = torch.rand(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(16, 32, 3, 3), torch.rand(16)
    with torch.no_grad():
        assert second_block_takes(x, w, b)
        assert not second_block_takes(x.contiguous(), w, b)  # NCHW
        assert not second_block_takes(x.double(), w.double(), b.double())
        assert not second_block_takes(x[:, :16], w[:, :16], b)  # not the seed's 32 channels
        assert not second_block_takes(x, w[:8], b[:8])  # filters not a multiple of 16
        assert not second_block_takes(x, w[..., :2, :2], b)  # not 3x3
        assert not second_block_takes(x[:, :, :1], w, b)  # no 2 x 2 window
        with pytest.raises(ValueError, match="second_block_takes"):
            torch.jit.trace(lambda t: second_block(t, w, b), (x,), check_trace=False)
    assert second_block_takes(x, w, b)  # no tensor wants a gradient
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:  # the output takes the input's dtype whatever the default is
        torch.testing.assert_close(second_block(x, w, b), _layers(x, w, b), rtol=1e-5, atol=1e-5)
    finally:
        torch.set_default_dtype(previous)
    assert not second_block_takes(x, w.requires_grad_(), b)  # training: the layers' backward


def _block_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Note each band the second block's kernel computes (its first image)."""
    kernel = kernels.second_block()
    assert kernel is not None
    calls: list[int] = []
    counted = kernels.SecondBlock(lambda *a: calls.append(a[8]) or kernel.forward(*a))
    monkeypatch.setattr(kernels, "second_block", lambda: counted)
    return calls


@second_block_kernel
@pytest.mark.parametrize("watched", ["nothing", "one photo", "hook", "layers", "trace", "training"])
def test_leafnet_predicts_through_the_second_block_unless_something_watches_or_records_it(
    monkeypatch: pytest.MonkeyPatch, watched: str
) -> None:
    """Prediction, validation and testing (no gradient) go through the kernel, one photo too,
    with the layers' logits up to rounding; a hook on its conv, banding switched off, a
    TorchScript trace or training (which needs the conv's backward) keep the layers."""
    torch.manual_seed(0)
    net = LeafNet(image_size=48).to(memory_format=torch.channels_last)
    x = torch.rand(1 if watched == "one photo" else 4, 3, 48, 48)
    x = x.contiguous(memory_format=torch.channels_last)
    seen: list[torch.Tensor] = []
    if watched == "hook":
        net.conv2d_1.register_forward_hook(lambda m, i, o: seen.append(o))
    monkeypatch.setattr(LeafNet, "banded", watched != "layers")
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(LeafNet, "_fuse_second_block", lambda self, x: False)
        reference = net.eval()(x)
    calls = _block_calls(monkeypatch)
    if watched == "trace":
        torch.jit.trace(net.eval(), x, check_trace=False)
        assert calls == []
        return
    if watched == "training":
        F.cross_entropy(net.train()(x), torch.zeros(4, dtype=torch.long)).backward()
        assert calls == [] and net.conv2d_1.weight.grad is not None
        return
    with torch.no_grad():
        logits = net.eval()(x)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-6)
    if watched in ("hook", "layers"):
        assert calls == []
        assert watched == "layers" or seen[-1].shape[-1] == 16  # the conv ran; its hook saw it
    else:
        assert sorted(set(calls)) == list(range(x.shape[0]))  # every image through the kernel
