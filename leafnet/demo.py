"""`python -m leafnet.demo` (`make demo`): a one-minute look at what leafnet does (two from a fresh clone).

It trains the seed's network briefly on the embedded synthetic leaf set at a small size, predicts
a few test photos, explains one (filters, feature maps, Grad-CAM), and prints where everything is
and what to run next. The demo's model is a sketch: the seed recipe proper (640 px, 50 epochs) is
`make train`, and a model for your own photos is `experiment=finetune` (README, "Your own photos").
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from leafnet.config import compose, training_args
from leafnet.data.synthetic import folder_name
from leafnet.errors import cli_errors

# Small enough for about a minute on two cores; large enough for the leaves' lesions to show.
# The embedded set's first 40 scenes per class, painted at 256 px (it trains at 128): written in
# a quarter of the time of the same photos at 640 px, the set's own size (docs/performance.md).
PER_CLASS, SIZE = 40, 256
DEMO_OVERRIDES = (
    "data.image_size=128", "epochs=30", "lr=1e-3", "trainer=cpu", "logger=tensorboard",
    "callbacks.val_images.every_n_epochs=30", f"++data.synthetic_per_class={PER_CLASS}",
    f"++data.synthetic_size={SIZE}",
    f"data.dir=${{paths.data_dir}}/{folder_name('${data.synthetic_style}', PER_CLASS, SIZE)}",
)  # fmt: skip


def start_writing_photos(data: DictConfig) -> subprocess.Popen | None:
    """Start writing the synthetic set in another process, so that it runs while this one imports
    torch and Lightning; training waits for it. Only a head start: the data module still checks
    (and if need be writes) the set, and reports any problem with the folder itself."""
    if not data.get("synthetic") or Path(str(data.dir)).is_dir():
        return None
    args = [
        f"out={data.dir}",
        f"n_per_class={data.synthetic_per_class}",
        f"size={data.synthetic_size}",
        f"seed={data.synthetic_seed}",
        f"style={data.synthetic_style}",
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "leafnet.data.synthetic", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def demo(argv: Sequence[str] = ()) -> Path:
    """Train, predict, explain; returns the run directory. `argv`: extra training overrides."""
    out = Path("outputs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = out / "run"
    started = time.perf_counter()
    print("leafnet demo: training the seed's network, 30 epochs at 128 px ...", flush=True)
    cfg = compose("train", [*DEMO_OVERRIDES, f"paths.output_dir={out}", *argv])
    writer = start_writing_photos(cfg.data)

    from leafnet.data.splits import read_split
    from leafnet.explain import explain
    from leafnet.predict import predict
    from leafnet.runs import read_run
    from leafnet.train import train

    if writer is not None:
        writer.wait()
    train(cfg, run_dir)

    split = read_split(run_dir / "split.csv")
    test_photos = [rel for rel, (_cls, subset) in split.items() if subset == "test"][:6]
    photos = out / "photos"  # six test photos the model never trained on, to try predict on
    photos.mkdir(parents=True)
    for rel in test_photos:
        shutil.copy(Path(str(cfg.data.dir)) / rel, photos / Path(rel).name)
    print("\nleafnet demo: predicting six test photos ...", flush=True)
    predict(compose("predict", [f"ckpt={run_dir}", f"input={photos}"]))
    print("\nleafnet demo: explaining one ...", flush=True)
    first = sorted(photos.iterdir())[0]
    figures = explain(
        compose("explain", [f"ckpt={run_dir}", f"input={first}", f"out={out / 'explain'}"])
    )
    summary = read_run(run_dir).summary
    print(
        f"\nleafnet demo: done in {time.perf_counter() - started:.0f} s "
        f"(test accuracy {summary.get('test_acc') or 0:.2f} after a short run at 128 px)\n"
        f"  run            {run_dir}  (summary.json, metrics.csv, checkpoints/best.ckpt)\n"
        f"  photos         {photos}  (try: .venv/bin/leafnet predict ckpt={run_dir} input={photos})\n"
        f"  explanations   {', '.join(str(p) for p in figures.values())}\n"
        f"  curves         tensorboard --logdir {out}\n"
        "next:\n"
        "  make train                                       the seed recipe proper (640 px, 50 epochs)\n"
        "  .venv/bin/leafnet train experiment=finetune data=folder data.dir=YOUR_PHOTOS\n"
        f"  .venv/bin/leafnet app ckpt={run_dir}       the web page\n"
    )
    return run_dir


@cli_errors
def main(argv: Sequence[str] | None = None) -> None:
    """`python -m leafnet.demo [training overrides]`."""
    args = training_args(argv, "demo", "train briefly, predict, explain; training overrides")
    if args is not None:
        demo(args)


if __name__ == "__main__":
    main()
