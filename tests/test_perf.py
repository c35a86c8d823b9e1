"""Regression guards for leafnet.perf and the training step's speed habits (no timing asserted)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_runs import REPO, tiny_args, write_tiny_images

from leafnet import perf

# Runs `python -m leafnet.train` in-process after wrapping the training step, so the first step
# records what the live allocator does *inside a real training process*.
_PROBE = """
import json, os, sys
from leafnet import perf
from leafnet.module import LeafClassifier
seen = {}
step = LeafClassifier.training_step
def probed(self, batch, batch_idx):
    seen.setdefault("allocator", perf.allocator_state())
    seen.setdefault("threads", __import__("torch").get_num_threads())
    return step(self, batch, batch_idx)
LeafClassifier.training_step = probed
from leafnet.train import main
sys.argv = ["leafnet.train", *json.loads(os.environ["PROBE_ARGS"])]
try:
    main()
except SystemExit as e:
    if e.code not in (0, None):
        raise
with open(os.environ["PROBE_OUT"], "w") as f:
    json.dump(seen, f)
"""


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_tune_process_sets_allocator_and_threads_idempotently() -> None:
    code = (
        "import json; from leafnet import perf\n"
        "before = perf.allocator_state()\n"
        "first = perf.tune_process(); second = perf.tune_process()\n"
        "print(json.dumps([before, first, second, perf.allocator_state()]))"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    before, first, second, after = json.loads(result.stdout.strip().splitlines()[-1])
    assert first == second
    assert first["threads"] == perf.physical_cores()
    if not before["glibc"]:
        pytest.skip("not glibc: tune_process leaves the allocator alone")
    assert before["tuned"] is False  # glibc's default: a 48 MB block comes from mmap
    assert first["allocator"]["mmap_threshold"] and first["allocator"]["trim_threshold"]
    assert after == {"glibc": True, "tuned": True, "probe_mmapped": False, "keeps_freed_top": True}


def test_trim_probe_sees_a_missing_trim_threshold() -> None:
    # Only the mmap threshold raised: glibc then keeps its 128 KB trim threshold and hands every
    # freed heap top back to the OS, so each step would fault its buffers in again.
    code = (
        "import json; from leafnet import perf\n"
        "perf._glibc().mallopt(perf._M_MMAP_THRESHOLD, perf._THRESHOLD)\n"
        "print(json.dumps(perf.allocator_state()))"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    state = json.loads(result.stdout.strip().splitlines()[-1])
    if not state["glibc"]:
        pytest.skip("not glibc")
    assert state["tuned"] is True
    assert state["keeps_freed_top"] is False


def test_allocator_is_tuned_inside_a_training_process(tmp_path: Path) -> None:
    images = write_tiny_images(tmp_path / "images", per_class=6)
    args = [*tiny_args(images, tmp_path / "out", "epochs=1"), f"hydra.run.dir={tmp_path / 'run'}"]
    out = tmp_path / "probe.json"
    result = _python(_PROBE, {"PROBE_ARGS": json.dumps(args), "PROBE_OUT": str(out)})
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(out.read_text())
    assert seen["threads"] == perf.physical_cores()
    if not seen["allocator"]["glibc"]:
        pytest.skip("not glibc")
    assert seen["allocator"]["tuned"] is True
    assert seen["allocator"]["keeps_freed_top"] is True


# Of ten parallel ops over two threads, after how many another thread of the process was still
# running within a millisecond: PyTorch's idle OpenMP thread spinning (Linux' task states).
_SPIN = """
import os, threading, time
import leafnet, torch
torch.set_num_threads(2)
x = torch.randn(1 << 22)
me = threading.get_native_id()
def others_running():
    states = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:  # the thread ended
            continue
        if int(tid) == me:
            states.pop()
    return "R" in states
seen = 0
for _ in range(10):
    x.mul_(1.0001)
    running = False
    for _ in range(3):  # a busy host may not run the spinning thread at a given moment
        time.sleep(0.0003)
        running = running or others_running()
    seen += running
