"""`python -m leafnet.lab.scale`: does training's memory stay flat as a folder grows?

    python -m leafnet.lab.scale                       # N = 300 and 3000 camera-sized JPEGs at 640 px
    python -m leafnet.lab.scale counts=[300,3000,30000] image_size=224

For each N it writes N camera-sized JPEGs (`photo_size`, 3 classes, each file different) under
`out`, then runs the training command twice on them in a subprocess, once cold (empty cache) and
once warm, each for one short epoch (`batches` training and validation batches). Beside each run,
this process samples the child's anonymous resident memory (Pss_Anon in /proc, summed over the
process and its workers: a memory map the kernel can drop is not counted, and a page a forked
worker shares with its parent counts once) every 20 ms and keeps the peak. That peak is mostly the
training step's activations, which vary by a gigabyte from run to run; so after each warm run a
probe process measures the data path alone (scan, one pass over the training batches, the colour
baseline) and reports its anonymous memory after each. It reports per N and pass: peak
RssAnon, the cold pass's images/s, time from process start to the first training step, the
epoch's images/s and data-wait share (from the run's metrics.csv), and the cache size on disk.
Linux only (/proc). JSON and a Markdown table go to `<out>/scale.json` and `scale.md`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leafnet import tables
from leafnet.config import command_config
from leafnet.errors import LeafnetError, cli_errors
from leafnet.files import atomic_path, write_text

CLASSES = ("healthy", "spotted", "blighted")


def _write_photo(job: tuple[Path, int, int, int, int]) -> None:
    import numpy as np
    from PIL import Image

    folder, i, width, height, seed = job
    path = folder / CLASSES[i % 3] / f"{i:06d}.jpg"
    if path.is_file():
        return
    rng = np.random.default_rng([seed, i])  # per photo: the same set in any order, any process
    base = np.array([[40, 120, 40], [120, 110, 40], [90, 60, 30]][i % 3], dtype=np.float32)
    small = base + rng.normal(0, 35, (height // 16, width // 16, 3))
    image = Image.fromarray(small.clip(0, 255).astype(np.uint8)).resize((width, height))
    with atomic_path(path) as tmp:  # an interrupted write leaves no half photo to be kept
        image.save(tmp, format="JPEG", quality=85)


def write_photos(folder: Path, n: int, size: Sequence[int], seed: int = 0) -> None:
    """`n` JPEGs of `size` (width, height) in three class folders, one process per core; kept
    when already there."""
    from concurrent.futures import ProcessPoolExecutor

    done = folder / f".complete-{n}"
    if done.is_file():
        return
    for cls in CLASSES:
        (folder / cls).mkdir(parents=True, exist_ok=True)
    jobs = [(folder, i, int(size[0]), int(size[1]), seed) for i in range(n)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for _ in pool.map(_write_photo, jobs, chunksize=64):
            pass
    done.write_text("")


def _rss_anon(pid: int) -> int:
    """Anonymous resident memory of `pid` and its children (data-loader workers, the cold pass's
    decoders), in bytes: each process's proportional share (Pss_Anon), so pages a forked child
    still shares with its parent count once; RssAnon where the kernel has no smaps_rollup."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        for source, field in (
            (f"/proc/{p}/smaps_rollup", "Pss_Anon:"),
            (f"/proc/{p}/status", "RssAnon:"),
        ):
            try:
                lines = Path(source).read_text().splitlines()
            except OSError:
                continue
            found = [int(line.split()[1]) * 1024 for line in lines if line.startswith(field)]
            if found:
                total += found[0]
                break
    return total


