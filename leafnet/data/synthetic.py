"""The embedded synthetic leaf set: offline training data in the seed's three classes.

`python -m leafnet.data.synthetic [out=DIR] [seed=S] [preview=sheet.png]` writes
`<out>/<class>/NNN.jpg`. Every image is one leaf drawn from a few random parameters (outline,
margin, veins, colour, pose) on paper, soil or blurred foliage, then given the symptoms of its
class as the seed's "How to Detect?" text describes them:

- Cercospora leaf spot: brown round-to-angular spots, greyish centres, darker margins.
- Alternaria leaf spot: round brown spots with concentric rings and a yellow halo, some cracked
  through the middle, on some leaves merged into large necrotic areas.
- Leaf miner: light-green to white winding trails that widen along their length, blotches
  without chlorophyll, sometimes a dark stripe at the tunnel's edge.

Everything that is not a symptom (leaf shape, colour, background, lighting, blur, JPEG quality) is
drawn from the same distribution for every class, and every class also gets confusing marks (dirt
specks, small brown dots, light reflections, yellowed patches, insect holes, scorched edges), so
colour statistics alone do not separate the classes and some leaves carry only a few faint
symptoms. Each image depends only on (seed, class, index): the set is deterministic, and any
subset can be regenerated in any order or process.
"""

from __future__ import annotations

import colorsys
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from leafnet.config import command_config
from leafnet.errors import cli_errors

CLASS_NAMES: tuple[str, ...] = (
    "Broad_beans_Urahi-Cercospora_leaf_spot",
    "Ridge_gourd_Zika-Alternaria_Leaf_Spot",
    "Tomato_Leaf-Miner",
)
CERCOSPORA, ALTERNARIA, MINER = range(3)
STYLES: tuple[str, ...] = ("lab", "field")

Color = tuple[float, float, float]


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a size x size image, float32."""
    axis = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(axis, axis)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a cells x cells random grid upsampled bicubically."""
    small = rng.uniform(0, 255, (cells, cells, channels)).astype(np.uint8)
    img = Image.fromarray(small[..., 0] if channels == 1 else small)
    big = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    big = big / 127.5 - 1.0
    return big if channels > 1 else big[..., None]


def _layer(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    return img, ImageDraw.Draw(img)


def _blurred(layer: Image.Image, radius: float) -> Image.Image:
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


def _c(rgb: Color, jitter: float, rng: np.random.Generator, alpha: float = 1.0) -> tuple[int, ...]:
    """An RGBA fill: `rgb` (0-255) with per-channel jitter, and an alpha in 0-1."""
    out = [int(np.clip(c + rng.normal(0, jitter), 0, 255)) for c in rgb]
    return (*out, int(np.clip(alpha, 0, 1) * 255))


def _blob(rng: np.random.Generator, x: float, y: float, r: float, n: int, rough: float) -> list:
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


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Per-pixel grey noise [size, size, 1], float32."""
    return rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(sigma)


def _background(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    kind = ["paper", "soil", "foliage"][int(rng.integers(3))]
    if kind == "paper":
        tone = rng.uniform(0.78, 0.97)
        tint = np.array([1.0, rng.uniform(0.97, 1.0), rng.uniform(0.88, 1.0)], np.float32)
        bg = tone * tint * (1 + 0.04 * _smooth_noise(rng, size, 4)) + _noise(rng, size, 0.012)
        if rng.random() < 0.3:  # ruled notebook paper
            gap = int(rng.integers(24, 48))
            bg[gap // 2 :: gap, :, :] *= np.array([0.85, 0.9, 1.0], np.float32)
        return Image.fromarray(np.clip(bg * 255, 0, 255).astype(np.uint8)), kind
    if kind == "soil":
        base = np.array(
            [rng.uniform(0.3, 0.5), rng.uniform(0.22, 0.36), rng.uniform(0.14, 0.24)], np.float32
        )
        bg = base * (1 + 0.25 * _smooth_noise(rng, size, 12) + 0.15 * _smooth_noise(rng, size, 48))
        img = Image.fromarray(
            np.clip((bg + _noise(rng, size, 0.04)) * 255, 0, 255).astype(np.uint8)
        )
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(20, 80))):  # pebbles and clods
            x, y, r = (
                rng.uniform(0, size),
                rng.uniform(0, size),
                rng.uniform(size * 0.0016, size * 0.012),
            )
            g = rng.uniform(60, 170)
            draw.ellipse(
                (x - r, y - r * 0.7, x + r, y + r * 0.7), fill=_c((g, g * 0.9, g * 0.8), 8, rng)
            )
        return img, kind
    # Out-of-focus foliage: drawn and blurred at a quarter of the size (it is blurry anyway).
    small = max(size // 4, 8)
    img = Image.new("RGB", (small, small), _c((40, 70, 30), 15, rng)[:3])
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(25, 50))):
        x, y, r = (
            rng.uniform(0, small),
            rng.uniform(0, small),
            rng.uniform(small * 0.04, small * 0.16),
        )
        h, s, v = rng.uniform(0.18, 0.36), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.6)
        rgb = tuple(int(c * 255) for c in colorsys.hsv_to_rgb(h, s, v))
        draw.ellipse((x - r, y - r * rng.uniform(0.3, 0.8), x + r, y + r * 0.5), fill=rgb)
    img = img.filter(ImageFilter.GaussianBlur(small * rng.uniform(0.012, 0.03)))
    return img.resize((size, size), Image.Resampling.BICUBIC), kind


def _leaf_colour(
    rng: np.random.Generator, leaf: Leaf, u: np.ndarray, y: np.ndarray, on: np.ndarray
) -> np.ndarray:
    """The blade's colour ([N, 3], 0-1) at its N pixels `on` (leaf coordinates u, y)."""
    h, s, v = rng.uniform(0.2, 0.34), rng.uniform(0.45, 0.85), rng.uniform(0.32, 0.7)
    base = np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)
    mottle = _smooth_noise(rng, on.shape[0], int(rng.integers(5, 12)))[on]
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


