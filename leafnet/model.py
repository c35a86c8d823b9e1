"""The Keras-faithful LeafNet: the seed's Sequential CNN, layer for layer.

Keras original (seed 000)::

    Conv2D(32, (3, 3), padding="same", input_shape=(640, 640, 3), activation="relu")
    MaxPooling2D(pool_size=(3, 3))
    Conv2D(16, (3, 3), padding="same", activation="relu")
    MaxPooling2D(pool_size=(2, 2))
    Flatten()
    Dense(8, activation="relu")
    Dense(3, activation="softmax")

Two one-line Keras variants are arguments: `dropout=p` adds Keras `Dropout(p)` before each Dense
(the seed has none), and `global_pool=True` puts `GlobalAveragePooling2D()` in place of
`Flatten()` (the `leafnet_gap` ablation: Dense(8) then reads 16 position-free features instead of
179,776 position-bound ones).

Submodules carry the names Keras gives the layers, so weights map one to one. The network returns
logits; the seed's softmax output is `logits.softmax(-1)`, and its categorical cross-entropy is
`F.cross_entropy(logits, y)`, which is the same function computed more stably.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from leafnet.adapters.pytorch import is_hooked
from leafnet.banded import conv_pool_relu, fused_takes, fused_takes_bytes
from leafnet.pooling import pool_relu, pool_relu_takes, second_block, second_block_takes


class KerasFlatten(nn.Module):
    """Flatten in Keras' channels-last order (H, W, C), so Dense kernels match Keras' row order."""

    def forward(self, x: Tensor) -> Tensor:
        # For a channels_last tensor this permute is a free view and flatten copies nothing.
        return x.permute(0, 2, 3, 1).flatten(1)


class GlobalAveragePooling2D(nn.Module):
    """Keras' GlobalAveragePooling2D: the mean of each channel over all positions."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


@dataclass(frozen=True)
class LayerInfo:
    """One row of the Keras summary: name, Keras class, output shape (batch as None), params."""

    name: str
    kind: str
    output_shape: tuple[int | None, ...]
    params: int


def _autocast_on(device: str) -> bool:
    """Whether autocast (precision=16-mixed or bf16-mixed) is on for `device` here."""
    try:
        return torch.is_autocast_enabled(device)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled() if device == "cpu" else torch.is_autocast_enabled()


