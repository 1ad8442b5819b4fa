"""Flax NNX port of wav2vec2 (``transformers.Wav2Vec2Model``), inference numerics.

Why a port: transformers 5 ships no Flax models, and the audio conditioning of the denoiser
(DESIGN §2) is the multi-layer hidden states of a wav2vec2-architecture encoder whose weights
come from the standard Hugging Face checkpoints (``facebook/wav2vec2-base-960h`` etc.).

Covered: conv feature encoder (``feat_extract_norm="group"`` - base - and ``"layer"`` - large),
feature projection, weight-normed convolutional positional embedding, post-LN (base) and
pre-LN (``do_stable_layer_norm=True``, large) encoders. Dropout, layer-drop, SpecAugment
masking and adapters are training-only and left out (the encoder is frozen here).

``hidden_states`` follow transformers 5.x ``output_hidden_states=True``: ``num_hidden_layers
+ 1`` entries - the encoder input (post-LN: after the encoder LayerNorm; pre-LN: after the
positional embedding) then every layer's output. In the pre-LN variant the last entry is the
raw output of the last layer; ``last_hidden_state`` has the final LayerNorm applied.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models.attention import dot_product_attention
from starcaster_jax.models.layers import Conv, Dense, GroupNorm, LayerNorm, torch_default_init

_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"wav2vec2: unsupported activation {name!r} (known: {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """The fields of a Hugging Face wav2vec2 ``config.json`` that shape the forward pass.

    Defaults are ``facebook/wav2vec2-base-960h``. ``do_normalize`` comes from the checkpoint's
    ``preprocessor_config.json`` (per-utterance zero-mean/unit-variance input, applied by
    ``Wav2Vec2Model.encode``).
    """
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    do_normalize: bool = True
    sampling_rate: int = 16000

    def __post_init__(self):
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)):
            raise ValueError("wav2vec2 config: conv_dim, conv_stride and conv_kernel differ in length")
        if self.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"wav2vec2 config: feat_extract_norm must be 'group' or 'layer', "
                             f"got {self.feat_extract_norm!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("wav2vec2 config: hidden_size is not divisible by num_attention_heads")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None
                ) -> Wav2Vec2Config:
        """From a parsed HF ``config.json`` (and optionally ``preprocessor_config.json``)."""
        if hf.get("add_adapter"):
            raise ValueError("wav2vec2 config: add_adapter=True is not supported by this port")
        if hf.get("adapter_attn_dim") is not None:
            raise ValueError("wav2vec2 config: adapter_attn_dim (attention adapters) is not supported")
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in hf and f.name not in ("do_normalize", "sampling_rate"):
                v = hf[f.name]
                kw[f.name] = tuple(v) if isinstance(v, list) else v
        if preprocessor:
            if "do_normalize" in preprocessor:
                kw["do_normalize"] = bool(preprocessor["do_normalize"])
            if "sampling_rate" in preprocessor:
                kw["sampling_rate"] = int(preprocessor["sampling_rate"])
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, path: str) -> Wav2Vec2Config:
        """From a checkpoint directory holding ``config.json`` (+ ``preprocessor_config.json``)."""
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        pre = None
        pp = os.path.join(path, "preprocessor_config.json")
        if os.path.exists(pp):
            with open(pp) as f:
                pre = json.load(f)
        return cls.from_hf(hf, pre)

    @property
    def frame_rate(self) -> float:
        """Feature frames per second (50 for the standard 320-sample total stride at 16 kHz)."""
        return self.sampling_rate / float(np.prod(self.conv_stride))

    def num_feature_frames(self, num_samples: int) -> int:
        """Length of the conv feature encoder's output for ``num_samples`` input samples."""
        n = int(num_samples)
        for k, s in zip(self.conv_kernel, self.conv_stride):
            n = (n - k) // s + 1
        return n

    @property
    def receptive_field(self) -> int:
        """Fewest input samples that give one feature frame (400 for the base layout)."""
        n = 1
        for k, s in reversed(list(zip(self.conv_kernel, self.conv_stride))):
            n = (n - 1) * s + k
        return n


def feature_attention_mask(cfg: Wav2Vec2Config, sample_lengths, num_frames: int) -> jax.Array:
    """``[B, T]`` bool mask of valid feature frames for a zero-padded batch with the given
    per-example sample counts (HF ``_get_feature_vector_attention_mask``).

    Only the ``feat_extract_norm="layer"`` (large) checkpoints were trained with masks; for
    the base layout HF recommends plain zero padding without a mask.
    """
    lengths = jnp.asarray(sample_lengths)
    for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
        lengths = (lengths - k) // s + 1
    return jnp.arange(num_frames)[None, :] < lengths[:, None]


# ----------------------------------------------------------------------------- feature encoder