def run_training(args: list[str], run_dir: Path, timeout: float) -> dict[str, Any]:
    """The training command in a subprocess, its peak RssAnon sampled from here."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "leafnet.train", *args, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_anon(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise LeafnetError(f"training failed ({proc.returncode}): {output.strip()[-400:]}")
    first_step = (run_dir / "first_step_s.txt").read_text().strip()
    metrics = (run_dir / "metrics.csv").read_text().splitlines()
    header, row = metrics[0].split(","), metrics[-1].split(",")
    epoch = dict(zip(header, row, strict=True))
    return {
        "peak_rss_anon_gb": round(peak / 2**30, 3),
        "wall_s": round(time.time() - started, 1),
        "first_step_s": float(first_step),
        "epoch_images_per_s": float(epoch["images_per_s"]),
        "data_wait_share": float(epoch["data_wait_share"]),
    }


# The data path alone in a fresh process: scan the warm cache, read every training batch once,
# fit the colour baseline; its anonymous memory (MB) after each, and the scan's seconds.
_DATA_PATH_PROBE = """
import json, sys, time
from pathlib import Path
from leafnet.perf import tune_process
tune_process()
from leafnet.baseline import colour_baseline
from leafnet.data.datamodule import LeafDataModule
def anon():
    status = Path("/proc/self/status").read_text().splitlines()
    return [int(l.split()[1]) // 1024 for l in status if l.startswith("RssAnon")][0]
dm = LeafDataModule(dir=sys.argv[1], cache_dir=sys.argv[2], image_size=int(sys.argv[3]),
                    num_workers=0, batch_size=32, seed=42)
t = time.perf_counter(); dm.setup(); scan = time.perf_counter() - t
after_setup = anon()
for _ in dm.train_dataloader():
    pass
after_epoch = anon()
colour_baseline({s: dm.dataset(s) for s in ("train", "val", "test")})
print(json.dumps({"scan_s": round(scan, 2), "setup_mb": after_setup, "epoch_mb": after_epoch,
                  "baseline_mb": anon()}))
"""


def data_path_memory(photos: Path, cache: Path, image_size: int) -> dict[str, Any]:
    """`_DATA_PATH_PROBE` in a subprocess: the data path's memory without a training step's."""
    result = subprocess.run(
        [sys.executable, "-c", _DATA_PATH_PROBE, str(photos), str(cache), str(image_size)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise LeafnetError(f"the data-path probe failed: {result.stderr.strip()[-300:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


class FirstStepTime:
    """A Lightning callback (added by this bench only): writes the seconds from the process's
    start to its first training step into `<run dir>/first_step_s.txt`."""

    def __new__(cls) -> Any:
        import lightning.pytorch as pl
        import psutil

        class _FirstStepTime(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                if trainer.global_step == 0 and batch_idx == 0:
                    since = time.time() - psutil.Process().create_time()
                    path = Path(trainer.default_root_dir) / "first_step_s.txt"
                    write_text(path, f"{since:.2f}\n")

        return _FirstStepTime()


def _cache_bytes(cache: Path) -> int:
    return sum(f.stat().st_size for f in cache.rglob("*.npy"))


def measure(cfg: Any, n: int) -> list[dict[str, Any]]:
    out = Path(str(cfg.out))
    photos = out / "photos" / f"{n}"
    t0 = time.perf_counter()
    write_photos(photos, n, list(cfg.photo_size))
    print(f"scale: {n} photos ready in {photos} ({time.perf_counter() - t0:.0f} s)", flush=True)
    cache = out / "cache" / f"{n}-{cfg.image_size}"
    rows = []
    for tag in cfg.starts:
        if tag == "cold" and cache.exists():
            shutil.rmtree(cache)  # the bench's own cache folder under out
        run_dir = out / "runs" / f"{n}-{cfg.image_size}-{tag}"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # the bench's own earlier run
        args = [
            "data=folder", f"data.dir={photos}", f"data.cache_dir={cache}",
            f"data.image_size={cfg.image_size}", f"model={cfg.model}", "trainer=cpu", "epochs=1",
            f"batch_size={cfg.batch_size}", f"trainer.limit_train_batches={cfg.batches}",
            f"trainer.limit_val_batches={cfg.batches}", "trainer.num_sanity_val_steps=0",
            "logger=none", "~callbacks.explain", "~callbacks.val_images",
            "~callbacks.confusion_matrix", "+callbacks.first_step._target_="
            "leafnet.lab.scale.FirstStepTime",
        ]  # fmt: skip
        result = run_training(args, run_dir, float(cfg.timeout))
        result.update(n=n, image_size=int(cfg.image_size), start=tag)
        result["cache_gb"] = round(_cache_bytes(cache) / 2**30, 3)
        report = json.loads((run_dir / "data_report.json").read_text())
        decoded = report.get("decoded", {})
        result["decoded"] = decoded.get("images", 0)
        result["decode_images_per_s"] = (
            round(decoded["images"] / decoded["seconds"], 1) if decoded.get("images") else None
        )
        result["used"] = report["used"]
        if tag == "warm":
            result["data_path"] = data_path_memory(photos, cache, int(cfg.image_size))
        print(f"scale: {result}", flush=True)
        rows.append(result)
    return rows


def _merge(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This run's rows over an earlier scale.json's, keyed by (photos, px, start)."""
    try:
        earlier = json.loads((out / "scale.json").read_text())
    except (OSError, ValueError):
        earlier = []
    key = lambda r: (r["n"], r["image_size"], r["start"])  # noqa: E731
    merged = {key(r): r for r in earlier} | {key(r): r for r in rows}
    return [merged[k] for k in sorted(merged, key=lambda k: (k[0], k[1], k[2] != "cold"))]


def _data_path_cell(probe: dict[str, Any] | None) -> str:
    if not probe:
        return "-"
    return f"{probe['setup_mb']} / {probe['epoch_mb']} / {probe['baseline_mb']} ({probe['scan_s']} s scan)"


def markdown(rows: list[dict[str, Any]]) -> str:
    titles = [
        "photos", "px", "start", "peak anon GB", "to first step s", "cold pass img/s",
        "epoch img/s", "data wait", "cache GB", "data path MB (scan / epoch / baseline)",
    ]  # fmt: skip
    cells = [
        [
            str(r["n"]), str(r["image_size"]), r["start"], f"{r['peak_rss_anon_gb']:.2f}",
            f"{r['first_step_s']:.1f}",
            "-" if r["decode_images_per_s"] is None else f"{r['decode_images_per_s']:.0f}",
            f"{r['epoch_images_per_s']:.1f}", f"{100 * r['data_wait_share']:.1f}%",
            f"{r['cache_gb']:.2f}", _data_path_cell(r.get("data_path")),
        ]
        for r in rows
    ]  # fmt: skip
    return tables.markdown_table(titles, cells, right=[True] * len(titles))


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`key=value` arguments (conf/scale.yaml): measure, write scale.json and scale.md, print."""
    cfg = command_config("lab.scale", sys.argv[1:] if argv is None else argv, conf="scale")
    if not Path("/proc/self/status").is_file():
        raise LeafnetError("the scale bench reads /proc (Linux); run it on a Linux host")
    if not set(cfg.starts) <= {"cold", "warm"}:
        raise LeafnetError(f"starts={list(cfg.starts)}: use a list of cold and warm")
    out = Path(str(cfg.out))
    rows = _merge(out, [row for n in cfg.counts for row in measure(cfg, int(n))])
    write_text(out / "scale.json", json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    write_text(out / "scale.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
