"""Reading and preprocessing single images: leafnet.data.images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fixtures_data import write_odd_image
from PIL import Image

from leafnet.data.images import (
    BadImage,
    Preprocessing,
    load_for_model,
    read_image,
    resize,
    to_float,
)
from leafnet.errors import LeafnetError


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("corrupt", "corrupt"),
        ("truncated", "truncated"),
        ("zero_byte", "empty file"),
        ("text_as_jpg", "not an image"),
        ("too_small", "too small"),
        ("bomb", "too many pixels"),
    ],
)
def test_bad_files_raise_badimage_with_reason(tmp_path, kind, reason):
    path = write_odd_image(tmp_path / f"{kind}.jpg", kind)
    with pytest.raises(BadImage) as info:
        read_image(path, min_size=16)
    assert reason in info.value.reason
    assert isinstance(info.value, LeafnetError)
    assert str(path) in str(info.value)


def test_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    path = write_odd_image(tmp_path / "bomb.png", "bomb")
    calls = []
    monkeypatch.setattr(Image.Image, "load", lambda self: calls.append(1))
    with pytest.raises(BadImage, match=r"refused before decoding"):
        read_image(path, max_pixels=10_000_000)
    assert calls == []  # the header alone decided


def test_max_pixels_is_configurable(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (100, 100)).save(path)
    assert read_image(path, max_pixels=10_000).size == (100, 100)
    with pytest.raises(BadImage, match=r"too many pixels"):
        read_image(path, max_pixels=9_999)


@pytest.mark.parametrize("kind", ["grayscale", "palette", "rgba", "cmyk", "16bit"])
def test_odd_modes_become_rgb(tmp_path, kind):
    suffix = ".jpg" if kind == "cmyk" else ".png"
    img = read_image(write_odd_image(tmp_path / f"{kind}{suffix}", kind))
    assert img.mode == "RGB"
    assert img.size == (64, 48)


def test_16bit_is_scaled_not_clipped(tmp_path):
    img = read_image(write_odd_image(tmp_path / "g16.png", "16bit"))
    value = np.asarray(img)[0, 0]
    assert 120 <= value[0] <= 135 and len(set(value)) == 1  # 0x8000 of 0xFFFF: mid grey


def test_rgba_transparency_is_composited_on_pad_colour(tmp_path):
    path = write_odd_image(tmp_path / "rgba.png", "rgba")
    img = np.asarray(read_image(path, pad_color=(255, 0, 255)))
    assert tuple(img[10, 5]) == (255, 0, 255)  # the transparent left half
    assert tuple(img[10, 60]) != (255, 0, 255)


def test_exif_rotation_is_applied(tmp_path):
    img = read_image(write_odd_image(tmp_path / "rot.jpg", "exif_rotated"))
    assert img.size == (48, 64)  # stored 64x48, tagged "rotate 90"
    top = np.asarray(img)[0].astype(int).mean(axis=0)
    assert top[0] > 150 and top[1] < 120  # the red column is now the top row


def test_letterbox_geometry_of_a_wide_image():
    img = Image.new("RGB", (1280, 640), (200, 10, 10))
    x = resize(img, Preprocessing(image_size=640, pad_color=[0, 0, 255]))
    assert x.shape == (3, 640, 640) and x.dtype == torch.uint8
    band = (x[0] > 100).any(dim=1).nonzero().flatten()
    assert band.min().item() == 160 and band.max().item() == 479  # a centred 640x320 band
    assert x[:, 0, 0].tolist() == [0, 0, 255] and x[:, 639, 320].tolist() == [0, 0, 255]
    assert x[:, 320, 0].tolist() == [200, 10, 10]


def test_stretch_and_center_crop():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 50, 100))  # white left quarter
    stretched = resize(img, Preprocessing(image_size=20, resize="stretch"))
    cropped = resize(img, Preprocessing(image_size=20, resize="center_crop"))
    assert stretched.shape == cropped.shape == (3, 20, 20)
    assert stretched[0, 10, 2] > 200  # the quarter survives a stretch
    assert cropped[0, 10, 2] < 50  # and is cut off by a centre crop (it keeps x 50..150)


def test_resize_is_antialiased():
    checker = (np.indices((400, 400)).sum(axis=0) % 2 * 255).astype(np.uint8)
    x = resize(Image.fromarray(checker).convert("RGB"), Preprocessing(image_size=40))
    assert 100 < x.float().mean() < 155 and x.float().std() < 20  # grey, not aliased stripes


def test_load_for_model_and_to_float(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (30, 60), (255, 128, 0)).save(path)
    prep = Preprocessing(image_size=32)
    x = load_for_model(path, prep)
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    batch = torch.stack([x, x])
    scaled = to_float(batch, prep)
    assert scaled.dtype == torch.float32 and scaled.max() == 1.0
    assert torch.allclose(scaled[0, 1, 16, 16], torch.tensor(128 / 255))
    std = to_float(batch, Preprocessing(image_size=32, normalize="standardize"))
    assert torch.allclose(std[0, 0, 16, 16], torch.tensor((1 - 0.485) / 0.229))
    assert to_float(scaled, prep) is scaled  # already float: untouched


def test_preprocessing_round_trip_and_validation():
    prep = Preprocessing(image_size=64, resize="stretch", pad_color=(1, 2, 3))
    d = prep.to_dict()
    assert d["pad_color"] == [1, 2, 3] and isinstance(d["pad_color"], list)
    assert Preprocessing.from_dict({**d, "augment": "basic"}) == prep
    buf = io.BytesIO()
    torch.save({"p": d}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["p"] == d  # plain types only
    with pytest.raises(LeafnetError, match=r"data.resize"):
        Preprocessing(resize="squash")
    with pytest.raises(LeafnetError, match=r"data.normalize"):
        Preprocessing(normalize="zscore")
    with pytest.raises(LeafnetError, match=r"pad_color"):
        Preprocessing(pad_color=[0, 0])