def _cercospora(rng, leaf: Leaf, draw: ImageDraw.ImageDraw, faint: bool) -> None:
    """Brown round-to-angular spots, greyish centres, darker margins, up to ~1 cm."""
    n = int(rng.integers(1, 4)) if faint else int(rng.integers(4, 30))
    big = rng.uniform(0.012, 0.035)
    for _ in range(n):
        x, y, _u, _v = leaf.point(rng)
        r = leaf.length * big * rng.uniform(0.35, 1.0)
        alpha = rng.uniform(0.35, 0.65) if faint else rng.uniform(0.6, 1.0)
        nv = int(rng.integers(5, 10))
        margin = _c((rng.uniform(60, 95), 38, 25), 8, rng, alpha)
        fill = _c((rng.uniform(115, 150), 78, 50), 10, rng, alpha)
        centre = _c((rng.uniform(150, 185),) * 3, 8, rng, alpha)
        draw.polygon(_blob(rng, x, y, r, nv, 0.25), fill=margin)
        draw.polygon(_blob(rng, x, y, r * 0.78, nv, 0.2), fill=fill)
        if r > 2.5:
            draw.polygon(_blob(rng, x, y, r * rng.uniform(0.3, 0.5), nv, 0.2), fill=centre)


def _alternaria(
    rng, leaf: Leaf, draw: ImageDraw.ImageDraw, halo: ImageDraw.ImageDraw, faint: bool
) -> None:
    """Round brown spots with concentric rings and a yellow halo; some cracked; some merged."""
    n = int(rng.integers(1, 4)) if faint else int(rng.integers(3, 16))
    big = rng.uniform(0.02, 0.05)
    centres = []
    if not faint and rng.random() < 0.3:  # advanced: spots meld into a large necrotic area
        x, y, _u, _v = leaf.point(rng, v_max=0.6)
        r = leaf.length * rng.uniform(0.07, 0.16)
        halo.polygon(_blob(rng, x, y, r * 1.25, 24, 0.3), fill=_c((205, 190, 70), 12, rng, 0.8))
        draw.polygon(_blob(rng, x, y, r, 24, 0.35), fill=_c((85, 55, 32), 10, rng))
        draw.polygon(_blob(rng, x, y, r * 0.8, 24, 0.35), fill=_c((120, 82, 48), 12, rng))
        centres = [(x, y, r)]
    for _ in range(n):
        if centres and rng.random() < 0.5:
            x0, y0, r0 = centres[0]
            a = rng.uniform(0, 2 * math.pi)
            x, y = x0 + r0 * 1.1 * math.cos(a), y0 + r0 * 1.1 * math.sin(a)
        else:
            x, y, _u, _v = leaf.point(rng)
        r = leaf.length * big * rng.uniform(0.3, 1.0)
        alpha = rng.uniform(0.35, 0.65) if faint else rng.uniform(0.7, 1.0)
        hr = r * rng.uniform(1.3, 1.9)
        halo.ellipse(
            (x - hr, y - hr, x + hr, y + hr),
            fill=_c((215, 200, 65), 15, rng, alpha * rng.uniform(0.6, 1)),
        )
        rings = int(rng.integers(2, 5)) if r > 4 else 1
        dark = (rng.uniform(70, 95), 50, 30)
        light = (rng.uniform(130, 160), 100, 60)
        for k in range(rings * 2):
            rk = r * (1 - k / (rings * 2)) * rng.uniform(0.95, 1.05)
            col = dark if k % 2 == 0 else light
            draw.ellipse(
                (x - rk, y - rk * rng.uniform(0.9, 1.0), x + rk, y + rk),
                fill=_c(col, 8, rng, alpha),
            )
        if r > 5 and rng.random() < 0.3:  # cracked through the middle
            a = rng.uniform(0, math.pi)
            dx, dy = r * 0.8 * math.cos(a), r * 0.8 * math.sin(a)
            draw.line(
                (x - dx, y - dy, x + dx, y + dy),
                fill=_c((215, 200, 165), 10, rng, alpha),
                width=max(1, int(r * 0.12)),
            )


