"""A C kernel built for another vector width, for the tests that compare it with this machine's
build or check that leafnet refuses it (owned by the kernel tests: test_banded, test_pooling,
test_kernels)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from leafnet import kernels

NO_AVX512 = "-mno-avx512f"


def no_avx512_compiler() -> list[str]:
    """This machine's C compiler with AVX-512 turned off, as for an x86 CPU with AVX2 and no
    AVX-512. Skipped off x86, without a compiler, or on a CPU without AVX-512 (its native build
    is then that build, and comparing them could not fail)."""
    cc = kernels.compiler()
    if platform.machine().lower() not in ("x86_64", "amd64") or cc is None:
        pytest.skip("not an x86 machine with a C compiler")

    def macros(*flags: str) -> str:
        command = [*cc, *flags, "-march=native", "-dM", "-E", "-"]
        return subprocess.run(command, input="", capture_output=True, text=True, check=True).stdout

    if "__AVX512F__" not in macros():
        pytest.skip("this CPU has no AVX-512: its native build is the AVX2 build")
    # The flag must turn AVX-512 off even after -march=native, or both builds would be one.
    assert "__AVX512F__" not in macros(NO_AVX512)
    return [*cc, NO_AVX512]


def avx2_build(loader: Callable[[], Any]) -> Any:
    """`loader()` (`kernels.conv_pool` or `kernels.pool_relu`) built by `no_avx512_compiler`: 8
    floats a vector and its own way of widening the codes. Skipped where that compiler is, or
    without AVX2; the cached native build is built again on its next use."""
    cc = no_avx512_compiler()
    before = os.environ.get("CC")
    os.environ["CC"] = shlex.join(cc)
    loader.cache_clear()  # type: ignore[attr-defined]
    try:
        built = loader()
    finally:
        os.environ.pop("CC") if before is None else os.environ.update(CC=before)
        loader.cache_clear()  # type: ignore[attr-defined]
    if built is None:
        pytest.skip("this CPU has no AVX2")
    return built
