"""The banded conv + max-pool + ReLU equals the plain layers, and keeps less for backward."""

from __future__ import annotations

import threading
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from fixtures_kernels import avx2_build

from leafnet import banded, kernels
from leafnet.banded import conv_pool_relu
from leafnet.data.images import Preprocessing, byte_table, to_float
from leafnet.model import LeafNet
from leafnet.zoo import build_model


def plain(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, pool: int) -> torch.Tensor:
    return torch.relu(F.max_pool2d(F.conv2d(x, w, b, padding=1), pool))


@pytest.mark.parametrize(
    ("shape", "out_channels", "pool", "budget", "channels_last"),
    [
        ((3, 3, 20, 17), 8, 3, 500, False),  # odd width, a band of one pooled row per image
        ((2, 3, 21, 22), 8, 3, 10**9, True),  # every image in one band; height a multiple of 3
        ((2, 5, 13, 13), 4, 2, 300, True),  # pool 2, more input channels, ragged last band
        ((5, 3, 24, 24), 6, 3, 20_000, True),  # several whole images per band
    ],
)
# Without the input's gradient (a network's first layer) the weight gradient is gathered at
# max-pool's indices; with it, both come from the convolution's backward.
@pytest.mark.parametrize("input_grad", [False, True])
def test_outputs_and_gradients_equal_the_plain_layers(
    shape: tuple[int, ...],
    out_channels: int,
    pool: int,
    budget: int,
    channels_last: bool,
    input_grad: bool,
) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=input_grad)
    w = torch.randn(out_channels, shape[1], 3, 3, requires_grad=True)
    b = torch.randn(out_channels, requires_grad=True)
    xs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    expected = plain(xs, w, b, pool)
    got = conv_pool_relu(xs, w, b, pool, budget)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = torch.randn_like(expected)
    inputs = (x, w, b) if input_grad else (w, b)
    want = torch.autograd.grad(expected, inputs, grad)
    have = torch.autograd.grad(got, inputs, grad)
    for h, e in zip(have, want, strict=True):
        torch.testing.assert_close(h, e, rtol=1e-5, atol=1e-5)


