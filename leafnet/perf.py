"""CPU speed settings for every process that trains or predicts: allocator thresholds, threads,
and the host facts they follow (physical cores, the L3's size).

Why the allocator matters: at 640x640 one training step allocates and frees activation buffers of
hundreds of MB to GB. glibc serves anything above its mmap threshold (at most 32 MB by default,
dynamically) with a fresh ``mmap`` and returns it with ``munmap`` on free, so every step pays the
page faults and zeroing of those pages again, which made a step about 3x slower
(docs/performance.md). Raising ``M_MMAP_THRESHOLD`` keeps those buffers in the heap, and
raising ``M_TRIM_THRESHOLD`` stops glibc from handing a freed heap top back to the OS.

Both take an int, so 2 GiB is as far as they go. A step that frees more than that at once still
gets trimmed and faults it all in again next step: at 640x640 a micro-batch of 32 frees conv1's
output and its gradient together (2 x 1.7 GB), which made step times bimodal.
``HEAP_KEEP_BYTES`` is that limit; ``leafnet.module.auto_micro_batch_size`` keeps micro-batches
below it. (Turning trimming off altogether, ``M_TRIM_THRESHOLD=-1``, was as fast, but the heap then
only grows with fragmentation.)

Why OpenMP's wait policy matters: PyTorch's OpenMP threads (libgomp in its Linux wheels) spin
for about 300,000 pauses after every parallel op, milliseconds (docs/performance.md), in case
another op follows. leafnet's band workers (``leafnet.banded.per_core``) are other threads, so
after each op that hands over to them (four a training step, two or three a validation batch)
one core was shared with a spinning thread for those milliseconds. ``leafnet/__init__.py`` sets
``OMP_WAIT_POLICY=PASSIVE`` (the threads sleep at once) unless the user has set it, before torch
loads; a program that imports torch before leafnet keeps its own policy.

``tune_process()`` is idempotent and a no-op where the C library is not glibc.
``allocator_state()`` reads the setting back from the live allocator (a probe allocation), so a
test can check it in any process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# mallopt takes an int: 2 GiB - 1 is the largest threshold it accepts.
_THRESHOLD = 2**31 - 1
# What a step may free at once and still find in the heap next step (see the module docstring).
HEAP_KEEP_BYTES = _THRESHOLD
# The probe size: above glibc's default dynamic mmap ceiling (32 MB), below _THRESHOLD.
_PROBE_BYTES = 48 << 20
# glibc chunk header: the size word sits just before the user pointer; bit 1 marks an mmapped chunk.
_IS_MMAPPED = 0x2
# The suffixes sysfs writes cache sizes with ("49152K").
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

_state: dict[str, Any] | None = None


def _glibc() -> ctypes.CDLL | None:
    """The process' glibc, or None on musl, macOS, Windows."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings share the FMA units, so don't count)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
    except ImportError:
        physical = allowed
    return max(1, min(allowed, physical))


