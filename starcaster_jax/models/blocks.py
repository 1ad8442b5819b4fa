"""SD-1.5 spatial building blocks (diffusers layout, channels last).

Attribute names follow diffusers (``resnets``, ``attentions``, ``transformer_blocks``,
``attn1``/``attn2``, ``ff``...) so the importer's rename table is a handful of rules.
STARCaster adds one thing here: frame-wise **audio cross-attention** (``attn_audio``) in every
spatial transformer block, zero-initialised so an imported SD-1.5 UNet is reproduced exactly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models.attention import Attention
from starcaster_jax.models.layers import Conv, Dense, GroupNorm, LayerNorm, gelu_exact


class ResnetBlock2D(nnx.Module):
    """diffusers ``ResnetBlock2D`` (shared by the UNet and the VAE), channels last.

    time_embedding_norm="default", dropout 0.

    GroupNorm -> SiLU -> conv1 (+ projected time embedding when ``temb_dim``) -> GroupNorm ->
    SiLU -> conv2, plus a residual (1x1 ``conv_shortcut`` when channels change).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, *, temb_dim: int | None = None,
                 groups: int = 32, eps: float = 1e-6, output_scale_factor: float = 1.0,
                 rngs: nnx.Rngs, dtype=None):
        out_channels = out_channels or in_channels
        self.output_scale_factor = output_scale_factor
        self.norm1 = GroupNorm(in_channels, groups, eps=eps, rngs=rngs, dtype=dtype)
        self.conv1 = Conv(in_channels, out_channels, 3, rngs=rngs, dtype=dtype)
        self.time_emb_proj = (Dense(temb_dim, out_channels, names=("embed", "conv_out"), rngs=rngs, dtype=dtype)
                              if temb_dim else None)
        self.norm2 = GroupNorm(out_channels, groups, eps=eps, rngs=rngs, dtype=dtype)
        self.conv2 = Conv(out_channels, out_channels, 3, rngs=rngs, dtype=dtype)
        self.conv_shortcut = (Conv(in_channels, out_channels, 1, rngs=rngs, dtype=dtype)
                              if in_channels != out_channels else None)

    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        """``x: [N, H, W, Cin]``, ``temb: [N, temb_dim]`` -> ``[N, H, W, Cout]``."""
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(jax.nn.silu(temb))[:, None, None, :]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


