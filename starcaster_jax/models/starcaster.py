"""The trainable STARCaster model: the denoiser plus the two conditioning projectors.

Frozen networks (VAE, audio encoder, identity encoder, lip reader) live outside this module:
they are inputs' pre-processors, never updated by the diffusion optimiser, and keeping them out
keeps the train state (and its checkpoints) exactly what is trained.
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from starcaster_jax.models.audio.alignment import AudioProjector
from starcaster_jax.models.audio.builtin import BuiltinAudioConfig
from starcaster_jax.models.audio.wav2vec2 import Wav2Vec2Config
from starcaster_jax.models.conditioning import IdentityProjector
from starcaster_jax.models.unet import UNet, UNetConfig


def audio_feature_shape(audio_cfg) -> tuple[int, int]:
    """(num hidden states L, hidden size D) the projector receives for this audio config."""
    if audio_cfg.encoder == "builtin":
        bc = BuiltinAudioConfig.from_dict(dict(audio_cfg.builtin))
        n, d = bc.num_layers + 1, bc.hidden_size
    else:
        wc = Wav2Vec2Config(**dict(audio_cfg.wav2vec2))
        n, d = wc.num_hidden_layers + 1, wc.hidden_size
    layers = audio_cfg.layers
    return (len(layers) if layers else n), d


class STARCaster(nnx.Module):
    """``unet`` + ``id_proj`` (identity embedding -> tokens) + ``audio_proj`` (feature windows -> tokens)."""

    def __init__(self, model_cfg: mlc.ConfigDict, *, rngs: nnx.Rngs):
        ucfg = UNetConfig.from_dict(model_cfg.unet.to_dict())
        self.unet = UNet(ucfg, rngs=rngs)
        dtype = jnp.dtype(self.unet.cfg.dtype)  # the projectors compute in the denoiser's dtype
        idc = model_cfg.identity
        self.id_proj = IdentityProjector(embed_dim=idc.embed_dim, num_tokens=idc.num_tokens,
                                         dim=ucfg.cross_attention_dim, rngs=rngs, dtype=dtype)
        if ucfg.audio_dim:
            ac = model_cfg.audio
            n_layers, in_dim = audio_feature_shape(ac)
            self.audio_proj = AudioProjector(window=ac.window, num_layers=n_layers, in_dim=in_dim,
                                             out_dim=ucfg.audio_dim, num_tokens=ac.num_tokens,
                                             hidden_dim=ac.proj_hidden, rngs=rngs, dtype=dtype)
        else:
            self.audio_proj = None

    def __call__(self, x, t, *, id_emb=None, audio_windows=None, view=None, context_mask=None,
                 deterministic: bool = True, drop_id=None, drop_audio=None, drop_view=None):
        """``x [B,F,H,W,C]``, ``t [B,F]``, ``id_emb [B,512]``, ``audio_windows [B,F,2w+1,L,D]``,
        ``view [B,F,6]``, ``context_mask [B,F]``; ``None`` = condition absent; ``drop_* [B]``
        drop it per sample (CFG dropout, batched guidance: see diffusion/guidance.py)."""
        id_tokens = None if id_emb is None else self.id_proj(id_emb)                # [B, N, D]
        audio_tokens = None
        if audio_windows is not None and self.audio_proj is not None:
            audio_tokens = self.audio_proj(audio_windows)                          # [B, F, Na, Da]
        return self.unet(x, t, id_tokens=id_tokens, audio_tokens=audio_tokens, view=view,
                         context_mask=context_mask, deterministic=deterministic,
                         drop_id=drop_id, drop_audio=drop_audio, drop_view=drop_view)