def _miner(
    rng, leaf: Leaf, draw: ImageDraw.ImageDraw, halo: ImageDraw.ImageDraw, faint: bool
) -> None:
    """Light-green to white winding trails that widen, chlorophyll-free blotches, dark edges."""
    trails = int(rng.integers(1, 3)) if faint else int(rng.integers(1, 6))
    for _ in range(trails):
        _x, _y, u, v = leaf.point(rng)
        heading = rng.uniform(0, 2 * math.pi)
        steps = int(rng.integers(25, 70)) if faint else int(rng.integers(40, 130))
        step = leaf.length * rng.uniform(0.004, 0.008)
        w_end = leaf.length * (rng.uniform(0.005, 0.01) if faint else rng.uniform(0.008, 0.022))
        alpha = rng.uniform(0.4, 0.65) if faint else rng.uniform(0.65, 0.95)
        col = (rng.uniform(195, 235), rng.uniform(215, 240), rng.uniform(165, 215))
        stripe = rng.random() < 0.4
        frass = rng.random() < 0.35
        turn = rng.uniform(0.15, 0.5)
        pts = []
        for _i in range(steps):
            hw = float(leaf.half_width(np.array(u)))
            pts.append(leaf.to_image(u, v * hw))
            heading += rng.normal(0, turn)
            u += step * math.cos(heading) / leaf.length
            v += step * math.sin(heading) / max(hw, 1.0)
            if not 0.06 < u < 0.94:  # wander back inside the blade
                heading = math.pi - heading
                u = min(max(u, 0.06), 0.94)
            if abs(v) > 0.85:
                heading = -heading
                v = math.copysign(0.85, v)
        for i in range(1, len(pts)):
            w = 1.0 + (w_end - 1.0) * i / len(pts)  # the grub grows: the trail widens
            (x0, y0), (x1, y1) = pts[i - 1], pts[i]
            if stripe and i > len(pts) // 3:
                ox, oy = -(y1 - y0), x1 - x0
                norm = math.hypot(ox, oy) or 1.0
                ox, oy = ox / norm * w * 0.55, oy / norm * w * 0.55
                draw.line(
                    (x0 + ox, y0 + oy, x1 + ox, y1 + oy),
                    fill=_c((55, 45, 30), 6, rng, alpha),
                    width=max(1, int(w * 0.3)),
                )
            draw.line((x0, y0, x1, y1), fill=_c(col, 6, rng, alpha), width=max(1, round(w)))
            draw.ellipse(
                (x1 - w / 2, y1 - w / 2, x1 + w / 2, y1 + w / 2), fill=_c(col, 6, rng, alpha)
            )
            if frass and i % 3 == 0 and w > 3:
                draw.point(
                    (x1 + rng.normal(0, w * 0.15), y1 + rng.normal(0, w * 0.15)),
                    fill=_c((50, 45, 25), 5, rng, alpha),
                )
    if rng.random() < (0.2 if faint else 0.5):  # blotch mines: no chlorophyll left
        for _ in range(int(rng.integers(1, 3))):
            x, y, _u, _v = leaf.point(rng, v_max=0.7)
            r = leaf.length * rng.uniform(0.025, 0.07)
            halo.polygon(
                _blob(rng, x, y, r, 20, 0.45),
                fill=_c((215, 222, 175), 10, rng, rng.uniform(0.55, 0.9)),
            )
            if rng.random() < 0.5:
                halo.polygon(
                    _blob(rng, x, y, r * 0.5, 16, 0.4), fill=_c((175, 160, 110), 10, rng, 0.6)
                )