class Downsample2D(nnx.Module):
    def __init__(self, ch: int, *, rngs: nnx.Rngs, dtype=None):
        self.conv = Conv(ch, ch, 3, stride=2, padding=1, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.conv(x)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source rows of PyTorch's ``interpolate(mode="nearest", size=n_out)``: ``floor(i * in/out)``
    with the scale in float32, as ATen computes it (static: shapes are known at trace time)."""
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int32), n_in - 1)


class Upsample2D(nnx.Module):
    def __init__(self, ch: int, *, rngs: nnx.Rngs, dtype=None):
        self.conv = Conv(ch, ch, 3, rngs=rngs, dtype=dtype)

    def __call__(self, x, output_size: tuple[int, int] | None = None):
        """``x [N,H,W,C]`` -> ``[N,2H,2W,C]``, or ``[N,*output_size,C]`` when given: the UNet passes
        its skip's size, so a latent whose side is not a multiple of the downsampling factor
        (13 -> 7 -> 4 going down) comes back to 7 and 13, as diffusers' ``upsample_size``."""
        h, w = x.shape[1:3]
        if output_size is None or tuple(output_size) == (2 * h, 2 * w):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
        else:
            x = x[:, _nearest_index(h, output_size[0])][:, :, _nearest_index(w, output_size[1])]
        return self.conv(x)


class GEGLU(nnx.Module):
    def __init__(self, dim: int, inner: int, *, rngs: nnx.Rngs, dtype=None):
        self.proj = Dense(dim, 2 * inner, names=("embed", "mlp"), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        h, gate = jnp.split(self.proj(x), 2, axis=-1)
        return h * gelu_exact(gate)


class FeedForward(nnx.Module):
    """GEGLU feed-forward; diffusers keys ``ff.net.0.proj`` / ``ff.net.2`` map to ``ff.geglu.proj`` / ``ff.out``."""

    def __init__(self, dim: int, *, mult: int = 4, rngs: nnx.Rngs, dtype=None):
        inner = dim * mult
        self.geglu = GEGLU(dim, inner, rngs=rngs, dtype=dtype)
        self.out = Dense(inner, dim, names=("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.out(self.geglu(x))


class BasicTransformerBlock(nnx.Module):
    """Self-attention, identity cross-attention, (STARCaster) audio cross-attention, GEGLU FF.

    ``attn2`` attends to the identity tokens (SD's text slot). ``attn_audio`` is frame-wise:
    the spatial blocks see frames folded into the batch, so frame f only sees its own audio
    tokens. Absent conditions (``None``) skip their branch entirely (= zero contribution).
    """

    def __init__(self, dim: int, heads: int, *, cross_dim: int | None, audio_dim: int | None = None,
                 rngs: nnx.Rngs, dtype=None, implementation: str = ""):
        impl = dict(rngs=rngs, dtype=dtype, implementation=implementation)
        self.norm1 = LayerNorm(dim, rngs=rngs, dtype=dtype)
        self.attn1 = Attention(dim, heads=heads, **impl)
        self.norm2 = LayerNorm(dim, rngs=rngs, dtype=dtype)
        self.attn2 = Attention(dim, context_dim=cross_dim, heads=heads, **impl)
        if audio_dim:
            self.norm_audio = LayerNorm(dim, rngs=rngs, dtype=dtype)
            self.attn_audio = Attention(dim, context_dim=audio_dim, heads=heads, zero_out=True, **impl)
        else:
            self.norm_audio = self.attn_audio = None
        self.norm3 = LayerNorm(dim, rngs=rngs, dtype=dtype)
        self.ff = FeedForward(dim, rngs=rngs, dtype=dtype)

    def __call__(self, x, context=None, audio=None):
        """``x: [N, L, C]``; ``context``/``audio`` are ``(tokens [N, M, D], keep [N] | None)``
        or None. ``keep`` gates the branch per sample: 0 is exactly the absent condition, which
        is how CFG dropout and batched guidance drop a condition for some samples only."""
        x = x + self.attn1(self.norm1(x))
        if context is not None:
            x = x + _gate(self.attn2(self.norm2(x), context[0]), context[1])
        if audio is not None and self.attn_audio is not None:
            x = x + _gate(self.attn_audio(self.norm_audio(x), audio[0]), audio[1])
        return x + self.ff(self.norm3(x))


def _gate(y, keep):
    return y if keep is None else y * keep.astype(y.dtype)[:, None, None]


class Transformer2DModel(nnx.Module):
    """SD spatial transformer: GroupNorm -> proj_in -> blocks over H*W tokens -> proj_out, residual."""

    def __init__(self, ch: int, heads: int, *, cross_dim: int | None, audio_dim: int | None,
                 groups: int = 32, num_layers: int = 1, use_linear_projection: bool = False,
                 rngs: nnx.Rngs, dtype=None, implementation: str = ""):
        self.norm = GroupNorm(ch, groups, eps=1e-6, rngs=rngs, dtype=dtype)
        # A 1x1 conv and a Linear are the same map channels-last; keep them as Dense (the
        # importer folds diffusers' [O, I, 1, 1] conv kernels).
        self.proj_in = Dense(ch, ch, names=("conv_in", "conv_out"), rngs=rngs, dtype=dtype)
        self.transformer_blocks = nnx.List([
            BasicTransformerBlock(ch, heads, cross_dim=cross_dim, audio_dim=audio_dim, rngs=rngs, dtype=dtype,
                                  implementation=implementation)
            for _ in range(num_layers)])
        self.proj_out = Dense(ch, ch, names=("conv_in", "conv_out"), rngs=rngs, dtype=dtype)
        self.use_linear_projection = use_linear_projection

    def __call__(self, x, context=None, audio=None):
        """``x: [N, H, W, C]`` -> same."""
        n, h, w, c = x.shape
        res = x
        y = self.norm(x).reshape(n, h * w, c)
        y = self.proj_in(y)
        for blk in self.transformer_blocks:
            y = blk(y, context, audio)
        y = self.proj_out(y)
        return y.reshape(n, h, w, c) + res
