"""The leaf and the brushes both synthetic styles paint with: the classes, the blade's outline,
pose and colour, noise, blobs and soft layers, and the photo's lighting."""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES: tuple[str, ...] = (
    "Broad_beans_Urahi-Cercospora_leaf_spot",
    "Ridge_gourd_Zika-Alternaria_Leaf_Spot",
    "Tomato_Leaf-Miner",
)


CERCOSPORA, ALTERNARIA, MINER = range(3)


STYLES: tuple[str, ...] = ("lab", "field")


Color = tuple[float, float, float]


@functools.lru_cache(maxsize=4)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a size x size image, float32."""
    axis = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(axis, axis)


def smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a cells x cells random grid upsampled bicubically."""
    small = rng.uniform(0, 255, (cells, cells, channels)).astype(np.uint8)
    img = Image.fromarray(small[..., 0] if channels == 1 else small)
    big = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    big = big / 127.5 - 1.0
    return big if channels > 1 else big[..., None]


def new_layer(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    return img, ImageDraw.Draw(img)


def blurred(layer: Image.Image, radius: float) -> Image.Image:
    """Gaussian-blur an RGBA layer premultiplied (no dark fringes), only around what is drawn."""
    box = layer.getbbox()
    if box is None or radius <= 0:
        return layer
    pad = int(3 * radius) + 2
    box = (
        max(box[0] - pad, 0),
        max(box[1] - pad, 0),
        min(box[2] + pad, layer.width),
        min(box[3] + pad, layer.height),
    )
    part = layer.crop(box).convert("RGBa").filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
    out = layer.copy()
    out.paste(part, box[:2])
    return out


def jittered(
    rgb: Color, jitter: float, rng: np.random.Generator, alpha: float = 1.0
) -> tuple[int, ...]:
    """An RGBA fill: `rgb` (0-255) with per-channel jitter, and an alpha in 0-1."""
    # min/max on Python floats: the same values as np.clip, without its per-call overhead
    out = [int(min(max(c + rng.normal(0, jitter), 0.0), 255.0)) for c in rgb]
    return (*out, int(min(max(alpha, 0.0), 1.0) * 255))


def blob(rng: np.random.Generator, x: float, y: float, r: float, n: int, rough: float) -> list:
    """An irregular closed polygon around (x, y): n vertices, radius r, relative roughness."""
    angles = (
        np.sort(rng.uniform(0, 2 * math.pi, n))
        if n < 12
        else np.linspace(0, 2 * math.pi, n, endpoint=False)
    )
    radii = r * (1 + rough * rng.uniform(-1, 1, n))
    if n >= 12:  # smooth the big blobs so they look like tissue, not stars
        radii = np.convolve(np.r_[radii[-2:], radii, radii[:2]], np.ones(5) / 5, "valid")
    return [
        (x + rr * math.cos(a), y + rr * math.sin(a)) for a, rr in zip(angles, radii, strict=True)
    ]


@dataclass
class Leaf:
    """One leaf's outline and pose. u runs along the midrib (0 base, 1 tip); y is across, px."""

    cx: float
    cy: float
    theta: float
    length: float
    width: float  # largest half-width, px
    p: float  # < 1 puts the widest part towards the base (ovate)
    q: float  # pointiness of base and tip
    serration: float
    teeth: int
    bend: float

    @classmethod
    def random(cls, rng: np.random.Generator, size: int) -> Leaf:
        """A field photo's leaf: any pose, sometimes partly out of frame."""
        length = size * rng.uniform(0.6, 1.1)
        ratio = rng.choice([rng.uniform(0.45, 0.7), rng.uniform(0.22, 0.4)])  # ovate | lanceolate
        out_of_frame = rng.random() < 0.2
        spread = 0.35 if out_of_frame else 0.12
        return cls(
            cx=size * (0.5 + rng.uniform(-spread, spread)),
            cy=size * (0.5 + rng.uniform(-spread, spread)),
            theta=rng.uniform(0, 2 * math.pi),
            length=length,
            width=length * ratio * 0.5,
            p=rng.uniform(0.55, 1.0),
            q=rng.uniform(0.6, 1.1),
            serration=rng.uniform(0.03, 0.09) if rng.random() < 0.45 else 0.0,
            teeth=int(rng.integers(14, 40)),
            bend=rng.uniform(-0.12, 0.12),
        )

    @classmethod
    def lab(cls, rng: np.random.Generator, size: int) -> Leaf:
        """A lab photo's leaf: centred, upright (tip up) within 10 degrees, filling the frame."""
        length = size * rng.uniform(0.86, 0.98)
        return cls(
            cx=size * (0.5 + rng.uniform(-0.03, 0.03)),
            cy=size * (0.5 + rng.uniform(-0.03, 0.03)),
            theta=-math.pi / 2 + math.radians(rng.uniform(-10, 10)),
            length=length,
            width=length * rng.uniform(0.5, 0.66) * 0.5,
            p=rng.uniform(0.7, 1.0),
            q=rng.uniform(0.6, 0.9),
            serration=rng.uniform(0.03, 0.07) if rng.random() < 0.45 else 0.0,
            teeth=int(rng.integers(14, 40)),
            bend=rng.uniform(-0.06, 0.06),
        )

    def half_width(self, u: np.ndarray) -> np.ndarray:
        uu = np.clip(u, 0.0, 1.0)
        f = np.maximum(np.sin(np.pi * uu**self.p), 0.0) ** self.q
        if self.serration:
            f = f * (1 + self.serration * (np.mod(uu * self.teeth, 1.0) ** 1.5 - 0.4))
        return self.width * f

    def _bend(self, u: np.ndarray | float) -> np.ndarray | float:
        return self.bend * self.length * (u - 0.5) ** 2

    def to_image(self, u: float, y: float) -> tuple[float, float]:
        """Leaf coordinates (u along the midrib, y px across it) -> image pixel (x, y)."""
        lx = (u - 0.5) * self.length
        ly = y + float(self._bend(u))
        c, s = math.cos(self.theta), math.sin(self.theta)
        return self.cx + lx * c - ly * s, self.cy + lx * s + ly * c

    def local(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image pixels -> (u, y across the midrib in px)."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx, dy = x - self.cx, y - self.cy
        u = (dx * c + dy * s) / self.length + 0.5
        return u, (-dx * s + dy * c) - self._bend(u)

    def point(
        self, rng: np.random.Generator, u_range=(0.08, 0.92), v_max: float = 0.85
    ) -> tuple[float, float, float, float]:
        """A random point on the blade: (x, y, u, v) with v = y / half-width in [-v_max, v_max]."""
        u = rng.uniform(*u_range)
        v = rng.uniform(-v_max, v_max)
        x, y = self.to_image(u, v * float(self.half_width(np.array(u))))
        return x, y, u, v


def grey_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Per-pixel grey noise [size, size, 1], float32."""
    return rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(sigma)


def leaf_colour(
    rng: np.random.Generator, leaf: Leaf, u: np.ndarray, y: np.ndarray, on: np.ndarray
) -> np.ndarray:
    """The blade's colour ([N, 3], 0-1) at its N pixels `on` (leaf coordinates u, y)."""
    h, s, v = rng.uniform(0.2, 0.34), rng.uniform(0.45, 0.85), rng.uniform(0.32, 0.7)
    base = np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)
    mottle = smooth_noise(rng, on.shape[0], int(rng.integers(5, 12)))[on]
    hw = np.maximum(leaf.half_width(u), 1e-3)
    vv = np.clip(y / hw, -1, 1)
    shade = rng.uniform(-0.12, 0.12)  # the two halves catch the light differently
    grain = rng.standard_normal(u.shape, dtype=np.float32) * np.float32(0.015)
    vein_col = np.clip(
        base * rng.uniform(1.15, 1.45) + np.array([0.06, 0.06, 0.0], np.float32), 0, 1
    )
    scale = leaf.length / 640.0
    ay = np.abs(y)
    # Midrib: a light band that tapers towards the tip.
    w_mid = scale * rng.uniform(2.0, 4.0) * (1.15 - np.clip(u, 0, 1) * 0.8)
    veins = np.exp(-((ay / w_mid) ** 2))
    # Lateral veins: curves leaving the midrib at an angle, bending towards the tip.
    cot = 1.0 / math.tan(math.radians(rng.uniform(35, 60)))
    spacing = leaf.length / rng.uniform(7, 13)
    along = u * leaf.length - ay * cot * (1 + rng.uniform(0.2, 0.8) * np.abs(vv))
    along = along + (y < 0) * spacing * rng.choice([0.0, 0.5])  # opposite or alternate
    dist = np.abs(np.mod(along / spacing + 0.5, 1.0) - 0.5) * spacing * 0.7
    lateral = np.exp(-((dist / (scale * rng.uniform(0.9, 1.8))) ** 2))
    lateral = lateral * np.sqrt(np.clip(1 - np.abs(vv), 0, 1)) * ((u > 0.04) & (u < 0.96))
    veins = (np.maximum(veins, lateral * 0.8) * rng.uniform(0.25, 0.6))[:, None]
    col = base * (1 + 0.12 * mottle) * (1 + shade * vv)[:, None] + grain[:, None]
    return np.clip(col + (vein_col - col) * veins, 0, 1)


def dirt(rng, size: int) -> Image.Image:
    """Soil crumbs and specks over leaf and background alike."""
    layer, draw = new_layer(size)
    for _ in range(int(rng.integers(0, 30))):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        r = rng.uniform(0.6, 2.8) * size / 640
        g = rng.uniform(25, 90)
        draw.ellipse(
            (x - r, y - r, x + r, y + r * rng.uniform(0.6, 1)),
            fill=jittered((g, g * 0.8, g * 0.6), 6, rng, rng.uniform(0.6, 1)),
        )
    return layer


@dataclass(frozen=True)
class Light:
    """Ranges of the photo's lighting: overall gain, gradient strength, colour cast per channel,
    sensor noise sigma, blur radius at 640 px, JPEG quality."""

    gain: tuple[float, float]
    ramp: tuple[float, float]
    cast: tuple[float, float]
    noise: float
    blur: float
    quality: tuple[int, int]


def lighting(
    rng: np.random.Generator, img: Image.Image, size: int, light: Light
) -> tuple[Image.Image, int]:
    """A gradient in a random direction, a colour cast, sensor noise, blur; and a JPEG quality."""
    xs, ys = grid(size)
    ang = rng.uniform(0, 2 * math.pi)
    ramp = (xs - size / 2) * np.float32(math.cos(ang) / size) + (ys - size / 2) * np.float32(
        math.sin(ang) / size
    )
    gain = (np.float32(rng.uniform(*light.gain)) + np.float32(rng.uniform(*light.ramp)) * ramp)[
        ..., None
    ]
    cast = rng.uniform(*light.cast, 3).astype(np.float32)
    noise = grey_noise(rng, size, rng.uniform(0.0, light.noise))
    out = np.asarray(img, np.float32) * (gain * cast) + noise
    out = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
    blur = rng.uniform(0.0, light.blur) * size / 640
    if blur > 0.3:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    return out, int(rng.integers(*light.quality))


def image_rng(seed: int, label: int, index: int) -> np.random.Generator:
    """The generator for one image: the set is the same in any order and any process."""
    return np.random.default_rng([seed, label, index])
