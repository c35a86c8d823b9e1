"""export: ONNX (parity with torch to 1e-5 through ONNX Runtime, dynamic batch, metadata),
TorchScript and Keras weights, on the session's tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_cli import run_error
from fixtures_runs import TINY_CLASSES

from leafnet.config import command_config
from leafnet.data.images import load_for_model
from leafnet.export import export, main
from leafnet.runs import load_classifier
from leafnet.zoo import build_model


def _real_batch(classifier, images: Path, n: int) -> torch.Tensor:
    files = sorted(images.rglob("*.jpg"))[:: max(1, 36 // n)][:n]
    return torch.stack([load_for_model(f, classifier.prep) for f in files])


def test_onnx_matches_torch_with_dynamic_batch(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx
    import onnxruntime as ort

    path = export(
        command_config(
            "export", [f"ckpt={tiny_run}", "format=onnx", f"out={tmp_path / 'leafnet.onnx'}"]
        )
    )
    assert "uint8" in capsys.readouterr().out
    classifier = load_classifier(tiny_run)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]  # dynamic batch
    worst = 0.0
    for n in (1, 7):  # neither is the batch size the graph was exported with (2)
        x = _real_batch(classifier, tiny_train_images, n)
        logits, probs = session.run(["logits", "probabilities"], {"image": x.numpy()})
        with torch.no_grad():
            expected = classifier(x)  # the module's own path: uint8 scaled by data.images.to_float
        assert logits.shape == (n, 3)
        np.testing.assert_allclose(logits, expected.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(probs, expected.softmax(-1).numpy(), rtol=0, atol=1e-5)
        worst = max(worst, float(np.abs(logits - expected.numpy()).max()))
    print(f"ONNX Runtime vs torch, max |logit difference| = {worst:.2e}")

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["leafnet.class_names"]) == list(TINY_CLASSES)
    assert json.loads(meta["leafnet.preprocessing"]) == dict(classifier.hparams.preprocessing)
    assert "uint8" in meta["leafnet.input"]


def test_onnx_standardize_scaling_inside_graph(tmp_path: Path, capsys) -> None:
    """A checkpoint that standardizes: the graph applies mean/std as to_float does."""
    import onnxruntime as ort

    from leafnet.module import LeafClassifier
    from leafnet.runs import save_classifier

    classifier = LeafClassifier(
        model={"image_size": 12},
        optimizer={"name": "adam"},
        class_names=["x", "y"],
        preprocessing={"image_size": 12, "normalize": "standardize"},
    ).eval()
    ckpt = save_classifier(classifier, tmp_path / "std.ckpt")
    path = export(command_config("export", [f"ckpt={ckpt}", "format=onnx"]))
    capsys.readouterr()
    assert path == tmp_path / "std.onnx"  # default: beside the checkpoint
    x = torch.randint(0, 256, (4, 3, 12, 12), dtype=torch.uint8)
    (logits,) = ort.InferenceSession(str(path)).run(["logits"], {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, classifier(x).numpy(), rtol=0, atol=1e-5)


def test_torchscript_matches_torch(
    tiny_run: Path, tiny_train_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = export(
        command_config(
            "export", [f"ckpt={tiny_run}", "format=torchscript", f"out={tmp_path / 'm.pt'}"]
        )
    )
    capsys.readouterr()
    extra = {"leafnet.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    classifier = load_classifier(tiny_run)
    x = _real_batch(classifier, tiny_train_images, 5)
    with torch.no_grad():
        logits, probs = scripted(x)
        expected = classifier(x)
    assert (logits - expected).abs().max() < 1e-5
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    assert json.loads(json.loads(extra["leafnet.json"])["leafnet.class_names"]) == list(
        TINY_CLASSES
    )


def test_keras_weights_round_trip(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from leafnet.keras_io import load_keras_weights

    path = export(
        command_config(
            "export", [f"ckpt={tiny_run}", "format=keras", f"out={tmp_path / 'seed.weights.h5'}"]
        )
    )
    capsys.readouterr()
    classifier = load_classifier(tiny_run)
    back = load_keras_weights(build_model(classifier.hparams.model), path)
    for name, value in classifier.net.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    sidecar = json.loads((tmp_path / "seed.leafnet.json").read_text())
    assert sidecar["class_names"] == list(TINY_CLASSES)


def test_export_errors(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_error(capsys, [f"ckpt={tiny_run}", "format=tflite"], main)
    assert "format='tflite' is not valid: use onnx, torchscript or keras" in err
    err = run_error(capsys, [f"ckpt={tiny_run}", "format=keras", f"out={tmp_path / 'x.h5'}"], main)
    assert ".weights.h5" in err
    err = run_error(capsys, [f"ckpt={tmp_path / 'none.ckpt'}", "format=onnx"], main)
    assert "not found" in err


def test_keras_export_keeps_a_users_file_where_its_sidecar_would_go(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "seed.leafnet.json"
    mine.write_text("my notes")
    err = run_error(
        capsys, [f"ckpt={tiny_run}", "format=keras", f"out={tmp_path / 'seed.weights.h5'}"], main
    )
    assert "seed.leafnet.json exists; add overwrite=true" in err
    assert mine.read_text() == "my notes" and not (tmp_path / "seed.weights.h5").exists()
