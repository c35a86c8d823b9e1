"""Keras weight files in and out of LeafNet, with h5py only (no TensorFlow, no Keras).

Reads:
- a Keras 3 `.keras` archive (a zip holding `model.weights.h5`),
- a Keras 3 `.weights.h5` (`layers/<name>/vars/<i>`),
- a legacy HDF5 model or weights file, as Keras 2 / tf.keras and Keras 3's `save("x.h5")` write
  it (`model_weights/<layer>/...` listed by the `layer_names` and `weight_names` attributes).

Writes a Keras 3 `.weights.h5` that `model.load_weights()` of the seed's Sequential accepts.

Keras numbers layer names per process (the seed's summary shows `conv2d_12`, `dense_13`), so
weighted layers are matched by order and type (Conv2D then Dense), never by exact name. Layouts:
a Conv2D kernel is HWIO in Keras and OIHW in torch; a Dense kernel is [in, out] in Keras and
[out, in] in torch. LeafNet flattens channels-last like Keras, so Dense kernels only transpose.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from leafnet.errors import LeafnetError
from leafnet.files import atomic_path
from leafnet.model import LeafNet

WEIGHTS_IN_ARCHIVE = "model.weights.h5"
# The groups a Keras 3 weights file keeps its layers under (3.0-3.1 used the second name).
KERAS3_LAYER_GROUPS = ("layers", "_layer_checkpoint_dependencies")
# LeafNet's weighted layers, in Keras order, with the Keras class each one is.
WEIGHTED = (("conv2d", "Conv2D"), ("conv2d_1", "Conv2D"), ("dense", "Dense"), ("dense_1", "Dense"))


@dataclass
class FileLayer:
    """One weighted layer read from a Keras file: its name there, kernel and bias arrays."""

    name: str
    kernel: np.ndarray
    bias: np.ndarray

    @property
    def kind(self) -> str:
        return {4: "Conv2D", 2: "Dense"}.get(self.kernel.ndim, f"{self.kernel.ndim}-D kernel")


def _natural_key(name: str) -> tuple[str, int]:
    """`conv2d` < `conv2d_1` < `conv2d_2` < `conv2d_10`: Keras' numbering, not string order."""
    match = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    assert match is not None
    return match.group(1), int(match.group(2) or -1)


def _text(value: bytes | str) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


# An untrusted file may not make leafnet read other files or unbounded memory: datasets must be
# stored inside the file (no external storage, no virtual datasets, no soft or external links on
# any path), and the arrays together, like a .keras archive's weights member, are read only up to
# this size (LeafNet at 8192 px: ~1 GB).
MAX_WEIGHTS_BYTES = 2 * 2**30


def _child(group: h5py.Group, path: str, where: str) -> h5py.Group | h5py.Dataset:
    """`group[path]` walked one name at a time, refusing links at every step: a soft or external
    link anywhere on the path would read another object or another file."""
    for name in path.split("/"):
        link = group.get(name, getlink=True)
        if link is None:
            raise LeafnetError(
                f"{where}: {group.name.rstrip('/')}/{name} is missing; is the file complete?"
            )
        if not isinstance(link, h5py.HardLink):
            raise LeafnetError(
                f"{where}: {group.name.rstrip('/')}/{name} is a link to elsewhere; leafnet reads "
                "only data stored in the file itself (re-save the model with Keras)"
            )
        group = group[name]
    return group


def _dataset(group: h5py.Group, name: str, where: str) -> h5py.Dataset:
    """A weight dataset, checked from its metadata alone: stored in the file, a float array of
    a layer's rank. Nothing is read yet."""
    ds = _child(group, name, where)
    if not isinstance(ds, h5py.Dataset):
        raise LeafnetError(f"{where}: {ds.name} is not an array of weights")
    if ds.external or ds.is_virtual:
        raise LeafnetError(
            f"{where}: {ds.name} keeps its data in another file; leafnet reads only data "
            "stored in the file itself (re-save the model with Keras)"
        )
    if ds.dtype.kind != "f" or ds.ndim not in (1, 2, 4):
        raise LeafnetError(
            f"{where}: {ds.name} is a {ds.ndim}-D {ds.dtype} array; Conv2D and Dense weights are "
            "1-, 2- or 4-D floats. Is this the seed's model?"
        )
    return ds


# A layer's name and its (name, dataset) pairs, checked but not yet read.
Unread = list[tuple[str, list[tuple[str, h5py.Dataset]]]]


