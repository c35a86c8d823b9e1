"""The seed's second block on the CPU: its max-pool and ReLU fused to train
(`kernels/pool_relu.c`), and conv, max-pool and ReLU fused without a gradient
(`kernels/second_block.c`), to validate and predict.

`pool_relu(x)` is `relu(max_pool2d(x, 2))`, the same numbers and gradient, for a float32
channels-last batch with a multiple of 16 channels where the C kernel builds (`pool_relu_takes`);
one image at a time to each core, as `banded.per_core` hands out bands. Layer by layer, max-pool
wrote an int64 index for every output value, zeroed the whole input gradient in backward and
scattered into it, and ReLU added a pass each way (docs/performance.md).

`second_block(x, weight, bias)` is `relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2))`
where no gradient is wanted (`second_block_takes`): the conv's output is pooled in registers and
never written. Its sums are added in another order than oneDNN's, so its outputs differ from the
layers' by rounding (about 1e-7); training keeps the layers, so its numbers are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

from leafnet import kernels
from leafnet.banded import Band, Claims, per_core


def pool_relu_takes(x: Tensor) -> bool:
    """Whether `pool_relu` computes x's block: a float32 channels-last tensor on the CPU, at
    least 2 x 2, channels a multiple of 16, nothing tracing it (a C call is nothing a trace can
    record), and the C kernel built here."""
    return (
        isinstance(x, Tensor)  # not an FX proxy
        and not torch.jit.is_tracing()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.shape[1] % 16 == 0
        and min(x.shape[2:]) >= 2
        and x.is_contiguous(memory_format=torch.channels_last)
        and kernels.pool_relu() is not None
    )


def _images(n: int) -> list[Band]:
    return [(i, i + 1, 0, 0) for i in range(n)]


def _forward(x: Tensor, with_code: bool) -> tuple[Tensor, Tensor | None]:
    """The pooled, ReLU'd output and, for backward, each value's place in its window (0-3)."""
    kernel = kernels.pool_relu()
    assert kernel is not None
    n, c, h, w = x.shape
    shape, fmt = (n, c, h // 2, w // 2), torch.channels_last
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    code = (
        torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=fmt)
        if with_code
        else None
    )

    def run(claims: Claims) -> None:
        for _, (i0, i1, _, _) in claims:
            kernel.forward(
                x.data_ptr(), h, w, c, out.data_ptr(), code.data_ptr() if code is not None else None,
                i0, i1,
            )  # fmt: skip

    per_core(run, _images(n))
    return out, code


class _PoolReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        out, code = _forward(x, with_code=True)
        ctx.save_for_backward(out, code)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative raises, never zeros
    def backward(ctx, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        kernel = kernels.pool_relu()
        assert kernel is not None
        out, code = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        fmt = torch.channels_last
        grad_out = grad_out.contiguous(memory_format=fmt)
        grad_x = torch.empty(ctx.input_shape, dtype=out.dtype, device=out.device, memory_format=fmt)

        def run(claims: Claims) -> None:
            for _, (i0, i1, _, _) in claims:
                kernel.backward(
                    out.data_ptr(), grad_out.data_ptr(), code.data_ptr(), h, w, c,
                    grad_x.data_ptr(), i0, i1,
                )  # fmt: skip

        per_core(run, _images(n))
        return grad_x


# Left to eager mode under torch.compile, as conv_pool_relu is: a C call per image on worker
# threads is nothing a compiler can fuse.
@torch.compiler.disable
def pool_relu(x: Tensor) -> Tensor:
    """relu(max_pool2d(x, 2)) where `pool_relu_takes(x)`; no codes kept without a backward."""
    if not pool_relu_takes(x):
        raise ValueError("pool_relu takes the batches pool_relu_takes says it does")
    if torch.is_grad_enabled() and x.requires_grad:
        return _PoolReLU.apply(x)
    return _forward(x, with_code=False)[0]


# Pooled rows a band of the second block: several bands an image, so one photo to predict is
# split over the cores; a band's call and its four input rows are small beside its sums.
SECOND_BLOCK_ROWS = 16


def second_block_takes(x: Tensor, weight: Tensor, bias: Tensor) -> bool:
    """Whether `second_block` computes this block: no gradient wanted, a float32 channels-last
    batch of 32 channels, at least 2 x 2, on the CPU; a 3x3 float32 weight with a multiple of 16
    filters; nothing tracing it; and the C kernel built here (for AVX-512)."""
    wants_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or bias.requires_grad
    )
    return (
        isinstance(x, Tensor)  # not an FX proxy
        and not torch.jit.is_tracing()
        and not wants_grad
        and x.device.type == weight.device.type == bias.device.type == "cpu"
        and x.dtype == weight.dtype == bias.dtype == torch.float32
        and x.dim() == 4
        and x.shape[1] == 32
        and min(x.shape[2:]) >= 2
        and x.is_contiguous(memory_format=torch.channels_last)
        and weight.shape[1:] == (32, 3, 3)
        and weight.shape[0] % 16 == 0
        and bias.shape == (weight.shape[0],)
        and kernels.second_block() is not None
    )


# Left to eager mode under torch.compile, as pool_relu is.
@torch.compiler.disable
def second_block(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """relu(max_pool2d(conv2d(x, weight, bias, padding=1), 2)) where `second_block_takes` says so,
    in bands of `SECOND_BLOCK_ROWS` pooled rows across the cores."""
    if not second_block_takes(x, weight, bias):
        raise ValueError("second_block takes the batches second_block_takes says it does")
    kernel = kernels.second_block()
    assert kernel is not None
    n, c, h, w = x.shape
    channels = weight.shape[0]
    shape, fmt = (n, channels, h // 2, w // 2), torch.channels_last
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    taps = weight.permute(2, 3, 1, 0).contiguous()  # (ky, kx, ci, co), as the C reads them
    bias = bias.contiguous()
    zeros = x.new_zeros(w * c)  # the 'same' padding's rows above and below the image
    rows = SECOND_BLOCK_ROWS
    bands = [(i, i + 1, r, min(r + rows, h // 2)) for i in range(n) for r in range(0, h // 2, rows)]

    def run(claims: Claims) -> None:
        for _, (i0, i1, r0, r1) in claims:
            kernel.forward(
                x.data_ptr(), h, w, taps.data_ptr(), bias.data_ptr(), channels, zeros.data_ptr(),
                out.data_ptr(), i0, i1, r0, r1,
            )  # fmt: skip

    per_core(run, bands)
    return out
