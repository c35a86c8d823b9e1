"""What a network learned, as figures: first-layer filters, feature maps and Grad-CAM.

Used by the `explain` command, the web page and the `ExplainImages` training callback.

Grad-CAM is captum's `LayerGradCam` on the network's `gradcam_layer` (LeafNet's last conv layer,
`conv2d_1`; resnet's `layer4`; the last block of mobilenet's and efficientnet's `features`):
captum is maintained by the PyTorch team, light (no OpenCV), and its attribution is the textbook
one (channel weights = spatially averaged gradients, ReLU of the weighted sum), so there is
nothing of ours to get wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leafnet.errors import LeafnetError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


TILE_PX = 64  # small panels (a 3x3 kernel, a 10x10 map) are enlarged to about this, pixel by pixel
# Large maps are averaged down to about this first: matplotlib resampling 32 maps of 640x640 in one
# image takes seconds, for pixels no screen shows.
MAP_PX = 160
GAP = 0.2  # the gap between panels, where each panel's label goes, as a fraction of a panel


def _mosaic(tiles: Tensor, labels: Sequence[str], title: str, inches: float) -> Figure:
    """RGB panels `tiles` [N, 3, h, w] (uint8) laid out as one image (torchvision's make_grid)
    in one axes, each labelled above: about a third of the time and memory of one axes per panel
    (docs/performance.md)."""
    from torchvision.utils import make_grid

    plt = pyplot()
    n, _, h, w = tiles.shape
    scale = max(1, math.ceil(TILE_PX / max(h, w)))
    tiles = tiles.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    cols = math.ceil(math.sqrt(n))  # a square, or nearly
    gap = max(2, round(GAP * max(h, w) * scale))
    grid = make_grid(tiles, nrow=cols, padding=gap, pad_value=255)
    width = inches * cols  # the height follows the mosaic's shape, plus room for the title
    fig, ax = plt.subplots(
        figsize=(width, width * grid.shape[1] / grid.shape[2] + 0.5), layout="constrained"
    )
    # Enlarged panels keep their pixels sharp; others may be drawn a little smaller than they are
    # and need matplotlib's antialiasing.
    interpolation = "nearest" if scale > 1 else "antialiased"
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation=interpolation)
    ax.axis("off")
    cell_h, cell_w = h * scale + gap, w * scale + gap
    for i, label in enumerate(labels):
        row, col = divmod(i, cols)
        x = col * cell_w + gap + w * scale / 2
        ax.text(x, row * cell_h + 0.9 * gap, label, ha="center", va="bottom", fontsize=7)
    fig.suptitle(title)
    return fig


def _scaled(t: Tensor) -> Tensor:
    """Each panel (first dimension) stretched to [0, 1] on its own."""
    dims = tuple(range(1, t.dim()))
    lo, hi = t.amin(dim=dims, keepdim=True), t.amax(dim=dims, keepdim=True)
    return (t - lo) / (hi - lo).clamp_min(1e-12)


def filters_figure(net: nn.Module) -> Figure:
    """The first conv layer's kernels as tiny RGB images, each stretched to [0, 1]."""
    name, conv = next(iter(net.feature_layers.items()))
    w = conv.weight.detach().float().cpu()  # [out, in, kh, kw]
    if w.shape[1] != 3:  # not an RGB input: the kernels' mean over inputs, in grey
        w = w.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    tiles = (_scaled(w) * 255).round().to(torch.uint8)
    title = f"{name}: {len(w)} filters of {tuple(w.shape[2:])} (RGB, each scaled to its range)"
    return _mosaic(tiles, [str(i) for i in range(len(w))], title, inches=1.1)


def feature_maps(net: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Each feature layer's output after ReLU for one scaled image `x` [3, S, S] -> [C, H, W]."""
    maps: dict[str, Tensor] = {}
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, out, name=name: maps.__setitem__(name, torch.relu(out[0]).detach().cpu())
        )
        for name, layer in net.feature_layers.items()
    ]
    try:
        with torch.no_grad():
            net(x.unsqueeze(0))
    finally:
        for h in hooks:
            h.remove()
    return maps