def _read_all(layers: Unread, where: str, max_bytes: int) -> list[FileLayer]:
    """Read the checked datasets, once their declared sizes together fit `max_bytes`: a small file
    can declare compressed, unallocated arrays of gigabytes."""
    total = sum(ds.nbytes for _, named in layers for _, ds in named)
    if total > max_bytes:
        raise LeafnetError(
            f"{where}: its weights declare {total / 2**20:,.0f} MB, more than the "
            f"{max_bytes / 2**20:,.0f} MB leafnet reads from a Keras file; not the seed's model"
        )
    return [
        _kernel_and_bias(layer, [(n, np.asarray(ds)) for n, ds in named], where)
        for layer, named in layers
    ]


def _kernel_and_bias(layer: str, named: list[tuple[str, np.ndarray]], where: str) -> FileLayer:
    """Pick kernel and bias out of a layer's arrays (by name when named, else kernel first)."""
    kernel = [a for n, a in named if n.split("/")[-1].startswith("kernel")]
    bias = [a for n, a in named if n.split("/")[-1].startswith("bias")]
    if len(kernel) == 1 and len(bias) == 1:
        return FileLayer(layer, kernel[0], bias[0])
    if len(named) == 2 and named[0][1].ndim > 1 and named[1][1].ndim == 1:
        return FileLayer(layer, named[0][1], named[1][1])
    shapes = [tuple(a.shape) for _, a in named]
    raise LeafnetError(
        f"{where}: layer {layer!r} holds {len(named)} arrays {shapes}; LeafNet's Conv2D and Dense "
        "layers have exactly a kernel and a bias. Is this the seed's model?"
    )


def _keras3_layers(root: h5py.Group, where: str) -> Unread:
    """Weighted layers of a Keras 3 weights file, in the model's order."""
    name = next((g for g in KERAS3_LAYER_GROUPS if g in root), None)
    if name is None:
        raise LeafnetError(
            f"{where}: no 'layers' group; not a Keras 3 weights file. Save it with Keras' "
            "model.save('m.keras') or model.save_weights('m.weights.h5')"
        )
    group = _child(root, name, where)
    layers = []
    for name in sorted(group, key=_natural_key):
        layer = _child(group, name, where)
        if layer.get("vars", getlink=True) is None:
            continue
        vars_group = _child(layer, "vars", where)
        if len(vars_group) == 0:
            continue
        layers.append(
            (name, [(k, _dataset(vars_group, k, where)) for k in sorted(vars_group, key=int)])
        )
    # Keras 3 keys layers per class in model order ("conv2d", "conv2d_1", "dense", ...), so the
    # natural order is the model's within a class; across classes the type check decides.
    return layers


def _legacy_layers(root: h5py.Group, where: str) -> Unread:
    """Weighted layers of a legacy HDF5 file, in the order its `layer_names` attribute gives.
    A legacy weight name is a path below the layer group ("dense/kernel:0")."""
    layers = []
    for name in map(_text, root.attrs["layer_names"]):
        group = _child(root, name, where)
        weight_names = [_text(w) for w in group.attrs.get("weight_names", [])]
        if weight_names:
            layers.append((name, [(w, _dataset(group, w, where)) for w in weight_names]))
    return layers


def _read_h5(f: h5py.File, where: str, max_bytes: int) -> list[FileLayer]:
    if "model_weights" in f:  # a legacy full-model file (Keras 2, tf.keras, Keras 3 .h5)
        layers = _legacy_layers(_child(f, "model_weights", where), where)
    elif "layer_names" in f.attrs:  # a legacy weights-only file (save_weights("x.h5"))
        layers = _legacy_layers(f, where)
    else:
        layers = _keras3_layers(f, where)
    return _read_all(layers, where, max_bytes)


