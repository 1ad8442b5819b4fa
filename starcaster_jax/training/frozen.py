"""The frozen networks a training step runs but never updates: VAE, audio encoder, identity
encoder and the lip reader of the lip-reading loss.

They are kept out of the train state (checkpoints hold exactly what is trained) and passed to
the compiled step as *arguments* (replicated arrays), not closed over, so their weights never
become HLO constants. Where each comes from, first match wins:

    vae       model.vae_checkpoint | model.pretrained.vae (diffusers dirs; the rule inference
              shares: weights/vae.vae_path_from_config) | <encoders_dir>/vae | random (tests only)
    audio     model.audio.wav2vec2_path | <encoders_dir>/audio | random (tests only)
    identity  model.identity.encoder (builtin: <encoders_dir>/identity_cond, or
              model.identity.encoder_checkpoint; onnx_arcface: that .onnx file), through
              models/identity/resolve.py, the resolver generation and export call too
    lip       <encoders_dir>/lip_loss (train.lip_checkpoint overrides) | random (tests only)

A random frozen network is allowed (tiny tests exercise the mechanics with it) but logged loudly.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.audio.encoder import build_audio_encoder
from starcaster_jax.models.identity import resolve as identity_resolve
from starcaster_jax.models.lipreading import LipReader, LipReaderConfig
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.vae import VAEConfig, create_vae
from starcaster_jax.weights.vae import load_vae, vae_path_from_config

log = logging.getLogger(__name__)


def _encoders_dir(config) -> str:
    return str(config.model.encoders_dir)


def _from_dir(config, name: str, explicit: str = ""):
    """Load ``name`` from an explicit encoder dir (``<path>`` holding ``name``'s files, or a
    parent holding ``<path>/<name>``) or from ``model.encoders_dir``; None if neither exists."""
    root = _encoders_dir(config)
    if not explicit and not root:
        return None
    if explicit:
        parent, base = os.path.split(os.path.normpath(explicit))
        if os.path.isdir(os.path.join(explicit, name)):
            return be.load(explicit, name)
        return be.load(parent, base)
    if root and os.path.isdir(os.path.join(root, name)):
        return be.load(root, name)
    if root:
        raise FileNotFoundError(f"model.encoders_dir={root!r}: no '{name}' encoder there "
                                "(run `python -m launch.train_encoders`)")
    return None


def identity_source(config) -> str:
    """``model.identity.source``: "encoder" (embed the reference frame), "precomputed" (the
    record's 512-d embedding, ingested real data) or "id_vector" (the built-in corpus's ground
    truth vector, zero-padded and normalised: tests without a trained encoder). "auto" picks
    "encoder" when ``model.identity.encoder`` names one that exists, else "id_vector"."""
    src = str(config.model.identity.source)
    if src == "auto":
        return "encoder" if identity_resolve.has_identity_encoder(config.model) else "id_vector"
    if src not in ("encoder", "precomputed", "id_vector"):
        raise ValueError(f"model.identity.source {src!r}: expected auto|encoder|precomputed|id_vector")
    return src


def uses_audio(config) -> bool:
    return bool(config.model.unet.audio_dim) and float(config.train.p_drop_audio) < 1.0


def uses_lip(config) -> bool:
    return float(config.train.lip_weight) > 0.0


def build_frozen(config) -> dict[str, nnx.Module]:
    """name -> module for every frozen network this config's steps need."""
    nets: dict[str, nnx.Module] = {}
    m = config.model
    # VAE
    if vae_path_from_config(m):
        nets["vae"] = load_vae(vae_path_from_config(m))[0]
    else:
        vae = _from_dir(config, "vae")
        if vae is None:
            log.warning("frozen VAE: random init (no model.vae_checkpoint / encoders_dir): tests only")
            vae = create_vae(VAEConfig.from_diffusers(m.vae.to_dict()), seed=config.seed)
        nets["vae"] = vae
    # audio
    if uses_audio(config):
        if m.audio.encoder == "wav2vec2" or m.audio.wav2vec2_path:
            if not m.audio.wav2vec2_path:
                log.warning("frozen wav2vec2: random init (no model.audio.wav2vec2_path): tests only")
            nets["audio"] = _jit_build(lambda: build_audio_encoder(m.audio, rngs=InitRngs(config.seed)))
        else:
            enc = _from_dir(config, "audio", m.audio.encoder_checkpoint)
            if enc is None:
                log.warning("frozen audio encoder: random init (no encoders_dir): tests only")
                enc = _jit_build(lambda: build_audio_encoder(m.audio, rngs=InitRngs(config.seed)))
            nets["audio"] = enc
    # identity
    if identity_source(config) == "encoder":
        enc = identity_resolve.resolve_identity_encoder(m)
        if enc is None:
            raise FileNotFoundError("model.identity.source='encoder' needs model.encoders_dir or "
                                    "model.identity.encoder_checkpoint")
        nets["identity"] = enc
    # lip reader
    if uses_lip(config):
        lip = _from_dir(config, "lip_loss", config.train.lip_checkpoint)
        if lip is None:
            log.warning("frozen lip reader: random init (no encoders_dir): tests only")
            lip = _jit_build(lambda: LipReader(LipReaderConfig.tiny(), rngs=InitRngs(config.seed)))
        nets["lip"] = lip
    return nets


def _jit_build(ctor):
    """Construct under jit (one compile instead of one per parameter shape)."""
    abstract = nnx.eval_shape(ctor)
    graphdef, _ = nnx.split(abstract)
    state = jax.jit(lambda: nnx.state(ctor()))()
    return nnx.merge(graphdef, state)


def split_frozen(nets: dict[str, nnx.Module]) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (graphdefs, states): the states go into the jitted step as arguments."""
    graphdefs, states = {}, {}
    for k, net in nets.items():
        graphdefs[k], states[k] = nnx.split(net)
    return graphdefs, states


def merge_frozen(graphdefs, states) -> dict[str, nnx.Module]:
    """Inside the step: rebuild the modules with stop-gradient weights."""
    return {k: nnx.merge(graphdefs[k], jax.lax.stop_gradient(states[k])) for k in graphdefs}


def pad_identity(vec: jax.Array, dim: int) -> jax.Array:
    """Ground-truth id vector [B, d] -> unit [B, dim] (zero-padded): the id_vector source."""
    v = jnp.zeros(vec.shape[:-1] + (dim,), jnp.float32).at[..., :vec.shape[-1]].set(vec)
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
