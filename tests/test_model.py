"""LeafNet: per-layer shapes and parameter counts, Keras initialisation, argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from leafnet.model import LeafNet, glorot_bound

# (LeafNet kwargs, expected rows (name, kind, output shape, params)), the numbers worked by hand:
# conv params = 9*in*out + out; pool side = floor((side - k) / k) + 1; dense = in*out + out.
CONFIGS = [
    (
        {},  # the seed's model.summary(), exactly
        [
            ("conv2d", "Conv2D", (None, 640, 640, 32), 896),
            ("max_pooling2d", "MaxPooling2D", (None, 213, 213, 32), 0),
            ("conv2d_1", "Conv2D", (None, 213, 213, 16), 4624),
            ("max_pooling2d_1", "MaxPooling2D", (None, 106, 106, 16), 0),
            ("flatten", "Flatten", (None, 179776), 0),
            ("dense", "Dense", (None, 8), 1438216),
            ("dense_1", "Dense", (None, 3), 27),
        ],
    ),
    (
        {"image_size": 320, "dense_units": 16, "num_classes": 5},
        [
            ("conv2d", "Conv2D", (None, 320, 320, 32), 896),
            ("max_pooling2d", "MaxPooling2D", (None, 106, 106, 32), 0),
            ("conv2d_1", "Conv2D", (None, 106, 106, 16), 4624),
            ("max_pooling2d_1", "MaxPooling2D", (None, 53, 53, 16), 0),
            ("flatten", "Flatten", (None, 44944), 0),
            ("dense", "Dense", (None, 16), 719120),
            ("dense_1", "Dense", (None, 5), 85),
        ],
    ),
    (
        {
            "image_size": 100,
            "in_channels": 1,
            "conv1_filters": 8,
            "conv2_filters": 4,
            "dense_units": 32,
            "num_classes": 2,
        },
        [
            ("conv2d", "Conv2D", (None, 100, 100, 8), 80),
            ("max_pooling2d", "MaxPooling2D", (None, 33, 33, 8), 0),
            ("conv2d_1", "Conv2D", (None, 33, 33, 4), 292),
            ("max_pooling2d_1", "MaxPooling2D", (None, 16, 16, 4), 0),
            ("flatten", "Flatten", (None, 1024), 0),
            ("dense", "Dense", (None, 32), 32800),
            ("dense_1", "Dense", (None, 2), 66),
        ],
    ),
]


@pytest.mark.parametrize(("kwargs", "rows"), CONFIGS, ids=["seed", "320-d16-c5", "100-gray-small"])
def test_layer_table_params_and_shapes(kwargs: dict, rows: list) -> None:
    model = LeafNet(**kwargs)
    table = [(r.name, r.kind, r.output_shape, r.params) for r in model.layer_table()]
    assert table == rows
    assert sum(r[3] for r in rows) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("kwargs", "rows"), CONFIGS[1:], ids=["320-d16-c5", "100-gray-small"])
def test_layer_table_matches_real_forward_shapes(kwargs: dict, rows: list) -> None:
    """The table's channels-last shapes are what the layers really output."""
    model = LeafNet(**kwargs)
    seen: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_children():
        module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
    size, channels = model.image_size, model.in_channels
    logits = model(torch.rand(2, channels, size, size))
    assert logits.shape == (2, rows[-1][2][-1])
    for name, _, shape, _ in rows:
        got = seen[name]
        # NCHW -> (None, H, W, C) to compare with Keras' channels-last shape
        keras_shape = (None, got[2], got[3], got[1]) if len(got) == 4 else (None, *got[1:])
        assert keras_shape == shape, name


def test_seed_total_params() -> None:
    assert sum(p.numel() for p in LeafNet().parameters()) == 1_443_763


def _ks_uniform(x: torch.Tensor, bound: float) -> float:
    """Kolmogorov-Smirnov distance between the sample and U(-bound, bound)."""
    x, _ = torch.sort(x.double().flatten())
    n = x.numel()
    cdf = (x + bound) / (2 * bound)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(torch.maximum(i / n - cdf, cdf - (i - 1) / n).max())


@pytest.mark.parametrize("layer", ["conv2d", "conv2d_1", "dense", "dense_1"])
def test_glorot_uniform_kernels_and_zero_biases(layer: str) -> None:
    """Keras' glorot_uniform: U(-b, b) with b = sqrt(6 / (fan_in + fan_out)), checked in law."""
    torch.manual_seed(0)
    model = LeafNet(image_size=64, dense_units=16, num_classes=8)
    module = getattr(model, layer)
    w = module.weight.detach()
    receptive = math.prod(w.shape[2:]) if w.dim() == 4 else 1
    fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
    bound = math.sqrt(6 / (fan_in + fan_out))
    assert glorot_bound(w) == pytest.approx(bound)

    n = w.numel()
    assert float(w.abs().max()) <= bound
    # the sample fills the interval: the largest |w| of n uniforms is within a few b/n of b
    assert float(w.abs().max()) >= bound * (1 - 10 / n)
    # mean 0 and variance b^2/3, within 5 standard errors
    assert abs(float(w.mean())) <= 5 * bound / math.sqrt(3 * n)
    var_se = bound**2 * math.sqrt(4 / 45 / n)  # sd of the sample variance of a uniform
    assert abs(float(w.var()) - bound**2 / 3) <= 5 * var_se
    # the whole distribution: KS distance below the 0.1% critical value 1.95 / sqrt(n)
    assert _ks_uniform(w, bound) < 1.95 / math.sqrt(n)
    assert torch.count_nonzero(module.bias) == 0


def test_init_is_not_torch_default() -> None:
    """torch's default (kaiming, b = 1/sqrt(fan_in)) would exceed the Glorot bound for conv2d."""
    torch.manual_seed(0)
    default = torch.nn.Conv2d(3, 32, 3)
    assert float(default.weight.detach().abs().max()) > glorot_bound(default.weight)
    assert float(LeafNet(image_size=32).conv2d.weight.detach().abs().max()) <= glorot_bound(
        default.weight
    )


def test_logits_and_keras_flatten_order() -> None:
    """Flatten is channels-last: dense input index (h, w, c) -> h*W*C + w*C + c, as in Keras."""
    model = LeafNet(image_size=12, conv2_filters=2)
    x = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(1, 2, 2, 3)  # N, C, H, W
    flat = model.flatten(x)
    assert flat[0, :4].tolist() == [x[0, 0, 0, 0], x[0, 1, 0, 0], x[0, 0, 0, 1], x[0, 1, 0, 1]]


def test_forward_flops_seed() -> None:
    # conv 640^2*32*3*9 + 213^2*16*32*9 + dense 179776*8 + 8*3
    assert LeafNet().forward_flops() == 353_894_400 + 209_060_352 + 1_438_208 + 24