def l3_cache_bytes(cpu_dir: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """The last-level (L3) cache the OS reports for this process' first core, in bytes; None
    where Linux' sysfs does not say (macOS, Windows, some containers). In a virtual machine this
    is the host socket's L3, which other tenants share."""
    for index in sorted(cpu_dir.glob("index*")):
        try:
            if (index / "level").read_text().strip() != "3":
                continue
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        digits = size[:-1] if size[-1:] in _SIZE_UNITS else size
        if digits.isdigit():
            return int(digits) * _SIZE_UNITS.get(size[-1:], 1)
    return None


def auto_device() -> torch.device:
    """What `auto` means everywhere in leafnet: a CUDA GPU, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def runs_on_cpu(accelerator: str) -> bool:
    """Whether a Lightning `accelerator` setting trains on the CPU here."""
    if accelerator == "auto":
        return auto_device().type == "cpu"
    return accelerator == "cpu"


def tune_process(threads: int | None = None) -> dict[str, Any]:
    """Raise glibc's mmap and trim thresholds and set torch's intra-op threads; returns what it set.

    ``threads`` None means: keep an explicit ``OMP_NUM_THREADS``, else use the physical cores.
    Calling it again only changes the thread count when ``threads`` is given.
    """
    global _state
    if _state is None:
        libc = _glibc()
        allocator: dict[str, Any] = {"glibc": libc is not None}
        if libc is not None:
            allocator["glibc_version"] = libc.gnu_get_libc_version().decode()
            ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD) == 1
            ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, _THRESHOLD) == 1
            allocator["mmap_threshold"] = _THRESHOLD if ok_mmap else None
            allocator["trim_threshold"] = _THRESHOLD if ok_trim else None
        _state = {"allocator": allocator}
    if threads is None and "threads" not in _state:
        threads = None if os.environ.get("OMP_NUM_THREADS") else physical_cores()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"tune_process: threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    _state["threads"] = torch.get_num_threads()
    return {"allocator": dict(_state["allocator"]), "threads": _state["threads"]}


def _heap_free_bytes(libc: ctypes.CDLL) -> int:
    """Free bytes held in the main heap (glibc's mallinfo2().fordblks; 0 if unavailable)."""
    try:
        mallinfo2 = libc.mallinfo2
    except AttributeError:  # glibc < 2.33
        return 0
    mallinfo2.restype = type(
        "mallinfo2",
        (ctypes.Structure,),
        {
            "_fields_": [
                (f, ctypes.c_size_t)
                for f in (
                    "arena",
                    "ordblks",
                    "smblks",
                    "hblks",
                    "hblkhd",
                    "usmblks",
                    "fsmblks",
                    "uordblks",
                    "fordblks",
                    "keepcost",
                )
            ]
        },
    )
    return int(mallinfo2().fordblks)


def _is_mmapped(ptr: int) -> bool:
    """Whether glibc served this block with its own mmap (bit 1 of the chunk's size word)."""
    size_word = ctypes.c_size_t.from_address(ptr - ctypes.sizeof(ctypes.c_size_t)).value
    return bool(size_word & _IS_MMAPPED)


def _heap_keeps_freed_top(libc: ctypes.CDLL) -> bool | None:
    """Whether 1.6 GB freed at the heap's top stays in the heap (as a step's buffers must).

    Two 800 MB blocks are allocated and freed untouched: their pages are never faulted in, so
    the probe costs address space, not memory. None if glibc put them outside the main heap.
    """
    block = 800 << 20
    ptrs = [libc.malloc(block) for _ in range(2)]
    held = _heap_free_bytes(libc)
    inside = all(ptrs) and not any(_is_mmapped(p) for p in ptrs)
    for ptr in ptrs:
        if ptr:
            libc.free(ptr)
    # Measured against the free bytes while the blocks were held: a heap that already kept a
    # large free top serves the probe from it. Trimming would leave only its top pad (128 KB).
    return _heap_free_bytes(libc) - held > block if inside else None


def allocator_state() -> dict[str, Any]:
    """What the live allocator does now, read from glibc itself rather than remembered.

    ``tuned``: a 48 MB block comes from the heap, not a fresh mmap (read from the chunk header
    glibc keeps before every block). ``keeps_freed_top``: freeing 1.6 GB at the heap's top does
    not hand it back to the OS (None where the probe could not tell).
    """
    libc = _glibc()
    if libc is None:
        return {"glibc": False, "tuned": False, "probe_mmapped": None, "keeps_freed_top": None}
    # A free heap chunk as large as the probe would serve it with or without tuning, so probe
    # above the heap's free bytes (still below the raised threshold).
    probe = _PROBE_BYTES + _heap_free_bytes(libc)
    ptr = libc.malloc(probe) if probe < _THRESHOLD else None
    mmapped = _is_mmapped(ptr) if ptr else None
    if ptr:
        libc.free(ptr)
    # After the mmap probe: this one leaves a large free top, which the mmap probe would use.
    keeps = _heap_keeps_freed_top(libc)
    tuned = None if mmapped is None else not mmapped
    return {"glibc": True, "tuned": tuned, "probe_mmapped": mmapped, "keeps_freed_top": keeps}


def peak_rss_bytes(children: bool = False) -> int:
    """Peak resident set size of this process (or its waited-for children) so far, in bytes."""
    if not children and sys.platform == "linux":
        # VmHWM belongs to this process' memory map: getrusage's ru_maxrss survives exec, so a
        # process started by a large parent would report the parent's peak as its own.
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    peak = resource.getrusage(who).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak if sys.platform == "darwin" else peak * 1024


# -- parallel sweeps ------------------------------------------------------------------------------


def launcher_jobs() -> int | None:
    """How many jobs the current sweep runs at once, or None outside a parallel sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    n_jobs = hydra_cfg.launcher.get("n_jobs")  # joblib's; the basic launcher runs one at a time
    if not isinstance(n_jobs, int) or n_jobs == 0:
        return None
    if n_jobs < 0:  # joblib: -1 is every CPU, -2 all but one, ...
        n_jobs = max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    return n_jobs


def job_threads(cpus: int, n_jobs: int | None) -> int | None:
    """Torch threads for one of `n_jobs` parallel jobs sharing `cpus` cores."""
    return None if n_jobs is None else max(1, cpus // n_jobs)


def split_threads() -> int | None:
    """In a parallel sweep, give this job its share of the cores; returns the threads it set."""
    n_jobs = launcher_jobs()
    threads = job_threads(physical_cores(), n_jobs)
    if threads is not None:
        tune_process(threads=threads)
        log.info("parallel sweep: %d jobs at once -> %d torch thread(s) per job", n_jobs, threads)
    return threads