def _confusers(rng, leaf: Leaf, draw, halo, shine, holes, size: int) -> None:
    """Marks every class gets: they look like symptoms to a colour histogram, not to a pathologist."""
    for _ in range(int(rng.integers(0, 4))):  # yellowed patches (nutrients, age)
        x, y, _u, _v = leaf.point(rng)
        r = leaf.length * rng.uniform(0.03, 0.1)
        halo.ellipse(
            (x - r, y - r * 0.7, x + r, y + r * 0.7),
            fill=_c((200, 195, 70), 15, rng, rng.uniform(0.2, 0.6)),
        )
    for _ in range(int(rng.integers(0, 10))):  # small plain brown dots (old damage, no grey centre)
        x, y, _u, _v = leaf.point(rng)
        r = leaf.length * rng.uniform(0.003, 0.012)
        draw.ellipse(
            (x - r, y - r, x + r, y + r), fill=_c((95, 65, 40), 12, rng, rng.uniform(0.4, 0.9))
        )
    for _ in range(int(rng.integers(0, 4))):  # light reflections: soft, whitish, elongated
        x, y, u, _v = leaf.point(rng)
        x2, y2 = leaf.to_image(
            min(u + rng.uniform(0.05, 0.25), 0.95), rng.uniform(-0.3, 0.3) * leaf.width
        )
        w = leaf.length * rng.uniform(0.008, 0.03)
        shine.line(
            (x, y, x2, y2), fill=(245, 250, 240, int(rng.uniform(70, 170))), width=max(1, int(w))
        )
    if rng.random() < 0.25:  # scorched margin at the tip
        x, y = leaf.to_image(rng.uniform(0.88, 0.97), 0.0)
        r = leaf.length * rng.uniform(0.04, 0.09)
        draw.polygon(_blob(rng, x, y, r, 16, 0.4), fill=_c((110, 80, 45), 15, rng, 0.9))
    if rng.random() < 0.2:  # insect holes, with a brown rim
        for _ in range(int(rng.integers(1, 4))):
            x, y, _u, _v = leaf.point(rng)
            r = leaf.length * rng.uniform(0.006, 0.02)
            poly = _blob(rng, x, y, r, 8, 0.3)
            draw.polygon(_blob(rng, x, y, r * 1.3, 8, 0.3), fill=_c((100, 75, 45), 10, rng, 0.9))
            holes.polygon(poly, fill=255)


def _dirt(rng, size: int) -> Image.Image:
    """Soil crumbs and specks over leaf and background alike."""
    layer, draw = _layer(size)
    for _ in range(int(rng.integers(0, 30))):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        r = rng.uniform(0.6, 2.8) * size / 640
        g = rng.uniform(25, 90)
        draw.ellipse(
            (x - r, y - r, x + r, y + r * rng.uniform(0.6, 1)),
            fill=_c((g, g * 0.8, g * 0.6), 6, rng, rng.uniform(0.6, 1)),
        )
    return layer