def _capturing() -> bool:
    """Whether TorchScript traces or torch.compile/torch.export captures the model: a C call in
    bands is nothing they can record."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _pooled(size: int, pool: int) -> int:
    """Output side of a Keras MaxPooling2D with padding='valid' and stride = pool size."""
    return (size - pool) // pool + 1


class LeafNet(nn.Module):
    """The seed's CNN. Widths and input size are arguments; the flatten width is derived."""

    # The first conv block on the CPU in row bands (leafnet.banded; see _banded_now); False: layer
    # by layer everywhere (the bench's `+unbanded`). One network's own choice: `conv1_in_bands`.
    banded: bool = True

    def __init__(
        self,
        image_size: int = 640,
        in_channels: int = 3,
        conv1_filters: int = 32,
        conv2_filters: int = 16,
        dense_units: int = 8,
        num_classes: int = 3,
        dropout: float = 0.0,
        global_pool: bool = False,
        conv1_in_bands: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.conv1_in_bands = conv1_in_bands
        self.global_pool = global_pool
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.conv2d = nn.Conv2d(in_channels, conv1_filters, 3, padding="same")
        self.max_pooling2d = nn.MaxPool2d(3)
        self.conv2d_1 = nn.Conv2d(conv1_filters, conv2_filters, 3, padding="same")
        self.max_pooling2d_1 = nn.MaxPool2d(2)
        side = _pooled(_pooled(image_size, 3), 2)
        if global_pool:
            self.global_average_pooling2d = GlobalAveragePooling2D()
            self.flat_features = conv2_filters
        else:
            self.flatten = KerasFlatten()
            self.flat_features = side * side * conv2_filters
        self.dropout_p = float(dropout)
        # Dropout has no weights: with p=0 (the seed) the layers are left out, as in the seed.
        self.dropout = nn.Dropout(self.dropout_p) if self.dropout_p else nn.Identity()
        self.dense = nn.Linear(self.flat_features, dense_units)
        self.dropout_1 = nn.Dropout(self.dropout_p) if self.dropout_p else nn.Identity()
        self.dense_1 = nn.Linear(dense_units, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras defaults: glorot_uniform kernels, zero biases.

        Keras' fan_in/fan_out for a conv kernel are receptive field x in/out channels, which is
        what torch's xavier_uniform_ computes for an OIHW weight, so the bounds agree.
        """
        for layer in (self.conv2d, self.conv2d_1, self.dense, self.dense_1):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a float batch [N, C, H, W] scaled as in training (see data.images)."""
        # Pool before ReLU: max and ReLU commute (ReLU is monotone), so outputs and gradients are
        # the seed's, but ReLU and its backward then touch a 9x (4x) smaller tensor: at 640x640
        # the first conv output is 52 MB per image, and ReLU on it cost ~25% of a CPU step.
        # In-place ReLU is valid: max-pool's backward needs its indices, not its output.
        if self._banded_now(x):
            x = conv_pool_relu(x, self.conv2d.weight, self.conv2d.bias, 3)
        else:
            x = torch.relu_(self.max_pooling2d(self.conv2d(x)))
        return self._after_block(x)

    def forward_bytes(self, x: Tensor, table: Tensor) -> Tensor | None:
        """`forward(f)` for a uint8 batch x, where f[:, c] = table[c][x[:, c]]
        (`data.images.byte_table`), with the first block reading the bytes itself, forward and
        backward: the same numbers without the float batch, whose conversion took 12% of a
        forward pass at 640 px. Only on the CPU where the C kernel takes the block, and while no
        hook watches it or the network (a hook on the network expects `forward`'s float input)
        and nothing traces or compiles the model; None elsewhere (convert the batch and call the
        network then)."""
        weight, bias = self.conv2d.weight, self.conv2d.bias
        if is_hooked(self) or not self._may_band(x):
            return None
        if _capturing() or not fused_takes_bytes(x, table, weight, bias, 3):
            return None
        return self._after_block(conv_pool_relu(x, weight, bias, 3, table=table))

    def _after_block(self, x: Tensor) -> Tensor:
        """Everything after the first conv block: logits from its pooled, ReLU'd output. On the
        CPU, where banding is on and nothing watches, traces or compiles the layers
        (leafnet.pooling): to train, the second max-pool and its ReLU are one C pass each way,
        the same numbers and gradients; without a gradient, the whole second block is one C
        pass, its sums rounded in another order than oneDNN's (about 1e-7)."""
        if self._fuse_second_block(x):
            x = second_block(x, self.conv2d_1.weight, self.conv2d_1.bias)
        else:
            x = self.conv2d_1(x)
            x = pool_relu(x) if self._fuse_pool(x) else torch.relu_(self.max_pooling2d_1(x))
        x = self.global_average_pooling2d(x) if self.global_pool else self.flatten(x)
        x = torch.relu_(self.dense(self.dropout(x)))
        return self.dense_1(self.dropout_1(x))

    def _fuse_pool(self, x: Tensor) -> bool:
        """Whether the second max-pool and its ReLU run as one C pass (leafnet.pooling): with at
        least an image per core, as the kernel gives each core whole images (fewer, as in a
        one-photo prediction, run the layers, which split an image over the cores)."""
        hooked = is_hooked(self.max_pooling2d_1)
        if not self.banded or hooked or _capturing() or not pool_relu_takes(x):
            return False
        return x.shape[0] >= torch.get_num_threads()

    def _fuse_second_block(self, x: Tensor) -> bool:
        """Whether the second conv block runs as one C pass (leafnet.pooling.second_block): no
        gradient wanted, no hook on its layers, no autocast (the kernel is float32) and nothing
        tracing or compiling the model."""
        hooked = is_hooked(self.conv2d_1) or is_hooked(self.max_pooling2d_1)
        if not self.banded or hooked or _capturing() or _autocast_on("cpu"):
            return False
        return second_block_takes(x, self.conv2d_1.weight, self.conv2d_1.bias)

    def _may_band(self, x: Tensor) -> bool:
        """Banding on, on the CPU, and no hook on `conv2d` or `max_pooling2d` (which must see
        their own outputs)."""
        hooked = is_hooked(self.conv2d) or is_hooked(self.max_pooling2d)
        return self.banded and self.conv1_in_bands and x.device.type == "cpu" and not hooked

    def _banded_now(self, x: Tensor) -> bool:
        """Whether this forward computes the first block in bands of rows (leafnet.banded): the
        same numbers without conv1's 52 MB per image ever leaving the cache. Only on the CPU
        (GPUs keep cuDNN's layers: a band per kernel launch would be slow there), and only while
        no hook watches `conv2d` or `max_pooling2d`, so a hook always sees their output. To
        train, always; to predict or validate, where the fused C kernel takes the block (about
        half the time of the layers' convolution and max-pool), but never while TorchScript
        traces or torch.compile/torch.export capture the model: a C call in bands is nothing they
        can record. Under precision=bf16-mixed only where the C kernel takes the block: the block
        then runs in float32 and the rest of the network in bfloat16, which measured faster than
        float32 throughout or bfloat16 layers throughout; PyTorch's band kernels measured slower
        than the bfloat16 layers, so without the kernel the layers run (docs/performance.md)."""
        if not self._may_band(x):
            return False
        if self.training and torch.is_grad_enabled() and not _autocast_on("cpu"):
            return True
        return not _capturing() and fused_takes(x, self.conv2d.weight, self.conv2d.bias, 3)

    @property
    def hidden_layer(self) -> str:
        """The ReLU Dense layer whose dying units `callbacks.DeadUnits` watches."""
        return "dense"

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last conv layer: what Grad-CAM attributes to."""
        return self.conv2d_1

    @property
    def feature_layers(self) -> dict[str, nn.Module]:
        """The conv layers whose feature maps `explain` draws (after ReLU), by Keras name."""
        return {"conv2d": self.conv2d, "conv2d_1": self.conv2d_1}

    def layer_table(self) -> list[LayerInfo]:
        """The rows of Keras' model.summary() for this network, shapes in channels-last order."""
        s1 = self.image_size
        s2 = _pooled(s1, 3)
        s3 = _pooled(s2, 2)
        c1 = self.conv2d.out_channels
        c2 = self.conv2d_1.out_channels

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        features = (None, self.flat_features)
        hidden = (None, self.dense.out_features)
        rows = [
            LayerInfo("conv2d", "Conv2D", (None, s1, s1, c1), count(self.conv2d)),
            LayerInfo("max_pooling2d", "MaxPooling2D", (None, s2, s2, c1), 0),
            LayerInfo("conv2d_1", "Conv2D", (None, s2, s2, c2), count(self.conv2d_1)),
            LayerInfo("max_pooling2d_1", "MaxPooling2D", (None, s3, s3, c2), 0),
            LayerInfo("global_average_pooling2d", "GlobalAveragePooling2D", features, 0)
            if self.global_pool
            else LayerInfo("flatten", "Flatten", features, 0),
            LayerInfo("dropout", "Dropout", features, 0),
            LayerInfo("dense", "Dense", hidden, count(self.dense)),
            LayerInfo("dropout_1", "Dropout", hidden, 0),
            LayerInfo("dense_1", "Dense", (None, self.num_classes), count(self.dense_1)),
        ]
        return [r for r in rows if r.kind != "Dropout" or self.dropout_p]

    def forward_flops(self) -> int:
        """Multiply-adds of one forward pass for one image (convolutions and dense layers)."""
        s1 = self.image_size
        s2 = _pooled(s1, 3)
        conv1 = s1 * s1 * self.conv2d.out_channels * self.in_channels * 9
        conv2 = s2 * s2 * self.conv2d_1.out_channels * self.conv2d.out_channels * 9
        dense = self.flat_features * self.dense.out_features
        dense_1 = self.dense.out_features * self.num_classes
        return conv1 + conv2 + dense + dense_1


def glorot_bound(weight: Tensor) -> float:
    """Keras' glorot_uniform limit sqrt(6 / (fan_in + fan_out)) for an OIHW or [out, in] weight."""
    receptive = math.prod(weight.shape[2:]) if weight.dim() > 2 else 1
    fan_in = weight.shape[1] * receptive
    fan_out = weight.shape[0] * receptive
    return math.sqrt(6.0 / (fan_in + fan_out))
