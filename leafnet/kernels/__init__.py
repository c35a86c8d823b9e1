"""leafnet's C kernels, compiled by the machine's C compiler the first time a process needs one.

Three, sharing `vectors.h`: `conv_pool.c`, the seed's first block (conv 3x3 + max-pool 3x3 +
ReLU) fused for the CPU, forward and weight gradient (leafnet.banded calls it band by band, to
train and to predict); `pool_relu.c`, the second block's max-pool 2x2 + ReLU, forward and backward
(leafnet.pooling, to train); `second_block.c`, the whole second block (conv 3x3 + max-pool 2x2 +
ReLU) without a gradient, AVX-512 only (leafnet.pooling, to validate and predict).

No build step and nothing cached: a process compiles the source into a temporary folder (well
under a second with gcc), loads it through ctypes and deletes the folder. `-march=native` builds
for this CPU's vector units; a cluster's nodes each build their own. Where that flag is refused,
the next flags in `FLAG_SETS` are tried. Where there is no compiler (Windows, a bare container),
the build fails, or `LEAFNET_NATIVE=0` is set, `conv_pool()` and `pool_relu()` return None, one
log line each says why, and PyTorch's kernels run: the same numbers, slower.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
# Tried in turn: this CPU's instruction set (gcc, clang; older clang for arm64 takes only
# -mcpu=native), then the compiler's default target (which conv_pool.c refuses on x86 without AVX2).
FLAG_SETS = (["-O3", "-march=native"], ["-O3", "-mcpu=native"], ["-O3"])
_PTR, _INT = ctypes.c_void_p, ctypes.c_int64


class BuildError(RuntimeError):
    """A kernel could not be compiled or loaded here."""


@dataclass(frozen=True)
class ConvPool:
    """`conv_pool.c`'s entry points (see their comments there for the arguments)."""

    forward: Callable[..., None]
    weight_grad: Callable[..., None]
    forward_bytes: Callable[..., int]
    weight_grad_bytes: Callable[..., int]


@dataclass(frozen=True)
class SecondBlock:
    """`second_block.c`'s entry point (see its comment there for the arguments)."""

    forward: Callable[..., None]


@dataclass(frozen=True)
class PoolReLU:
    """`pool_relu.c`'s entry points (see their comments there for the arguments)."""

    forward: Callable[..., None]
    backward: Callable[..., None]