print(seen)
"""
_SPINS = 7  # of ten: a thread spinning for milliseconds is seen running nearly every time
_SLEEPS = 3  # of ten: a sleeping one only where a busy host ran it late


def _spinning(env: dict[str, str]) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _SPIN],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout)


# Up to three tries each: while the host is busy (the suite's other worker) OpenMP spins less.
def _spins(env: dict[str, str]) -> bool:
    return any(_spinning(env) >= _SPINS for _ in range(3))


def _sleeps(env: dict[str, str]) -> bool:
    return any(_spinning(env) <= _SLEEPS for _ in range(3))


_LINUX_TWO_CORES = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2,
    reason="reads Linux' task states; OpenMP spins only with a core to spare",
)


@_LINUX_TWO_CORES
def test_openmp_threads_sleep_after_an_op_unless_the_user_asks_them_to_spin() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    assert _sleeps(env)
    assert _spins({**env, "OMP_WAIT_POLICY": "ACTIVE"})


@_LINUX_TWO_CORES
def test_the_benchs_spin_contenders_spin_as_before_and_the_others_do_not() -> None:
    from leafnet.lab.bench import _worker
    from leafnet.lab.worker import WorkerArgs

    a = WorkerArgs(640, 32, 32, False, 0, "data", "cache", "out")
    assert _sleeps(_worker("command", a)[1])
    for name in ("command+spin", "leafnet+spin"):
        assert _spins(_worker(name, a)[1]), name


# Every way a CPU tensor's value reaches Python: each one waits for the device on a GPU.
_SYNCS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__")


def _fit_counting_syncs(
    images: Path, cache: Path, steps: int, monkeypatch: pytest.MonkeyPatch, leak: bool = False
) -> int:
    from leafnet.data.datamodule import LeafDataModule
    from leafnet.lab.contenders import steps_trainer
    from leafnet.module import LeafClassifier

    dm = LeafDataModule(
        dir=images, image_size=32, cache_dir=cache, num_workers=0, batch_size=2, seed=0
    )
    dm.setup("fit")
    module = LeafClassifier(
        model={"image_size": 32, "num_classes": 3},
        optimizer={"name": "adam"},
        class_names=dm.class_names,
        preprocessing=dm.preprocessing.to_dict(),
        micro_batch_size=1,  # micro-batching on: its loop must not sync either
    )
    count = 0
    with monkeypatch.context() as m:
        for name in _SYNCS:
            original = getattr(torch.Tensor, name)

            def counted(self, *a, _original=original, **k):
                nonlocal count
                # torch.optim keeps its step counters on the host on purpose (reading them is
                # free even with a GPU); every other read of a tensor's value counts.
                if f"torch{os.sep}optim{os.sep}" not in sys._getframe(1).f_code.co_filename:
                    count += 1
                return _original(self, *a, **k)

            m.setattr(torch.Tensor, name, counted)
        if leak:  # the control: a step that prints its loss, as the habit forbids
            step = LeafClassifier.training_step
            m.setattr(LeafClassifier, "training_step", lambda s, b, i: print(step(s, b, i).item()))
        trainer = steps_trainer(steps)
        trainer.fit(module, datamodule=dm)
    assert trainer.global_step == steps
    return count


def test_training_step_makes_no_host_sync_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 x 30 images -> about 21 training batches of 2: both fits stay inside one epoch, so only
    # the number of steps differs between them.
    images = write_tiny_images(tmp_path / "images", per_class=30, size=32)
    short = _fit_counting_syncs(images, tmp_path / "cache", 3, monkeypatch)
    long = _fit_counting_syncs(images, tmp_path / "cache", 12, monkeypatch)
    assert long == short, f"{long - short} host syncs in 9 extra training steps"
    # The counter sees a sync when there is one.
    leaky = _fit_counting_syncs(images, tmp_path / "cache", 6, monkeypatch, leak=True)
    assert leaky >= short + 6


# A Lightning fit at 640x640 with leafnet's own micro-batch size; prints the minor page faults
# of each step. Tuned, a steady step reuses the heap; untuned, it faults its GBs in every time.
_FAULTS = """
import json, resource, sys
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from leafnet import perf
from leafnet.model import LeafNet
from leafnet.module import LeafClassifier, auto_micro_batch_size
if sys.argv[1] == "tuned":
    perf.tune_process()