def render(
    label: int, rng: np.random.Generator, size: int = 640, style: str = "lab"
) -> tuple[Image.Image, int]:
    """One synthetic leaf of class `label`: (RGB image, JPEG quality to save it with).

    `style="lab"`: a leaf shot on dark cloth, centred, upright and filling the frame, with its
    symptoms spread over the blade. `style="field"`: any pose on paper, soil or foliage, a fifth of
    the leaves with only a few faint symptoms.
    """
    if style not in STYLES:
        raise ValueError(f"style={style!r}; use one of {', '.join(STYLES)}")
    lab = style == "lab"
    if lab:
        bg, bg_kind = _dark_cloth(rng, size), "cloth"
        leaf = Leaf.lab(rng, size)
    else:
        bg, bg_kind = _background(rng, size)
        leaf = Leaf.random(rng, size)
    xs, ys = _grid(size)
    u, y = leaf.local(xs, ys)
    alpha = np.clip(leaf.half_width(u) - np.abs(y) + 0.5, 0, 1) * ((u >= 0) & (u <= 1))
    # Petiole: a short stalk beyond the base.
    stalk = leaf.length * rng.uniform(0.05, 0.18)
    w_stalk = max(1.5, leaf.length * rng.uniform(0.005, 0.01))
    on_stalk = (u < 0) & (u > -stalk / leaf.length) & (np.abs(y) < w_stalk)
    alpha = np.maximum(alpha, on_stalk)
    on = alpha > 0
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[on, :3] = (_leaf_colour(rng, leaf, u[on], y[on], on) * 255 + 0.5).astype(np.uint8)
    rgba[..., 3] = 255
    blade = Image.fromarray(rgba, "RGBA")

    halo_img, halo = _layer(size)
    spot_img, spots = _layer(size)
    shine_img, shine = _layer(size)
    holes_img = Image.new("L", (size, size), 0)
    if lab:
        _lab_symptoms(label, rng, leaf, spots, halo, float(alpha.sum()))
    else:
        faint = rng.random() < 0.22  # hard cases: few, small, pale symptoms
        _confusers(rng, leaf, spots, halo, shine, ImageDraw.Draw(holes_img), size)
        if label == CERCOSPORA:
            _cercospora(rng, leaf, spots, faint)
        elif label == ALTERNARIA:
            _alternaria(rng, leaf, spots, halo, faint)
        else:
            _miner(rng, leaf, spots, halo, faint)
    for layer, radius in (
        (halo_img, leaf.length * 0.006),
        (spot_img, 0.7),
        (shine_img, leaf.length * 0.012),
    ):
        blade.alpha_composite(_blurred(layer, radius))
    holes = np.asarray(holes_img.filter(ImageFilter.GaussianBlur(0.7)), np.float32) / 255.0
    leaf_alpha = alpha * (1 - holes)
    blade.putalpha(Image.fromarray((leaf_alpha * 255 + 0.5).astype(np.uint8), "L"))

    if bg_kind in ("paper", "soil"):  # a soft drop shadow on flat backgrounds, computed small
        small = max(size // 4, 8)
        shadow = blade.getchannel("A").resize((small, small), Image.Resampling.BILINEAR)
        shadow = shadow.filter(ImageFilter.GaussianBlur(small * 0.015)).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        off = int(size * rng.uniform(0.005, 0.02))
        sh = np.roll(np.asarray(shadow, np.float32), (off, off), axis=(0, 1)) * np.float32(
            rng.uniform(0.2, 0.45) / 255
        )
        bg = Image.fromarray((np.asarray(bg, np.float32) * (1 - sh[..., None])).astype(np.uint8))
    img = bg.convert("RGBA")
    img.alpha_composite(blade)
    img.alpha_composite(_blurred(_dirt(rng, size), 0.4))

    return _lighting(rng, img.convert("RGB"), size, LAB_LIGHT if lab else FIELD_LIGHT)


# -- the lab style's symptoms ------------------------------------------------------------------------
# Every class draws its lesions from one palette (necrotic dark brown, tan, chlorotic pale), in
# comparable areas, and every leaf also gets shapeless patches of each of those colours. Colour
# statistics then say little about the class; the shape of the lesions says it all: small spots
# with a pale centre (Cercospora), ringed spots with a thin pale halo (Alternaria), thin winding
# pale trails with a dark edge (leaf miner).


@dataclass
class Palette:
    dark: Color
    tan: Color
    pale: Color

    @classmethod
    def random(cls, rng: np.random.Generator) -> Palette:
        return cls(
            dark=(rng.uniform(55, 105), rng.uniform(35, 60), rng.uniform(20, 40)),
            tan=(rng.uniform(115, 165), rng.uniform(85, 115), rng.uniform(45, 75)),
            pale=(rng.uniform(195, 240), rng.uniform(195, 230), rng.uniform(135, 195)),
        )


def _lab_cercospora(rng, leaf: Leaf, draw, pal: Palette, area: float) -> None:
    """Small round spots: dark margin, tan ring, pale centre (areas about 41:29:30)."""
    big = leaf.length * rng.uniform(0.011, 0.017)
    for _ in range(max(1, round(area / (math.pi * (0.82 * big) ** 2)))):
        x, y, _u, _v = leaf.point(rng)
        r = big * rng.uniform(0.6, 1.0)
        nv = int(rng.integers(8, 12))
        draw.polygon(_blob(rng, x, y, r, nv, 0.15), fill=_c(pal.dark, 6, rng))
        draw.polygon(_blob(rng, x, y, r * 0.77, nv, 0.1), fill=_c(pal.tan, 6, rng))
        draw.polygon(_blob(rng, x, y, r * 0.55, nv, 0.1), fill=_c(pal.pale, 6, rng))


def _lab_alternaria(rng, leaf: Leaf, draw, pal: Palette, area: float) -> None:
    """Spots of concentric dark and tan rings in a thin pale halo (about 43:26:31), crowded
    along the margin."""
    big = leaf.length * rng.uniform(0.014, 0.02)
    for _ in range(max(1, round(area / (math.pi * (0.82 * big * 1.2) ** 2)))):
        x, y, u, v = leaf.point(rng, v_max=0.85)
        v = math.copysign(rng.uniform(0.68, 0.9), v)  # from the margin inward
        x, y = leaf.to_image(u, v * float(leaf.half_width(np.array(u))))
        r = big * rng.uniform(0.6, 1.0)
        hr = r * 1.2
        draw.ellipse((x - hr, y - hr, x + hr, y + hr), fill=_c(pal.pale, 6, rng))
        for k in range(4):
            rk = r * (1 - k / 4)
            col = pal.dark if k % 2 == 0 else pal.tan
            draw.ellipse((x - rk, y - rk, x + rk, y + rk), fill=_c(col, 6, rng))


def _lab_miner(rng, leaf: Leaf, draw, pal: Palette, area: float) -> None:
    """Thin winding trails: tan edges, pale tunnel, a dark frass line inside (about 46:23:31)."""
    w_mean = leaf.length * rng.uniform(0.009, 0.012)
    step = leaf.length * rng.uniform(0.005, 0.007)
    steps_total = area / (1.3 * w_mean * step)
    trails = max(1, round(steps_total / 95))
    band = 0.3  # mines wander along the midrib, in the middle of the blade
    for _ in range(trails):
        _x, _y, u, v = leaf.point(rng, v_max=band)
        heading = rng.uniform(0, 2 * math.pi)
        turn = rng.uniform(0.2, 0.45)
        pts = []
        for _i in range(int(steps_total / trails)):
            hw = float(leaf.half_width(np.array(u)))
            pts.append(leaf.to_image(u, v * hw))
            heading += rng.normal(0, turn)
            u += step * math.cos(heading) / leaf.length
            v += step * math.sin(heading) / max(hw, 1.0)
            if not 0.06 < u < 0.94:
                heading = math.pi - heading
                u = min(max(u, 0.06), 0.94)
            if abs(v) > band:
                heading = -heading
                v = math.copysign(band, v)
        for width, col in ((1.3, pal.tan), (1.0, pal.pale), (0.6, pal.dark)):
            for i in range(1, len(pts)):
                w = w_mean * (0.5 + i / len(pts))  # the grub grows: the trail widens
                draw.line(
                    (*pts[i - 1], *pts[i]), fill=_c(col, 6, rng), width=max(1, round(w * width))
                )


def _lab_patches(rng, leaf: Leaf, halo, pal: Palette) -> None:
    """Shapeless soft patches of each palette colour: ageing, sunscald, old damage."""
    for col in (pal.pale, pal.tan, pal.dark):
        for _ in range(int(rng.integers(0, 5))):
            x, y, _u, _v = leaf.point(rng, v_max=0.7)
            r = leaf.length * rng.uniform(0.02, 0.06)
            halo.polygon(
                _blob(rng, x, y, r, 20, 0.35), fill=_c(col, 8, rng, rng.uniform(0.6, 0.95))
            )


def _lab_symptoms(label: int, rng, leaf: Leaf, draw, halo, leaf_area: float) -> None:
    """Patches, then the class's lesions over a share of the blade drawn alike for every class."""
    pal = Palette.random(rng)
    _lab_patches(rng, leaf, halo, pal)
    area = leaf_area * rng.uniform(0.08, 0.16)
    if label == CERCOSPORA:
        _lab_cercospora(rng, leaf, draw, pal, area)
    elif label == ALTERNARIA:
        _lab_alternaria(rng, leaf, draw, pal, area)
    else:
        _lab_miner(rng, leaf, draw, pal, area)


def _dark_cloth(rng: np.random.Generator, size: int) -> Image.Image:
    """Black photographic cloth: a few grey levels of weave texture around an almost-black tone.

    It keeps the backdrop's features near zero, as in pathology sets shot on black velvet.
    """
    tone = rng.uniform(2.0, 8.0, 3).astype(np.float32)
    weave = _smooth_noise(rng, size, 64) * np.float32(1.5)
    cloth = tone + weave + np.abs(_noise(rng, size, 1.0))
    return Image.fromarray(np.clip(cloth + 0.5, 0, 255).astype(np.uint8))


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


FIELD_LIGHT = Light((0.85, 1.1), (0.1, 0.45), (0.93, 1.07), 5.0, 1.4, (60, 96))
LAB_LIGHT = Light((0.92, 1.05), (0.0, 0.15), (0.97, 1.03), 2.0, 0.8, (85, 96))  # studio light


def _lighting(
    rng: np.random.Generator, img: Image.Image, size: int, light: Light
) -> tuple[Image.Image, int]:
    """A gradient in a random direction, a colour cast, sensor noise, blur; and a JPEG quality."""
    xs, ys = _grid(size)
    ang = rng.uniform(0, 2 * math.pi)
    ramp = (xs - size / 2) * np.float32(math.cos(ang) / size) + (ys - size / 2) * np.float32(
        math.sin(ang) / size
    )
    gain = (np.float32(rng.uniform(*light.gain)) + np.float32(rng.uniform(*light.ramp)) * ramp)[
        ..., None
    ]
    cast = rng.uniform(*light.cast, 3).astype(np.float32)
    noise = _noise(rng, size, rng.uniform(0.0, light.noise))
    out = np.asarray(img, np.float32) * (gain * cast) + noise
    out = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
    blur = rng.uniform(0.0, light.blur) * size / 640
    if blur > 0.3:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    return out, int(rng.integers(*light.quality))


def image_rng(seed: int, label: int, index: int) -> np.random.Generator:
    """The generator for one image: the set is the same in any order and any process."""
    return np.random.default_rng([seed, label, index])


def _write_one(args: tuple[Path, int, int, int, int, str]) -> Path:
    out_dir, label, index, size, seed, style = args
    img, quality = render(label, image_rng(seed, label, index), size, style)
    path = out_dir / CLASS_NAMES[label] / f"{index:03d}.jpg"
    img.save(path, "JPEG", quality=quality)
    return path


def generate(
    out_dir: str | Path,
    n_per_class: int = 100,
    size: int = 640,
    seed: int = 0,
    workers: int = 1,
    style: str = "lab",
) -> list[Path]:
    """Write `n_per_class` JPEGs per class to `out_dir/<class>/NNN.jpg`; returns the paths."""
    out_dir = Path(out_dir)
    for name in CLASS_NAMES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    jobs = [
        (out_dir, label, i, size, seed, style)
        for label in range(len(CLASS_NAMES))
        for i in range(n_per_class)
    ]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn" if sys.platform != "linux" else "fork").Pool(workers) as pool:
            return pool.map(_write_one, jobs, chunksize=8)
    return [_write_one(job) for job in jobs]


MARKER = ".leafnet-synthetic.json"
# Raised whenever a style's images change, so a set written by an older leafnet is not taken
# for the current one.
VERSIONS = {"lab": 1, "field": 1}


def _marker(n_per_class: int, size: int, seed: int, style: str) -> dict:
    return {
        "style": style,
        "version": VERSIONS[style],
        "seed": seed,
        "n_per_class": n_per_class,
        "size": size,
    }


def ensure_synthetic(
    out_dir: str | Path, n_per_class: int = 100, size: int = 640, seed: int = 0, style: str = "lab"
) -> bool:
    """Generate the set into `out_dir` unless it is already there; True if it was written.

    The set is written into a temporary sibling with a marker file and renamed into place, so an
    interrupted run or a parallel sweep job never sees a half-written set. A folder that exists
    and holds anything (hidden files included) without the marker of this very set is refused
    with a LeafnetError: nothing of the user's is ever deleted or written into.
    """
    from leafnet.errors import LeafnetError

    out_dir = Path(out_dir)
    wanted = _marker(n_per_class, size, seed, style)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        marker = out_dir / MARKER
        found = json.loads(marker.read_text()) if marker.is_file() else None
        if found == wanted:
            return False
        if found:
            raise LeafnetError(
                f"data.dir={out_dir} holds another synthetic set ({found}); delete that folder "
                "to have it written again, or point data.dir at a new folder"
            )
        raise LeafnetError(
            f"data.dir={out_dir} holds files leafnet did not write; to train on your own photos "
            f"use data=folder data.dir={out_dir}, else point data.dir at a new folder"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise LeafnetError(f"data.dir={out_dir} is a file; point data.dir at a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        generate(tmp, n_per_class, size, seed, workers=min(4, os.cpu_count() or 1), style=style)
        (tmp / MARKER).write_text(json.dumps(wanted) + "\n")
        try:
            tmp.rename(out_dir)  # replaces only an empty folder; fails over a non-empty one
        except OSError:  # another process finished first: its set is the same
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder, if still there


def contact_sheet(
    data_dir: str | Path, out_png: str | Path, per_class: int = 6, thumb: int = 200
) -> Path:
    """A PNG with the first `per_class` images of each class in a row, labelled."""
    data_dir = Path(data_dir)
    label_h = 18
    sheet = Image.new(
        "RGB", (per_class * thumb, len(CLASS_NAMES) * (thumb + label_h)), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    for row, name in enumerate(CLASS_NAMES):
        top = row * (thumb + label_h)
        draw.text((4, top + 3), name, fill=(0, 0, 0))
        for col, path in enumerate(sorted((data_dir / name).glob("*.jpg"))[:per_class]):
            with Image.open(path) as img:
                sheet.paste(
                    img.convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS),
                    (col * thumb, top + label_h),
                )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png


@cli_errors
def main(argv: list[str] | None = None) -> None:
    """`key=value` arguments (conf/synthetic.yaml): write the set, and a contact sheet if asked."""
    cfg = command_config("data.synthetic", sys.argv[1:] if argv is None else argv, conf="synthetic")
    root = Path(os.environ.get("LEAFNET_ROOT", "."))
    out = Path(str(cfg.out)) if cfg.out else root / "data" / f"synthetic-{cfg.style}"
    start = time.perf_counter()
    if ensure_synthetic(out, cfg.n_per_class, cfg.size, cfg.seed, cfg.style):
        print(f"wrote the {cfg.style} set to {out} in {time.perf_counter() - start:.1f} s")
    else:
        print(f"{out} already holds this set")
    if cfg.preview:
        print(f"preview: {contact_sheet(out, Path(str(cfg.preview)))}")


if __name__ == "__main__":
    main()
