"""SyncNet (Chung & Zisserman 2016) in Flax NNX, and the importer of ``syncnet_python``'s weights.

Why a port: LSE-C / LSE-D, the lip-sync numbers every talking-head paper reports, are defined
by one network, ``syncnet_v2.model`` of joonson/syncnet_python (``SyncNetModel.S``), scored as
Wav2Lip's ``evaluation/scores_LSE`` does. The towers here follow that class layer for layer:

    audio  MFCC [N, 13, 20, 1] (13 cepstra x 20 frames of 10 ms = 0.2 s)
           -> 6 conv/BN/ReLU (3x3 ... 5x4), 3 max-pools -> [N, 1, 1, 512] -> FC 512 -> FC 1024
    lips   BGR pixels 0..255 [N, 5, 224, 224, 3] (5 frames at 25 fps = 0.2 s)
           -> 6 conv3d/BN/ReLU (5x7x7 ... 1x6x6), 3 max-pools -> [N, 1, 1, 1, 512] -> FC 512 -> FC 1024

Channels last (XLA's layout); BatchNorm always uses the running statistics (the reference is
only ever run in ``eval()``). The ``.model`` file is a pickled PyTorch state dict whose keys
are the ``nn.Sequential`` indices (``netcnnaud.0.weight`` ...): :func:`load_syncnet` renames
them, transposes the kernels, and checks every key and shape against the abstract model before
one value is written (``weights/common.py``'s rules).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models.layers import Conv, Dense
from starcaster_jax.weights.common import WeightImportError, convert, path_str

# (out channels, kernel, stride, padding, max-pool after it (window, stride, padding) or None)
AUDIO_CONVS = (
    (64, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1), (0, 0))),
    (192, (3, 3), (1, 1), (1, 1), ((3, 3), (1, 2), (0, 0))),
    (384, (3, 3), (1, 1), (1, 1), None),
    (256, (3, 3), (1, 1), (1, 1), None),
    (256, (3, 3), (1, 1), (1, 1), ((3, 3), (2, 2), (0, 0))),
    (512, (5, 4), (1, 1), (0, 0), None),
)
LIP_CONVS = (
    (96, (5, 7, 7), (1, 2, 2), (0, 0, 0), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
    (256, (1, 5, 5), (1, 2, 2), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 1, 1))),
    (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
    (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), None),
    (256, (1, 3, 3), (1, 1, 1), (0, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 0, 0))),
    (512, (1, 6, 6), (1, 1, 1), (0, 0, 0), None),
)
# index of each conv in the reference's nn.Sequential towers (its BatchNorm is the next index)
TORCH_CONV_INDEX = (0, 4, 8, 11, 14, 18)
BN_EPS = 1e-5


def _bn(n: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(n, use_running_average=True, momentum=0.9, epsilon=BN_EPS,
                         scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
                         bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)),
                         rngs=rngs)


class Tower(nnx.Module):
    """Conv/BN/ReLU(/max-pool) stack, then flatten and FC 512 -> BN -> ReLU -> FC ``embed_dim``."""

    def __init__(self, in_ch: int, spec, embed_dim: int, *, rngs: nnx.Rngs):
        self.pools = tuple(p for *_, p in spec)
        convs, bns, c = [], [], in_ch
        for out, k, s, p, _ in spec:
            convs.append(Conv(c, out, k, stride=s, padding=tuple((q, q) for q in p), rngs=rngs))
            bns.append(_bn(out, rngs))
            c = out
        self.convs, self.bns = nnx.List(convs), nnx.List(bns)
        self.fc1 = Dense(c, 512, names=("embed", "mlp"), rngs=rngs)
        self.fc_bn = _bn(512, rngs)
        self.fc2 = Dense(512, embed_dim, names=("mlp", "embed"), rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:          # [N, ..., C] -> [N, 512 * spatial]
        for conv, bn, pool in zip(self.convs, self.bns, self.pools):
            x = jax.nn.relu(bn(conv(x)))
            if pool is not None:
                win, stride, pad = pool
                x = nnx.max_pool(x, win, strides=stride, padding=tuple((q, q) for q in pad))
        x = jnp.moveaxis(x, -1, 1)                          # torch's (C, ...) flatten order
        return x.reshape(x.shape[0], -1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.relu(self.fc_bn(self.fc1(self.features(x)))))


class SyncNet(nnx.Module):
    """``syncnet_python``'s ``S``: ``audio(mfcc [N, 13, 20, 1])`` and ``lips(bgr [N, 5, 224, 224, 3])``
    -> ``[N, embed_dim]`` embeddings whose Euclidean distance is small when the two are in sync."""

    def __init__(self, embed_dim: int = 1024, *, rngs: nnx.Rngs):
        self.aud = Tower(1, AUDIO_CONVS, embed_dim, rngs=rngs)
        self.lip = Tower(3, LIP_CONVS, embed_dim, rngs=rngs)

    def audio(self, mfcc: jax.Array) -> jax.Array:
        return self.aud(mfcc)

    def lips(self, frames: jax.Array) -> jax.Array:
        return self.lip(frames)


# ----------------------------------------------------------------------------- importer

_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_TOWERS = {"netcnnaud": "aud", "netcnnlip": "lip", "netfcaud": "aud", "netfclip": "lip"}


def rename(key: str) -> str | None:
    """Reference key -> our dotted path (``netcnnlip.4.weight`` -> ``lip.convs.1.kernel``), None
    for what we do not keep (``num_batches_tracked``); ValueError for a key of no SyncNet."""
    for prefix in ("__S__.", "module."):
        key = key.removeprefix(prefix)
    parts = key.split(".")
    if len(parts) != 3 or parts[0] not in _TOWERS or not parts[1].isdigit():
        raise WeightImportError(f"key {key!r} is not a syncnet_python SyncNetModel.S parameter")
    seq, idx, leaf = parts[0], int(parts[1]), parts[2]
    tower = _TOWERS[seq]
    if leaf == "num_batches_tracked":
        return None
    if seq.startswith("netfc"):
        layer = {0: "fc1", 1: "fc_bn", 3: "fc2"}.get(idx)
        if layer is None:
            raise WeightImportError(f"key {key!r}: {seq} has no layer {idx}")
        is_bn = layer == "fc_bn"
    elif idx in TORCH_CONV_INDEX:
        layer, is_bn = f"convs.{TORCH_CONV_INDEX.index(idx)}", False
    elif idx - 1 in TORCH_CONV_INDEX:
        layer, is_bn = f"bns.{TORCH_CONV_INDEX.index(idx - 1)}", True
    else:
        raise WeightImportError(f"key {key!r}: {seq} has no parameters at index {idx}")
    if is_bn:
        name = _BN_NAMES.get(leaf)
    else:
        name = {"weight": "kernel", "bias": "bias"}.get(leaf)
    if name is None:
        raise WeightImportError(f"key {key!r}: unexpected parameter {leaf!r}")
    return f"{tower}.{layer}.{name}"


def _layout(key: str, w: np.ndarray, target_shape: tuple) -> np.ndarray:
    if key.endswith("weight") and w.ndim >= 2:   # Linear [O, I] / Conv [O, I, *k] -> [*k, I, O]
        return np.ascontiguousarray(np.moveaxis(w, (0, 1), (-1, -2)) if w.ndim > 2 else w.T)
    return w


def _variables(model: nnx.Module) -> list[tuple[str, nnx.Variable]]:
    flat = nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    return [(path_str(p), v) for p, v in flat]


def _converted(state_dict: Mapping[str, np.ndarray], shapes: Mapping[str, tuple], source: str) -> dict:
    """Every reference key renamed, re-laid-out and checked against ``shapes``; every one of our
    weights and BatchNorm statistics covered (else one line naming the first problem)."""
    def named(key):
        try:
            return rename(key)
        except WeightImportError as e:
            raise WeightImportError(f"{source}: {e}") from None
    sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
    converted = convert(sd, named, shapes, source=source, converter=_layout)
    missing = [k for k in shapes if k not in converted]
    if missing:
        raise WeightImportError(f"{source}: SyncNet parameter {missing[0]!r} has no weight in the "
                                f"checkpoint ({len(missing)} missing in all)")
    return converted


def _write(model: SyncNet, converted: Mapping[str, np.ndarray]) -> SyncNet:
    for k, var in _variables(model):
        var.set_value(jnp.asarray(converted[k], var.get_value().dtype))
    return model


def import_state_dict(model: SyncNet, state_dict: Mapping[str, np.ndarray], *,
                      source: str = "checkpoint") -> SyncNet:
    """Write a reference state dict into ``model`` after checking every key and shape, weights
    and BatchNorm statistics."""
    converted = _converted(state_dict, {k: tuple(v.get_value().shape) for k, v in _variables(model)}, source)
    return _write(model, converted)


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The pickled state dict of ``syncnet_v2.model`` (any ``torch.save(state_dict)``; read with
    ``weights_only=True``: tensors only, no code from the pickle runs)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightImportError(f"{path}: no such SyncNet weights file")
    try:
        import torch  # noqa: PLC0415 (the torch extra: only reading the reference's pickle needs it)
    except ImportError:
        raise WeightImportError(f"{path}: reading syncnet_python's .model pickle needs torch") from None
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the same user error
        raise WeightImportError(f"{path}: not a PyTorch state dict ({type(e).__name__})") from None
    if not isinstance(sd, Mapping):
        raise WeightImportError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return {k: v.float().numpy() for k, v in sd.items() if hasattr(v, "float")}


def load_syncnet(path: str, *, embed_dim: int | None = None) -> SyncNet:
    """``syncnet_v2.model`` -> :class:`SyncNet` with its weights (``embed_dim`` read from the file).
    The checkpoint is checked against the abstract model before any weight is allocated."""
    sd = read_torch_state_dict(path)
    if embed_dim is None:
        w = sd.get("netfcaud.3.weight", sd.get("__S__.netfcaud.3.weight"))
        embed_dim = int(w.shape[0]) if w is not None else 1024
    abstract = nnx.eval_shape(lambda: SyncNet(embed_dim, rngs=nnx.Rngs(0)))
    converted = _converted(sd, {k: tuple(v.get_value().shape) for k, v in _variables(abstract)}, path)
    return _write(SyncNet(embed_dim, rngs=nnx.Rngs(0)), converted)
