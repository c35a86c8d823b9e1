"""PyTorch internals leafnet reads: the CPU's bfloat16 support and a module's own hooks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); emulated bf16 is about
    100x slower. torch has no public query."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def is_hooked(module: nn.Module) -> bool:
    """Whether a hook would see `module`'s call: a forward or backward hook or pre-hook on the
    module itself, or one registered for every module (torch has no public way to ask)."""
    own = (
        module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
        module._backward_pre_hooks,
    )  # fmt: skip
    every = (
        getattr(nn.modules.module, name, None)
        for name in (
            "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )  # fmt: skip
    return any(own) or any(bool(hooks) for hooks in every)


def profiler(activities: list[Any]) -> torch.profiler.profile:
    """torch's profiler, also recording the ops of threads it did not start (the banded block's
    per-core workers) where this torch can (a private config class); otherwise their time shows
    as the block's own."""
    try:
        from torch._C._profiler import _ExperimentalConfig

        config = _ExperimentalConfig(profile_all_threads=True)
    except (ImportError, TypeError):
        return torch.profiler.profile(activities=activities)
    return torch.profiler.profile(activities=activities, experimental_config=config)
