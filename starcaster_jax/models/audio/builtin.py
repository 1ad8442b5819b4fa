"""Built-in audio encoder: log-mel front-end + small conv/transformer stack, pretrained on
per-frame viseme labels of the built-in corpus.

Why: no pretrained wav2vec2 can be downloaded here, and a CPU demo needs an encoder whose
features already separate mouth shapes. It exposes the same ``AudioEncoder`` interface as the
wav2vec2 port (``encode(audio [B, S]) -> [B, T50, L, D]`` at 50 Hz: hop 320 at 16 kHz), so
alignment and ``AudioProjector`` code are shared.

Front-end: power STFT (hann window of ``win_length`` zero-padded to ``n_fft``, centred frames
with zero padding, as ``librosa.stft(center=True, pad_mode="constant")``), mel filterbank from
``librosa.filters.mel`` computed once in numpy, ``log10``, dynamic range clamped to 80 dB below
the clip's maximum and shifted so the maximum is 1 (gain invariant: espeak and real speech
come at very different levels).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from starcaster_jax.models.audio.alignment import features_to_frames
from starcaster_jax.models.audio.wav2vec2 import FeedForward, SelfAttention
from starcaster_jax.models.layers import Conv, Dense, LayerNorm


@dataclasses.dataclass(frozen=True)
class BuiltinAudioConfig:
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400          # 25 ms
    hop_length: int = 320          # 20 ms -> 50 Hz, like wav2vec2
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None      # None = sr / 2
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    conv_kernel: int = 5           # stem convs (time), 2 of them: ±4 frames of context
    pos_conv_kernel: int = 15      # depthwise conv positional embedding (length-agnostic)
    num_visemes: int = 15          # data_pipelines.schema.NUM_VISEMES (sil + 14, Oculus-style)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> BuiltinAudioConfig:
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"audio.builtin: unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


# ----------------------------------------------------------------------------- front-end

@functools.lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    import librosa  # noqa: PLC0415 (the media extra)
    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax
                               ).astype(np.float32)  # [M, n_fft//2+1]


@functools.lru_cache(maxsize=8)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    import scipy.signal  # noqa: PLC0415 (the media extra)
    w = scipy.signal.get_window("hann", win_length, fftbins=True).astype(np.float32)
    left = (n_fft - win_length) // 2
    return np.pad(w, (left, n_fft - win_length - left))  # librosa.util.pad_center


def mel_spectrogram(audio: jax.Array, cfg: BuiltinAudioConfig) -> jax.Array:
    """Power mel spectrogram. ``audio: [B, S]`` -> ``[B, T, n_mels]``, ``T = 1 + S // hop``."""
    n_fft, hop = cfg.n_fft, cfg.hop_length
    s = audio.shape[-1]
    x = jnp.pad(audio, ((0, 0), (n_fft // 2, n_fft // 2)))               # centred frames
    t = 1 + s // hop
    idx = np.arange(t)[:, None] * hop + np.arange(n_fft)[None, :]       # [T, n_fft]
    frames = x[:, idx] * jnp.asarray(_window(n_fft, cfg.win_length))    # [B, T, n_fft]
    spec = jnp.fft.rfft(frames, axis=-1)
    power = spec.real ** 2 + spec.imag ** 2                              # [B, T, n_fft//2+1]
    fb = jnp.asarray(_mel_basis(cfg.sample_rate, n_fft, cfg.n_mels, cfg.fmin, cfg.fmax))
    return jnp.einsum("btf,mf->btm", power, fb, precision=jax.lax.Precision.HIGHEST)


def log_mel(audio: jax.Array, cfg: BuiltinAudioConfig) -> jax.Array:
    """``[B, S]`` -> normalised log-mel ``[B, T, n_mels]`` in about [-1, 1] (max = 1)."""
    lm = jnp.log10(jnp.maximum(mel_spectrogram(audio, cfg), 1e-10))
    top = lm.max(axis=(1, 2), keepdims=True)
    lm = jnp.maximum(lm, top - 8.0)   # 80 dB dynamic range
    return (lm - top + 4.0) / 4.0


# ----------------------------------------------------------------------------- model

class _Block(nnx.Module):
    """Pre-LN transformer block (stable to train from scratch)."""

    def __init__(self, d: int, heads: int, mlp: int, *, rngs: nnx.Rngs, dtype=None):
        self.norm1 = LayerNorm(d, rngs=rngs, dtype=dtype)
        self.attn = SelfAttention(d, heads, rngs=rngs, dtype=dtype)
        self.norm2 = LayerNorm(d, rngs=rngs, dtype=dtype)
        self.mlp = FeedForward(d, mlp, "gelu", rngs=rngs, dtype=dtype)

    def __call__(self, x):  # [B, T, D]
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BuiltinAudioEncoder(nnx.Module):
    """log-mel -> 2 convs -> conv positional embedding -> N transformer blocks.

    ``encode`` returns ``num_layers + 1`` hidden states (stem output, then every block),
    mirroring wav2vec2's ``hidden_states``. ``viseme_logits`` is the pretraining head.
    """

    def __init__(self, cfg: BuiltinAudioConfig = BuiltinAudioConfig(), *, rngs: nnx.Rngs, dtype=None):
        self.config = cfg
        d, k = cfg.hidden_size, cfg.conv_kernel
        self.conv1 = Conv(cfg.n_mels, d, (k,), rngs=rngs, dtype=dtype)
        self.conv2 = Conv(d, d, (k,), rngs=rngs, dtype=dtype)
        self.stem_norm = LayerNorm(d, rngs=rngs, dtype=dtype)
        self.pos_conv = Conv(d, d, (cfg.pos_conv_kernel,), feature_group_count=d, rngs=rngs,
                             dtype=dtype)
        self.layers = nnx.List([_Block(d, cfg.num_heads, cfg.mlp_ratio * d, rngs=rngs, dtype=dtype)
                                for _ in range(cfg.num_layers)])
        self.head_norm = LayerNorm(d, rngs=rngs, dtype=dtype)
        self.viseme_head = Dense(d, cfg.num_visemes, names=("embed", "vocab"), rngs=rngs, dtype=dtype)

    @property
    def num_hidden_states(self) -> int:
        return self.config.num_layers + 1

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def hidden_states(self, audio: jax.Array) -> list[jax.Array]:
        """``audio: [B, S]`` -> list of ``num_layers + 1`` arrays ``[B, T50, D]``."""
        audio = jnp.asarray(audio, jnp.float32)
        if audio.ndim == 1:
            audio = audio[None]
        if audio.shape[-1] == 0:
            raise ValueError("BuiltinAudioEncoder: empty audio (0 samples)")
        x = log_mel(audio, self.config)                    # [B, T, M]
        x = jax.nn.gelu(self.conv1(x), approximate=False)   # [B, T, D]
        x = jax.nn.gelu(self.conv2(x), approximate=False)
        x = self.stem_norm(x)
        x = x + jax.nn.gelu(self.pos_conv(x), approximate=False)
        hidden = [x]
        for layer in self.layers:
            x = layer(x)
            hidden.append(x)
        return hidden

    def encode(self, audio: jax.Array) -> jax.Array:
        """``audio: [B, S]`` 16 kHz -> ``[B, T50, L, D]`` (``L = num_layers + 1``)."""
        return jnp.stack(self.hidden_states(audio), axis=2)

    def viseme_logits(self, audio: jax.Array, num_frames: int) -> jax.Array:
        """``audio: [B, S]`` -> per-video-frame viseme logits ``[B, F, V]`` (F static)."""
        last = self.hidden_states(audio)[-1]                 # [B, T50, D]
        frames = features_to_frames(last, num_frames)        # [B, F, D]
        return self.viseme_head(self.head_norm(frames))


# ----------------------------------------------------------------------------- pretraining

def viseme_loss(model: BuiltinAudioEncoder, audio: jax.Array, labels: jax.Array
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked per-frame cross-entropy. ``audio [B, S]`` f32 16 kHz, ``labels [B, F]`` int32
    at 25 fps with -1 = ignore. Returns ``(loss, {"loss", "accuracy", "frames"})``."""
    logits = model.viseme_logits(audio, labels.shape[1])           # [B, F, V]
    valid = labels >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    n = jnp.maximum(valid.sum(), 1)
    loss = jnp.where(valid, ce, 0.0).sum() / n
    acc = jnp.where(valid, logits.argmax(-1) == labels, False).sum() / n
    return loss, {"loss": loss, "accuracy": acc, "frames": valid.sum()}


def make_pretrain_optimizer(model: BuiltinAudioEncoder, *, learning_rate: float = 1e-3,
                            weight_decay: float = 1e-4, clip_norm: float = 1.0) -> nnx.Optimizer:
    """AdamW with global-norm clipping; a schedule can be passed as ``learning_rate``."""
    tx = optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(learning_rate, weight_decay=weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit
def pretrain_step(model: BuiltinAudioEncoder, optimizer: nnx.Optimizer, audio: jax.Array,
                  labels: jax.Array) -> dict[str, jax.Array]:
    """One viseme-classification step (in place on ``model``/``optimizer``); returns metrics.

    Recompiles per (batch, samples, frames) shape: feed fixed-length crops.
    """
    grad_fn = nnx.value_and_grad(viseme_loss, has_aux=True)
    (_, metrics), grads = grad_fn(model, audio, labels)
    optimizer.update(model, grads)
    return metrics


@nnx.jit
def eval_step(model: BuiltinAudioEncoder, audio: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    return viseme_loss(model, audio, labels)[1]
