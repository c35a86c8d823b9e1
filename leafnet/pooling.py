"""The seed's second max-pool and the ReLU after it, fused on the CPU (`kernels/pool_relu.c`).

`pool_relu(x)` is `relu(max_pool2d(x, 2))`, the same numbers and gradient, for a float32
channels-last batch with a multiple of 16 channels where the C kernel builds (`pool_relu_takes`);
one image at a time to each core, as `banded.per_core` hands out bands. Layer by layer, max-pool
wrote an int64 index for every output value, zeroed the whole input gradient in backward and
scattered into it, and ReLU added a pass each way (docs/performance.md).
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