else:
    torch.set_num_threads(perf.physical_cores())
faults = []
class Faults(pl.Callback):
    def on_train_batch_start(self, *args):
        self.start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def on_train_batch_end(self, *args):
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.start)
module = LeafClassifier(
    model={"image_size": 640, "num_classes": 3},
    optimizer={"name": "adam"},
    micro_batch_size=auto_micro_batch_size(LeafNet(640), 16, 6.0),
)
x = torch.randint(0, 256, (64, 3, 640, 640), dtype=torch.uint8)
trainer = pl.Trainer(
    accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
    enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    callbacks=[Faults()],
)
trainer.fit(module, DataLoader(TensorDataset(x, torch.arange(64) % 3), batch_size=16))
print(json.dumps(faults))
"""


@pytest.mark.slow  # two 640 px training processes: a performance guard, not a behaviour test
def test_training_steps_reuse_the_heap_at_640() -> None:
    def faults(mode: str) -> list[int]:
        result = _python(_FAULTS.replace("sys.argv[1]", repr(mode)))
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    if not perf.allocator_state()["glibc"]:
        pytest.skip("not glibc: leafnet leaves other allocators alone")
    tuned = faults("tuned")
    untuned = faults("default")
    # A steady step of 16 images allocates ~0.35 GB of activations with conv1 through the fused
    # kernel (~0.7 GB on PyTorch's band kernels). With glibc's defaults they go back to the OS
    # after every step and are faulted in again: ~89,000 pages of 4 KB (~167,000 on PyTorch's).
    assert len(tuned) == len(untuned) == 4
    assert min(untuned[1:]) > 50_000, untuned
    # Tuned, steps after the first find them in the heap. While the heap's layout settles a step
    # can still grow it by a buffer or two (full-suite runs saw medians of 1,106 and 17,014
    # pages, single runs 0), so the median steady step must fault under a quarter of what the
    # same step faults untuned: reuse, not the re-fault of everything.
    assert statistics.median(tuned[1:]) < min(untuned[1:]) / 4, (tuned, untuned)
    assert sum(tuned[1:]) < sum(untuned[1:]) / 5, (tuned, untuned)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss survives exec on Linux")
def test_a_child_process_reports_its_own_peak_not_its_parents() -> None:
    """The bench's workers are started by a parent that has already peaked (its matmul and
    copy probes); each worker's peak RSS must be its own."""
    parent = torch.ones(768 * 2**20 // 4) + 1  # the parent's peak rises by 768 MiB
    code = "from leafnet.perf import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True).stdout)  # fmt: skip
    assert child < perf.peak_rss_bytes() - 700 * 2**20
    del parent


def _cache_dir(root: Path, levels: dict[str, str]) -> Path:
    """A stand-in for /sys/devices/system/cpu/cpu0/cache: one index folder per cache level."""
    for i, (level, size) in enumerate(levels.items()):
        index = root / f"index{i}"
        index.mkdir(parents=True)
        (index / "level").write_text(level + "\n")
        (index / "size").write_text(size + "\n")
    return root


def test_l3_cache_size_is_read_from_sysfs(tmp_path: Path) -> None:
    """The size Linux reports for the L3 ("49152K" on a 48 MiB part), and None where there is no
    L3 entry, no cache folder at all, or a size it cannot read."""
    found = _cache_dir(tmp_path / "a", {"1": "48K", "2": "1280K", "3": "49152K"})
    assert perf.l3_cache_bytes(found) == 48 << 20
    assert perf.l3_cache_bytes(_cache_dir(tmp_path / "b", {"1": "32K", "2": "512K"})) is None
    assert perf.l3_cache_bytes(tmp_path / "missing") is None
    assert perf.l3_cache_bytes(_cache_dir(tmp_path / "c", {"3": "big"})) is None
    on_this_host = perf.l3_cache_bytes()
    assert on_this_host is None or on_this_host >= 1 << 20
