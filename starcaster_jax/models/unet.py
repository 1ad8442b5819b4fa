"""The STARCaster denoiser: an SD-1.5-layout UNet with AnimateDiff temporal blocks, frame-wise
audio cross-attention, identity cross-attention, a per-frame view embedding, per-frame
timesteps and a context-frame mask.

``x: [B, F, H, W, C]`` (channels last). Spatial layers see frames folded into the batch
(``[B*F, H, W, C]``); temporal layers see ``[B*H*W, F, C]``. Every layer SD-1.5/AnimateDiff do
not have is zero-initialised at its output, and the temporal blocks' ``proj_out`` is
zero-initialised as in AnimateDiff, so importing SD-1.5 (or SD-1.5 + AnimateDiff) reproduces
the imported model exactly.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from starcaster_jax import sharding as shd
from starcaster_jax.models.attention import check_implementation
from starcaster_jax.models.blocks import Downsample2D, ResnetBlock2D, Transformer2DModel, Upsample2D
from starcaster_jax.models.conditioning import TimestepEmbedding, ViewEmbedding
from starcaster_jax.models.layers import Conv, GroupNorm
from starcaster_jax.models.temporal import TemporalTransformer

# Logical names of the [B, F, H, W, C] activations between blocks (sharding.LOGICAL_AXIS_RULES).
ACTIVATION_NAMES = ("batch", "frames", "height", "width", "act_embed")

REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": "full",  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_saveable": jax.checkpoint_policies.checkpoint_dots,
}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    cross_attn_blocks: tuple[bool, ...] = (True, True, True, False)  # down path; up mirrors it
    layers_per_block: int = 2
    num_attention_heads: int = 8
    transformer_layers_per_block: int = 1
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    # temporal (AnimateDiff motion modules)
    use_temporal: bool = True
    motion_num_attention_heads: int = 8
    motion_max_seq_length: int = 32
    temporal_layers_per_block: int = 1
    use_motion_mid_block: bool = True
    # STARCaster conditioning (None = the layers do not exist)
    audio_dim: int | None = 768
    view_dim: int | None = 256
    use_context_embedding: bool = True
    # numerics / memory
    dtype: str = "float32"          # compute dtype; "auto" = bfloat16 on TPU/GPU, float32 on CPU
    remat_policy: str = "none"
    # attention backend (models/attention.py; "" = the platform's default) and the mesh axis the
    # motion modules shard frames over ("" = none): fields of the graph, so training, Generator
    # and export build the same module
    attention_impl: str = ""
    sequence_parallel_axis: str = ""

    def __post_init__(self):
        check_implementation(self.attention_impl)
        if self.sequence_parallel_axis not in ("",) + shd.MESH_AXES:
            raise ValueError(f"model.unet.sequence_parallel_axis: expected '' or one of {shd.MESH_AXES}, "
                             f"got {self.sequence_parallel_axis!r}")

    @classmethod
    def from_dict(cls, d) -> UNetConfig:
        d = dict(d)
        for k in ("block_out_channels", "cross_attn_blocks"):
            if k in d:
                d[k] = tuple(d[k])
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"model.unet: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    @property
    def temb_dim(self) -> int:
        return self.block_out_channels[0] * 4


def resolve_dtype(name: str, platform: str | None = None) -> str:
    """``model.unet.dtype`` -> a concrete compute dtype. "auto": bfloat16 on TPU and GPU (f32
    master weights, loss, normalisation statistics and softmax stay f32), float32 on CPU where
    XLA:CPU bf16 matmuls are slower and tests compare at f32 tolerances."""
    if name == "auto":
        return "bfloat16" if (platform or jax.default_backend()) in ("tpu", "gpu") else "float32"
    try:
        return jnp.dtype(name).name
    except TypeError:
        raise ValueError(f"model.unet.dtype: expected auto|float32|bfloat16, got {name!r}") from None


def _remat(policy_name: str, fn: Callable) -> Callable:
    if policy_name not in REMAT_POLICIES:
        raise ValueError(f"model.unet.remat_policy: expected one of {sorted(REMAT_POLICIES)}, got {policy_name!r}")
    policy = REMAT_POLICIES[policy_name]
    if policy is None:
        return fn
    return nnx.remat(fn, policy=None if policy == "full" else policy)


class _Stage(nnx.Module):
    """One down or up stage: (resnet -> [spatial transformer] -> [temporal]) x n, then resample."""

    def __init__(self, cfg: UNetConfig, in_chs: Sequence[int], out_ch: int, *, cross_attn: bool,
                 resample: str | None, rngs: nnx.Rngs, dtype, num_mixers: int | None = None,
                 temporal: bool | None = None):
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        n_mix = len(in_chs) if num_mixers is None else num_mixers  # the mid block has one fewer
        temporal = cfg.use_temporal if temporal is None else temporal
        self.resnets = nnx.List([ResnetBlock2D(c, out_ch, temb_dim=cfg.temb_dim, groups=g, eps=eps,
                                               rngs=rngs, dtype=dtype) for c in in_chs])
        self.attentions = nnx.List([
            Transformer2DModel(out_ch, cfg.num_attention_heads, cross_dim=cfg.cross_attention_dim,
                               audio_dim=cfg.audio_dim, groups=g, num_layers=cfg.transformer_layers_per_block,
                               use_linear_projection=cfg.use_linear_projection, rngs=rngs, dtype=dtype,
                               implementation=cfg.attention_impl)
            for _ in range(n_mix)]) if cross_attn else None
        self.motion_modules = nnx.List([
            TemporalTransformer(out_ch, cfg.motion_num_attention_heads, groups=g,
                                num_layers=cfg.temporal_layers_per_block, max_frames=cfg.motion_max_seq_length,
                                view_dim=cfg.view_dim, rngs=rngs, dtype=dtype,
                                implementation=cfg.attention_impl, sequence_axis=cfg.sequence_parallel_axis)
            for _ in range(n_mix)]) if temporal else None
        self.downsamplers = nnx.List([Downsample2D(out_ch, rngs=rngs, dtype=dtype)]) if resample == "down" else None
        self.upsamplers = nnx.List([Upsample2D(out_ch, rngs=rngs, dtype=dtype)]) if resample == "up" else None

    def layer(self, i, h, temb, ctx, aud, vemb, f, remat):
        def body(stage, h, temb, ctx, aud, vemb):
            h = stage.resnets[i](h, temb)
            if stage.attentions is not None:
                h = stage.attentions[i](h, ctx, aud)
            if stage.motion_modules is not None:
                h = stage.motion_modules[i](h, f, vemb)
            return h
        return _remat(remat, body)(self, h, temb, ctx, aud, vemb)

    def mid(self, h, temb, ctx, aud, vemb, f, remat):
        """The mid block (resnet -> transformer -> [temporal] -> resnet), under the same remat policy."""
        def body(stage, h, temb, ctx, aud, vemb):
            h = stage.resnets[0](h, temb)
            h = stage.attentions[0](h, ctx, aud)
            if stage.motion_modules is not None:
                h = stage.motion_modules[0](h, f, vemb)
            return stage.resnets[1](h, temb)
        return _remat(remat, body)(self, h, temb, ctx, aud, vemb)


class UNet(nnx.Module):
    """STARCaster spatio-temporal denoiser. See the module docstring for the layout."""

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        cfg = dataclasses.replace(cfg, dtype=resolve_dtype(cfg.dtype))  # the graph records the real one
        self.cfg = cfg
        dtype = jnp.dtype(cfg.dtype)
        ch = cfg.block_out_channels
        g = cfg.norm_num_groups
        self.conv_in = Conv(cfg.in_channels, ch[0], 3, rngs=rngs, dtype=dtype)
        self.time_embedding = TimestepEmbedding(ch[0], cfg.temb_dim, rngs=rngs, dtype=dtype)
        self.context_embedding = (nnx.Param(jnp.zeros((cfg.temb_dim,)), out_sharding=("embed",))
                                  if cfg.use_context_embedding else None)
        self.view_embedding = ViewEmbedding(cfg.view_dim, rngs=rngs, dtype=dtype) if cfg.view_dim else None

        n = len(ch)
        down = []
        out_ch = ch[0]
        for i in range(n):
            in_ch, out_ch = out_ch, ch[i]
            in_chs = [in_ch] + [out_ch] * (cfg.layers_per_block - 1)
            down.append(_Stage(cfg, in_chs, out_ch, cross_attn=cfg.cross_attn_blocks[i],
                               resample=None if i == n - 1 else "down", rngs=rngs, dtype=dtype))
        self.down_blocks = nnx.List(down)

        mid = ch[-1]
        self.mid_block = _Stage(cfg, [mid, mid], mid, cross_attn=True, resample=None, rngs=rngs, dtype=dtype,
                                num_mixers=1, temporal=cfg.use_temporal and cfg.use_motion_mid_block)

        rev = list(reversed(ch))
        rev_attn = list(reversed(cfg.cross_attn_blocks))
        up = []
        out_ch = rev[0]
        for i in range(n):
            prev, out_ch = out_ch, rev[i]
            skip_in = rev[min(i + 1, n - 1)]
            L = cfg.layers_per_block + 1
            in_chs = [(prev if j == 0 else out_ch) + (skip_in if j == L - 1 else out_ch) for j in range(L)]
            up.append(_Stage(cfg, in_chs, out_ch, cross_attn=rev_attn[i],
                             resample=None if i == n - 1 else "up", rngs=rngs, dtype=dtype))
        self.up_blocks = nnx.List(up)

        self.conv_norm_out = GroupNorm(ch[0], g, eps=cfg.norm_eps, rngs=rngs, dtype=dtype)
        self.conv_out = Conv(ch[0], cfg.out_channels, 3, rngs=rngs, dtype=dtype)

    def _constrain(self, h, b: int, f: int):
        """``h: [B*F, H, W, C]`` pinned at a block boundary as the rules table says: batch over
        ``data x fsdp``, frames over ``model.unet.sequence_parallel_axis`` (identity off a mesh)."""
        if shd.active_mesh() is None:
            return h
        n, hh, ww, c = h.shape
        rules = shd.sequence_parallel_rules(self.cfg.sequence_parallel_axis)
        y = shd.constrain(h.reshape(b, f, hh, ww, c), ACTIVATION_NAMES, rules)   # [B, F, H, W, C]
        return y.reshape(n, hh, ww, c)

    def __call__(self, x, t, *, id_tokens=None, audio_tokens=None, view=None, context_mask=None,
                 deterministic: bool = True, drop_id=None, drop_audio=None, drop_view=None):
        """``x [B,F,H,W,C]``, ``t [B,F]`` (or ``[B]``), ``id_tokens [B,N,D]``,
        ``audio_tokens [B,F,Na,Da]``, ``view [B,F,6]``, ``context_mask [B,F]`` -> ``[B,F,H,W,C]``.

        ``None`` = condition absent. ``drop_id`` / ``drop_audio`` (``[B]`` bool) drop a condition
        for some samples only, with exactly the effect of ``None`` on those samples (CFG dropout
        and batched guidance); ``drop_view`` likewise gates the view embedding (the model then
        invents its own head motion). ``deterministic`` is accepted for API stability (no dropout).
        """
        del deterministic
        cfg = self.cfg
        dtype = jnp.dtype(cfg.dtype)
        b, f, hh, ww, c = x.shape
        if c != cfg.in_channels:
            raise ValueError(f"x: expected {cfg.in_channels} channels (model.unet.in_channels), got {c}")
        t = jnp.broadcast_to(t if t.ndim == 2 else t[:, None], (b, f))
        temb = self.time_embedding(t.reshape(b * f))                      # [B*F, Dt]
        if context_mask is not None and self.context_embedding is not None:
            temb = temb + context_mask.reshape(b * f, 1).astype(temb.dtype) * self.context_embedding.value
        def keep(drop):  # [B] bool -> [B*F] float gate, or None
            return None if drop is None else jnp.repeat(1.0 - drop.astype(jnp.float32), f)

        ctx = None
        if id_tokens is not None:
            ctx = (jnp.repeat(id_tokens.astype(dtype), f, axis=0), keep(drop_id))           # [B*F, N, D]
        aud = None
        if audio_tokens is not None:
            aud = (audio_tokens.astype(dtype).reshape(b * f, *audio_tokens.shape[2:]),      # [B*F, Na, Da]
                   keep(drop_audio))
        vemb = None
        if view is not None and self.view_embedding is not None:
            vemb = self.view_embedding(view)                                # [B, F, Dv]
            if drop_view is not None:
                vemb = vemb * (1.0 - drop_view.astype(vemb.dtype))[:, None, None]
        args = (temb, ctx, aud, vemb, f, cfg.remat_policy)
        pin = lambda h: self._constrain(h, b, f)  # noqa: E731  at every block boundary

        h = pin(self.conv_in(x.reshape(b * f, hh, ww, c).astype(dtype)))  # [B*F, H, W, C0]
        skips = [h]
        for stage in self.down_blocks:
            for i in range(len(stage.resnets)):
                h = pin(stage.layer(i, h, *args))
                skips.append(h)
            if stage.downsamplers is not None:
                h = pin(stage.downsamplers[0](h))
                skips.append(h)

        h = pin(self.mid_block.mid(h, *args))

        for stage in self.up_blocks:
            for i in range(len(stage.resnets)):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = pin(stage.layer(i, h, *args))
            if stage.upsamplers is not None:  # to the next skip's size: odd latents too
                h = pin(stage.upsamplers[0](h, output_size=skips[-1].shape[1:3]))

        h = self.conv_out(jax.nn.silu(self.conv_norm_out(h)))
        return h.reshape(b, f, hh, ww, -1).astype(x.dtype)
