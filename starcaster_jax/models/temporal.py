"""Temporal (frame-axis) transformer blocks: the AnimateDiff motion module, plus the view signal.

Layout matches diffusers ``AnimateDiffTransformer3D``: GroupNorm over (frames, H, W) per
channel group -> ``proj_in`` -> transformer blocks whose two attentions are both *self*
attention along the frame axis at each spatial location, with sinusoidal frame positions added
after each pre-norm -> ``proj_out`` -> residual. The frame axis carries time (video) or views
(multi-view stills): the same weights serve both, which is the point of STARCaster's
temporal-to-spatial adaptation.

STARCaster additions (zero-initialised, so an imported AnimateDiff module is reproduced):
``view_proj`` adds the per-frame view embedding to the tokens after ``proj_in``.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models.attention import frame_attention
from starcaster_jax.models.blocks import FeedForward
from starcaster_jax.models.layers import Dense, GroupNorm, LayerNorm


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """diffusers ``SinusoidalPositionalEmbedding`` table ``[length, dim]`` (sin on even, cos on odd)."""
    pos = np.arange(length, dtype=np.float32)[:, None]
    div = np.exp(np.arange(0, dim, 2, dtype=np.float32) * (-math.log(10000.0) / dim))
    pe = np.zeros((length, dim), np.float32)
    pe[:, 0::2] = np.sin(pos * div)
    pe[:, 1::2] = np.cos(pos * div)
    return pe


class FrameAttention(nnx.Module):
    """Self-attention along the frame axis; where sequence parallelism happens.

    ``implementation`` (``model.unet.attention_impl``; splash maps to XLA here) and
    ``sequence_axis`` (``model.unet.sequence_parallel_axis``: frames sharded over that mesh axis,
    K/V all-gathered, when a mesh is set) are static fields of the graph, so every program built
    from one config attends the same way.
    """

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs, dtype=None, implementation: str = "",
                 sequence_axis: str = ""):
        self.heads, self.head_dim = heads, dim // heads
        self.implementation = implementation
        self.sequence_axis = sequence_axis
        self.to_q = Dense(dim, dim, use_bias=False, names=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.to_k = Dense(dim, dim, use_bias=False, names=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.to_v = Dense(dim, dim, use_bias=False, names=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.to_out = Dense(dim, dim, names=("heads", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        """``x: [N, F, C]`` (N = batch x spatial positions) -> ``[N, F, C]``."""
        n, f, c = x.shape
        split = lambda y: y.reshape(n, f, self.heads, self.head_dim)  # noqa: E731
        q, k, v = split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))  # [N, F, H, D]
        o = frame_attention(q, k, v, implementation=self.implementation, sequence_axis=self.sequence_axis)
        return self.to_out(o.reshape(n, f, c))


class TemporalBlock(nnx.Module):
    """AnimateDiff ``BasicTransformerBlock`` with ``double_self_attention`` and sinusoidal positions."""

    def __init__(self, dim: int, heads: int, *, max_frames: int, rngs: nnx.Rngs, dtype=None,
                 implementation: str = "", sequence_axis: str = ""):
        attn = dict(rngs=rngs, dtype=dtype, implementation=implementation, sequence_axis=sequence_axis)
        self.norm1 = LayerNorm(dim, rngs=rngs, dtype=dtype)
        self.attn1 = FrameAttention(dim, heads, **attn)
        self.norm2 = LayerNorm(dim, rngs=rngs, dtype=dtype)
        self.attn2 = FrameAttention(dim, heads, **attn)
        self.norm3 = LayerNorm(dim, rngs=rngs, dtype=dtype)
        self.ff = FeedForward(dim, rngs=rngs, dtype=dtype)
        self.max_frames = max_frames
        self.dim = dim

    def __call__(self, x):
        """``x: [N, F, C]``."""
        f = x.shape[1]
        if f > self.max_frames:
            raise ValueError(f"temporal block: {f} frames exceed model.unet.motion_max_seq_length="
                             f"{self.max_frames}")
        pe = jnp.asarray(sinusoidal_positions(self.max_frames, self.dim)[:f], x.dtype)  # [F, C]
        x = x + self.attn1(self.norm1(x) + pe)
        x = x + self.attn2(self.norm2(x) + pe)
        return x + self.ff(self.norm3(x))


class TemporalTransformer(nnx.Module):
    """Motion module over ``[B*F, H, W, C]`` activations; ``view_emb: [B, F, Dv]`` optional."""

    def __init__(self, ch: int, heads: int, *, groups: int = 32, num_layers: int = 1,
                 max_frames: int = 32, view_dim: int | None = None, rngs: nnx.Rngs, dtype=None,
                 implementation: str = "", sequence_axis: str = ""):
        self.norm = GroupNorm(ch, groups, eps=1e-6, rngs=rngs, dtype=dtype)
        self.proj_in = Dense(ch, ch, names=("conv_in", "conv_out"), rngs=rngs, dtype=dtype)
        self.transformer_blocks = nnx.List([
            TemporalBlock(ch, heads, max_frames=max_frames, rngs=rngs, dtype=dtype,
                          implementation=implementation, sequence_axis=sequence_axis)
            for _ in range(num_layers)])
        # zero-initialised like AnimateDiff: a fresh motion module is the identity.
        self.proj_out = Dense(ch, ch, names=("conv_in", "conv_out"), zero=True, rngs=rngs, dtype=dtype)
        self.view_proj = (Dense(view_dim, ch, names=("cond", "embed"), zero=True, rngs=rngs, dtype=dtype)
                          if view_dim else None)

    def __call__(self, x, num_frames: int, view_emb=None):
        """``x: [B*F, H, W, C]``, ``view_emb: [B, F, Dv]`` -> ``[B*F, H, W, C]``."""
        bf, h, w, c = x.shape
        b = bf // num_frames
        res = x
        y = self.norm(x.reshape(b, num_frames, h, w, c))          # stats over (F, H, W) per group
        y = jnp.transpose(y, (0, 2, 3, 1, 4)).reshape(b * h * w, num_frames, c)  # [B*H*W, F, C]
        y = self.proj_in(y)
        if view_emb is not None and self.view_proj is not None:
            v = self.view_proj(view_emb)                            # [B, F, C]
            y = y + jnp.repeat(v, h * w, axis=0)
        for blk in self.transformer_blocks:
            y = blk(y)
        y = self.proj_out(y)
        y = jnp.transpose(y.reshape(b, h, w, num_frames, c), (0, 3, 1, 2, 4)).reshape(bf, h, w, c)
        return y + res
