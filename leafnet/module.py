"""`LeafClassifier`: a `model=` network (the seed's LeafNet by default) wrapped for Lightning: loss, metrics, optimizer and schedule.

The loss is cross-entropy on logits (the seed's softmax + categorical cross-entropy, computed
stably). Training uses manual optimization so that `batch_size` is the optimizer's batch whatever
fits in memory: each batch is split into micro-batches whose gradients add up to exactly the full
batch's mean gradient, then the optimizer steps once.

Everything in `hparams` is a plain dict/list/str/int/float, so a checkpoint loads with
`torch.load(path, weights_only=True)` and carries the class names and the preprocessing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from leafnet.adapters.lightning import FINDER_SCHEDULES
from leafnet.banded import fused_available
from leafnet.config import to_primitive
from leafnet.data.images import Preprocessing, byte_table, to_float
from leafnet.errors import LeafnetError
from leafnet.model import LeafNet
from leafnet.perf import HEAP_KEEP_BYTES, runs_on_cpu
from leafnet.zoo import build_model

SCHEDULERS = ("none", "cosine", "step", "plateau")


def _output_sizes(net: nn.Module, banded: bool) -> list[tuple[int, bool]]:
    """(elements per image, keeps int64 indices) of every layer output training keeps: LeafNet's
    from its table, any other network's from one forward pass at batch 1 (hooks on its leaf
    modules)."""
    if isinstance(net, LeafNet):
        rows = [
            (math.prod(d for d in r.output_shape if d is not None), r.kind == "MaxPooling2D")
            for r in net.layer_table()
        ]
        if banded and net.banded and net.conv1_in_bands:
            # leafnet.banded: conv1's output exists a band at a time; backward keeps the pooled
            # output and its max-pool indices (and the input, counted by the caller).
            return rows[1:]
        return rows
    sizes: list[tuple[int, bool]] = []
    leaves = [m for m in net.modules() if not list(m.children())]
    hooks = [
        m.register_forward_hook(
            lambda m, _i, out: sizes.append((out[0].numel(), isinstance(m, nn.MaxPool2d)))
        )
        for m in leaves
    ]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, net.in_channels, net.image_size, net.image_size))
    finally:
        net.train()
        for h in hooks:
            h.remove()
    return sizes


def activation_bytes_per_image(net: nn.Module, banded: bool = True) -> int:
    """Training memory one image costs, estimated from the layer shapes.

    Forward keeps every layer's float output (the float input too), max-pooling keeps int64
    indices, and backward holds gradients about as large alongside: hence a factor of 2 on the
    sum (an estimate). At 640x640 that is about 154 MiB per image with conv1 whole (a GPU), so
    the default max_memory_gb=6 allows micro-batches of 39, and 55 MiB with conv1 in bands (the
    CPU in float32, `banded`), where the heap limit in `auto_micro_batch_size` is the lower one.
    """
    floats = net.in_channels * net.image_size**2
    for size, pooling in _output_sizes(net, banded):
        floats += size * (3 if pooling else 1)  # + int64 indices = 2 floats
    return 2 * 4 * floats


def freed_at_once_bytes_per_image(net: nn.Module, banded: bool = True) -> int:
    """Bytes one image's backward frees in one go, estimated from the layer shapes.

    The largest layer output and its gradient, plus a quarter for what is freed with them. At
    640x640 that is conv1's float output (52 MB per image, kept for max-pool's backward) when
    conv1 runs whole, and its pooled output (5.8 MB) when it runs in bands on the CPU.
    """
    largest = max(size for size, _ in _output_sizes(net, banded))
    return 2 * 4 * largest * 5 // 4


def auto_micro_batch_size(
    net: nn.Module,
    batch_size: int,
    max_memory_gb: float,
    heap_limited: bool = True,
    precision: str = "32-true",
) -> int:
    """The largest micro-batch that fits `max_memory_gb` and the heap, at most `batch_size`.

    The heap limit (`heap_limited`: training on the CPU, where activations live in the heap):
    memory a micro-batch frees at once must stay below what the allocator keeps
    for the next one (`perf.HEAP_KEEP_BYTES`, 2 GiB); above it every step page-faults its largest
    buffers in again and runs about twice as slow. Half the limit, because near it some steps
    still trimmed (docs/performance.md). At 640x640 that caps
    micro-batches at 73 with conv1 in bands, 8 without. LeafNet's conv1 runs in bands when it
    trains on the CPU (`LeafNet._banded_now`): `heap_limited`, under autocast (a mixed
    `precision`) only where the C kernel builds.
    """
    banded = heap_limited and ("mixed" not in precision or fused_available())
    per_image = activation_bytes_per_image(net, banded)
    fits = int(max_memory_gb * 2**30 // per_image)
    if fits < 1:
        raise LeafnetError(
            f"max_memory_gb={max_memory_gb} is too small for one {net.image_size}x{net.image_size} "
            f"image (needs about {per_image / 2**30:.2f} GB); raise max_memory_gb or lower "
            "data.image_size"
        )
    if not heap_limited:
        return min(batch_size, fits)
    kept = max(1, HEAP_KEEP_BYTES // (2 * freed_at_once_bytes_per_image(net, banded)))
    return min(batch_size, fits, kept)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Mapping[str, Any]):
    """A torch LR scheduler from a `conf/scheduler/*.yaml` dict (`name` plus its arguments)."""
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    name = cfg.get("name", "none")
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, **kwargs)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, **kwargs)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
    raise LeafnetError(f"scheduler.name={name!r} is unknown; use one of {', '.join(SCHEDULERS)}")


def class_weights(
    setting: Any, class_names: Sequence[str], counts: Sequence[int] | None
) -> list[float] | None:
    """Per-class loss weights for `class_weight`: null (none), `balanced` (N / (K x n_c), as
    scikit-learn's and the Keras tutorials' formula) or a mapping {class name: weight} (classes
    it does not name weigh 1)."""
    if setting is None:
        return None
    if setting == "balanced":
        if not counts or min(counts) < 1:
            raise LeafnetError(
                "class_weight=balanced needs training images of every class; some class has none"
            )
        total, k = sum(counts), len(counts)
        return [total / (k * n) for n in counts]
    if isinstance(setting, Mapping):
        unknown = sorted(set(map(str, setting)) - set(class_names))
        if unknown:
            raise LeafnetError(
                f"class_weight names {unknown[0]!r}, which is not a class; the classes are "
                f"{', '.join(class_names)}"
            )
        return [float(setting.get(name, 1.0)) for name in class_names]
    raise LeafnetError(
        f"class_weight={setting!r}: use null, balanced, or {{class name: weight, ...}}"
    )


class LeafClassifier(pl.LightningModule):
    """LeafNet with its loss, metrics and optimizer: what a checkpoint holds."""

    def __init__(
        self,
        model: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        scheduler: Mapping[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        micro_batch_size: int | None = None,
        class_weight: Sequence[float] | None = None,
        backbone_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        model = to_primitive(model)
        class_names = [str(c) for c in class_names] if class_names else None
        num_classes = len(class_names) if class_names else int(model.get("num_classes") or 3)
        model["num_classes"] = num_classes
        prep = Preprocessing.from_dict(
            preprocessing or {"image_size": model.get("image_size", 640)}
        )
        model.setdefault("image_size", prep.image_size)
        # Only primitives: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(
            {
                "model": model,
                "optimizer": to_primitive(optimizer),
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "scheduler": to_primitive(scheduler or {"name": "none"}),
                "class_names": class_names or [str(i) for i in range(num_classes)],
                "preprocessing": prep.to_dict(),
                "micro_batch_size": int(micro_batch_size) if micro_batch_size else None,
                "class_weight": [float(w) for w in class_weight] if class_weight else None,
                "backbone_lr_scale": float(backbone_lr_scale),
            },
            logger=False,  # leafnet.train logs flat hparams with the final metrics instead
        )
        self.automatic_optimization = False
        self.prep = prep
        # Not a buffer: derived from prep, so checkpoints stay as they were.
        self._byte_table = byte_table(prep)
        # channels_last is the fast layout for CPU (oneDNN) and GPU convolutions alike.
        self.net = build_model(model).to(memory_format=torch.channels_last)

        n = num_classes
        # validate_args=False: argument checks read values back to the host on every update.
        self.train_acc = MulticlassAccuracy(n, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(n, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(n, average="micro")
        self.test_f1 = MulticlassF1Score(n, average="macro")
        self.test_balanced_acc = MulticlassAccuracy(n, average="macro")  # mean per-class recall
        self.test_precision = MulticlassPrecision(n, average=None)
        self.test_recall = MulticlassRecall(n, average=None)
        self.test_confmat = MulticlassConfusionMatrix(n)
        # The epoch whose validation last ran: plateau steps only on a validated epoch.
        self.validated_epoch = -1
        # Divergence is tracked on the device (no host sync per step); DivergenceStop reads it.
        self.register_buffer("nonfinite_step", torch.tensor(-1), persistent=False)
        # Keras' fit(class_weight=...): each sample's loss times its class's weight, summed and
        # divided by the batch size. Training only, as in Keras.
        weights = torch.tensor(class_weight, dtype=torch.float32) if class_weight else None
        self.register_buffer("loss_weight", weights, persistent=False)

    @classmethod
    def from_config(
        cls,
        cfg: Mapping[str, Any],
        class_names: Sequence[str],
        preprocessing: Mapping[str, Any],
        class_counts: Sequence[int] | None = None,
    ) -> LeafClassifier:
        """A classifier for a training config (a plain dict: model, optimizer, lr, data, ...).

        The output width comes from `class_names`; `micro_batch_size: auto` becomes the largest
        micro-batch that fits `max_memory_gb`; `class_weight: balanced` weighs each class by
        N / (classes x its count in `class_counts`, the training images per class).
        """
        model = dict(cfg["model"])
        if model.get("num_classes") not in (None, len(class_names)):
            raise LeafnetError(
                f"model.num_classes={model['num_classes']} but the data has {len(class_names)} "
                f"classes ({', '.join(class_names)}); leave model.num_classes=null"
            )
        model.update(num_classes=len(class_names), image_size=int(cfg["data"]["image_size"]))
        batch_size = int(cfg["batch_size"])
        micro = cfg.get("micro_batch_size")
        if micro in ("auto", None):
            on_cpu = runs_on_cpu(str(cfg.get("trainer", {}).get("accelerator", "auto")))
            micro = auto_micro_batch_size(
                build_model(model),
                batch_size,
                cfg["max_memory_gb"],
                heap_limited=on_cpu,
                precision=str(cfg.get("precision", "32-true")),
            )
        return cls(
            model=model,
            optimizer=cfg["optimizer"],
            lr=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            scheduler=cfg["scheduler"],
            class_names=class_names,
            preprocessing=preprocessing,
            micro_batch_size=min(int(micro), batch_size),
            class_weight=class_weights(cfg.get("class_weight"), class_names, class_counts),
            backbone_lr_scale=float(cfg.get("backbone_lr_scale", 1.0)),
        )

    # -- inference -------------------------------------------------------------------------------

    def to_input(self, x: Tensor) -> Tensor:
        """A uint8 batch scaled to the network's float input, in channels_last (float passes)."""
        return to_float(x, self.prep).contiguous(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a uint8 batch (scaled here) or an already scaled float batch. On the CPU the
        seed's network reads a uint8 batch itself (LeafNet.forward_bytes): the same numbers and
        gradients, without the float batch."""
        if isinstance(self.net, LeafNet) and not x.is_floating_point():
            logits = self.net.forward_bytes(x, self._byte_table)
            if logits is not None:
                return logits
        return self.net(self.to_input(x))

    def predict_proba(self, x: Tensor) -> Tensor:
        """Class probabilities (the seed's softmax output)."""
        return self(x).softmax(dim=-1)

    def _micro_batches(self, n: int) -> int:
        """How many chunks a batch of `n` images is split into (micro_batch_size each, at most)."""
        return math.ceil(n / (self.hparams.micro_batch_size or n))

    def _logits(self, x: Tensor) -> Tensor:
        """Logits for a whole uint8 batch, computed micro-batch by micro-batch.

        Batches stay uint8 until a micro-batch is used: at 640x640 a batch of 256 would take
        1.3 GB as float and its first conv output 13 GB, which is what micro_batch_size avoids.
        """
        return torch.cat([self(xc) for xc in x.tensor_split(self._micro_batches(x.shape[0]))])

    # -- training --------------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        n = x.shape[0]
        step = self.global_step  # the optimizer step this batch makes (0-based)
        chunks = self._micro_batches(n)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        loss_sum = x.new_zeros((), dtype=torch.float32)
        # Equal-sized chunks; each backward adds (sum of its losses) / n, so the accumulated
        # gradient is exactly the mean over the whole batch, a smaller last batch included.
        for xc, yc in zip(x.tensor_split(chunks), y.tensor_split(chunks), strict=True):
            logits = self(xc)
            chunk_loss = self.summed_loss(logits, yc)
            self.manual_backward(chunk_loss / n)
            loss_sum += chunk_loss.detach()
            self.train_acc.update(logits.detach(), yc)
        opt.step()

        loss = loss_sum / n
        # First step with a non-finite loss, kept on the device (-1 while all is well).
        bad = ~torch.isfinite(loss) & (self.nonfinite_step < 0)
        self.nonfinite_step = torch.where(bad, step, self.nonfinite_step)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def summed_loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """The training loss summed over a batch: cross-entropy, each sample's times its class's
        weight when `class_weight` is set (divided by the batch size, Keras' class-weighted loss)."""
        return F.cross_entropy(logits, y, weight=self.loss_weight, reduction="sum")

    def on_train_epoch_end(self) -> None:
        # Schedules step once per epoch; plateau watches the validation loss of this epoch.
        scheduler = self.lr_schedulers()
        if scheduler is None or self.trainer.should_stop:  # the run ends here (e.g. diverged)
            return
        if isinstance(scheduler, FINDER_SCHEDULES):  # stepped per optimizer step (training.tune)
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # Not on an epoch without validation (check_val_every_n_epoch): Lightning still holds
            # an earlier epoch's loss, which would count against the patience twice.
            val_loss = self.trainer.callback_metrics.get("val_loss")
            if val_loss is not None and self.validated_epoch == self.current_epoch:
                scheduler.step(val_loss)
        else:
            scheduler.step()

    # -- validation and test ---------------------------------------------------------------------

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_epoch = self.current_epoch

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        logits = self._logits(x)
        self.log(
            "val_loss", F.cross_entropy(logits, y), on_epoch=True, batch_size=len(y), sync_dist=True
        )
        self.val_acc.update(logits, y)
        self.log("val_acc", self.val_acc, on_epoch=True)
        return {"preds": logits.argmax(dim=-1)}

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self._logits(x)
        self.log(
            "test_loss",
            F.cross_entropy(logits, y),
            on_epoch=True,
            batch_size=len(y),
            sync_dist=True,
        )
        metrics = (
            self.test_acc, self.test_f1, self.test_balanced_acc, self.test_precision,
            self.test_recall,
        )  # fmt: skip
        for metric in metrics:
            metric.update(logits, y)
        self.test_confmat.update(logits, y)
        self.log("test_acc", self.test_acc, on_epoch=True)
        self.log("test_balanced_acc", self.test_balanced_acc, on_epoch=True)
        self.log("test_f1_macro", self.test_f1, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        # Per-class values are vectors: log one scalar per class name.
        names = self.hparams.class_names
        for label, metric in (("precision", self.test_precision), ("recall", self.test_recall)):
            for name, value in zip(names, metric.compute(), strict=True):
                self.log(f"test_{label}/{name}", value, sync_dist=True)  # equal in every process
            metric.reset()

    def first_nonfinite_step(self) -> int:
        """The first training step whose loss was NaN or infinite, or -1 (one host sync)."""
        return int(self.nonfinite_step)

    def confusion_matrix(self) -> Tensor:
        """The test confusion matrix (rows: true class, columns: predicted)."""
        return self.test_confmat.compute()

    # -- optimizer -------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        from leafnet.optim import build_optimizer

        hp = self.hparams
        params: Any = self.parameters()
        scale = hp.get("backbone_lr_scale", 1.0)
        if scale != 1.0:  # fine-tuning: the new head at lr, the pretrained rest at lr * scale
            head = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]
            head_ids = {id(p) for p in head.parameters()}
            params = [
                {"params": list(head.parameters())},
                {
                    "params": [p for p in self.parameters() if id(p) not in head_ids],
                    "lr": hp.lr * scale,
                },
            ]
        optimizer = build_optimizer(params, hp.optimizer, hp.lr, hp.weight_decay)
        scheduler = build_scheduler(optimizer, hp.scheduler)
        if scheduler is None:
            return optimizer
        # Stepped by hand in on_train_epoch_end (manual optimization); the config tells
        # LearningRateMonitor and checkpoints about it.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