def compiler() -> list[str] | None:
    """The C compiler command: $CC, else the one Python was built with, else cc, gcc or clang."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    built_with = shlex.split(sysconfig.get_config_var("CC") or "")
    for command in ([built_with[0]] if built_with else []) + ["cc", "gcc", "clang"]:
        if shutil.which(command):
            return [command]
    return None


def build(source: str) -> ctypes.CDLL:
    """Compile `source` (a file beside this module) into a shared library and load it."""
    if os.name == "nt":
        raise BuildError("no C kernels on Windows")
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (set CC, or install gcc or clang)")
    with tempfile.TemporaryDirectory(prefix="leafnet-kernels-") as folder:
        library = Path(folder) / (Path(source).stem + ".so")
        last = ""
        for flags in FLAG_SETS:
            command = [*cc, *flags, "-shared", "-fPIC", "-std=gnu11", "-o", str(library)]
            try:
                done = subprocess.run(
                    [*command, str(SOURCE_DIR / source)],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                raise BuildError(f"{cc[0]} could not run: {e}") from None
            if done.returncode == 0:
                # Loaded before the folder goes: the mapping outlives the file.
                return ctypes.CDLL(str(library))
            lines = done.stderr.strip().splitlines()
            said = [line for line in lines if "error" in line] or lines
            last = said[0] if said else f"exit status {done.returncode}"
        raise BuildError(f"{cc[0]} failed on {source}: {last}")


def _load(source: str, fallback: str) -> ctypes.CDLL | None:
    """`build(source)`, or None where LEAFNET_NATIVE=0 or it cannot be built: then `fallback`
    (what runs instead) and the reason are logged once."""
    if os.environ.get("LEAFNET_NATIVE", "1") == "0":
        log.info("LEAFNET_NATIVE=0: %s", fallback)
        return None
    try:
        return build(source)
    except (BuildError, OSError) as e:
        log.info("%s: %s", fallback, e)
        return None


@cache
def conv_pool() -> ConvPool | None:
    """The fused first block, or None where it cannot be built (the reason logged once)."""
    lib = _load("conv_pool.c", "conv1 runs on PyTorch's kernels, about half as fast on the CPU")
    if lib is None:
        return None
    forward, weight_grad = lib.conv_pool_forward, lib.conv_pool_weight_grad
    forward_bytes, weight_grad_bytes = lib.conv_pool_forward_bytes, lib.conv_pool_weight_grad_bytes
    # x, height, width, w, b, channels, out, code, i0, i1, r0, r1
    forward.argtypes = [_PTR, _INT, _INT, _PTR, _PTR, _INT, _PTR, _PTR, *[_INT] * 4]
    # x, height, width, out, grad_out, code, channels, i0, i1, r0, r1, gw, gb
    weight_grad.argtypes = [_PTR, _INT, _INT, _PTR, _PTR, _PTR, *[_INT] * 5, _PTR, _PTR]
    # x (uint8), height, width, table, w, b, channels, out, code, i0, i1, r0, r1
    forward_bytes.argtypes = [_PTR, _INT, _INT, _PTR, _PTR, _PTR, _INT, _PTR, _PTR, *[_INT] * 4]
    # x (uint8), height, width, table, out, grad_out, code, channels, i0, i1, r0, r1, gw, gb
    weight_grad_bytes.argtypes = [_PTR, _INT, _INT, _PTR, _PTR, _PTR, _PTR, *[_INT] * 5, _PTR, _PTR]
    forward.restype = weight_grad.restype = None
    forward_bytes.restype = weight_grad_bytes.restype = ctypes.c_int  # -1: no memory for a scratch
    return ConvPool(forward, weight_grad, forward_bytes, weight_grad_bytes)


@cache
def pool_relu() -> PoolReLU | None:
    """The second block's fused max-pool + ReLU, or None where it cannot be built (the reason
    logged once)."""
    lib = _load("pool_relu.c", "the second max-pool and ReLU run on PyTorch's kernels")
    if lib is None:
        return None
    forward, backward = lib.pool_relu_forward, lib.pool_relu_backward
    # x, height, width, channels, out, code, i0, i1
    forward.argtypes = [_PTR, _INT, _INT, _INT, _PTR, _PTR, _INT, _INT]
    # out, grad_out, code, height, width, channels, grad_x, i0, i1
    backward.argtypes = [_PTR, _PTR, _PTR, _INT, _INT, _INT, _PTR, _INT, _INT]
    forward.restype = backward.restype = None
    return PoolReLU(forward, backward)


@cache
def second_block() -> SecondBlock | None:
    """The second block's fused conv + max-pool + ReLU without a gradient, or None where it cannot
    be built or the build is not for AVX-512 (the vector width its register blocking is for);
    the reason logged once."""
    lib = _load("second_block.c", "the second conv block runs layer by layer to predict")
    if lib is None:
        return None
    lib.second_block_vector_floats.restype = _INT
    floats = lib.second_block_vector_floats()
    if floats != 16:
        log.info(
            "the second conv block runs layer by layer to predict: its kernel is for AVX-512, "
            "and this build has %d floats a vector", floats,
        )  # fmt: skip
        return None
    forward = lib.second_block_forward
    # x, height, width, w, b, channels, zeros, out, i0, i1, r0, r1
    forward.argtypes = [_PTR, _INT, _INT, _PTR, _PTR, _INT, _PTR, _PTR, *[_INT] * 4]
    forward.restype = None
    return SecondBlock(forward)
