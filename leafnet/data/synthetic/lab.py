"""The lab style (the default set): a leaf on black cloth, centred and upright, whose class shows
only in the shape of its lesions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from leafnet.data.synthetic.paint import (
    ALTERNARIA,
    CERCOSPORA,
    Color,
    Leaf,
    Light,
    blob,
    grey_noise,
    jittered,
    smooth_noise,
)

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


def _cercospora_spots(rng, leaf: Leaf, draw, pal: Palette, area: float) -> None:
    """Small round spots: dark margin, tan ring, pale centre (areas about 41:29:30)."""
    big = leaf.length * rng.uniform(0.011, 0.017)
    for _ in range(max(1, round(area / (math.pi * (0.82 * big) ** 2)))):
        x, y, _u, _v = leaf.point(rng)
        r = big * rng.uniform(0.6, 1.0)
        nv = int(rng.integers(8, 12))
        draw.polygon(blob(rng, x, y, r, nv, 0.15), fill=jittered(pal.dark, 6, rng))
        draw.polygon(blob(rng, x, y, r * 0.77, nv, 0.1), fill=jittered(pal.tan, 6, rng))
        draw.polygon(blob(rng, x, y, r * 0.55, nv, 0.1), fill=jittered(pal.pale, 6, rng))


def _ringed_spots(rng, leaf: Leaf, draw, pal: Palette, area: float) -> None:
    """Spots of concentric dark and tan rings in a thin pale halo (about 43:26:31), crowded
    along the margin."""
    big = leaf.length * rng.uniform(0.014, 0.02)
    for _ in range(max(1, round(area / (math.pi * (0.82 * big * 1.2) ** 2)))):
        x, y, u, v = leaf.point(rng, v_max=0.85)
        v = math.copysign(rng.uniform(0.68, 0.9), v)  # from the margin inward
        x, y = leaf.to_image(u, v * float(leaf.half_width(np.array(u))))
        r = big * rng.uniform(0.6, 1.0)
        hr = r * 1.2
        draw.ellipse((x - hr, y - hr, x + hr, y + hr), fill=jittered(pal.pale, 6, rng))
        for k in range(4):
            rk = r * (1 - k / 4)
            col = pal.dark if k % 2 == 0 else pal.tan
            draw.ellipse((x - rk, y - rk, x + rk, y + rk), fill=jittered(col, 6, rng))


def _mines(rng, leaf: Leaf, draw, pal: Palette, area: float) -> None:
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
                    (*pts[i - 1], *pts[i]),
                    fill=jittered(col, 6, rng),
                    width=max(1, round(w * width)),
                )


def _patches(rng, leaf: Leaf, halo, pal: Palette) -> None:
    """Shapeless soft patches of each palette colour: ageing, sunscald, old damage."""
    for col in (pal.pale, pal.tan, pal.dark):
        for _ in range(int(rng.integers(0, 5))):
            x, y, _u, _v = leaf.point(rng, v_max=0.7)
            r = leaf.length * rng.uniform(0.02, 0.06)
            halo.polygon(
                blob(rng, x, y, r, 20, 0.35), fill=jittered(col, 8, rng, rng.uniform(0.6, 0.95))
            )


def symptoms(label: int, rng, leaf: Leaf, draw, halo, leaf_area: float) -> None:
    """Patches, then the class's lesions over a share of the blade drawn alike for every class."""
    pal = Palette.random(rng)
    _patches(rng, leaf, halo, pal)
    area = leaf_area * rng.uniform(0.08, 0.16)
    if label == CERCOSPORA:
        _cercospora_spots(rng, leaf, draw, pal, area)
    elif label == ALTERNARIA:
        _ringed_spots(rng, leaf, draw, pal, area)
    else:
        _mines(rng, leaf, draw, pal, area)


def dark_cloth(rng: np.random.Generator, size: int) -> Image.Image:
    """Black photographic cloth: a few grey levels of weave texture around an almost-black tone.

    It keeps the backdrop's features near zero, as in pathology sets shot on black velvet.
    """
    tone = rng.uniform(2.0, 8.0, 3).astype(np.float32)
    weave = smooth_noise(rng, size, 64) * np.float32(1.5)
    cloth = tone + weave + np.abs(grey_noise(rng, size, 1.0))
    return Image.fromarray(np.clip(cloth + 0.5, 0, 255).astype(np.uint8))


LIGHT = Light((0.92, 1.05), (0.0, 0.15), (0.97, 1.03), 2.0, 0.8, (85, 96))  # studio light
