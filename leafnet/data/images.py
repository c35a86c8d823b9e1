"""The one way to read and preprocess an image: training, predict, evaluate, explain and bench.

`read_image` turns any file PIL can decode into an upright RGB image or raises `BadImage` with a
reason; `resize` makes the square uint8 tensor the network sees; `to_float` scales a uint8 batch
on whatever device it lives on. Keeping images uint8 until the batch reaches the model makes the
cache four times smaller than float32 and keeps host-to-device copies small.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from leafnet.errors import LeafnetError

# keras*: what Keras' image_dataset_from_directory does (see `keras_resize`), for Keras models.
KERAS_MODES = ("keras", "keras_crop", "keras_pad")
RESIZE_MODES = ("letterbox", "stretch", "center_crop", *KERAS_MODES)
NORMALIZE_MODES = ("rescale", "standardize")
# Keras' image_dataset_from_directory reads .bmp .gif .jpeg .jpg .png (a GIF's first frame).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own default limit
# Antialiased for downscaling: PIL widens the filter support by the scale factor.
_RESAMPLE = Image.Resampling.BILINEAR


class BadImage(LeafnetError):
    """A file that cannot be used as an image; `reason` says why in a few words."""

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


@dataclass
class Preprocessing:
    """How a file becomes the network's input; checkpoints carry it as `to_dict()`."""

    image_size: int = 640
    resize: str = "letterbox"
    pad_color: list[int] = field(default_factory=lambda: [0, 0, 0])
    normalize: str = "rescale"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def __post_init__(self) -> None:
        # Coerce config containers (ListConfig, tuples) to plain types so hparams stay primitive.
        self.image_size = int(self.image_size)
        self.resize = str(self.resize)
        self.normalize = str(self.normalize)
        self.pad_color = [int(c) for c in self.pad_color]
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        if self.image_size < 1:
            raise LeafnetError(f"data.image_size must be positive, got {self.image_size}")
        if self.resize not in RESIZE_MODES:
            raise LeafnetError(
                f"data.resize={self.resize!r} is unknown; use one of {', '.join(RESIZE_MODES)}"
            )
        if self.normalize not in NORMALIZE_MODES:
            raise LeafnetError(
                f"data.normalize={self.normalize!r} is unknown; use one of {', '.join(NORMALIZE_MODES)}"
            )
        if len(self.pad_color) != 3 or not all(0 <= c <= 255 for c in self.pad_color):
            raise LeafnetError(f"data.pad_color must be three values 0-255, got {self.pad_color}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise LeafnetError("data.mean and data.std need three values each, std > 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of int/str/list values, safe for `torch.load(weights_only=True)`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        """Inverse of `to_dict`; keys it does not know (other data settings) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values).items() if k in known})


def _to_rgb(img: Image.Image, pad_color: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode as RGB: 16/32-bit scaled down, transparency composited on `pad_color`."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # PIL's own convert clips these at 255 (a 16-bit photo turns white); scale the range.
        arr = np.asarray(img, dtype=np.float64)
        top = (
            1.0
            if img.mode == "F" and arr.max() <= 1.0
            else (255.0 if arr.max() <= 255 else 65535.0)
        )
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, pad_color)
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def read_image(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = 1,
    pad_color: tuple[int, int, int] | list[int] = (0, 0, 0),
    draft: int | None = None,
    exif: bool = True,
) -> Image.Image:
    """Decode `path` as an upright RGB image, or raise `BadImage(reason)`.

    The pixel count is checked from the header, before any pixel is decoded, so a decompression
    bomb costs nothing. `draft` lets the JPEG decoder downscale by 1/2..1/8 while keeping both
    sides >= draft (a large photo decodes several times faster; quality is unaffected after the
    final antialiased resize). `exif=False` keeps the stored orientation, as TensorFlow's decoder
    does.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)", path)
    except OSError as err:
        raise BadImage(f"cannot read file ({err.strerror or err})", path) from None
    with warnings.catch_warnings():
        # PIL warns above its own limit; ours is `max_pixels`, checked below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)  # reads the header only
        except Image.DecompressionBombError:
            raise BadImage(
                f"too many pixels (over {max_pixels}), refused before decoding", path
            ) from None
        except UnidentifiedImageError:
            raise BadImage("not an image PIL can decode", path) from None
        except Exception as err:
            raise BadImage(f"unreadable header ({type(err).__name__}: {err})", path) from None
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise BadImage(
                    f"too many pixels ({width}x{height} > {max_pixels}), refused before decoding",
                    path,
                )
            if min(width, height) < min_size:
                raise BadImage(f"too small ({width}x{height}, min side {min_size})", path)
            try:
                if draft and img.format == "JPEG":
                    img.draft("RGB", (draft, draft))
                img.load()
                # Decoders raise many types (OSError, SyntaxError, ValueError, struct.error...).
                if exif:
                    img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img, tuple(int(c) for c in pad_color))  # type: ignore[arg-type]
            except BadImage:
                raise
            except Exception as err:
                text = " ".join(str(err).split()) or type(err).__name__
                raise BadImage(f"corrupt or truncated ({text})", path) from None


