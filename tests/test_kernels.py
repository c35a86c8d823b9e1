"""leafnet's C kernels build with the machine's compiler at first use, and fall back cleanly."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import pytest
from fixtures_kernels import no_avx512_compiler

from leafnet import kernels

needs_cc = pytest.mark.skipif(
    os.name == "nt" or kernels.compiler() is None, reason="no C compiler on this machine"
)


@pytest.fixture(autouse=True)
def fresh_build():
    """conv_pool() builds once per process: start and leave each test with it unbuilt."""
    loaders = (kernels.conv_pool, kernels.pool_relu, kernels.second_block)
    for loader in loaders:
        loader.cache_clear()
    yield
    for loader in loaders:
        loader.cache_clear()


@needs_cc
def test_the_fused_first_block_builds_here() -> None:
    assert kernels.conv_pool() is not None


def test_without_a_compiler_leafnet_says_so_once_and_uses_pytorch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level(logging.INFO, logger="leafnet.kernels"):
        assert kernels.conv_pool() is None
        assert kernels.conv_pool() is None
        assert kernels.pool_relu() is None
        assert kernels.second_block() is None
    conv1, pool, block = [r.getMessage() for r in caplog.records]  # one line each
    assert all("PyTorch's kernels" in line and "/nonexistent/cc" in line for line in (conv1, pool))
    assert "layer by layer" in block and "/nonexistent/cc" in block


@needs_cc
def test_a_compiler_that_refuses_march_native_gets_the_next_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Some compilers (older clang for arm64) reject -march=native: the source is built with the
    next flags. This stand-in refuses it and, like a compiler whose default target has AVX2 or
    NEON, builds for this CPU when given none."""
    real = kernels.compiler()
    assert real is not None
    calls = tmp_path / "calls"
    fake = tmp_path / "cc"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:3]) + '\\n')\n"
        "if '-march=native' in sys.argv or '-mcpu=native' in sys.argv:\n"
        "    sys.exit('unknown flag')\n"
        f"os.execvp({real[0]!r}, [{real[0]!r}, '-march=native', *sys.argv[1:]])\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert kernels.conv_pool() is not None
    assert calls.read_text().splitlines() == [
        "-O3 -march=native",
        "-O3 -mcpu=native",
        "-O3 -shared",
    ]


def test_leafnet_native_0_turns_the_kernels_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAFNET_NATIVE", "0")
    assert kernels.conv_pool() is None
    assert kernels.pool_relu() is None
    assert kernels.second_block() is None


@needs_cc
def test_the_second_block_is_taken_only_from_an_avx512_build(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its register blocking is for AVX-512's 32 registers of 16 floats: a build for AVX2 (8
    floats a vector) compiles, says its width, and is refused in one line; the native build of
    an AVX-512 CPU is taken."""
    with monkeypatch.context() as m, caplog.at_level(logging.INFO, logger="leafnet.kernels"):
        m.setenv("CC", shlex.join(no_avx512_compiler()))
        assert kernels.second_block() is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert "AVX-512" in line and "8 floats a vector" in line
    kernels.second_block.cache_clear()
    assert kernels.second_block() is not None
