"""The field style: a leaf in any pose on paper, soil or out-of-focus foliage, with the seed's
symptoms as its "How to Detect?" text describes them and confusing marks on every class."""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from leafnet.data.synthetic.paint import (
    ALTERNARIA,
    CERCOSPORA,
    Leaf,
    Light,
    blob,
    grey_noise,
    jittered,
    smooth_noise,
)


def background(rng: np.random.Generator, size: int) -> tuple[Image.Image, str]:
    kind = ["paper", "soil", "foliage"][int(rng.integers(3))]
    if kind == "paper":
        tone = rng.uniform(0.78, 0.97)
        tint = np.array([1.0, rng.uniform(0.97, 1.0), rng.uniform(0.88, 1.0)], np.float32)
        bg = tone * tint * (1 + 0.04 * smooth_noise(rng, size, 4)) + grey_noise(rng, size, 0.012)
        if rng.random() < 0.3:  # ruled notebook paper
            gap = int(rng.integers(24, 48))
            bg[gap // 2 :: gap, :, :] *= np.array([0.85, 0.9, 1.0], np.float32)
        return Image.fromarray(np.clip(bg * 255, 0, 255).astype(np.uint8)), kind
    if kind == "soil":
        base = np.array(
            [rng.uniform(0.3, 0.5), rng.uniform(0.22, 0.36), rng.uniform(0.14, 0.24)], np.float32
        )
        bg = base * (1 + 0.25 * smooth_noise(rng, size, 12) + 0.15 * smooth_noise(rng, size, 48))
        img = Image.fromarray(
            np.clip((bg + grey_noise(rng, size, 0.04)) * 255, 0, 255).astype(np.uint8)
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
                (x - r, y - r * 0.7, x + r, y + r * 0.7),
                fill=jittered((g, g * 0.9, g * 0.8), 8, rng),
            )
        return img, kind
    # Out-of-focus foliage: drawn and blurred at a quarter of the size (it is blurry anyway).
    small = max(size // 4, 8)
    img = Image.new("RGB", (small, small), jittered((40, 70, 30), 15, rng)[:3])
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


def _cercospora(rng, leaf: Leaf, draw: ImageDraw.ImageDraw, faint: bool) -> None:
    """Brown round-to-angular spots, greyish centres, darker margins, up to ~1 cm."""
    n = int(rng.integers(1, 4)) if faint else int(rng.integers(4, 30))
    big = rng.uniform(0.012, 0.035)
    for _ in range(n):
        x, y, _u, _v = leaf.point(rng)
        r = leaf.length * big * rng.uniform(0.35, 1.0)
        alpha = rng.uniform(0.35, 0.65) if faint else rng.uniform(0.6, 1.0)
        nv = int(rng.integers(5, 10))
        margin = jittered((rng.uniform(60, 95), 38, 25), 8, rng, alpha)
        fill = jittered((rng.uniform(115, 150), 78, 50), 10, rng, alpha)
        centre = jittered((rng.uniform(150, 185),) * 3, 8, rng, alpha)
        draw.polygon(blob(rng, x, y, r, nv, 0.25), fill=margin)
        draw.polygon(blob(rng, x, y, r * 0.78, nv, 0.2), fill=fill)
        if r > 2.5:
            draw.polygon(blob(rng, x, y, r * rng.uniform(0.3, 0.5), nv, 0.2), fill=centre)


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
        halo.polygon(
            blob(rng, x, y, r * 1.25, 24, 0.3), fill=jittered((205, 190, 70), 12, rng, 0.8)
        )
        draw.polygon(blob(rng, x, y, r, 24, 0.35), fill=jittered((85, 55, 32), 10, rng))
        draw.polygon(blob(rng, x, y, r * 0.8, 24, 0.35), fill=jittered((120, 82, 48), 12, rng))
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
            fill=jittered((215, 200, 65), 15, rng, alpha * rng.uniform(0.6, 1)),
        )
        rings = int(rng.integers(2, 5)) if r > 4 else 1
        dark = (rng.uniform(70, 95), 50, 30)
        light = (rng.uniform(130, 160), 100, 60)
        for k in range(rings * 2):
            rk = r * (1 - k / (rings * 2)) * rng.uniform(0.95, 1.05)
            col = dark if k % 2 == 0 else light
            draw.ellipse(
                (x - rk, y - rk * rng.uniform(0.9, 1.0), x + rk, y + rk),
                fill=jittered(col, 8, rng, alpha),
            )
        if r > 5 and rng.random() < 0.3:  # cracked through the middle
            a = rng.uniform(0, math.pi)
            dx, dy = r * 0.8 * math.cos(a), r * 0.8 * math.sin(a)
            draw.line(
                (x - dx, y - dy, x + dx, y + dy),
                fill=jittered((215, 200, 165), 10, rng, alpha),
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
                    fill=jittered((55, 45, 30), 6, rng, alpha),
                    width=max(1, int(w * 0.3)),
                )
            draw.line((x0, y0, x1, y1), fill=jittered(col, 6, rng, alpha), width=max(1, round(w)))
            draw.ellipse(
                (x1 - w / 2, y1 - w / 2, x1 + w / 2, y1 + w / 2), fill=jittered(col, 6, rng, alpha)
            )
            if frass and i % 3 == 0 and w > 3:
                draw.point(
                    (x1 + rng.normal(0, w * 0.15), y1 + rng.normal(0, w * 0.15)),
                    fill=jittered((50, 45, 25), 5, rng, alpha),
                )
    if rng.random() < (0.2 if faint else 0.5):  # blotch mines: no chlorophyll left
        for _ in range(int(rng.integers(1, 3))):
            x, y, _u, _v = leaf.point(rng, v_max=0.7)
            r = leaf.length * rng.uniform(0.025, 0.07)
            halo.polygon(
                blob(rng, x, y, r, 20, 0.45),
                fill=jittered((215, 222, 175), 10, rng, rng.uniform(0.55, 0.9)),
            )
            if rng.random() < 0.5:
                halo.polygon(
                    blob(rng, x, y, r * 0.5, 16, 0.4), fill=jittered((175, 160, 110), 10, rng, 0.6)
                )


def _confusers(rng, leaf: Leaf, draw, halo, shine, holes, size: int) -> None:
    """Marks every class gets: they look like symptoms to a colour histogram, not to a pathologist."""
    for _ in range(int(rng.integers(0, 4))):  # yellowed patches (nutrients, age)
        x, y, _u, _v = leaf.point(rng)
        r = leaf.length * rng.uniform(0.03, 0.1)
        halo.ellipse(
            (x - r, y - r * 0.7, x + r, y + r * 0.7),
            fill=jittered((200, 195, 70), 15, rng, rng.uniform(0.2, 0.6)),
        )
    for _ in range(int(rng.integers(0, 10))):  # small plain brown dots (old damage, no grey centre)
        x, y, _u, _v = leaf.point(rng)
        r = leaf.length * rng.uniform(0.003, 0.012)
        draw.ellipse(
            (x - r, y - r, x + r, y + r),
            fill=jittered((95, 65, 40), 12, rng, rng.uniform(0.4, 0.9)),
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
        draw.polygon(blob(rng, x, y, r, 16, 0.4), fill=jittered((110, 80, 45), 15, rng, 0.9))
    if rng.random() < 0.2:  # insect holes, with a brown rim
        for _ in range(int(rng.integers(1, 4))):
            x, y, _u, _v = leaf.point(rng)
            r = leaf.length * rng.uniform(0.006, 0.02)
            poly = blob(rng, x, y, r, 8, 0.3)
            draw.polygon(
                blob(rng, x, y, r * 1.3, 8, 0.3), fill=jittered((100, 75, 45), 10, rng, 0.9)
            )
            holes.polygon(poly, fill=255)


LIGHT = Light((0.85, 1.1), (0.1, 0.45), (0.93, 1.07), 5.0, 1.4, (60, 96))


def symptoms(label: int, rng, leaf: Leaf, draw, halo, shine, holes, size: int) -> None:
    """Confusing marks on every leaf, then the class's symptoms; about a fifth of the leaves get
    only a few faint ones."""
    faint = rng.random() < 0.22  # hard cases: few, small, pale symptoms
    _confusers(rng, leaf, draw, halo, shine, holes, size)
    if label == CERCOSPORA:
        _cercospora(rng, leaf, draw, faint)
    elif label == ALTERNARIA:
        _alternaria(rng, leaf, draw, halo, faint)
    else:
        _miner(rng, leaf, draw, halo, faint)
