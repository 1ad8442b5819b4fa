"""Shared machinery of every importer: read a PyTorch checkpoint, convert layouts, and
validate the converted tree against the model's abstract tree before a single value is used.

Importers (``unet``, ``vae``, ``wav2vec2``, ``clip_text`` ...) only write a *rename table*:
torch key -> (our dotted parameter path, layout converter). ``apply_converted`` then checks
every key and shape and raises one ``WeightImportError`` naming the first mismatch.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flax import nnx
from safetensors.numpy import load_file


class WeightImportError(ValueError):
    """A checkpoint does not match the model it is imported into."""


# ----------------------------------------------------------------------------- reading

def read_checkpoint(path: str, *, prefer: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Flat ``{torch_key: np.ndarray(f32)}`` from a safetensors file, a ``*.bin`` file, or a
    directory holding either (sharded ``*.safetensors`` with an index json is fine).

    ``prefer`` lists file names to look for first in a directory (e.g.
    ``diffusion_pytorch_model.safetensors``).
    """
    if not os.path.exists(path):
        raise WeightImportError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        names = sorted(os.listdir(path))
        for p in prefer:
            if p in names:
                return read_checkpoint(os.path.join(path, p))
        st = [n for n in names if n.endswith(".safetensors")]
        if st:
            out: dict[str, np.ndarray] = {}
            for n in st:
                out.update(read_checkpoint(os.path.join(path, n)))
            return out
        bins = [n for n in names if n.endswith(".bin") or n.endswith(".pt") or n.endswith(".pth")]
        if bins:
            out = {}
            for n in bins:
                out.update(read_checkpoint(os.path.join(path, n)))
            return out
        raise WeightImportError(f"{path}: no *.safetensors or *.bin weights in this directory")
    if path.endswith(".safetensors"):
        try:
            sd = load_file(path)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise WeightImportError(f"{path}: not a readable safetensors file ({e})") from None
        return {k: np.asarray(v, dtype=np.float32) for k, v in sd.items()}
    if path.endswith((".bin", ".pt", ".pth", ".ckpt")):
        try:
            import torch  # noqa: PLC0415 (the torch extra, parity oracle only)
        except ImportError:
            raise WeightImportError(f"{path}: reading PyTorch pickles needs torch "
                                    "(pip install '.[torch]'), or convert to safetensors") from None
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        return {k: v.float().numpy() for k, v in sd.items() if hasattr(v, "float")}
    raise WeightImportError(f"{path}: expected a .safetensors or .bin file, or a directory")


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise WeightImportError(f"{path}: missing (the model config of this checkpoint)") from None
    except json.JSONDecodeError as e:
        raise WeightImportError(f"{path}: not valid JSON ({e})") from None


# ----------------------------------------------------------------------------- layouts

def linear(w: np.ndarray) -> np.ndarray:
    """torch Linear ``[out, in]`` -> ours ``[in, out]``."""
    return np.ascontiguousarray(w.T)


def conv2d(w: np.ndarray) -> np.ndarray:
    """torch Conv2d ``[O, I, kh, kw]`` -> ours ``[kh, kw, I, O]``."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def conv1d(w: np.ndarray) -> np.ndarray:
    """torch Conv1d ``[O, I, k]`` -> ours ``[k, I, O]``."""
    return np.ascontiguousarray(w.transpose(2, 1, 0))


def conv1x1_as_linear(w: np.ndarray) -> np.ndarray:
    """torch 1x1 Conv2d ``[O, I, 1, 1]`` (or Linear) -> Linear kernel ``[I, O]``."""
    return np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1]).T)


def identity(w: np.ndarray) -> np.ndarray:
    return w


Converter = Callable[[np.ndarray], np.ndarray]


def auto_layout(key: str, w: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
    """Default converter by rank: 2-d weights are Linear, 4-d Conv2d, 3-d Conv1d.

    A 4-d ``[O, I, 1, 1]`` kernel going into a 2-d target is a 1x1 conv used as Linear.
    """
    if w.ndim == 2 and key.endswith("weight"):
        return linear(w)
    if w.ndim == 4:
        return conv1x1_as_linear(w) if len(target_shape) == 2 else conv2d(w)
    if w.ndim == 3 and key.endswith("weight"):
        return conv1d(w)
    return w


# ----------------------------------------------------------------------------- applying

def path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Dotted path -> shape for every ``nnx.Param`` of a (possibly abstract) model."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {path_str(p): tuple(v.get_value().shape) for p, v in flat}


def convert(torch_sd: Mapping[str, np.ndarray], rename: Callable[[str], str | None],
            target_shapes: Mapping[str, tuple[int, ...]], *, source: str = "checkpoint",
            converter: Callable[[str, np.ndarray, tuple], np.ndarray] = auto_layout,
            ) -> dict[str, np.ndarray]:
    """Rename and re-layout every torch key. ``rename`` returns our dotted path or None (skip).

    Raises on the first key that maps to nothing we have, or whose converted shape differs.
    """
    out: dict[str, np.ndarray] = {}
    for key in sorted(torch_sd):
        ours = rename(key)
        if ours is None:
            continue
        if ours not in target_shapes:
            raise WeightImportError(f"{source}: key {key!r} maps to {ours!r}, which this model "
                                    "does not have (config mismatch?)")
        w = converter(key, np.asarray(torch_sd[key]), target_shapes[ours])
        if tuple(w.shape) != tuple(target_shapes[ours]):
            raise WeightImportError(f"{source}: {key!r} has shape {tuple(torch_sd[key].shape)} -> "
                                    f"{tuple(w.shape)}, but {ours!r} expects {tuple(target_shapes[ours])}")
        if ours in out:
            raise WeightImportError(f"{source}: two keys map to {ours!r}")
        out[ours] = w
    return out


def apply_converted(model: nnx.Module, converted: Mapping[str, np.ndarray], *,
                    allow_missing: Iterable[str] = (), source: str = "checkpoint") -> list[str]:
    """Validate ``converted`` against the model's parameter tree, then write it in place.

    Every model parameter must be covered unless it matches one of the ``allow_missing``
    regexes (layers the base model does not have: they keep their — zero — init).
    Returns the list of parameters left at their init.
    """
    shapes = param_shapes(model)
    patterns = [re.compile(p) for p in allow_missing]
    for k, v in converted.items():
        if k not in shapes:
            raise WeightImportError(f"{source}: {k!r} is not a parameter of this model")
        if tuple(v.shape) != shapes[k]:
            raise WeightImportError(f"{source}: {k!r} has shape {tuple(v.shape)}, model expects {shapes[k]}")
    missing = [k for k in shapes if k not in converted]
    not_allowed = [k for k in missing if not any(p.search(k) for p in patterns)]
    if not_allowed:
        raise WeightImportError(f"{source}: model parameter {not_allowed[0]!r} has no weight in the "
                                f"checkpoint ({len(not_allowed)} missing in all)")
    state = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        k = path_str(path)
        if k in converted:
            old = var.get_value()
            var.set_value(np.asarray(converted[k], dtype=old.dtype))
    nnx.update(model, nnx.from_flat_state(flat))
    return missing