def _tied(filters: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An input, weights and biases whose conv outputs are all equal (1.0: each filter reads one
    flat channel at its centre) while the patches under them differ (the other two channels are
    random): the weight gradient then shows which place of each window got the gradient."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 12, 12)
    x[:, 0] = 1.0
    w = torch.zeros(filters, 3, 3, 3)
    w[:, 0, 1, 1] = 1.0
    b = torch.zeros(filters, requires_grad=True)
    return x.contiguous(memory_format=torch.channels_last), w.requires_grad_(), b


# 4 filters: PyTorch's kernels; 32: the fused C kernel where it builds.
@pytest.mark.parametrize("filters", [4, 32])
def test_ties_take_the_same_maximum_as_max_pool(filters: int) -> None:
    """A flat region (a uniform backdrop) gives equal conv outputs in a window: the gradient
    must go to the one element max-pool picks (the first), not be shared."""
    x, w, b = _tied(filters)
    grad = torch.rand(2, filters, 4, 4)
    want = torch.autograd.grad(plain(x, w, b, 3), (w, b), grad)
    have = torch.autograd.grad(conv_pool_relu(x, w, b, 3, 1000), (w, b), grad)
    for h, e in zip(have, want, strict=True):
        torch.testing.assert_close(h, e, rtol=1e-6, atol=1e-6)


def _train_step(net: LeafNet, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    net.zero_grad()
    logits = net(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def test_leafnet_trains_the_same_banded_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = LeafNet(image_size=96).to(memory_format=torch.channels_last).train()
    x = torch.rand(4, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 1])
    banded_logits, banded_grads = _train_step(net, x, y)
    monkeypatch.setattr(LeafNet, "banded", False)
    plain_logits, plain_grads = _train_step(net, x, y)
    torch.testing.assert_close(banded_logits, plain_logits, rtol=0, atol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(banded_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def _saved(net: LeafNet, x: torch.Tensor) -> tuple[int, int]:
    """(total, largest) bytes autograd keeps for backward during one forward pass."""
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    return sum(sizes), max(sizes)


def test_banded_training_never_keeps_conv1s_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain layers keep conv1's float output for max-pool's backward; the banded block
    keeps its input, its pooled output and the pooling indices: under half the memory."""
    net = LeafNet(image_size=120).train()
    x = torch.rand(2, 3, 120, 120)
    conv1_output = 2 * 32 * 120 * 120 * 4
    banded_total, banded_largest = _saved(net, x)
    monkeypatch.setattr(LeafNet, "banded", False)
    whole_total, whole_largest = _saved(net, x)
    assert whole_largest == conv1_output
    assert banded_largest < conv1_output / 4
    assert banded_total < whole_total / 2


def test_a_model_config_can_train_conv1_layer_by_layer() -> None:
    """`model.conv1_in_bands=false`: that network trains conv1 whole; the others still in bands."""
    cfg = {"arch": "leafnet", "image_size": 120, "num_classes": 3}
    x = torch.rand(2, 3, 120, 120)
    _, whole = _saved(build_model({**cfg, "conv1_in_bands": False}).train(), x)
    _, bands = _saved(build_model(cfg).train(), x)
    assert whole == 2 * 32 * 120 * 120 * 4  # conv1's whole output, kept for max-pool's backward
    assert bands < whole / 4


def test_autocast_without_the_kernel_runs_the_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under precision=bf16-mixed the bfloat16 layers measured faster than PyTorch's band
    kernels: without the C kernel LeafNet uses them."""
    monkeypatch.setattr(banded, "FUSED", False)
    net = LeafNet(image_size=120).train()
    x = torch.rand(2, 3, 120, 120)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, largest = _saved(net, x)
    assert largest == 2 * 32 * 120 * 120 * 2  # conv1's whole output, in bfloat16


def _banded_grads(
    threads: int, slow_band: int | None = None, hand_out: bool = True
) -> tuple[torch.Tensor, ...]:
    """Outputs and gradients of a 15-band layer (3 images, 5 bands each) computed on `threads`
    cores; `slow_band`: the core that takes the first image's band at that pooled row is held up
    in forward, so the others take the bands after it; `hand_out=False`: each core takes every
    k-th band (the bench's `+static`)."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 30, 31, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, requires_grad=True)
    b = torch.randn(8, requires_grad=True)
    grad = torch.randn(3, 8, 10, 10)
    taken: list[tuple[str, banded.Band]] = []  # forward's 15 bands, then backward's
    band_input = banded._band_input

    def noted(x: torch.Tensor, band: banded.Band, pool: int) -> tuple[torch.Tensor, slice, slice]:
        taken.append((threading.current_thread().name, band))
        if slow_band is not None and (band[0], band[2]) == (0, slow_band) and len(taken) <= 15:
            time.sleep(0.5)
        return band_input(x, band, pool)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(banded, "_band_input", noted)
            mp.setattr(banded, "HAND_OUT", hand_out)
            got = conv_pool_relu(x, w, b, 3, 8 * 3 * 31 * 4 * 2)  # two pooled rows a band
            have = torch.autograd.grad(got, (x, w, b), grad)
        seen: list[int] = []
        later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        later.start()
        later.join()
        assert seen == [threads]  # threads started afterwards get the caller's count back
    finally:
        torch.set_num_threads(before)
    want = torch.autograd.grad(plain(x, w, b, 3), (x, w, b), grad)
    for h, e in zip(have, want, strict=True):
        torch.testing.assert_close(h, e, rtol=1e-5, atol=1e-5)
    forward = taken[:15]
    bands = [(i, i + 1, r, r + 2) for i in range(3) for r in range(0, 10, 2)]
    assert sorted(band for _, band in forward) == bands  # each band once
    if slow_band is not None and hand_out:
        slow = next(name for name, band in forward if (band[0], band[2]) == (0, slow_band))
        assert sum(name == slow for name, _ in forward) < 15 // 2
    return (got.detach(), *have)


@pytest.mark.parametrize("threads", [2, 3])
def test_cores_take_bands_as_they_finish_and_the_sums_never_depend_on_which(threads: int) -> None:
    """Each core takes the next band when it finishes one: a core held up takes fewer, and the
    outputs and gradients are bitwise those of one core (each band's gradient kept apart and
    added in band order), with a core held up or not."""
    one = _banded_grads(1)
    runs = [_banded_grads(threads), _banded_grads(threads, 2), _banded_grads(threads, None, False)]
    for got in runs:
        for g, o in zip(got, one, strict=True):
            assert torch.equal(g, o)


@pytest.mark.parametrize("input_grad", [False, True])
def test_backward_builds_no_dense_gradient_unless_the_input_needs_one(input_grad: bool) -> None:
    """For a first layer (no input gradient) the weight gradient is gathered at max-pool's
    indices: max-pool's backward, which zeroes and scatters a conv output's worth of gradient,
    and the convolution's backward never run. With the input's gradient wanted they do."""
    x = torch.randn(2, 3, 24, 24, requires_grad=input_grad)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    out = conv_pool_relu(x, w, b, 3, 1000)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the bands on this thread, where the profiler records them
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            torch.autograd.grad(out, (x, w, b) if input_grad else (w, b), torch.ones_like(out))
    finally:
        torch.set_num_threads(before)
    ops = {event.key for event in prof.key_averages()}
    dense = {"aten::max_pool2d_with_indices_backward", "aten::convolution_backward"}
    gathered = any("embedding_bag" in op for op in ops)
    if input_grad:
        assert dense <= ops, ops
        assert not gathered, ops
    else:
        assert not dense & ops, ops
        assert gathered, ops


@pytest.mark.slow
def test_torch_compile_leaves_the_bands_to_eager_mode() -> None:
    """Under torch.compile the banded block runs as it is (no tracing into its worker threads, no
    warning from the compiler) and trains to the same gradients."""
    torch.manual_seed(0)
    net = LeafNet(image_size=96).to(memory_format=torch.channels_last).train()
    x = torch.rand(4, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 1])
    _, eager = _train_step(net, x, y)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, compiled = _train_step(torch.compile(net), x, y)  # type: ignore[arg-type]
    assert not [w for w in seen if "banded.py" in str(w.message)]
    for name, grad in eager.items():
        torch.testing.assert_close(compiled["_orig_mod." + name], grad, msg=name)


@pytest.fixture
def fresh_band_bytes():
    """band_bytes() is worked out once per process: start and leave each test with it unset."""
    banded.band_bytes.cache_clear()
    yield
    banded.band_bytes.cache_clear()


@pytest.mark.usefixtures("fresh_band_bytes")
@pytest.mark.parametrize(("l3", "rows"), [(None, 8), (8 << 20, 8), (48 << 20, 17), (1 << 30, 34)])
def test_bands_grow_with_the_l3_from_2_to_8_mib(
    monkeypatch: pytest.MonkeyPatch, l3: int | None, rows: int
) -> None:
    """A band's conv output is a twelfth of the L3 the OS reports, 2 MiB at least (also where it
    reports none) and 8 MiB at most: at 640 px, 8, 17 or 34 pooled rows of one image a band."""
    monkeypatch.setattr(banded, "l3_cache_bytes", lambda: l3)
    made: list[list[banded.Band]] = []
    bands = banded._bands
    monkeypatch.setattr(banded, "_bands", lambda *a: made.append(bands(*a)) or made[-1])
    x = torch.rand(1, 3, 640, 640)
    conv_pool_relu(x, torch.randn(32, 3, 3, 3), torch.zeros(32), 3)
    first = made[0][0]
    assert first[3] - first[2] == rows


# -- the fused C kernel (leafnet.kernels), which LeafNet's conv1 trains through on the CPU -----

fused_kernel = pytest.mark.skipif(kernels.conv_pool() is None, reason="no C compiler here")


def _counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Note each call into the C kernel."""
    kernel = kernels.conv_pool()
    assert kernel is not None
    calls: list[str] = []

    def note(name: str, fn):
        return lambda *a: calls.append(name) or fn(*a)

    counted = kernels.ConvPool(
        note("forward", kernel.forward),
        note("grad", kernel.weight_grad),
        note("bytes", kernel.forward_bytes),
        note("grad bytes", kernel.weight_grad_bytes),
    )
    monkeypatch.setattr(kernels, "conv_pool", lambda: counted)
    return calls


@fused_kernel
@pytest.mark.parametrize(
    ("shape", "out_channels", "budget"),
    [
        ((3, 3, 20, 17), 32, 500),  # odd width, a band of one pooled row per image
        ((2, 3, 21, 22), 64, 10**9),  # every image in one band; 64 filters
        ((5, 3, 24, 24), 32, 20_000),  # several whole images per band
        ((2, 3, 5, 4), 32, 10**9),  # every window at an edge of the image
    ],
)
def test_the_fused_kernel_equals_the_plain_layers(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...], out_channels: int, budget: int
) -> None:
    calls = _counted(monkeypatch)
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    w = torch.randn(out_channels, 3, 3, 3, requires_grad=True)
    b = torch.randn(out_channels, requires_grad=True)
    expected = plain(x, w, b, 3)
    got = conv_pool_relu(x, w, b, 3, budget)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(expected)
    want = torch.autograd.grad(expected, (w, b), grad)
    have = torch.autograd.grad(got, (w, b), grad)
    for h, e in zip(have, want, strict=True):
        torch.testing.assert_close(h, e, rtol=1e-5, atol=1e-4)
    assert "forward" in calls and "grad" in calls


@fused_kernel
def test_the_fused_kernel_meets_nan_as_max_pool_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN pixel makes every window it touches NaN, as in the layers (ties: above)."""
    calls = _counted(monkeypatch)
    x, w, b = _tied(32)
    x[0, 1, 5, 7] = float("nan")
    w.data[:, 1] = 0.5  # the NaN's channel counts
    torch.testing.assert_close(
        conv_pool_relu(x, w, b, 3), plain(x, w, b, 3), rtol=0, atol=1e-6, equal_nan=True
    )
    assert calls == ["forward"]


def _read_through_a_table(values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A uint8 batch (2, 3, 12, 12) whose channel 0 is `values` (the others random, below 255),
    the table that reads byte v as v, and weights and biases whose conv outputs are channel 0's
    values less 150 (each filter reads it at its centre): windows' maxima can be placed by hand."""
    x = torch.randint(
        0, 255, (2, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    x[:, 0] = values
    w = torch.zeros(32, 3, 3, 3)
    w[:, 0, 1, 1] = 1.0
    b = torch.full((32,), -150.0)
    table = torch.arange(256, dtype=torch.float32).repeat(3, 1)
    return x.contiguous(memory_format=torch.channels_last), w, b, table


@fused_kernel
@pytest.mark.parametrize("at", [(5, 7), (0, 0), (11, 11), (2, 9)])
def test_without_a_gradient_the_fused_kernel_meets_nan_as_max_pool_does(
    at: tuple[int, int],
) -> None:
    """The pass without a gradient (a uint8 batch: validation, prediction) takes the plain
    maximum instead of max-pool's scan: a NaN (here a byte the table reads as NaN) still makes
    every window it touches NaN, inside the image or at its corners."""
    x, w, b, table = _read_through_a_table(torch.full((12, 12), 160, dtype=torch.uint8))
    table[1, 255] = float("nan")
    x[0, 1, at[0], at[1]] = 255
    w[:, 1] = 0.5  # the NaN's channel counts
    floats = torch.stack([table[c][x[:, c].long()] for c in range(3)], 1)
    with torch.no_grad():
        got = conv_pool_relu(x, w, b, 3, table=table)
    want = plain(floats.contiguous(memory_format=torch.channels_last), w, b, 3)
    assert got.isnan().any()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4, equal_nan=True)


@fused_kernel
def test_without_a_gradient_the_fused_kernel_gives_the_bits_it_gives_to_train() -> None:
    """Without a gradient the plain maximum gives max-pool's value wherever in its window the
    greatest is, ties and ReLU's zeros included, bit for bit: image 0 is flat (every window a
    tie), image 1 has each window's greatest at another place."""
    values = torch.randint(0, 140, (12, 12), generator=torch.Generator().manual_seed(1))
    greatest = torch.zeros(4, 4)
    for k in range(12):  # windows 0-11: the greatest at place k % 9, above 150 and the others
        r, c, place = k // 4, k % 4, k % 9
        values[3 * r + place // 3, 3 * c + place % 3] = 160 + 5 * k
        greatest[r, c] = 10 + 5 * k
    values[10, 4] = 151  # the last row of windows: below 150 (ReLU's 0) but for one
    greatest[3, 1] = 1
    x, w, b, table = _read_through_a_table(values.to(torch.uint8))
    x[0, 0] = 200
    with torch.no_grad():
        plain_max = conv_pool_relu(x, w, b, 3, table=table)
    trained = conv_pool_relu(x, w, b.requires_grad_(), 3, table=table).detach()
    assert torch.equal(plain_max, trained)
    assert (plain_max[0] == 50).all()
    assert torch.equal(plain_max[1], greatest.expand(32, 4, 4))


@fused_kernel
@pytest.mark.parametrize("normalize", ["rescale", "standardize"])
@pytest.mark.parametrize(
    ("shape", "budget"),
    [
        ((3, 3, 20, 17), 500),  # odd width, a band of one pooled row per image
        ((5, 3, 24, 24), 20_000),  # several whole images per band
        ((2, 3, 23, 22), 10**9),  # rows past the last pooled row still pad the last window
        ((2, 3, 5, 4), 10**9),  # every window at an edge of the image
    ],
)
def test_the_fused_kernel_reads_uint8_batches_with_the_converted_batchs_numbers(
    monkeypatch: pytest.MonkeyPatch, normalize: str, shape: tuple[int, ...], budget: int
) -> None:
    """A uint8 batch read through `byte_table` gives bit for bit the output and the weight and
    bias gradients of the batch `to_float` converts, at every edge and band cut, in both
    normalisations; without gradients too. A float batch or NCHW does not take that path."""
    calls = _counted(monkeypatch)
    prep = Preprocessing(image_size=shape[-1], normalize=normalize)
    torch.manual_seed(0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last
    )
    w = torch.randn(32, 3, 3, 3, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    table = byte_table(prep)
    converted = to_float(x, prep).contiguous(memory_format=torch.channels_last)
    want = conv_pool_relu(converted, w, b, 3, budget)
    grad = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, (w, b), grad)
    calls.clear()
    got = conv_pool_relu(x, w, b, 3, budget, table=table)
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)
    for have, expected in zip(torch.autograd.grad(got, (w, b), grad), want_grads, strict=True):
        assert torch.equal(have, expected)
    assert set(calls) == {"bytes", "grad bytes"}
    calls.clear()
    with torch.no_grad():
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # the output is float32 whatever the default
        try:
            assert torch.equal(conv_pool_relu(x, w, b, 3, budget, table=table), want)
        finally:
            torch.set_default_dtype(previous)
    assert set(calls) == {"bytes"}
    assert not banded.fused_takes_bytes(x, table, w.to("meta"), b.to("meta"), 3)
    assert not banded.fused_takes_bytes(converted, table, w, b, 3)
    assert not banded.fused_takes_bytes(x.contiguous(), table, w, b, 3)
    with pytest.raises(ValueError, match="fused_takes_bytes"):
        conv_pool_relu(x.contiguous(), w, b, 3, table=table)


@pytest.fixture(scope="module")
def avx2_kernel() -> kernels.ConvPool:
    """The C kernel built as for an x86 CPU with AVX2 and no AVX-512 (one vector of channels a
    pass)."""
    return avx2_build(kernels.conv_pool)


@fused_kernel
@pytest.mark.parametrize("uint8", [False, True])
def test_the_avx2_build_gives_the_native_builds_bits(
    monkeypatch: pytest.MonkeyPatch, avx2_kernel: kernels.ConvPool, uint8: bool
) -> None:
    """Each channel's sums are added in the same order at any vector width, so the AVX2 build's
    outputs and weight and bias gradients are this machine's build's, bit for bit, from a float
    or a uint8 batch (edges and band cuts included)."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (3, 3, 20, 17), dtype=torch.uint8)
    table = byte_table(Preprocessing(image_size=17))
    if not uint8:
        x = to_float(x, Preprocessing(image_size=17))
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 3, 3, 3, requires_grad=True)
    b = torch.randn(64, requires_grad=True)
    grad = torch.randn(3, 64, 6, 5)
    results = []
    for kernel in (kernels.conv_pool(), avx2_kernel):
        monkeypatch.setattr(kernels, "conv_pool", lambda kernel=kernel: kernel)
        out = conv_pool_relu(x, w, b, 3, 500, table=table if uint8 else None)
        results.append((out.detach(), *torch.autograd.grad(out, (w, b), grad)))
    assert results[0][1].abs().sum() > 0  # gradients flowed
    for native, avx2 in zip(*results, strict=True):
        assert torch.equal(native, avx2)


@pytest.mark.parametrize("why", ["input_grad", "nchw", "16_filters", "switched_off"])
def test_the_block_falls_back_to_pytorchs_kernels_where_the_fused_one_does_not_fit(
    monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """The C kernel takes the seed's first block as it trains; anything else (an input that
    wants its gradient, NCHW, filters not a multiple of 32, FUSED off) runs PyTorch's, equal."""
    calls = _counted(monkeypatch) if kernels.conv_pool() is not None else []
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12, requires_grad=why == "input_grad")
    if why != "nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(16 if why == "16_filters" else 32, 3, 3, 3, requires_grad=True)
    b = torch.randn(w.shape[0], requires_grad=True)
    monkeypatch.setattr(banded, "FUSED", why != "switched_off")
    got = conv_pool_relu(x, w, b, 3)
    torch.testing.assert_close(got, plain(x, w, b, 3), rtol=0, atol=1e-5)
    assert calls == []


@fused_kernel
def test_leafnet_predicts_through_the_fused_kernel_but_traces_the_layers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Validation, test and predict run conv1 through the C kernel too (the same logits); a
    TorchScript trace (export) records the layers, which it can."""
    calls = _counted(monkeypatch)
    torch.manual_seed(0)
    net = LeafNet(image_size=96).to(memory_format=torch.channels_last).eval()
    x = torch.rand(2, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused = net(x)
    assert calls == ["forward"]
    traced = torch.jit.trace(net, x, check_trace=False)
    assert calls == ["forward"]
    monkeypatch.setattr(LeafNet, "banded", False)
    with torch.inference_mode():
        layers = net(x)
        torch.testing.assert_close(traced(x), layers)
    torch.testing.assert_close(fused, layers, rtol=0, atol=1e-5)


@fused_kernel
def test_autocast_trains_the_first_block_through_the_kernel_in_float32(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under precision=bf16-mixed the C kernel keeps the first block, in float32, and the layers
    after it run in bfloat16: the block's output and its gradients are the float32 ones."""
    calls = _counted(monkeypatch)
    torch.manual_seed(0)
    net = LeafNet(image_size=60).to(memory_format=torch.channels_last).train()
    x = torch.rand(2, 3, 60, 60).contiguous(memory_format=torch.channels_last)
    seen: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, inputs: tuple[torch.Tensor]) -> None:
        seen["block"] = inputs[0]
        inputs[0].register_hook(lambda g: seen.setdefault("grad", g))

    net.conv2d_1.register_forward_pre_hook(keep)  # conv2's input: the first block's output
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
    F.cross_entropy(logits.float(), torch.tensor([0, 2])).backward()
    assert logits.dtype == torch.bfloat16 and calls.count("forward") == 1
    w, b = (t.detach().requires_grad_() for t in (net.conv2d.weight, net.conv2d.bias))
    block = conv_pool_relu(x, w, b, 3)  # float32, no autocast
    assert seen["block"].dtype == torch.float32 and torch.equal(seen["block"], block)
    grad_w, grad_b = torch.autograd.grad(block, (w, b), seen["grad"])
    assert torch.equal(net.conv2d.weight.grad, grad_w) and torch.equal(net.conv2d.bias.grad, grad_b)
