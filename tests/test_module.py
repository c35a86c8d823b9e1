"""LeafClassifier: micro-batching gives the full batch's gradient; memory-based auto size."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from leafnet import banded
from leafnet import module as module_code
from leafnet.banded import fused_available
from leafnet.errors import LeafnetError
from leafnet.model import LeafNet
from leafnet.module import LeafClassifier, auto_micro_batch_size, freed_at_once_bytes_per_image
from leafnet.perf import HEAP_KEEP_BYTES

MODEL = {"image_size": 24, "conv1_filters": 8, "conv2_filters": 4, "dense_units": 8}
SGD = {"name": "sgd", "momentum": 0.0}


def classifier(micro: int | None, optimizer: dict = SGD) -> LeafClassifier:
    torch.manual_seed(0)
    return LeafClassifier(
        model=MODEL,
        optimizer=optimizer,
        lr=0.5,
        class_names=["a", "b", "c"],
        preprocessing={"image_size": 24},
        micro_batch_size=micro,
    )


def quiet_trainer(**kwargs: object) -> pl.Trainer:
    """A CPU Trainer that writes nothing and prints nothing."""
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def one_step(module: LeafClassifier, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict:
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=batch))
    return {k: v.clone() for k, v in module.net.state_dict().items()}


@pytest.mark.parametrize(("batch", "micro"), [(64, 16), (64, 24), (50, 16)])
def test_micro_batches_give_the_full_batch_step(batch: int, micro: int) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (batch, 3, 24, 24), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 3, (batch,), generator=gen)
    whole = one_step(classifier(batch), x, y, batch)
    split = one_step(classifier(micro), x, y, batch)
    start = classifier(None).net.state_dict()
    assert any(not torch.equal(whole[k], start[k]) for k in whole)  # the step did move the weights
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], rtol=0, atol=1e-6)


def test_forward_takes_uint8_or_scaled_float() -> None:
    module = classifier(None).eval()
    x = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    torch.testing.assert_close(module(x), module(x.float() / 255))
    torch.testing.assert_close(module.predict_proba(x).sum(-1), torch.ones(2))


@pytest.mark.skipif(not fused_available(), reason="no C compiler here")
def test_on_the_cpu_the_seed_network_reads_uint8_batches_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A uint8 batch goes to the fused first block as bytes, so the float batch is never made
    (`to_float` is not called): the converted batch's logits and gradients bit for bit, in
    prediction and in training. With a hook on the network or on every module, it is converted."""
    torch.manual_seed(0)
    module = LeafClassifier(
        model={"image_size": 48}, optimizer=SGD, lr=0.1, class_names=["a", "b", "c"],
        preprocessing={"image_size": 48, "normalize": "standardize"},
    )  # fmt: skip
    x = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    want = module.net(module.to_input(x))
    want_grads = torch.autograd.grad(want.sum(), list(module.net.parameters()))
    converted: list[int] = []
    real = module_code.to_float
    monkeypatch.setattr(module_code, "to_float", lambda *a: converted.append(1) or real(*a))
    got = module(x)
    got_grads = torch.autograd.grad(got.sum(), list(module.net.parameters()))
    assert torch.equal(got, want) and converted == []
    assert all(torch.equal(g, w) for g, w in zip(got_grads, want_grads, strict=True))
    with torch.inference_mode():
        assert torch.equal(module.eval()(x), module.net(real(x, module.prep))) and converted == []
    everywhere = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    with torch.inference_mode():
        module(x)
    everywhere.remove()
    assert converted == [1]
    module.net.register_forward_pre_hook(lambda net, args: None)
    with torch.inference_mode():
        module(x)
    assert converted == [1, 1]


def test_hparams_are_primitives() -> None:
    def primitive(v) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and primitive(x) for k, x in v.items())
        if isinstance(v, list):
            return all(primitive(x) for x in v)
        return v is None or isinstance(v, str | int | float | bool)

    hp = dict(classifier(4).hparams)
    assert primitive(hp)
    assert hp["class_names"] == ["a", "b", "c"] and hp["preprocessing"]["image_size"] == 24


def test_auto_micro_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    net = LeafNet(image_size=640)
    micro = auto_micro_batch_size(net, 256, 6.0)
    # On the CPU conv1 runs in bands (leafnet.banded): the largest tensor backward keeps and
    # frees is the pooled conv1 output, 5.8 MB per image, so micro-batches of 73 fit the heap.
    assert micro == 73
    assert 2 * micro * freed_at_once_bytes_per_image(net) <= HEAP_KEEP_BYTES
    assert 2 * (micro + 1) * freed_at_once_bytes_per_image(net) > HEAP_KEEP_BYTES
    # On a GPU activations are not in the heap, conv1 runs whole (154 MiB per image): only
    # max_memory_gb limits, 6 GiB / 154 MiB = 39.
    assert auto_micro_batch_size(net, 256, 6.0, heap_limited=False) == 39
    # Unbanded on the CPU, conv1's float output and its gradient dominate (52 MB each per
    # image): 8 per micro-batch.
    monkeypatch.setattr(LeafNet, "banded", False)
    assert freed_at_once_bytes_per_image(net) >= 2 * 4 * 32 * 640 * 640
    assert auto_micro_batch_size(net, 256, 6.0) == 8
    assert auto_micro_batch_size(LeafNet(image_size=320), 256, 6.0) > 8  # a quarter the size
    assert auto_micro_batch_size(LeafNet(image_size=32), 32, 6.0) == 32  # never above the batch
    with pytest.raises(LeafnetError, match="max_memory_gb"):
        auto_micro_batch_size(net, 32, 0.01)