class FeatureConvLayer(nnx.Module):
    """One conv of the feature encoder: conv -> [GroupNorm(C groups) | LayerNorm | none] -> act."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, norm: str | None,
                 bias: bool, act: str, rngs: nnx.Rngs, dtype=None):
        self.conv = Conv(cin, cout, (kernel,), stride=(stride,), padding="VALID", use_bias=bias,
                         rngs=rngs, dtype=dtype)
        if norm == "group":  # one group per channel: normalises each channel over time
            self.layer_norm = GroupNorm(cout, num_groups=cout, eps=1e-5, rngs=rngs, dtype=dtype)
        elif norm == "layer":  # torch nn.LayerNorm default eps
            self.layer_norm = LayerNorm(cout, eps=1e-5, rngs=rngs, dtype=dtype)
        else:
            self.layer_norm = None
        self.act = _activation(act)

    def __call__(self, x):  # [B, T, Cin] -> [B, T', Cout]
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.act(x)


class FeatureEncoder(nnx.Module):
    """Raw 16 kHz waveform -> conv features at ``sr / prod(conv_stride)`` Hz (50 Hz)."""

    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=None):
        layers = []
        cin = 1
        for i, (c, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            if cfg.feat_extract_norm == "group":
                norm = "group" if i == 0 else None
            else:
                norm = "layer"
            layers.append(FeatureConvLayer(cin, c, k, s, norm=norm, bias=cfg.conv_bias,
                                           act=cfg.feat_extract_activation, rngs=rngs, dtype=dtype))
            cin = c
        self.conv_layers = nnx.List(layers)

    def __call__(self, audio):  # [B, S] -> [B, T, C]
        x = audio[..., None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nnx.Module):
    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=None):
        self.layer_norm = LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps, rngs=rngs, dtype=dtype)
        self.projection = Dense(cfg.conv_dim[-1], cfg.hidden_size, names=("conv_out", "embed"),
                                rngs=rngs, dtype=dtype)

    def __call__(self, x):  # [B, T, C] -> [B, T, D]
        return self.projection(self.layer_norm(x))


class WeightNormConv1d(nnx.Module):
    """Grouped 1-D conv with torch ``weight_norm(dim=2)``: ``w[k] = g[k] * v[k] / ||v[k]||``.

    g and v stay separate parameters (as in the checkpoint) so fine-tuning keeps the
    reparametrisation. Kernel layout ``v: [K, Cin/groups, Cout]``, ``g: [K]``. Output length
    equals input length ("same" padding; for even K torch pads K/2 both sides and drops the
    last frame, which is the same as padding (K/2, K/2-1)).
    """

    def __init__(self, channels: int, kernel: int, groups: int, *, rngs: nnx.Rngs, dtype=None):
        if channels % groups:
            raise ValueError("wav2vec2: hidden_size is not divisible by num_conv_pos_embedding_groups")
        self.kernel, self.groups, self.dtype = kernel, groups, dtype
        v = torch_default_init(rngs.params(), (kernel, channels // groups, channels), jnp.float32)
        g = jnp.sqrt(jnp.sum(v * v, axis=(1, 2)))  # starts as the plain kernel
        self.weight_v = nnx.Param(v, sharding_names=("kernel", "conv_in", "conv_out"))
        self.weight_g = nnx.Param(g, sharding_names=("kernel",))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32), sharding_names=("conv_out",))

    def weight(self):  # [K, Cin/g, Cout]
        v = self.weight_v[...]
        norm = jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))
        return self.weight_g[...][:, None, None] * v / norm

    def __call__(self, x):  # [B, T, C] -> [B, T, C]
        k = self.kernel
        w, b = self.weight(), self.bias[...]
        if self.dtype is not None:
            x, w, b = x.astype(self.dtype), w.astype(self.dtype), b.astype(self.dtype)
        y = jax.lax.conv_general_dilated(
            x, w, window_strides=(1,), padding=((k // 2, k // 2 - (1 - k % 2)),),
            dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=self.groups)
        return y + b


class PositionalConvEmbedding(nnx.Module):
    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=None):
        self.conv = WeightNormConv1d(cfg.hidden_size, cfg.num_conv_pos_embeddings,
                                     cfg.num_conv_pos_embedding_groups, rngs=rngs, dtype=dtype)
        self.act = _activation(cfg.feat_extract_activation)

    def __call__(self, x):  # [B, T, D] -> [B, T, D]
        return self.act(self.conv(x))


# ----------------------------------------------------------------------------- transformer

class SelfAttention(nnx.Module):
    """wav2vec2 / BART attention: q/k/v/out projections all with bias."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs, dtype=None):
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = Dense(dim, dim, names=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.k_proj = Dense(dim, dim, names=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.v_proj = Dense(dim, dim, names=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.out_proj = Dense(dim, dim, names=("heads", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x, mask=None):  # [B, T, D] -> [B, T, D]
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.heads, self.head_dim)  # noqa: E731
        o = dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                  mask=mask)
        return self.out_proj(o.reshape(b, t, d))


class FeedForward(nnx.Module):
    def __init__(self, dim: int, hidden: int, act: str, *, rngs: nnx.Rngs, dtype=None):
        self.intermediate_dense = Dense(dim, hidden, names=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.output_dense = Dense(hidden, dim, names=("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.act = _activation(act)

    def __call__(self, x):
        return self.output_dense(self.act(self.intermediate_dense(x)))


class EncoderLayer(nnx.Module):
    """Post-LN (base) or pre-LN (``stable``, large) transformer layer."""

    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=None):
        d = cfg.hidden_size
        self.stable = cfg.do_stable_layer_norm
        self.attention = SelfAttention(d, cfg.num_attention_heads, rngs=rngs, dtype=dtype)
        self.layer_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs, dtype=dtype)
        self.feed_forward = FeedForward(d, cfg.intermediate_size, cfg.hidden_act, rngs=rngs, dtype=dtype)
        self.final_layer_norm = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs, dtype=dtype)

    def __call__(self, x, mask=None):  # [B, T, D]
        if self.stable:
            x = x + self.attention(self.layer_norm(x), mask)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, mask))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nnx.Module):
    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=None):
        self.stable = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(cfg, rngs=rngs, dtype=dtype)
        self.layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, rngs=rngs, dtype=dtype)
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs, dtype=dtype)
                                for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask=None):
        """``x: [B, T, D]`` -> (last_hidden_state ``[B, T, D]``, list of L+1 ``[B, T, D]``)."""
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        hidden = [x]
        for layer in self.layers:
            x = layer(x, mask)
            hidden.append(x)
        if self.stable:
            x = self.layer_norm(x)
        return x, hidden


