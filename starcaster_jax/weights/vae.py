"""Import ``AutoencoderKL`` weights: diffusers directories (new ``to_q`` or old ``query``
attention names), SD pipeline roots (``vae/`` subfolder), and original LDM / CompVis
single-file checkpoints (``first_stage_model.encoder.down.0.block.0...``, 1x1-conv attention).

Only the rename lives here: torch key -> our dotted parameter path. Layout conversion and
validation of every key and shape against the (abstract) model is ``weights.common``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from starcaster_jax.models.vae import AutoencoderKL, VAEConfig, abstract_vae, vae_preset
from starcaster_jax.sharding import state_shardings
from starcaster_jax.weights.common import (
    WeightImportError,
    apply_converted,
    convert,
    param_shapes,
    read_checkpoint,
    read_json,
)

__all__ = ["load_vae", "load_vae_config", "vae_from_torch_state_dict", "make_rename", "resolve_vae_dir",
           "WeightImportError"]

_DIFFUSERS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_LDM_PREFIXES = ("first_stage_model.", "vae.")

# old diffusers (< 0.15) attention names -> current ones
_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# LDM attention names (inside mid.attn_1) -> current diffusers ones
_LDM_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _ldm_to_diffusers_key(key: str, num_blocks: int) -> str:
    """One LDM VAE key -> its diffusers name (the mapping of diffusers' ``convert_ldm_vae_checkpoint``)."""
    part, rest = key.split(".", 1)
    if part not in ("encoder", "decoder"):
        return key  # quant_conv / post_quant_conv
    rest = rest.replace("norm_out.", "conv_norm_out.", 1) if rest.startswith("norm_out.") else rest
    rest = re.sub(r"^down\.(\d+)\.block\.", r"down_blocks.\1.resnets.", rest)
    rest = re.sub(r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0.", rest)
    # decoder.up is stored lowest resolution last in LDM, first in diffusers
    rest = re.sub(r"^up\.(\d+)\.block\.", lambda m: f"up_blocks.{num_blocks - 1 - int(m[1])}.resnets.", rest)
    rest = re.sub(r"^up\.(\d+)\.upsample\.", lambda m: f"up_blocks.{num_blocks - 1 - int(m[1])}.upsamplers.0.", rest)
    rest = re.sub(r"^mid\.block_(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}.", rest)
    rest = re.sub(r"^mid\.attn_1\.(\w+)\.", lambda m: f"mid_block.attentions.0.{_LDM_ATTN.get(m[1], m[1])}.", rest)
    rest = rest.replace(".nin_shortcut.", ".conv_shortcut.")
    return f"{part}.{rest}"


def _is_ldm(sd: Mapping[str, Any]) -> bool:
    return any(k.startswith(("encoder.down.", "encoder.mid.block_")) for k in sd)


def _strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only the VAE of a full SD checkpoint (``first_stage_model.*``) and drop the prefix."""
    for p in _LDM_PREFIXES:
        if any(k.startswith(p + "encoder.") for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return dict(sd)


def make_rename(num_blocks: int, *, ldm: bool = False):
    """torch key (diffusers, old diffusers, or LDM after prefix stripping) -> our dotted path."""

    def rename(key: str) -> str | None:
        if ldm:
            key = _ldm_to_diffusers_key(key, num_blocks)
        if key.startswith("loss.") or not key.endswith((".weight", ".bias")):
            return None  # LDM training-only modules (discriminator, LPIPS), buffers
        key = re.sub(r"\.(query|key|value|proj_attn)\.", lambda m: f".{_OLD_ATTN[m[1]]}.", key)
        key = re.sub(r"(attentions\.\d+)\.(to_q|to_k|to_v|to_out)\.", r"\1.attention.\2.", key)
        key = key.replace(".to_out.0.", ".to_out.")
        module, leaf = key.rsplit(".", 1)
        if leaf == "weight":
            leaf = "scale" if "norm" in module.rsplit(".", 1)[-1] else "kernel"
        return f"{module}.{leaf}"

    return rename


def _to_numpy(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        if hasattr(v, "detach"):  # torch.Tensor
            v = v.detach().float().cpu().numpy()
        out[k] = np.asarray(v, dtype=np.float32)
    return out


def vae_from_torch_state_dict(model: AutoencoderKL, sd: Mapping[str, Any], *,
                              source: str = "VAE checkpoint") -> AutoencoderKL:
    """Write a torch ``AutoencoderKL`` state dict (torch tensors or numpy arrays; diffusers, old
    diffusers or LDM key names) into ``model`` in place — which may be abstract
    (``abstract_vae``): then every leaf becomes a fresh jax array. Raises ``WeightImportError``
    naming the first key that is missing, unknown or of the wrong shape."""
    sd = _strip_prefix(sd)
    ldm = _is_ldm(sd)
    rename = make_rename(len(model.config.block_out_channels), ldm=ldm)
    converted = convert(_to_numpy(sd), rename, param_shapes(model), source=source)
    apply_converted(model, converted, source=source)
    # set_value leaves numpy arrays; make every parameter a jax array (also materialises an
    # abstract model).
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda a: jax.numpy.asarray(a), state))
    return model


def vae_path_from_config(model_cfg) -> str:
    """The imported VAE a config names, or "" (use the built-in one from ``encoders_dir``).

    The one rule training (``training/frozen.py``) and inference (``inference/loading.py``)
    share, so a model never trains on one VAE's latents and decodes with another:
    ``model.vae_checkpoint`` wins, else ``model.pretrained.vae``.
    """
    return str(model_cfg.vae_checkpoint or model_cfg.pretrained.vae or "")


def resolve_vae_dir(path: str) -> str:
    """A diffusers VAE directory, or an SD pipeline root holding ``vae/`` (which wins when the
    root has no ``config.json`` of its own, or is a pipeline: ``model_index.json``)."""
    sub = os.path.join(path, "vae")
    if os.path.isdir(sub) and (not os.path.exists(os.path.join(path, "config.json"))
                               or os.path.exists(os.path.join(path, "model_index.json"))):
        return sub
    return path


def load_vae_config(path: str, **overrides) -> VAEConfig:
    """``VAEConfig`` of a diffusers VAE directory (or pipeline root)."""
    d = resolve_vae_dir(path)
    return VAEConfig.from_diffusers(read_json(os.path.join(d, "config.json")), **overrides)


def load_vae(path: str, *, config: VAEConfig | None = None, mesh=None, **overrides
             ) -> tuple[AutoencoderKL, VAEConfig]:
    """Load an SD-style VAE.

    ``path``: a diffusers ``AutoencoderKL`` directory (``config.json`` + ``diffusion_pytorch_model``
    ``.safetensors``/``.bin``), an SD pipeline root with ``vae/``, or a single LDM / SD
    ``.safetensors``/``.ckpt`` file (then ``config`` defaults to the ``sd15`` preset).
    ``overrides`` replace config fields (e.g. ``dtype="bfloat16"``, ``decode_chunk=4``).
    With ``mesh`` the parameters are placed by the logical-axis rules of ``starcaster_jax.sharding``.
    The model is built abstractly, so no random init is computed or allocated.
    """
    if os.path.isdir(path):
        d = resolve_vae_dir(path)
        if config is None:
            config = load_vae_config(d)
        sd = read_checkpoint(d, prefer=_DIFFUSERS_FILES)
        source = d
    else:
        config = config or vae_preset("sd15")
        sd = read_checkpoint(path)
        source = path
    if overrides:
        config = dataclasses.replace(config, **overrides)
    model = abstract_vae(config)
    vae_from_torch_state_dict(model, sd, source=source)
    if mesh is not None:
        state = nnx.state(model, nnx.Param)
        nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))
    return model, config