def _to_tensor(img: Image.Image) -> Tensor:
    """RGB PIL image -> uint8 tensor [3, H, W] (contiguous, owns its memory)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def fit_size(width: int, height: int, side: int) -> tuple[int, int]:
    """Letterbox size of a width x height image inside a side x side square (aspect kept)."""
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(img: Image.Image, prep: Preprocessing) -> Tensor:
    """An RGB image as the network's square uint8 tensor [3, S, S], per `prep.resize`.

    letterbox: aspect kept, centred, padded with `prep.pad_color` (a 1280x640 photo becomes a
    centred 640x320 band); stretch: squashed to the square, as Keras' image_dataset_from_directory
    does; center_crop: the short side fills the square, the long side is cropped centrally.
    """
    side = prep.image_size
    width, height = img.size
    if prep.resize == "stretch":
        out = img.resize((side, side), _RESAMPLE) if img.size != (side, side) else img
    elif prep.resize == "center_crop":
        scale = side / min(width, height)
        new_w, new_h = max(side, round(width * scale)), max(side, round(height * scale))
        left, top = (new_w - side) // 2, (new_h - side) // 2
        # Resize only the crop window: same pixels, less work on wide images.
        box = (left / scale, top / scale, (left + side) / scale, (top + side) / scale)
        out = img.resize((side, side), _RESAMPLE, box=box)
    else:
        new_w, new_h = fit_size(width, height, side)
        inner = img.resize((new_w, new_h), _RESAMPLE) if (new_w, new_h) != img.size else img
        if (new_w, new_h) == (side, side):
            out = inner
        else:
            out = Image.new("RGB", (side, side), tuple(prep.pad_color))
            out.paste(inner, ((side - new_w) // 2, (side - new_h) // 2))
    return _to_tensor(out)


_warned_decoder = False


def read_as_tensorflow(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = 1,
    pad_color: tuple[int, int, int] | list[int] = (0, 0, 0),
) -> Image.Image:
    """Decode `path` as TensorFlow's `decode_image` does (what Keras' image pipeline reads with).

    TensorFlow decodes JPEGs with libjpeg-turbo's fast integer IDCT (`INTEGER_FAST`) and fancy
    chroma upsampling, and ignores the EXIF orientation; PIL uses the accurate IDCT, which differs
    by up to ~20 levels on a photo. simplejpeg (libjpeg-turbo, `fastdct=True`,
    `fastupsample=False`) decodes JPEGs to the same bytes as TensorFlow; without it, PIL's decode
    is used and one warning says so. Other formats decode losslessly alike with PIL.
    """
    global _warned_decoder
    path = Path(path)
    try:
        data = path.read_bytes() if path.stat().st_size <= 512 * 2**20 else b""
    except OSError as err:
        raise BadImage(f"cannot read file ({err.strerror or err})", path) from None
    if data[:3] == b"\xff\xd8\xff":
        try:
            import simplejpeg
        except ImportError:
            simplejpeg = None
            if not _warned_decoder:
                _warned_decoder = True
                warnings.warn(
                    "data.resize=keras: simplejpeg is not installed, so JPEGs are decoded by PIL "
                    "(accurate IDCT), not as TensorFlow does; pip install 'leafnet[keras]'",
                    stacklevel=2,
                )
        if simplejpeg is not None:
            try:
                height, width, _, _ = simplejpeg.decode_jpeg_header(data)
                if width * height > max_pixels:
                    raise BadImage(f"too many pixels ({width}x{height} > {max_pixels})", path)
                if min(width, height) < min_size:
                    raise BadImage(f"too small ({width}x{height}, min side {min_size})", path)
                pixels = simplejpeg.decode_jpeg(
                    data, colorspace="RGB", fastdct=True, fastupsample=False
                )
            except ValueError as err:
                raise BadImage(f"corrupt or truncated ({err})", path) from None
            return Image.fromarray(pixels, "RGB")
    return read_image(path, max_pixels, min_size, pad_color=pad_color, exif=False)


def keras_resize(img: Image.Image, prep: Preprocessing) -> Tensor:
    """The network's input as Keras' `image_dataset_from_directory` makes it: TensorFlow's
    bilinear resize (half-pixel centres, no antialiasing) on the full decode, kept in float32 (not
    rounded to uint8), then scaled as `to_float` scales; float tensor [3, S, S].

    keras: stretched to the square (Keras' default); keras_crop: the largest centred square first
    (`crop_to_aspect_ratio=True`); keras_pad: aspect kept and centred on black, as
    `pad_to_aspect_ratio=True` does through `tf.image.resize_with_pad`.
    """
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    _, h, w = x.shape
    if prep.resize == "keras_crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[:, top : top + s, left : left + s]
    elif prep.resize == "keras_pad":
        # tf.image.resize_with_pad: aspect kept (sizes floored, in float32 as TensorFlow
        # computes them), resized, then centred on black.
        side = prep.image_size
        f32 = np.float32
        ratio = max(f32(w) / f32(side), f32(h) / f32(side))
        fh, fw = f32(h) / ratio, f32(w) / ratio
        rh, rw = int(np.floor(fh)), int(np.floor(fw))
        inner = F.interpolate(x[None], (rh, rw), mode="bilinear", align_corners=False)[0]
        out = torch.zeros((3, side, side), dtype=x.dtype)
        # The offsets come from the unfloored sizes, as TensorFlow computes them.
        top = max(0, int(np.floor((f32(side) - fh) / 2)))
        left = max(0, int(np.floor((f32(side) - fw) / 2)))
        out[:, top : top + rh, left : left + rw] = inner
        return _scale(out, prep)
    side = prep.image_size
    y = F.interpolate(x[None], (side, side), mode="bilinear", align_corners=False, antialias=False)
    return _scale(y[0], prep)


def load_for_model(
    path: str | Path,
    prep: Preprocessing,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: int = 1,
) -> Tensor:
    """Read and resize one file: uint8 tensor [3, S, S], or for the keras modes the scaled float
    tensor Keras' pipeline gives (`keras_resize`). Raises `BadImage`."""
    if prep.resize in KERAS_MODES:
        return keras_resize(read_as_tensorflow(path, max_pixels, min_size, prep.pad_color), prep)
    img = read_image(path, max_pixels, min_size, pad_color=prep.pad_color, draft=prep.image_size)
    return resize(img, prep)


def to_float(x: Tensor, prep: Preprocessing) -> Tensor:
    """Scale a uint8 image or batch to float on its own device (per batch, never cached).

    rescale: x / 255 (Keras' Rescaling(1/255)); standardize: (x / 255 - mean) / std per channel.
    A floating tensor is taken as already scaled and returned unchanged.
    """
    if x.is_floating_point():
        return x
    return _scale(x.float(), prep)


def byte_table(prep: Preprocessing) -> Tensor:
    """float32 [3, 256]: what `to_float` makes of each byte value in each channel, computed by
    `to_float` itself, so a lookup gives exactly its numbers (the fused first block reads uint8
    batches through it)."""
    ramp = torch.arange(256, dtype=torch.uint8).expand(3, 1, 256).clone()
    return to_float(ramp, prep).reshape(3, 256).contiguous()


def _scale(out: Tensor, prep: Preprocessing) -> Tensor:
    """A float image or batch in 0..255 scaled in place as `prep.normalize` says."""
    out = out.mul_(1.0 / 255.0)
    if prep.normalize == "standardize":
        shape = (3, 1, 1)
        mean = torch.tensor(prep.mean, device=out.device, dtype=out.dtype).view(shape)
        std = torch.tensor(prep.std, device=out.device, dtype=out.dtype).view(shape)
        out = out.sub_(mean).div_(std)
    return out


def to_display(x: Tensor, prep: Preprocessing) -> Tensor:
    """The network's view as uint8 [3, S, S] for a picture: a uint8 image as it is, a scaled float
    one (the keras modes) scaled back and rounded."""
    if not x.is_floating_point():
        return x
    y = x.detach().float().cpu().clone()
    if prep.normalize == "standardize":
        y = y * torch.tensor(prep.std).view(3, 1, 1) + torch.tensor(prep.mean).view(3, 1, 1)
    return (y * 255).round().clamp(0, 255).to(torch.uint8)
