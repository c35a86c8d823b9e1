"""One synthetic image: the blade, a style's background and symptoms, dirt and the lighting."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from leafnet.data.synthetic import field, lab
from leafnet.data.synthetic.paint import (
    STYLES,
    Leaf,
    blurred,
    dirt,
    grid,
    leaf_colour,
    lighting,
    new_layer,
)


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
    in_lab = style == "lab"
    if in_lab:
        bg, bg_kind = lab.dark_cloth(rng, size), "cloth"
        leaf = Leaf.lab(rng, size)
    else:
        bg, bg_kind = field.background(rng, size)
        leaf = Leaf.random(rng, size)
    xs, ys = grid(size)
    u, y = leaf.local(xs, ys)
    alpha = np.clip(leaf.half_width(u) - np.abs(y) + 0.5, 0, 1) * ((u >= 0) & (u <= 1))
    # Petiole: a short stalk beyond the base.
    stalk = leaf.length * rng.uniform(0.05, 0.18)
    w_stalk = max(1.5, leaf.length * rng.uniform(0.005, 0.01))
    on_stalk = (u < 0) & (u > -stalk / leaf.length) & (np.abs(y) < w_stalk)
    alpha = np.maximum(alpha, on_stalk)
    on = alpha > 0
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[on, :3] = (leaf_colour(rng, leaf, u[on], y[on], on) * 255 + 0.5).astype(np.uint8)
    rgba[..., 3] = 255
    blade = Image.fromarray(rgba, "RGBA")

    halo_img, halo = new_layer(size)
    spot_img, spots = new_layer(size)
    shine_img, shine = new_layer(size)
    holes_img = Image.new("L", (size, size), 0)
    if in_lab:
        lab.symptoms(label, rng, leaf, spots, halo, float(alpha.sum()))
    else:
        field.symptoms(label, rng, leaf, spots, halo, shine, ImageDraw.Draw(holes_img), size)
    for layer, radius in (
        (halo_img, leaf.length * 0.006),
        (spot_img, 0.7),
        (shine_img, leaf.length * 0.012),
    ):
        blade.alpha_composite(blurred(layer, radius))
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
    img.alpha_composite(blurred(dirt(rng, size), 0.4))

    return lighting(rng, img.convert("RGB"), size, lab.LIGHT if in_lab else field.LIGHT)
