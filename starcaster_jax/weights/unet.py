"""Import SD-1.5 / Arc2Face UNets, AnimateDiff motion modules and full ``UNetMotionModel``s.

Sources (diffusers format, safetensors or bin):
- ``UNet2DConditionModel`` directory (or an SD pipeline root with ``unet/``): spatial part.
  Temporal/audio/view layers keep their zero-output init, so the result equals the source.
- ``MotionAdapter`` directory (AnimateDiff): the temporal part only, into an existing model.
- ``UNetMotionModel`` directory: both.
"""
from __future__ import annotations

import os
import re

from flax import nnx

from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.unet import UNet, UNetConfig
from starcaster_jax.weights.common import (
    WeightImportError,
    apply_converted,
    convert,
    param_shapes,
    read_checkpoint,
    read_json,
)

_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Layers STARCaster adds on top of SD-1.5 / AnimateDiff.
STARCASTER_ONLY = (r"attn_audio\.", r"norm_audio\.", r"view_proj\.", r"^view_embedding\.",
                   r"^context_embedding$")
TEMPORAL = (r"motion_modules\.",)

_RULES = [
    (re.compile(r"\.to_out\.0\."), ".to_out."),
    (re.compile(r"\.ff\.net\.0\.proj\."), ".ff.geglu.proj."),
    (re.compile(r"\.ff\.net\.2\."), ".ff.out."),
]


def _rename_fn(target: dict[str, tuple]):
    def rename(key: str) -> str | None:
        if key.endswith(".pe") or "pos_embed" in key:
            return None  # fixed sinusoidal buffers, recomputed by the model
        k = key
        for pat, rep in _RULES:
            k = pat.sub(rep, k)
        if k.endswith(".weight"):
            stem = k[: -len(".weight")]
            for leaf in ("kernel", "scale"):
                if f"{stem}.{leaf}" in target:
                    return f"{stem}.{leaf}"
            return f"{stem}.kernel"  # unknown: convert() reports it by name
        return k
    return rename


def _resolve_dir(path: str, sub: str = "unet") -> str:
    if os.path.isdir(os.path.join(path, sub)) and not os.path.exists(os.path.join(path, "config.json")):
        return os.path.join(path, sub)
    return path


def config_from_diffusers(path: str, **overrides) -> UNetConfig:
    """``UNetConfig`` from a diffusers ``UNet2DConditionModel``/``UNetMotionModel`` config.json."""
    path = _resolve_dir(path)
    c = read_json(os.path.join(path, "config.json"))
    heads = c.get("num_attention_heads") or c.get("attention_head_dim", 8)  # SD-1.5's naming quirk
    if isinstance(heads, (list, tuple)):
        if len(set(heads)) != 1:
            raise WeightImportError(f"{path}/config.json: per-block attention heads {heads} are not supported")
        heads = heads[0]
    tl = c.get("transformer_layers_per_block", 1)
    if isinstance(tl, (list, tuple)):
        tl = tl[0]
    fields = dict(
        in_channels=c.get("in_channels", 4), out_channels=c.get("out_channels", 4),
        block_out_channels=tuple(c["block_out_channels"]),
        cross_attn_blocks=tuple("CrossAttn" in t for t in c["down_block_types"]),
        layers_per_block=c.get("layers_per_block", 2), num_attention_heads=int(heads),
        transformer_layers_per_block=int(tl), cross_attention_dim=c.get("cross_attention_dim", 768),
        norm_num_groups=c.get("norm_num_groups", 32), norm_eps=c.get("norm_eps", 1e-5),
        use_linear_projection=c.get("use_linear_projection", False),
    )
    if "motion_max_seq_length" in c:
        mh = c.get("motion_num_attention_heads", 8)
        fields.update(use_temporal=True, motion_num_attention_heads=mh if isinstance(mh, int) else mh[0],
                      motion_max_seq_length=c["motion_max_seq_length"],
                      use_motion_mid_block=c.get("use_motion_mid_block", True))
    fields.update(overrides)
    return UNetConfig.from_dict(fields)


def load_unet_weights(model: UNet, path: str, *, part: str = "auto") -> list[str]:
    """Load a diffusers checkpoint into ``model`` in place; returns parameters left at init.

    ``part``: ``"spatial"`` (UNet2DConditionModel: everything but temporal/STARCaster layers
    must be covered), ``"temporal"`` (MotionAdapter: only motion modules, all of them),
    ``"full"`` (UNetMotionModel), or ``"auto"`` (decided from the keys).
    """
    path = _resolve_dir(path)
    sd = read_checkpoint(path, prefer=_WEIGHTS)
    has_motion = any(".motion_modules." in k for k in sd)
    has_spatial = "conv_in.weight" in sd
    if part == "auto":
        part = "full" if has_motion and has_spatial else "temporal" if has_motion else "spatial"
    shapes = param_shapes(model)
    converted = convert(sd, _rename_fn(shapes), shapes, source=path)
    if part == "temporal":
        want = [k for k in shapes if re.search(TEMPORAL[0], k)
                and not any(re.search(p, k) for p in STARCASTER_ONLY)]
        missing = [k for k in want if k not in converted]
        if missing:
            raise WeightImportError(f"{path}: motion-module parameter {missing[0]!r} missing "
                                    f"({len(missing)} in all)")
        allow = (r".",)
    elif part == "spatial":
        allow = STARCASTER_ONLY + TEMPORAL
    elif part == "full":
        allow = STARCASTER_ONLY
    else:
        raise ValueError(f"part: expected auto|spatial|temporal|full, got {part!r}")
    return apply_converted(model, converted, allow_missing=allow, source=path)


def load_unet(path: str, *, rngs: nnx.Rngs | None = None, **overrides) -> tuple[UNet, UNetConfig]:
    """Build a ``UNet`` from a diffusers directory's config and load its weights."""
    cfg = config_from_diffusers(path, **overrides)
    model = UNet(cfg, rngs=rngs or InitRngs(0))
    load_unet_weights(model, path)
    return model, cfg
