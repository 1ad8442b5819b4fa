"""Import a Hugging Face CLIP text encoder (``CLIPTextModel`` directory, a full ``CLIPModel``
directory, or Arc2Face's ``encoder/``) into ``starcaster_jax.models.identity.CLIPTextModel``.

Rename table (after dropping a ``text_model.`` prefix, which transformers 4.x checkpoints such as
Arc2Face's have and transformers 5 ``CLIPTextModel`` checkpoints do not)::

    embeddings.{token,position}_embedding.weight  -> ...embedding           (no transpose)
    encoder.layers.i.self_attn.{q,k,v,out}_proj.* -> ...self_attn.to_{q,k,v,out}.{kernel,bias}
    *.weight of a LayerNorm                        -> *.scale
    *.weight of a Linear                           -> *.kernel (transposed)

Skipped: the ``position_ids`` buffer, ``vision_model.*``, projections and ``logit_scale``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models.identity.clip_text import Arc2FaceIdentityEncoder, CLIPTextConfig, CLIPTextModel
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.weights.common import (
    WeightImportError,
    apply_converted,
    auto_layout,
    convert,
    param_shapes,
    read_checkpoint,
    read_json,
)

_SKIP = ("vision_model.", "visual_projection", "text_projection", "logit_scale")
_ATTN = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}


def _strip(key: str) -> str:
    return key[len("text_model."):] if key.startswith("text_model.") else key


def rename(key: str) -> str | None:
    """torch key -> our dotted parameter path (None = not part of the text encoder)."""
    if key.startswith(_SKIP):
        return None
    k = _strip(key)
    if k.endswith("position_ids"):
        return None
    if k.startswith("embeddings.") and k.endswith("_embedding.weight"):
        return k[: -len("weight")] + "embedding"
    parts = k.split(".")
    if len(parts) >= 2 and parts[-2] in _ATTN:
        parts[-2] = _ATTN[parts[-2]]
    stem, leaf = ".".join(parts[:-1]), parts[-1]
    if leaf == "weight":
        is_norm = parts[-2].startswith(("layer_norm", "final_layer_norm"))
        leaf = "scale" if is_norm else "kernel"
    return f"{stem}.{leaf}"


def _layout(key: str, w: np.ndarray, target_shape: tuple) -> np.ndarray:
    if _strip(key).startswith("embeddings."):
        return w  # nn.Embedding [V, D] is already our layout
    return auto_layout(key, w, target_shape)


def import_clip_text_state(model: CLIPTextModel, state_dict: dict[str, np.ndarray], *,
                           source: str = "checkpoint") -> None:
    """Rename, re-layout, validate (every key, every shape) and write into ``model`` in place."""
    converted = convert(state_dict, rename, param_shapes(model), source=source, converter=_layout)
    apply_converted(model, converted, source=source)


def load_clip_text(path: str, *, dtype=None) -> tuple[CLIPTextModel, CLIPTextConfig]:
    """``(model, config)`` from a HF directory (config.json + safetensors or .bin).

    Built abstractly first (``nnx.eval_shape``): a mismatching checkpoint fails before any
    real allocation.
    """
    if not os.path.isdir(path):
        raise WeightImportError(f"{path}: expected a Hugging Face CLIP text encoder directory")
    hf = read_json(os.path.join(path, "config.json"))
    try:
        cfg = CLIPTextConfig.from_hf(hf)
    except (ValueError, TypeError) as e:
        raise WeightImportError(f"{path}/config.json: {e}") from None
    model = nnx.eval_shape(lambda: CLIPTextModel(cfg, rngs=InitRngs(0), dtype=dtype))
    sd = read_checkpoint(path, prefer=("model.safetensors", "pytorch_model.bin"))
    import_clip_text_state(model, sd, source=path)
    nnx.update(model, jax.tree.map(jnp.asarray, nnx.state(model)))
    return model, cfg


def load_arc2face_encoder(encoder_dir: str, input_ids: Sequence[int], id_index: int, *,
                          dtype=None) -> Arc2FaceIdentityEncoder:
    """Arc2Face's identity encoder from its ``encoder/`` directory (config.json +
    model.safetensors); ``input_ids`` / ``id_index``: ``arc2face_prompt_ids(tokenizer)``."""
    model, _ = load_clip_text(encoder_dir, dtype=dtype)
    return Arc2FaceIdentityEncoder(model, input_ids, id_index)
