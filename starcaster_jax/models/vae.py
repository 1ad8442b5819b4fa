"""KL autoencoder in the diffusers ``AutoencoderKL`` layout (SD-1.5 VAE, f=8, 4 latent channels).

The module tree mirrors diffusers' names (``encoder.down_blocks.0.resnets.0.conv1`` ...) so that
the importer in ``starcaster_jax.weights.vae`` is a short rename table and the parity test can
compare against ``diffusers.AutoencoderKL`` directly. Everything is channels last:
images ``[N, H, W, 3]`` in ``[-1, 1]`` <-> latents ``[N, H/f, W/f, C]``; video helpers fold
the frame axis of ``[B, F, ...]`` into the batch (optionally in chunks, to bound memory).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from starcaster_jax.models.attention import Attention, dot_product_attention
from starcaster_jax.models.blocks import ResnetBlock2D, Upsample2D
from starcaster_jax.models.layers import Conv, GroupNorm
from starcaster_jax.models.rngs import InitRngs

# ----------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture + latent scaling. Field names follow diffusers' ``config.json``."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    norm_eps: float = 1e-6              # diffusers hard-codes 1e-6 in the VAE blocks
    sample_size: int = 512
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    # runtime (not architecture): compute dtype ("float32"/"bfloat16"; params stay f32) and
    # how many frames encode_video / decode_video process per lax.map step (0 = all at once).
    dtype: str | None = None
    encode_chunk: int = 0
    decode_chunk: int = 0

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any], **overrides) -> VAEConfig:
        """From a diffusers ``AutoencoderKL`` ``config.json`` dict; unknown keys are ignored."""
        for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            bad = [t for t in cfg.get(key, ()) if t != want]
            if bad:
                raise ValueError(f"VAE config {key}: only {want} is supported, got {bad[0]!r}")
        if cfg.get("act_fn", "silu") != "silu":
            raise ValueError(f"VAE config act_fn: only 'silu' is supported, got {cfg['act_fn']!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in cfg.items() if k in names}
        if "block_out_channels" in kw:
            kw["block_out_channels"] = tuple(int(c) for c in kw["block_out_channels"])
        if isinstance(kw.get("sample_size"), (list, tuple)):
            kw["sample_size"] = int(kw["sample_size"][0])
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_json(cls, path: str, **overrides) -> VAEConfig:
        with open(path) as f:
            return cls.from_diffusers(json.load(f), **overrides)

    def to_diffusers(self) -> dict[str, Any]:
        """kwargs for ``diffusers.AutoencoderKL(**cfg)`` (parity tests, exporting the tiny VAE)."""
        n = len(self.block_out_channels)
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                    block_out_channels=tuple(self.block_out_channels), layers_per_block=self.layers_per_block,
                    act_fn="silu", latent_channels=self.latent_channels, norm_num_groups=self.norm_num_groups,
                    sample_size=self.sample_size, scaling_factor=self.scaling_factor,
                    shift_factor=self.shift_factor, use_quant_conv=self.use_quant_conv,
                    use_post_quant_conv=self.use_post_quant_conv,
                    mid_block_add_attention=self.mid_block_add_attention)


PRESETS: dict[str, VAEConfig] = {
    # Stable Diffusion 1.x/2.x VAE (~84M params), f=8.
    "sd15": VAEConfig(),
    # The CPU demo VAE: f=4, ~1M params; scaling_factor is re-estimated after training.
    "tiny": VAEConfig(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                      sample_size=64, scaling_factor=1.0),
    # Unit tests: f=2, a few hundred k params.
    "micro": VAEConfig(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, sample_size=32,
                       scaling_factor=1.0),
}


def vae_preset(name: str, **overrides) -> VAEConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown VAE preset {name!r}; have {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# ----------------------------------------------------------------------------- posterior

@flax.struct.dataclass
class DiagonalGaussian:
    """The encoder's posterior q(z|x). ``mean, logvar: [N, h, w, C]`` (f32, logvar in [-30, 20])."""

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> DiagonalGaussian:
        """``moments: [N, h, w, 2C]`` -> first C channels mean, last C log-variance (diffusers order)."""
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return cls(mean, jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def sample(self, rng: jax.Array) -> jax.Array:
        return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) summed over all but the batch axis -> ``[N]`` (as diffusers)."""
        axes = tuple(range(1, self.mean.ndim))
        return 0.5 * jnp.sum(self.mean ** 2 + self.var - 1.0 - self.logvar, axis=axes)


# ----------------------------------------------------------------------------- blocks

class Downsample2D(nnx.Module):
    """Stride-2 3x3 conv with diffusers' asymmetric (bottom/right only) padding."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype=None):
        self.conv = Conv(channels, channels, 3, stride=2, padding=((0, 1), (0, 1)), rngs=rngs, dtype=dtype)

    def __call__(self, x):  # [N, H, W, C] -> [N, H/2, W/2, C]
        return self.conv(x)