# ----------------------------------------------------------------------------- model

class Wav2Vec2Model(nnx.Module):
    """wav2vec2 encoder; parameter paths mirror the HF state dict (see weights/wav2vec2.py).

    ``__call__`` is the raw model (parity target); ``encode`` is the project's
    ``AudioEncoder`` interface (input normalisation + stacked hidden states).
    """

    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs, dtype=None):
        self.config = cfg
        self.feature_extractor = FeatureEncoder(cfg, rngs=rngs, dtype=dtype)
        self.feature_projection = FeatureProjection(cfg, rngs=rngs, dtype=dtype)
        self.encoder = Encoder(cfg, rngs=rngs, dtype=dtype)

    # --- AudioEncoder interface
    @property
    def num_hidden_states(self) -> int:
        return self.config.num_hidden_layers + 1

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.config.sampling_rate

    def __call__(self, audio, *, attention_mask=None):
        """``audio: [B, S]`` float (already normalised if the checkpoint wants it).

        Returns ``{"last_hidden_state": [B, T, D], "hidden_states": list of L+1 [B, T, D],
        "extract_features": [B, T, C]}`` (``extract_features`` = normalised conv features).
        ``attention_mask``: optional ``[B, T]`` bool over *feature frames* (True = keep).
        """
        feats = self.feature_extractor(audio)  # [B, T, C]
        normed = self.feature_projection.layer_norm(feats)
        x = self.feature_projection.projection(normed)  # [B, T, D]
        mask = None
        if attention_mask is not None:
            x = jnp.where(attention_mask[..., None], x, 0.0)
            mask = attention_mask[:, None, None, :]  # [B, 1, 1, T]
        last, hidden = self.encoder(x, mask)
        return {"last_hidden_state": last, "hidden_states": hidden, "extract_features": normed}

    def encode(self, audio):
        """``audio: [B, S]`` 16 kHz float -> hidden states ``[B, T50, L+1, D]``.

        Audio shorter than the conv receptive field (400 samples: 25 ms) is zero-padded to it
        so even a one-video-frame clip gives one feature frame.
        """
        audio = jnp.asarray(audio, jnp.float32)
        if audio.ndim == 1:
            audio = audio[None]
        if audio.shape[-1] == 0:
            raise ValueError("wav2vec2.encode: empty audio (0 samples)")
        if self.config.do_normalize:  # Wav2Vec2FeatureExtractor's zero_mean_unit_var_norm
            mean = audio.mean(-1, keepdims=True)
            var = audio.var(-1, keepdims=True)
            audio = (audio - mean) / jnp.sqrt(var + 1e-7)
        rf = self.config.receptive_field
        if audio.shape[-1] < rf:
            audio = jnp.pad(audio, ((0, 0), (0, rf - audio.shape[-1])))
        return jnp.stack(self(audio)["hidden_states"], axis=2)  # [B, T, L+1, D]