def test_divergence_is_tracked_on_the_device() -> None:
    module = classifier(None)
    x = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    y = torch.randint(0, 3, (8,))
    assert int(module.nonfinite_step) == -1
    with torch.no_grad():
        module.net.dense_1.weight.fill_(float("nan"))
    one_step(module, x, y, 8)  # no exception, no host sync: the step is only recorded
    assert int(module.nonfinite_step) == 0


def test_train_val_and_test_feed_the_net_float_micro_batches_only() -> None:
    # A uint8 batch of 12 with micro_batch_size=4: the network never sees more than 4 images at
    # once, in train, validation or test, so a batch of 256 at 640x640 fits in a few GB.
    module = classifier(micro=4)
    seen: list[tuple[int, torch.dtype]] = []
    module.net.register_forward_pre_hook(lambda m, args: seen.append((len(args[0]), args[0].dtype)))
    x = torch.randint(0, 256, (12, 3, 24, 24), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(x, torch.arange(12) % 3), batch_size=12)
    trainer = quiet_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, loader, loader)
    trainer.test(module, loader, verbose=False)
    assert len(seen) == 9  # 3 micro-batches each in train, validation and test
    assert all(n == 4 and dtype == torch.float32 for n, dtype in seen)


def test_from_config_caps_micro_batches_on_the_cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from leafnet.config import compose, to_primitive

    def micro(accelerator: str, precision: str = "32-true", *extra: str) -> int:
        overrides = ["data.image_size=640", "batch_size=256", f"precision={precision}", *extra]
        cfg = to_primitive(compose("train", overrides))
        cfg["trainer"]["accelerator"] = accelerator
        module = LeafClassifier.from_config(cfg, ["a", "b", "c"], {"image_size": 640})
        return module.hparams.micro_batch_size

    assert micro("cpu") == 73  # the heap limit at 640x640 (conv1 banded)
    assert micro("gpu") == 39  # only max_memory_gb limits (conv1 whole, 154 MiB per image)
    # Under autocast conv1 stays in bands where the C kernel takes it, else it runs whole.
    assert micro("cpu", "bf16-mixed") == (73 if fused_available() else 8)
    monkeypatch.setattr(banded, "FUSED", False)
    assert micro("cpu", "bf16-mixed") == 8
    assert micro("cpu") == 73  # float32: PyTorch's band kernels
    assert micro("cpu", "32-true", "model.conv1_in_bands=false") == 8  # conv1 whole by choice


def test_class_weighted_loss_is_keras_fit_with_class_weight() -> None:
    """Keras turns fit(class_weight=...) into per-sample weights, summed over the batch and
    divided by its size; the module's training loss must be that number."""
    keras = pytest.importorskip("keras")
    module = LeafClassifier(
        model=MODEL, optimizer=SGD, class_names=["a", "b", "c"], class_weight=[0.5, 2.0, 1.25]
    )
    gen = torch.Generator().manual_seed(3)
    logits, y = torch.randn(10, 3, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    ours = module.summed_loss(logits, y) / len(y)
    weights = torch.tensor([0.5, 2.0, 1.25])[y]
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    theirs = loss(
        torch.nn.functional.one_hot(y, 3).float().numpy(), logits.numpy(), weights.numpy()
    )
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_balanced_class_weights_are_scikit_learns() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    from leafnet.module import class_weights

    counts = [700, 700, 106]  # PlantVillage potato's training split
    labels = [i for i, n in enumerate(counts) for _ in range(n)]
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    assert class_weights("balanced", ["a", "b", "c"], counts) == pytest.approx(list(expected))
    assert class_weights({"c": 3}, ["a", "b", "c"], counts) == [1.0, 1.0, 3.0]
    with pytest.raises(LeafnetError, match="'d', which is not a class"):
        class_weights({"d": 3}, ["a", "b", "c"], counts)


def test_backbone_lr_scale_slows_all_but_the_head() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    start = classifier(None).net.state_dict()
    moved = {}
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        module = LeafClassifier(
            model=MODEL, optimizer=SGD, lr=0.5, class_names=["a", "b", "c"],
            preprocessing={"image_size": 24}, backbone_lr_scale=scale,
        )  # fmt: skip
        after = one_step(module, x, y, 16)
        moved[scale] = {k: after[k] - start[k] for k in after}
    for key in moved[1.0]:
        ratio = 1.0 if key.startswith("dense_1.") else 0.1  # dense_1: the head
        torch.testing.assert_close(moved[0.1][key], ratio * moved[1.0][key], rtol=1e-4, atol=1e-7)