class VAEAttentionBlock(nnx.Module):
    """Single-head self-attention over all pixels with a GroupNorm in front and a residual
    (diffusers ``Attention`` as built by ``UNetMidBlock2D``: q/k/v biases, rescale 1)."""

    def __init__(self, channels: int, *, groups: int, eps: float, rngs: nnx.Rngs, dtype=None):
        self.group_norm = GroupNorm(channels, groups, eps=eps, rngs=rngs, dtype=dtype)
        self.attention = Attention(channels, heads=1, head_dim=channels, qkv_bias=True, rngs=rngs, dtype=dtype)

    def __call__(self, x):  # [N, H, W, C] -> same
        n, h, w, c = x.shape
        a = self.attention
        y = self.group_norm(x).reshape(n, h * w, c)
        q, k, v = (p(y).reshape(n, h * w, 1, c) for p in (a.to_q, a.to_k, a.to_v))
        # The one head is C (512) wide: beyond cuDNN flash attention's head-dim limit, so this
        # block keeps XLA even when the denoiser's attention is set to "cudnn".
        o = dot_product_attention(q, k, v, implementation="xla" if c > 128 else None)
        return x + a.to_out(o.reshape(n, h * w, c)).reshape(n, h, w, c)


class UNetMidBlock2D(nnx.Module):
    """resnet -> attention -> resnet (attention optional, as diffusers' ``mid_block_add_attention``)."""

    def __init__(self, channels: int, *, groups: int, eps: float, add_attention: bool = True,
                 rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, groups=groups, eps=eps, rngs=rngs, dtype=dtype)
                                 for _ in range(2)])
        self.attentions = nnx.List([VAEAttentionBlock(channels, groups=groups, eps=eps, rngs=rngs, dtype=dtype)]
                                   if add_attention else [])

    def __call__(self, x):
        x = self.resnets[0](x)
        for i, resnet in enumerate(self.resnets[1:]):
            if i < len(self.attentions):
                x = self.attentions[i](x)
            x = resnet(x)
        return x


class DownEncoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, *, add_downsample: bool,
                 groups: int, eps: float, rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups=groups, eps=eps,
                          rngs=rngs, dtype=dtype) for i in range(num_layers)])
        self.downsamplers = nnx.List([Downsample2D(out_channels, rngs=rngs, dtype=dtype)] if add_downsample else [])

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        for d in self.downsamplers:
            x = d(x)
        return x


class UpDecoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, *, add_upsample: bool,
                 groups: int, eps: float, rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups=groups, eps=eps,
                          rngs=rngs, dtype=dtype) for i in range(num_layers)])
        self.upsamplers = nnx.List([Upsample2D(out_channels, rngs=rngs, dtype=dtype)] if add_upsample else [])

    def __call__(self, x):
        for r in self.resnets:
            x = r(x)
        for u in self.upsamplers:
            x = u(x)
        return x


# ----------------------------------------------------------------------------- encoder / decoder

def _dtype(cfg: VAEConfig):
    return jnp.dtype(cfg.dtype) if cfg.dtype else None


class Encoder(nnx.Module):
    """``[N, H, W, in]`` -> moments ``[N, H/f, W/f, 2 * latent_channels]``."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        ch, g, eps, dt = cfg.block_out_channels, cfg.norm_num_groups, cfg.norm_eps, _dtype(cfg)
        self.conv_in = Conv(cfg.in_channels, ch[0], 3, rngs=rngs, dtype=dt)
        self.down_blocks = nnx.List([
            DownEncoderBlock2D(ch[max(i - 1, 0)], c, cfg.layers_per_block, add_downsample=i < len(ch) - 1,
                               groups=g, eps=eps, rngs=rngs, dtype=dt) for i, c in enumerate(ch)])
        self.mid_block = UNetMidBlock2D(ch[-1], groups=g, eps=eps, add_attention=cfg.mid_block_add_attention,
                                        rngs=rngs, dtype=dt)
        self.conv_norm_out = GroupNorm(ch[-1], g, eps=eps, rngs=rngs, dtype=dt)
        self.conv_out = Conv(ch[-1], 2 * cfg.latent_channels, 3, rngs=rngs, dtype=dt)

    def __call__(self, x):
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        x = self.mid_block(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """latents ``[N, h, w, latent_channels]`` -> ``[N, h*f, w*f, out]``."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        g, eps, dt = cfg.norm_num_groups, cfg.norm_eps, _dtype(cfg)
        rev = tuple(reversed(cfg.block_out_channels))
        self.conv_in = Conv(cfg.latent_channels, rev[0], 3, rngs=rngs, dtype=dt)
        self.mid_block = UNetMidBlock2D(rev[0], groups=g, eps=eps, add_attention=cfg.mid_block_add_attention,
                                        rngs=rngs, dtype=dt)
        self.up_blocks = nnx.List([
            UpDecoderBlock2D(rev[max(i - 1, 0)], c, cfg.layers_per_block + 1, add_upsample=i < len(rev) - 1,
                             groups=g, eps=eps, rngs=rngs, dtype=dt) for i, c in enumerate(rev)])
        self.conv_norm_out = GroupNorm(rev[-1], g, eps=eps, rngs=rngs, dtype=dt)
        self.conv_out = Conv(rev[-1], cfg.out_channels, 3, rngs=rngs, dtype=dt)

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


