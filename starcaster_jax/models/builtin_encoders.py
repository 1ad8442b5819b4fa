"""The seven built-in encoders trained on the built-in corpus: how they are saved, found and loaded.

``python -m launch.train_encoders`` writes ``<workdir>/encoders/<name>/`` for every name of
``ENCODER_NAMES``; training, generation and evaluation code load them with ``load``::

    name            module                       role
    vae             vae.AutoencoderKL            frames <-> latents (scaling factor estimated
                                                 after training, carried in its config)
    audio           audio.BuiltinAudioEncoder    16 kHz speech -> hidden states (log-mel + transformer)
    identity_cond   identity.BuiltinIdentityEncoder  reference frame -> 512-d embedding that
                                                 CONDITIONS the denoiser
    identity_eval   identity.BuiltinIdentityEncoder  a different architecture and seed: only
                                                 EVALUATES identity consistency
    lip_loss        lipreading.LipReader         frozen inside the stage-2 lip-reading loss
    lip_eval        lipreading.LipReader         independently trained: only EVALUATES lip sync
    pose_eval       pose_regressor.PoseRegressor frame -> head (yaw, pitch, roll): only EVALUATES
                                                 motion diversity

A metric is never computed by the network that conditioned (or supervised) the model, hence two
identity encoders and two lip readers.

Layout of one encoder directory::

    <directory>/<name>/params/        Orbax (StandardCheckpointer) checkpoint of nnx.state(model, nnx.Param)
    <directory>/<name>/config.json    {"name", "kind", "module": <module config fields>, "config": <caller's>}
    <directory>/<name>/metrics.json   held-out metrics measured at training time

``load`` rebuilds the module abstractly (``nnx.eval_shape``) from ``config.json``, checks every
parameter path and shape against the checkpoint's metadata, then restores the parameters.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from starcaster_jax.models.audio.builtin import BuiltinAudioConfig, BuiltinAudioEncoder
from starcaster_jax.models.identity.builtin import ArcFaceModel, BuiltinIdentityConfig, BuiltinIdentityEncoder
from starcaster_jax.models.lipreading import LipReader, LipReaderConfig
from starcaster_jax.models.pose_regressor import PoseRegressor, PoseRegressorConfig
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.vae import AutoencoderKL, VAEConfig

ENCODER_NAMES = ("vae", "audio", "identity_cond", "identity_eval", "lip_loss", "lip_eval", "pose_eval")

# kind -> the names that must hold that kind
_NAME_KIND = {"vae": "vae", "audio": "builtin_audio", "identity_cond": "builtin_identity",
              "identity_eval": "builtin_identity", "lip_loss": "lip_reader", "lip_eval": "lip_reader",
              "pose_eval": "pose_regressor"}
PARAMS_DIR, CONFIG_FILE, METRICS_FILE = "params", "config.json", "metrics.json"


# ----------------------------------------------------------------------------- kinds

def _kinds() -> dict[str, tuple[type, type]]:
    """kind -> (module class, config dataclass). Imported lazily: loading one encoder should not
    import every model family."""
    return {"vae": (AutoencoderKL, VAEConfig),
            "pose_regressor": (PoseRegressor, PoseRegressorConfig),
            "builtin_audio": (BuiltinAudioEncoder, BuiltinAudioConfig),
            "builtin_identity": (BuiltinIdentityEncoder, BuiltinIdentityConfig),
            "lip_reader": (LipReader, LipReaderConfig)}


def kind_of(model: nnx.Module) -> str:
    for kind, (cls, _) in _kinds().items():
        if type(model) is cls:
            return kind
    raise TypeError(f"not a built-in encoder module: {type(model).__name__} "
                    f"(expected one of {[c.__name__ for c, _ in _kinds().values()]})")


def _config_to_dict(cfg) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, JSON-clean


def config_from_dict(kind: str, d: Mapping[str, Any]):
    """Module config dataclass of ``kind`` from its JSON dict (lists -> tuples, unknown fields
    rejected)."""
    kinds = _kinds()
    if kind not in kinds:
        raise ValueError(f"unknown encoder kind {kind!r} (known: {sorted(kinds)})")
    cls = kinds[kind][1]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{kind}: unknown config field(s) {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def abstract_module(kind: str, module_config) -> nnx.Module:
    """The module with ``ShapeDtypeStruct`` leaves (nothing allocated)."""
    cls = _kinds()[kind][0]
    return nnx.eval_shape(lambda: cls(module_config, rngs=InitRngs(0)))


# leaf name -> how to draw it. These are the initializers the built-in encoders declare:
# layers.Dense/Conv kernels use torch's default (uniform +-1/sqrt(fan_in)), biases zeros, norm
# scales ones, ArcFaceHead.weight normal(0.01) (scale-free: its columns are normalised).
_INIT = {"kernel": "fan_in_uniform", "bias": "zeros", "scale": "ones", "weight": "normal_0.01",
         "embedding": "normal_0.02"}


def init_params(abstract: nnx.Module, seed: int) -> nnx.Module:
    """Materialise an abstract (``nnx.eval_shape``) built-in encoder with random parameters drawn
    in NumPy, from the same distributions as the modules' own initializers.

    Why: ``nnx.jit``-ing a constructor costs ~5 s of XLA compile per model on 2 CPU cores (one
    RNG kernel per parameter shape), a large share of the encoders' training budget; drawing
    ~1M numbers in NumPy takes milliseconds. Only for modules whose parameters are all plain
    kernels/biases/scales (the four built-in kinds and ``ArcFaceModel``): anything else raises.
    """
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def fill(path, x):
        name = [str(k.key) for k in path if hasattr(k, "key")][-1]
        how = _INIT.get(name)
        if how is None:
            raise NotImplementedError(f"init_params: no NumPy initializer for parameter "
                                      f"{'.'.join(str(getattr(k, 'key', k)) for k in path)!r}")
        if how == "fan_in_uniform":
            bound = 1.0 / np.sqrt(max(1, int(np.prod(x.shape[:-1]))))
            v = rng.uniform(-bound, bound, x.shape)
        elif how == "zeros":
            v = np.zeros(x.shape)
        elif how == "ones":
            v = np.ones(x.shape)
        else:
            v = rng.normal(0.0, float(how.split("_")[1]), x.shape)
        return jnp.asarray(v, x.dtype)

    params = jax.tree_util.tree_map_with_path(fill, nnx.state(abstract, nnx.Param))
    rest = nnx.state(abstract, nnx.Not(nnx.Param))
    if jax.tree.leaves(rest):
        raise NotImplementedError(f"init_params: {type(abstract).__name__} has non-parameter state")
    model = nnx.merge(graphdef, state)
    nnx.update(model, params)
    return model


# ----------------------------------------------------------------------------- save / load

def _flat_shapes(state) -> dict[str, tuple[int, ...]]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if keys and keys[-1] == "value":
            keys = keys[:-1]
        out[".".join(keys)] = tuple(getattr(leaf, "shape", ()))
    return out


def save(directory: str, name: str, model: nnx.Module, config: Mapping[str, Any] | None,
         metrics: Mapping[str, Any] | None) -> str:
    """Write ``<directory>/<name>/`` (params, config.json, metrics.json); returns that path.

    ``model``: the module itself (an ``ArcFaceModel`` is saved as its ``encoder``: the margin
    head is training-only). ``config``: free-form JSON-able record of how it was trained (kept
    under ``"config"``; the module's own config is derived from ``model``). Overwrites.
    """

    if isinstance(model, ArcFaceModel):
        model = model.encoder
    kind = kind_of(model)
    if name in _NAME_KIND and _NAME_KIND[name] != kind:
        raise ValueError(f"encoder {name!r} must be a {_NAME_KIND[name]}, got a {kind}")
    path = os.path.abspath(os.path.join(os.fspath(directory), name))
    os.makedirs(path, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(path, PARAMS_DIR), nnx.state(model, nnx.Param), force=True)
    ckptr.wait_until_finished()
    ckptr.close()
    record = {"name": name, "kind": kind, "module": _config_to_dict(model.config),
              "config": dict(config or {})}
    for fname, obj in ((CONFIG_FILE, record), (METRICS_FILE, dict(metrics or {}))):
        with open(os.path.join(path, fname), "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=_json_default)
    return path


def _json_default(x):
    if isinstance(x, (np.generic, jax.Array)) or hasattr(x, "tolist"):
        return np.asarray(x).tolist()
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    return str(x)


def read_config(directory: str, name: str) -> dict[str, Any]:
    """The parsed ``config.json`` of an encoder directory (one-line errors naming the path)."""
    path = os.path.join(os.fspath(directory), name)
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no built-in encoder {name!r} here (train them with "
                                f"`python -m launch.train_encoders --data DIR --workdir DIR`)")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: missing (not an encoder directory written by "
                                f"builtin_encoders.save)")
    try:
        with open(cfg_path) as f:
            rec = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(rec, dict) or "kind" not in rec or "module" not in rec:
        raise ValueError(f"{cfg_path}: expected keys 'kind' and 'module'")
    return rec


def read_metrics(directory: str, name: str) -> dict[str, Any]:
    path = os.path.join(os.fspath(directory), name, METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing")
    with open(path) as f:
        return json.load(f)


def load(directory: str, name: str) -> nnx.Module:
    """Rebuild ``<directory>/<name>`` from its config.json and restore its parameters.

    FileNotFoundError when the directory / config / params are missing, ValueError when the
    config is malformed, names the wrong kind, or the checkpoint's parameters do not match the
    module the config describes (every path and shape is checked first).
    """

    path = os.path.abspath(os.path.join(os.fspath(directory), name))
    rec = read_config(directory, name)
    kind = rec["kind"]
    if name in _NAME_KIND and _NAME_KIND[name] != kind:
        raise ValueError(f"{path}/{CONFIG_FILE}: encoder {name!r} must be a {_NAME_KIND[name]}, "
                         f"the config says {kind!r}")
    try:
        module_cfg = config_from_dict(kind, rec["module"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}/{CONFIG_FILE}: {e}") from None
    model = abstract_module(kind, module_cfg)
    target = nnx.state(model, nnx.Param)
    params = os.path.join(path, PARAMS_DIR)
    if not os.path.isdir(params):
        raise FileNotFoundError(f"{params}: missing (the Orbax parameter checkpoint)")
    ckptr = ocp.StandardCheckpointer()
    try:
        meta = ckptr.metadata(params)
        meta = getattr(meta, "item_metadata", meta)
        have = _flat_shapes(getattr(meta, "tree", meta))
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint -> one line naming it
        raise ValueError(f"{params}: not a readable Orbax checkpoint "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    want = _flat_shapes(target)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        what = (f"parameter {missing[0]!r} is missing from the checkpoint" if missing
                else f"checkpoint parameter {extra[0]!r} is not in the model")
        raise ValueError(f"{params}: does not match the {kind} described by config.json: {what} "
                         f"({len(missing)} missing, {len(extra)} unexpected)")
    for k in sorted(want):
        if want[k] != have[k]:
            raise ValueError(f"{params}: parameter {k!r} has shape {have[k]} in the checkpoint, "
                             f"the {kind} of config.json expects {want[k]}")
    restored = ckptr.restore(params, target)
    ckptr.close()
    nnx.update(model, restored)
    return model


def load_all(directory: str, names=ENCODER_NAMES) -> dict[str, nnx.Module]:
    return {n: load(directory, n) for n in names}


# ----------------------------------------------------------------------------- identity

def identity_embedding(model: nnx.Module, frames: jax.Array) -> jax.Array:
    """``frames [B, H, W, 3]`` float in [-1, 1] (the training batches' ``Normalize``; uint8
    also accepted) -> L2-normalised ``[B, 512]``. Pure JAX: call it inside the training step's
    jit (wrap ``model`` in ``jax.lax.stop_gradient`` of its state, or don't differentiate
    w.r.t. it: it is frozen)."""
    if isinstance(model, ArcFaceModel):
        model = model.encoder
    if not isinstance(model, BuiltinIdentityEncoder):
        raise TypeError(f"identity_embedding: expected a BuiltinIdentityEncoder, got "
                        f"{type(model).__name__} (ONNX ArcFace runs outside jit: use .embed)")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"identity_embedding: frames must be [B, H, W, 3], got {frames.shape}")
    e = model(frames).astype(jnp.float32)
    return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


__all__ = ["ENCODER_NAMES", "save", "load", "load_all", "read_config", "read_metrics",
           "identity_embedding", "kind_of", "config_from_dict", "abstract_module"]
