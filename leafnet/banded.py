"""Conv 3x3 ('same') + max-pool + ReLU computed in bands of rows.

At 640x640 the seed's first convolution writes 52 MB of float output per image (1.7 GB for 32
images) only for max-pool to keep a ninth of it. Done layer by layer, that output goes to main
memory and back four times (written by the conv, read by the pool, kept for backward, zeroed
and scattered into as its gradient), so on a host with little memory bandwidth the step runs at
that bandwidth, not at the arithmetic's speed. `conv_pool_relu` computes the same function a few
rows of a few images at a time: each band's conv output is pooled while it is still in cache,
and backward keeps only the input, the pooled output and max-pool's indices (at 640 px 37 MB
per image instead of 89). Backward gathers the weight gradient at those indices, band by band:
max-pool passes each window's gradient to one position, so the conv output's dense gradient is
never built (see `_weight_grad_at`; with the input's gradient wanted too, it is, and the
convolution's backward gives both). Each core takes the next band as it finishes one, so a core
slowed by another process does less of the work instead of holding up the step; each band's
gradients are kept apart and added in band order, so the result is the same however the bands
fell to the cores. The CPU micro-batch can grow from 8 images at 640 px to 73.

The result equals `relu(max_pool2d(conv2d(x, w, b, padding=1), pool))` (tested to 1e-5 in outputs
and gradients, ties included): the same windows meet the same maximum, band edges only split
rows between calls.

For the seed's own block (3 input channels, a multiple of 32 filters, pool 3, float32,
channels-last, no input gradient) each band goes to a C kernel instead (`leafnet.kernels`, built
at first use): it computes a pooled position's nine convolutions in registers and keeps a byte
per maximum for where it was, so no band of conv output is written at all, and its backward
needs no patch table; the whole training step took about 0.55x the time of these PyTorch kernels
(docs/performance.md). Without a C compiler, the PyTorch kernels run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from leafnet import kernels
from leafnet.perf import l3_cache_bytes

Band = tuple[int, int, int, int]
Claims = Iterator[tuple[int, Band]]  # (band number, band), as a core takes them

# The conv output a band may hold (`band_bytes`): a twelfth of the L3, from 2 MiB (8 pooled rows
# of one 640 px image) to 8 MiB. Bigger bands pay each band's fixed costs (Python, each op's
# set-up, the patch table) fewer times until the two cores' bands crowd the L3: 2 MiB was the
# fastest with an 8 MiB L3, 4-8 MiB 10% faster than 2 with 48 MiB (docs/performance.md, "Why
# the code is as it is").
MIN_BAND_BYTES, MAX_BAND_BYTES = 2 << 20, 8 << 20
# One band per core at a time (see per_core); False: one band at a time over all cores, which the
# bench's `+serial` option measures against.
PER_CORE = True
# The seed's block through the C kernel (leafnet.kernels) where it builds; False: PyTorch's
# kernels, which the bench's `+library` option measures against.
FUSED = True
# Bands to whichever core is free; False: each core takes every k-th band, which the bench's
# `+static` option measures against (the sums are the same either way).
HAND_OUT = True


def _bands(n: int, out_rows: int, row_bytes: int, budget: int) -> list[Band]:
    """(first image, end image, first pooled row, end pooled row) of every band: whole rows of
    one image while a row band fits `budget`, several whole images per band once one fits."""
    rows = max(1, min(out_rows, budget // max(row_bytes, 1)))
    images = max(1, budget // max(row_bytes * out_rows, 1)) if rows == out_rows else 1
    return [
        (i, min(i + images, n), r, min(r + rows, out_rows))
        for i in range(0, n, images)
        for r in range(0, out_rows, rows)
    ]


@cache
def band_bytes() -> int:
    """The budget `conv_pool_relu` gives a band's conv output by default on this host."""
    l3 = l3_cache_bytes()
    return MIN_BAND_BYTES if l3 is None else min(max(l3 // 12, MIN_BAND_BYTES), MAX_BAND_BYTES)


@cache
def _executor(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="leafnet-band")


def per_core(work: Callable[[Claims], None], bands: list[Band]) -> None:
    """work(claims) on each core side by side, each with one intra-op thread: `claims` yields the
    next band no core has taken yet, so a core that another process slows simply takes fewer.

    A band is too small a job to split across cores well: one band per core at a time, each in
    its own core's cache, was faster than each band's ops split over the cores and than the plain
    layers (docs/performance.md). torch.set_num_threads(1) in a worker sets that thread's count,
    and also the count threads started later begin with: that one is put back."""
    cores = torch.get_num_threads()
    threads = min(cores, len(bands)) if PER_CORE else 1
    taken = itertools.count()  # next() is one C call under the GIL: no band is taken twice

    def claims() -> Claims:
        while (i := next(taken)) < len(bands):
            yield i, bands[i]

    if threads <= 1:
        work(claims())
        return

    def share(k: int) -> None:
        torch.set_num_threads(1)
        with torch.no_grad():  # grad mode is per thread: the worker's would record the ops
            work(claims() if HAND_OUT else ((i, bands[i]) for i in range(k, len(bands), threads)))

    try:
        list(_executor(threads).map(share, range(threads)))
    finally:
        torch.set_num_threads(cores)


def _format(x: Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _band_input(x: Tensor, band: Band, pool: int) -> tuple[Tensor, slice, slice]:
    """The input rows a band's convolution reads: its own rows and a one-row halo above and below,
    a view of x; where the halo falls outside the image, a copy with the 'same' padding's zero row
    there. Returns those rows, which rows of the image they are, and which of them are the
    image's (the zero rows left out). The columns' padding is the convolution's own
    (padding=(0, 1)): padding the whole batch instead would copy every image, forward and
    backward."""
    i0, i1, r0, r1 = band
    h = x.shape[2]
    top, bottom = r0 * pool - 1, r1 * pool + 1
    image_rows = slice(max(top, 0), min(bottom, h))
    rows = x[i0:i1, :, image_rows]
    pad_top, pad_bottom = int(top < 0), int(bottom > h)
    if pad_top or pad_bottom:
        rows = F.pad(rows, (0, 0, pad_top, pad_bottom)).contiguous(memory_format=_format(x))
    return rows, image_rows, slice(pad_top, rows.shape[2] - pad_bottom)


def _weight_grad_at(where: Tensor, grad: Tensor, rows: Tensor) -> Tensor:
    """A 3x3 convolution's weight gradient from the positions max-pool kept: each pooled value's
    gradient times the input patch under the maximum it came from.

    Max-pool passes a gradient to one position of each window, so the conv output's gradient is
    zero at all others (eight of nine with a 3x3 pool), and the weight gradient is a sum over the
    pooled positions only: per channel, each position's 27-value input patch weighted by its
    gradient. `embedding_bag` does exactly that sum, with the band's patches as the table, the
    indices max-pool reported as the rows and the gradients as weights; the dense gradient (max-
    pool's backward, zeroing and scattering the band) and the convolution's backward over all
    positions are never needed. `rows` is the band's input with its halo, (n, 3, R + 2, W)."""
    n, channels, rows_out, width = rows.shape[0], rows.shape[1], rows.shape[2] - 2, rows.shape[3]
    # Pixel-major, the columns' 'same' padding added: each pixel's channels side by side.
    padded = F.pad(rows, (1, 1)).permute(0, 2, 3, 1).contiguous()
    row, pixel = (width + 2) * channels, channels
    # The patch of conv output (y, x), kernel row ky, is 3 pixels of input row y + ky side by side:
    # a strided view; the three kernel rows next to each other make the table, one row per output.
    patches = torch.cat(
        [
            padded.as_strided(
                (n, rows_out, width, 3 * channels),
                (padded.stride(0), row, pixel, 1),
                padded.storage_offset() + ky * row,
            )
            for ky in range(3)
        ],
        dim=-1,
    ).view(n * rows_out * width, 9 * channels)
    # max-pool's indices count within each image's band: offset them to the table's rows.
    if n > 1:
        where = where + torch.arange(n, device=where.device).view(n, 1, 1, 1) * (rows_out * width)
    # One bag per pooled row and output channel, summed after: a row's lookups stay within three
    # rows of the table, which a core's L2 holds; one bag per channel would sweep the whole
    # band's table from L3 once per channel.
    pooled_cols = where.shape[3]
    bags = where.transpose(1, 2).reshape(-1, pooled_cols)
    weights = grad.transpose(1, 2).reshape(-1, pooled_cols)
    grad_w = F.embedding_bag(bags, patches, mode="sum", per_sample_weights=weights)
    grad_w = grad_w.view(-1, where.shape[1], 9 * channels).sum(0)
    # Table columns are (ky, kx, input channel); the weight is (output, input channel, ky, kx).
    return grad_w.view(-1, 3, 3, channels).permute(0, 3, 1, 2)


def _seed_block(x: Tensor, weight: Tensor, bias: Tensor, pool: int) -> bool:
    """Whether this is the block the C kernel computes: the seed's first (3 input channels, a
    multiple of 32 float32 filters, pool 3), channels-last on the CPU, the kernel switched on."""
    return (
        FUSED
        and x.device.type == weight.device.type == bias.device.type == "cpu"
        and weight.dtype == bias.dtype == torch.float32
        and x.shape[1] == 3
        and weight.shape[0] % 32 == 0
        and pool == 3
        and x.is_contiguous(memory_format=torch.channels_last)
        and bias.is_contiguous()
    )


def _fused(x: Tensor, weight: Tensor, bias: Tensor, pool: int) -> kernels.ConvPool | None:
    """The C kernel for this call, or None for PyTorch's: it takes the seed's first block on a
    float32 batch and computes no input gradient, which a first layer never needs."""
    fits = _seed_block(x, weight, bias, pool) and x.dtype == torch.float32 and not x.requires_grad
    return kernels.conv_pool() if fits else None


def fused_available() -> bool:
    """Whether the C kernel is on and built here (it takes the seed's first block)."""
    return FUSED and kernels.conv_pool() is not None


def fused_takes(x: Tensor, weight: Tensor, bias: Tensor, pool: int) -> bool:
    """Whether `conv_pool_relu(x, weight, bias, pool)` would run through the C kernel."""
    return _fused(x, weight, bias, pool) is not None


def fused_takes_bytes(x: Tensor, table: Tensor, weight: Tensor, bias: Tensor, pool: int) -> bool:
    """Whether `conv_pool_relu(x, weight, bias, pool, table=table)` can run: the seed's block on a
    uint8 batch, a float32 [3, 256] table, the C kernel built."""
    return (
        _seed_block(x, weight, bias, pool)
        and x.dtype == torch.uint8
        and table.dtype == torch.float32
        and table.shape == (3, 256)
        and table.is_contiguous()
        and table.device.type == "cpu"
        and kernels.conv_pool() is not None
    )


_NO_SCRATCH = "the fused first block could not allocate memory to convert a band of the batch"


def _fused_bands(
    kernel: kernels.ConvPool,
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    out: Tensor,
    where: Tensor | None,
    table: Tensor | None = None,
) -> Callable[[Claims], None]:
    """Forward, band by band, through the C kernel: `out` and `where` written in place. A uint8
    `x` is read through `table`, and `where` may then be None (no backward to come)."""
    taps = weight.permute(2, 3, 1, 0).contiguous()  # (ky, kx, ci, co), as the C reads them
    h, w = x.shape[2], x.shape[3]
    code = None if where is None else where.data_ptr()

    def run(claims: Claims) -> None:
        for _, (i0, i1, r0, r1) in claims:
            if table is None:
                kernel.forward(
                    x.data_ptr(), h, w, taps.data_ptr(), bias.data_ptr(), weight.shape[0],
                    out.data_ptr(), code, i0, i1, r0, r1,
                )  # fmt: skip
            elif kernel.forward_bytes(
                x.data_ptr(), h, w, table.data_ptr(), taps.data_ptr(), bias.data_ptr(),
                weight.shape[0], out.data_ptr(), code, i0, i1, r0, r1,
            ):  # fmt: skip
                raise MemoryError(_NO_SCRATCH)

    return run


def _torch_bands(
    x: Tensor, weight: Tensor, bias: Tensor, pool: int, out: Tensor, where: Tensor
) -> Callable[[Claims], None]:
    """Forward, band by band, through PyTorch's convolution and max-pool."""
    k = [pool, pool]

    def run(claims: Claims) -> None:
        for _, (i0, i1, r0, r1) in claims:
            rows = _band_input(x, (i0, i1, r0, r1), pool)[0]
            band = F.conv2d(rows, weight, bias, padding=(0, 1))
            # Pooled straight into the output, then ReLU there while it is still in cache.
            pooled = out[i0:i1, :, r0:r1]
            torch.ops.aten.max_pool2d_with_indices.out(
                band, k, k, [0, 0], [1, 1], False, out=pooled, indices=where[i0:i1, :, r0:r1]
            )
            pooled.relu_()

    return run


def _fused_backward(
    kernel: kernels.ConvPool,
    bands: list[Band],
    x: Tensor,
    weight: Tensor,
    out: Tensor,
    where: Tensor,
    grad_out: Tensor,
    table: Tensor | None = None,
) -> tuple[None, Tensor, Tensor, None, None, None]:
    """The weight and bias gradients from the C kernel, band by band, added in band order; a
    uint8 `x` is read through `table`."""
    channels, h, w = weight.shape[0], x.shape[2], x.shape[3]
    grad = grad_out.contiguous(memory_format=torch.channels_last)
    grad_w_bands = weight.new_empty((len(bands), 3, 3, 3, channels))  # (ky, kx, ci, co)
    grad_b_bands = weight.new_empty((len(bands), channels))

    def run(claims: Claims) -> None:
        for j, (i0, i1, r0, r1) in claims:
            gw, gb = grad_w_bands[j].data_ptr(), grad_b_bands[j].data_ptr()
            if table is None:
                kernel.weight_grad(
                    x.data_ptr(), h, w, out.data_ptr(), grad.data_ptr(), where.data_ptr(),
                    channels, i0, i1, r0, r1, gw, gb,
                )  # fmt: skip
            elif kernel.weight_grad_bytes(
                x.data_ptr(), h, w, table.data_ptr(), out.data_ptr(), grad.data_ptr(),
                where.data_ptr(), channels, i0, i1, r0, r1, gw, gb,
            ):  # fmt: skip
                raise MemoryError(_NO_SCRATCH)

    per_core(run, bands)
    grad_w = grad_w_bands.sum(0).permute(3, 2, 0, 1).contiguous()
    return None, grad_w, grad_b_bands.sum(0), None, None, None


def _output_and_bands(
    x: Tensor, weight: Tensor, pool: int, budget: int
) -> tuple[Tensor, list[Band]]:
    """The block's (empty) output, in the weights' dtype and the batch's layout, and the bands it
    is computed in, cut by the bytes of their conv output rows."""
    n, _, h, w = x.shape
    shape = (n, weight.shape[0], h // pool, w // pool)
    out = torch.empty(shape, dtype=weight.dtype, device=x.device, memory_format=_format(x))
    return out, _bands(n, h // pool, weight.shape[0] * pool * w * out.element_size(), budget)


class _ConvPoolReLU(torch.autograd.Function):
    # Float32 inside under CPU autocast (precision=bf16-mixed): the C kernel is float32 only, and
    # PyTorch's band kernels write into a float32 output.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(  # type: ignore[override]
        ctx, x: Tensor, weight: Tensor, bias: Tensor, pool: int, budget: int, table: Tensor | None
    ) -> Tensor:
        out, bands = _output_and_bands(x, weight, pool, budget)
        shape, fmt = out.shape, _format(x)
        kernel = ctx.kernel = (
            kernels.conv_pool() if table is not None else _fused(x, weight, bias, pool)
        )
        ctx.table = table
        if kernel is not None:
            # Which of its window's nine places each maximum came from, a byte (0-8).
            where = torch.empty(shape, dtype=torch.uint8, memory_format=fmt)
            run = _fused_bands(kernel, x, weight, bias, out, where, table)
        else:
            # Where each maximum was, as max-pool reports it: relative to its band's conv output.
            where = torch.empty(shape, dtype=torch.int64, device=x.device, memory_format=fmt)
            run = _torch_bands(x, weight, bias, pool, out, where)
        per_core(run, bands)
        ctx.save_for_backward(x, weight, out, where)
        ctx.pool, ctx.bands, ctx.fmt = pool, bands, fmt
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, weight, out, where = ctx.saved_tensors
        if ctx.kernel is not None:
            return _fused_backward(
                ctx.kernel, ctx.bands, x, weight, out, where, grad_out, ctx.table
            )
        pool, k = ctx.pool, [ctx.pool, ctx.pool]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        w = x.shape[-1]

        # Each band's gradients in a slot of their own, added in band order after: the same sums
        # whichever core took which band.
        n = len(ctx.bands)
        grad_w_bands = weight.new_empty((n, *weight.shape)) if need_w else None
        grad_b_bands = x.new_empty((n, weight.shape[0])) if need_b else None
        grad_x_bands: list[tuple[int, int, slice, Tensor] | None] = [None] * n

        def run(claims: Claims) -> None:
            for j, (i0, i1, r0, r1) in claims:
                # ReLU's backward, on this band's share of the output.
                g = torch.ops.aten.threshold_backward(
                    grad_out[i0:i1, :, r0:r1], out[i0:i1, :, r0:r1], 0
                )
                if grad_b_bands is not None:
                    grad_b_bands[j] = g.sum((0, 2, 3))
                if not (need_x or need_w):
                    continue
                rows, image_rows, own = _band_input(x, (i0, i1, r0, r1), pool)
                if not need_x:  # a first layer: no dense gradient needed
                    assert grad_w_bands is not None
                    grad_w_bands[j] = _weight_grad_at(where[i0:i1, :, r0:r1], g, rows)
                    continue
                # max-pool's backward reads only the shape and layout of its input: an empty band.
                band = torch.empty(
                    (i1 - i0, weight.shape[0], (r1 - r0) * pool, w),
                    dtype=x.dtype, device=x.device, memory_format=ctx.fmt,
                )  # fmt: skip
                gy = torch.ops.aten.max_pool2d_with_indices_backward(
                    g, band, k, k, [0, 0], [1, 1], False, where[i0:i1, :, r0:r1]
                )
                gx, gw, _ = torch.ops.aten.convolution_backward(
                    gy, rows, weight, [weight.shape[0]], [1, 1], [0, 1], [1, 1], False, [0, 0], 1,
                    [True, need_w, False],
                )  # fmt: skip
                if grad_w_bands is not None:
                    grad_w_bands[j] = gw
                grad_x_bands[j] = (i0, i1, image_rows, gx[:, :, own])

        per_core(run, ctx.bands)
        grad_x = None
        if need_x:
            grad_x = torch.zeros_like(x, memory_format=ctx.fmt)
            for band in grad_x_bands:
                assert band is not None
                i0, i1, image_rows, gx = band
                # Neighbouring bands share their halo rows: added one by one, never at once.
                grad_x[i0:i1, :, image_rows] += gx
        grad_w = grad_w_bands.sum(0) if grad_w_bands is not None else None
        grad_b = grad_b_bands.sum(0) if grad_b_bands is not None else None
        return grad_x, grad_w, grad_b, None, None, None


# Left to eager mode under torch.compile: a loop over bands handed to worker threads is nothing a
# compiler can fuse, and tracing into it would rebuild the thread pool.
@torch.compiler.disable
def conv_pool_relu(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    pool: int,
    budget: int | None = None,
    table: Tensor | None = None,
) -> Tensor:
    """relu(max_pool2d(conv2d(x, weight, bias, padding=1), pool)) for a 3x3 kernel, in bands.

    With `table` (float32 [3, 256]), x is a uint8 batch standing for f[:, c] = table[c][x[:, c]]
    (`data.images.byte_table`): the C kernel reads the bytes, so the float batch (four times
    the bytes) is never written, forward or backward. Only where `fused_takes_bytes` says so."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"conv_pool_relu takes a 3x3 kernel, got {tuple(weight.shape[-2:])}")
    budget = budget or band_bytes()
    if table is None:
        return _ConvPoolReLU.apply(x, weight, bias, pool, budget, None)
    if not fused_takes_bytes(x, table, weight, bias, pool):
        raise ValueError("conv_pool_relu takes a uint8 batch where fused_takes_bytes says so")
    if torch.is_grad_enabled() and (weight.requires_grad or bias.requires_grad):
        return _ConvPoolReLU.apply(x, weight, bias, pool, budget, table)
    # No backward to come: no max-pool codes to keep.
    kernel = kernels.conv_pool()
    assert kernel is not None
    out, bands = _output_and_bands(x, weight, pool, budget)
    per_core(_fused_bands(kernel, x, weight, bias, out, None, table), bands)
    return out