MAX_PANELS = 32  # LeafNet's layers have 32 and 16 channels; a deep model's last stage 1,280


def feature_maps_figure(name: str, maps: Tensor) -> Figure:
    """One panel per channel (at most MAX_PANELS: the most active ones), each with its own colour
    scale (viridis), labelled with its channel index."""
    from matplotlib import colormaps

    c, h, w = maps.shape
    channels = torch.arange(c)
    if c > MAX_PANELS:
        channels = maps.float().mean(dim=(1, 2)).topk(MAX_PANELS).indices.sort().values
    shown = maps[channels].float()
    if max(h, w) > MAP_PX:
        size = (max(1, h * MAP_PX // max(h, w)), max(1, w * MAP_PX // max(h, w)))
        shown = F.interpolate(shown.unsqueeze(1), size=size, mode="area").squeeze(1)
    # As uint8 (bytes=True): 32 maps of 640x640 in float64 RGBA would take 420 MB.
    coloured = colormaps["viridis"](_scaled(shown).numpy(), bytes=True)
    tiles = torch.from_numpy(coloured[..., :3]).permute(0, 3, 1, 2)  # [N, 3, h, w] uint8
    which = f"the {len(channels)} most active of {c}" if c > MAX_PANELS else str(c)
    title = f"{name}: {which} feature maps of {h}x{w} (after ReLU)"
    return _mosaic(tiles, [str(int(i)) for i in channels], title, inches=1.5)


def gradcam(net: nn.Module, x: Tensor, target: int | None = None) -> tuple[Tensor, int, Tensor]:
    """Grad-CAM heatmap [S, S] in [0, 1] for `target` (default: the predicted class), the target
    and the class probabilities, for one scaled image `x` [3, S, S]."""
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError:
        raise LeafnetError("Grad-CAM needs captum: pip install 'leafnet[explain]'") from None

    x = x.unsqueeze(0).detach().clone()  # a normal tensor even if `x` came from inference mode
    with torch.no_grad():
        probs = net(x).softmax(-1)[0].cpu()
    target = int(probs.argmax()) if target is None else int(target)
    with torch.enable_grad():
        cam = LayerGradCam(net, net.gradcam_layer).attribute(
            x, target=target, relu_attributions=True
        )
    cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), "bilinear")[0, 0]
    cam = cam.clamp_min(0).cpu()
    return cam / cam.max().clamp_min(1e-12), target, probs


def gradcam_figure(image: Tensor, cam: Tensor, title: str) -> Figure:
    """The image, and the image with the Grad-CAM heatmap over it. `image`: [3, S, S], any range."""
    plt = pyplot()
    img = image.detach().float().cpu()
    img = ((img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)).permute(1, 2, 0).numpy()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4.6), layout="constrained")
    # The title over both panels: with a long class name it ran into the left panel's.
    fig.suptitle(title, fontsize=10)
    left.imshow(img)
    left.set_title("input (as the network sees it)", fontsize=9)
    right.imshow(img)
    right.imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    right.set_title("Grad-CAM heatmap over it", fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    return fig


def explain_figures(
    net: nn.Module, x: Tensor, class_names: Sequence[str], display: Tensor | None = None
) -> dict[str, Figure]:
    """All figures for one scaled image `x` [3, S, S]; `display` is the picture to draw
    (default: `x` stretched to [0, 1])."""
    was_training = net.training
    net.eval()
    try:
        figures = {"filters": filters_figure(net)}
        for name, maps in feature_maps(net, x).items():
            figures[f"feature_maps_{name}"] = feature_maps_figure(name, maps)
        cam, target, probs = gradcam(net, x)
        layer = list(net.feature_layers)[-1]
        title = f"Grad-CAM ({layer}) for {class_names[target]} (p={float(probs[target]):.3f})"
        figures["gradcam"] = gradcam_figure(x if display is None else display, cam, title)
    finally:
        net.train(was_training)
    return figures