def read_keras_layers(path: str | Path, max_bytes: int | None = None) -> list[FileLayer]:
    """The weighted layers of any supported Keras file, in model order, refused before reading
    when their arrays together declare more than `max_bytes`."""
    path = Path(path)
    where = f"keras file {path}"
    max_bytes = MAX_WEIGHTS_BYTES if max_bytes is None else max_bytes
    if not path.is_file():
        raise LeafnetError(f"{where}: no such file; give the path of a .keras, .weights.h5 or .h5")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if WEIGHTS_IN_ARCHIVE not in archive.namelist():
                    raise LeafnetError(
                        f"{where}: a zip without {WEIGHTS_IN_ARCHIVE}; not a Keras 3 .keras "
                        "archive. Save the model with Keras 3's model.save('m.keras')"
                    )
                # Read at most the cap: a member's declared size can lie (a zip bomb).
                with archive.open(WEIGHTS_IN_ARCHIVE) as member:
                    data = member.read(max_bytes + 1)
                if len(data) > max_bytes:
                    raise LeafnetError(
                        f"{where}: {WEIGHTS_IN_ARCHIVE} unpacks to more than "
                        f"{max_bytes / 2**20:,.0f} MB; not the seed's model"
                    )
            with h5py.File(io.BytesIO(data), "r") as f:
                return _read_h5(f, where, max_bytes)
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as f:
                return _read_h5(f, where, max_bytes)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise LeafnetError(f"{where}: unreadable ({err}); is the file complete?") from None
    raise LeafnetError(
        f"{where}: neither HDF5 nor a zip archive; give a Keras .keras, .weights.h5 or .h5 file"
    )


def _keras_shape(layer: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The Keras (kernel, bias) shapes of a LeafNet layer."""
    weight = layer.weight
    if weight.dim() == 4:
        o, i, h, w = weight.shape
        return (h, w, i, o), (o,)
    return (weight.shape[1], weight.shape[0]), (weight.shape[0],)


def to_torch_kernel(kernel: np.ndarray) -> torch.Tensor:
    """Keras kernel -> torch weight: HWIO -> OIHW for Conv2D, [in, out] -> [out, in] for Dense."""
    t = torch.from_numpy(np.ascontiguousarray(kernel))
    return t.permute(3, 2, 0, 1) if t.dim() == 4 else t.t()


def to_keras_kernel(weight: torch.Tensor) -> np.ndarray:
    """torch weight -> Keras kernel (the inverse of `to_torch_kernel`)."""
    w = weight.detach().cpu()
    return np.ascontiguousarray((w.permute(2, 3, 1, 0) if w.dim() == 4 else w.t()).numpy())


def load_keras_weights(model: LeafNet, path: str | Path) -> LeafNet:
    """Copy the weights of a Keras file into `model` (in place) and return it.

    Raises `LeafnetError` naming the layer and both shapes when the file does not fit the model.
    """
    layers = read_keras_layers(path)
    where = f"keras file {path}"
    expected = [kind for _, kind in WEIGHTED]
    found = [layer.kind for layer in layers]
    if found != expected:
        raise LeafnetError(
            f"{where}: weighted layers {found} do not match LeafNet's {expected}; "
            "only the seed's Conv2D-Conv2D-Dense-Dense model can be loaded"
        )
    pairs = []
    for (name, kind), src in zip(WEIGHTED, layers, strict=True):
        module = getattr(model, name)
        kernel_shape, bias_shape = _keras_shape(module)
        for what, got, want in (
            ("kernel", src.kernel.shape, kernel_shape),
            ("bias", src.bias.shape, bias_shape),
        ):
            if tuple(got) != tuple(want):
                raise LeafnetError(
                    f"{where}: {kind} layer {name} (named {src.name!r} in the file): {what} shape "
                    f"{tuple(got)} in the file, {tuple(want)} in LeafNet; build LeafNet with the "
                    "file's image size and widths (data.image_size, model.*)"
                )
        pairs.append((module, src))
    # Copy only after every layer has been checked, so a refused file leaves the model untouched.
    with torch.no_grad():
        for module, src in pairs:
            module.weight.copy_(to_torch_kernel(src.kernel))
            module.bias.copy_(torch.from_numpy(np.asarray(src.bias)))
    return model


def save_keras_weights(model: LeafNet, path: str | Path) -> Path:
    """Write `model`'s weights as a Keras 3 `.weights.h5` for the seed's Sequential model.

    Keras 3 requires the `.weights.h5` suffix for `load_weights`, so the path must end with it.
    """
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise LeafnetError(f"{path}: Keras 3 loads weights only from a name ending in .weights.h5")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        layers = f.create_group("layers")
        for name, _ in WEIGHTED:
            module = getattr(model, name)
            vars_group = layers.create_group(name).create_group("vars")
            vars_group.attrs["name"] = name
            vars_group.create_dataset("0", data=to_keras_kernel(module.weight))
            vars_group.create_dataset("1", data=module.bias.detach().cpu().numpy())
        # The weightless layers (pooling, flatten, dropout) are empty groups, as Keras writes them.
        for name in (row.name for row in model.layer_table() if row.params == 0):
            layers.create_group(name).create_group("vars").attrs["name"] = name
        f.create_group("vars").attrs["name"] = "sequential"
    return path