def _map_chunks(fn, x: jax.Array, chunk: int):
    """``fn`` over the leading axis of ``x`` in chunks of ``chunk`` via ``lax.map`` (bounds peak
    memory to one chunk); zero-pads the tail. Items are independent (GroupNorm is per sample)."""
    n = x.shape[0]
    if not chunk or chunk >= n:
        return fn(x)
    pad = (-n) % chunk
    xs = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(-1, chunk, *x.shape[1:])
    ys = jax.lax.map(fn, xs)
    return jax.tree.map(lambda y: y.reshape(-1, *y.shape[2:])[:n], ys)


class AutoencoderKL(nnx.Module):
    """SD-style KL autoencoder. ``encode`` / ``decode`` work on *unscaled* latents;
    ``encode_video`` / ``decode_video`` (what the diffusion code uses) on *scaled* ones:
    ``z_scaled = (z - shift_factor) * scaling_factor``."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        c, dt = config.latent_channels, _dtype(config)
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.quant_conv = Conv(2 * c, 2 * c, 1, rngs=rngs, dtype=dt) if config.use_quant_conv else None
        self.post_quant_conv = Conv(c, c, 1, rngs=rngs, dtype=dt) if config.use_post_quant_conv else None

    # -- images
    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """``x: [N, H, W, in]`` in [-1, 1] -> posterior over ``[N, H/f, W/f, C]``."""
        m = self.encoder(x)
        if self.quant_conv is not None:
            m = self.quant_conv(m)
        return DiagonalGaussian.from_moments(m)

    def decode(self, z: jax.Array) -> jax.Array:
        """unscaled latents ``[N, h, w, C]`` -> images ``[N, h*f, w*f, out]`` (f32, roughly [-1, 1])."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> tuple[jax.Array, DiagonalGaussian]:
        """Reconstruction (posterior sample if ``rng`` else its mode) and the posterior."""
        post = self.encode(x)
        z = post.mode() if rng is None else post.sample(rng)
        return self.decode(z), post

    # -- latent scaling
    def scale_latents(self, z: jax.Array) -> jax.Array:
        shift = self.config.shift_factor or 0.0
        return (z - shift) * self.config.scaling_factor

    def unscale_latents(self, z: jax.Array) -> jax.Array:
        shift = self.config.shift_factor or 0.0
        return z / self.config.scaling_factor + shift

    # -- video: frames folded into the batch
    def encode_video(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """``x: [B, F, H, W, in]`` -> scaled latents ``[B, F, H/f, W/f, C]`` (a sample if ``rng``,
        else the posterior mean)."""
        b, f = x.shape[:2]
        graphdef, state = nnx.split(self)

        def enc(xc):  # [n, H, W, in] -> (mean, logvar)
            p = nnx.merge(graphdef, state).encode(xc)
            return p.mean, p.logvar

        mean, logvar = _map_chunks(enc, x.reshape(b * f, *x.shape[2:]), self.config.encode_chunk)
        post = DiagonalGaussian(mean, logvar)
        z = post.mode() if rng is None else post.sample(rng)
        return self.scale_latents(z).reshape(b, f, *z.shape[1:])

    def decode_video(self, z: jax.Array) -> jax.Array:
        """scaled latents ``[B, F, h, w, C]`` -> frames ``[B, F, h*f, w*f, out]``."""
        b, f = z.shape[:2]
        graphdef, state = nnx.split(self)

        def dec(zc):  # [n, h, w, C] -> [n, H, W, out]
            return nnx.merge(graphdef, state).decode(zc)

        zf = self.unscale_latents(z.reshape(b * f, *z.shape[2:]))
        x = _map_chunks(dec, zf, self.config.decode_chunk)
        return x.reshape(b, f, *x.shape[1:])


def abstract_vae(config: VAEConfig) -> AutoencoderKL:
    """The model with ``ShapeDtypeStruct`` leaves (nothing allocated): for counting parameters,
    deriving shardings and loading weights straight into place."""
    return nnx.eval_shape(lambda: AutoencoderKL(config, rngs=InitRngs(0)))


def create_vae(config: VAEConfig, *, seed: int = 0, rngs: nnx.Rngs | None = None) -> AutoencoderKL:
    """Randomly initialised VAE, built under ``nnx.jit``: one compile of the whole init instead
    of one eager compile per parameter shape. Without ``rngs`` the init key is ``rbg`` (same
    distributions; XLA:CPU compiles it ~2x faster than threefry, which dominates tiny-model set-up)."""
    if rngs is not None:
        return nnx.jit(lambda r: AutoencoderKL(config, rngs=r))(rngs)
    return nnx.jit(lambda: AutoencoderKL(config, rngs=InitRngs(jax.random.key(seed, impl="rbg"))))()
