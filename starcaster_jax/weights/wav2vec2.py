"""Import a Hugging Face wav2vec2 checkpoint (``Wav2Vec2Model`` / ``Wav2Vec2ForCTC`` /
``Wav2Vec2ForPreTraining`` directories) into ``starcaster_jax.models.audio.Wav2Vec2Model``.

Our parameter paths mirror the HF state dict, so the rename table is short: drop the
``wav2vec2.`` prefix of task checkpoints, skip task heads, ``weight`` -> ``kernel`` (Linear,
Conv) or ``scale`` (LayerNorm, GroupNorm). The positional conv's weight norm is stored either
as ``weight_g``/``weight_v`` (old ``torch.nn.utils.weight_norm``, e.g. the hub's
``facebook/wav2vec2-base-960h``) or as ``parametrizations.weight.original0/1`` (what
transformers 5 ``save_pretrained`` writes); both are accepted, and so is a plain ``weight``
(weight norm already folded: g = ||w||, v = w).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models.audio.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.weights.common import (
    WeightImportError,
    apply_converted,
    auto_layout,
    conv1d,
    convert,
    param_shapes,
    read_checkpoint,
)

# Heads and pre-training parts of the task models: not part of the encoder.
IGNORED_PREFIXES = ("lm_head.", "masked_spec_embed", "quantizer.", "project_hid.", "project_q.",
                    "projector.", "classifier.", "tdnn.", "feature_extractor_head.", "objective.")

_POS = "encoder.pos_conv_embed.conv."


def _norm_name(key: str) -> str:
    return key[len("wav2vec2."):] if key.startswith("wav2vec2.") else key


def rename(key: str) -> str | None:
    """torch key -> our dotted parameter path (None = not part of the encoder)."""
    k = _norm_name(key)
    if k.startswith(IGNORED_PREFIXES):
        return None
    if k.startswith(_POS):
        leaf = k[len(_POS):]
        leaf = {"weight_g": "weight_g", "parametrizations.weight.original0": "weight_g",
                "weight_v": "weight_v", "parametrizations.weight.original1": "weight_v",
                "bias": "bias"}.get(leaf, leaf)
        return _POS + leaf
    if k.endswith(".weight"):
        stem = k[: -len(".weight")]
        is_norm = stem.endswith("layer_norm")  # layer_norm / final_layer_norm / conv GroupNorm
        return stem + (".scale" if is_norm else ".kernel")
    return k


def _layout(key: str, w: np.ndarray, target_shape: tuple) -> np.ndarray:
    k = _norm_name(key)
    if k.startswith(_POS) and ("weight_g" in k or "original0" in k):
        return w.reshape(-1)  # torch [1, 1, K] -> [K]
    if k.startswith(_POS) and ("weight_v" in k or "original1" in k):
        return conv1d(w)  # [O, I/g, K] -> [K, I/g, O]
    return auto_layout(key, w, target_shape)


def _fold_plain_pos_weight(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A checkpoint with the weight norm removed has ``...conv.weight``: g = ||w||, v = w."""
    for key in list(sd):
        if _norm_name(key) == _POS + "weight":
            w = sd.pop(key)  # [O, I/g, K]
            base = key[: -len("weight")]
            sd[base + "weight_v"] = w
            sd[base + "weight_g"] = np.sqrt((w * w).sum(axis=(0, 1), keepdims=True))
    return sd


def import_wav2vec2_state(model: Wav2Vec2Model, state_dict: dict[str, np.ndarray], *,
                          source: str = "checkpoint") -> None:
    """Rename, re-layout, validate (every key, every shape) and write into ``model`` in place."""
    sd = _fold_plain_pos_weight(dict(state_dict))
    converted = convert(sd, rename, param_shapes(model), source=source, converter=_layout)
    apply_converted(model, converted, source=source)


def load_wav2vec2(path: str, *, dtype=None) -> tuple[Wav2Vec2Model, Wav2Vec2Config]:
    """``(model, config)`` from a HF checkpoint directory (config.json + safetensors or .bin).

    The model is built abstractly (``nnx.eval_shape``) and only then filled, so a mismatching
    checkpoint fails before any real allocation.
    """
    if not os.path.isdir(path):
        raise WeightImportError(f"{path}: expected a Hugging Face wav2vec2 checkpoint directory")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise WeightImportError(f"{path}/config.json: missing (the model config of this checkpoint)")
    try:
        cfg = Wav2Vec2Config.from_pretrained(path)
    except (ValueError, TypeError) as e:
        raise WeightImportError(f"{path}/config.json: {e}") from None
    model = nnx.eval_shape(lambda: Wav2Vec2Model(cfg, rngs=InitRngs(0), dtype=dtype))
    sd = read_checkpoint(path, prefer=("model.safetensors", "pytorch_model.bin"))
    import_wav2vec2_state(model, sd, source=path)
    # Leaves are numpy after apply_converted; make them device arrays once.
    state = nnx.state(model)
    nnx.update(model, jax.tree.map(jnp.asarray, state))
    return model, cfg
