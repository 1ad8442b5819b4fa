"""Audio features (50 Hz) -> per-video-frame windows (25 fps) -> audio tokens ``[B, F, N_a, D]``.

Alignment method (Hallo / FaceFormer style): the encoder's feature sequence is linearly
interpolated along time to exactly ``F`` video frames with ``align_corners=True`` (first
feature <-> first frame, last <-> last), i.e. torch ``F.interpolate(mode="linear",
align_corners=True)``. For 50 Hz features and 25 fps video this is ~2 features per frame; the
residual misalignment is under one feature frame (< 20 ms, half a video frame), which the
±w window absorbs. The number of frames for an audio clip is ``num_video_frames``
(``round(S * fps / sr)``), so F/25 s of audio gives F frames whatever the sample count.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models.layers import Dense, LayerNorm


def num_video_frames(num_samples: int, *, sample_rate: int = 16000, fps: float = 25.0) -> int:
    """Video frames covered by ``num_samples`` of audio: ``round(S * fps / sr)``, at least 1.

    Rounding (not ceil) so that F/fps seconds give F frames even when a resampler or codec adds
    or drops a few samples.
    """
    if num_samples <= 0:
        raise ValueError("num_video_frames: empty audio (0 samples)")
    return max(1, int(np.floor(num_samples * fps / sample_rate + 0.5)))


def interpolation_weights(num_in: int, num_out: int) -> np.ndarray:
    """``[num_out, num_in]`` linear-interpolation matrix, ``align_corners=True``.

    A static matrix (not a gather) so the op is a matmul: jit-friendly and cheap on TPU.
    """
    if num_in <= 0 or num_out <= 0:
        raise ValueError(f"interpolation_weights: lengths must be positive, got {num_in} -> {num_out}")
    if num_in == 1 or num_out == 1:
        pos = np.zeros((num_out,)) if num_in == 1 else np.zeros((1,))
    else:
        pos = np.arange(num_out) * (num_in - 1) / (num_out - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, num_in - 1)
    hi = np.clip(lo + 1, 0, num_in - 1)
    frac = pos - lo
    w = np.zeros((num_out, num_in), np.float32)
    w[np.arange(num_out), lo] += (1.0 - frac)
    w[np.arange(num_out), hi] += frac
    return w


def features_to_frames(hidden: jax.Array, num_frames: int) -> jax.Array:
    """Resample features along time (axis 1) to ``num_frames`` video frames.

    ``hidden``: ``[B, T50, ...]`` (e.g. ``[B, T50, L, D]`` for all layers or ``[B, T50, D]``
    for one) -> ``[B, F, ...]``. ``num_frames`` must be a static int.
    """
    t = hidden.shape[1]
    w = jnp.asarray(interpolation_weights(t, int(num_frames)), hidden.dtype)  # [F, T]
    return jnp.einsum("ft,bt...->bf...", w, hidden, precision=jax.lax.Precision.HIGHEST)


def frame_windows(feats: jax.Array, w: int) -> jax.Array:
    """Per-frame windows of ±``w`` frames with edge padding.

    ``feats: [B, F, ...]`` -> ``[B, F, 2w+1, ...]``; window ``j`` of frame ``f`` is frame
    ``clip(f + j - w, 0, F-1)`` (repeat the first/last frame beyond the clip, as Hallo does).
    """
    f = feats.shape[1]
    idx = np.clip(np.arange(f)[:, None] + np.arange(-w, w + 1)[None, :], 0, f - 1)  # [F, 2w+1]
    return jnp.take(feats, jnp.asarray(idx), axis=1)


def select_layers(hidden: jax.Array, layers: Sequence[int] | None) -> jax.Array:
    """Keep some hidden states: ``[B, T, L, D]`` -> ``[B, T, len(layers), D]`` (None = all)."""
    if layers is None:
        return hidden
    return jnp.take(hidden, jnp.asarray(list(layers)), axis=2)


class AudioProjector(nnx.Module):
    """Hallo's ``AudioProjModel``: windowed multi-layer features -> ``N_a`` tokens per frame.

    Flattens the ``[2w+1, L, D_in]`` window of a frame, then Linear-ReLU-Linear-ReLU-Linear to
    ``N_a * D_out`` and a LayerNorm per token. Frames are independent (frame-wise audio
    cross-attention in the denoiser, DESIGN §2).
    """

    def __init__(self, *, window: int, num_layers: int, in_dim: int, out_dim: int = 768,
                 num_tokens: int = 32, hidden_dim: int = 512, rngs: nnx.Rngs, dtype=None):
        self.window, self.num_layers, self.in_dim = window, num_layers, in_dim
        self.num_tokens, self.out_dim = num_tokens, out_dim
        flat = (2 * window + 1) * num_layers * in_dim
        self.proj1 = Dense(flat, hidden_dim, names=("cond", "mlp"), rngs=rngs, dtype=dtype)
        self.proj2 = Dense(hidden_dim, hidden_dim, names=("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.proj3 = Dense(hidden_dim, num_tokens * out_dim, names=("embed", "mlp"), rngs=rngs,
                           dtype=dtype)
        self.norm = LayerNorm(out_dim, rngs=rngs, dtype=dtype)

    def __call__(self, windows: jax.Array) -> jax.Array:
        """``windows: [B, F, 2w+1, L, D_in]`` -> tokens ``[B, F, N_a, D_out]``."""
        b, f = windows.shape[:2]
        expect = (2 * self.window + 1, self.num_layers, self.in_dim)
        if tuple(windows.shape[2:]) != expect:
            raise ValueError(f"AudioProjector: expected windows [B, F, {expect[0]}, {expect[1]}, "
                             f"{expect[2]}], got {tuple(windows.shape)}")
        x = windows.reshape(b, f, -1)                                   # [B, F, W*L*D]
        x = jax.nn.relu(self.proj1(x))
        x = jax.nn.relu(self.proj2(x))
        x = self.proj3(x).reshape(b, f, self.num_tokens, self.out_dim)  # [B, F, N_a, D_out]
        return self.norm(x)


def audio_tokens(encoder, projector: AudioProjector, audio: jax.Array, num_frames: int, *,
                 layers: Sequence[int] | None = None) -> jax.Array:
    """The whole conditioning path: audio ``[B, S]`` -> tokens ``[B, F, N_a, D_out]``.

    ``encoder`` is any ``AudioEncoder`` (wav2vec2 port or the built-in one).
    """
    hidden = select_layers(encoder.encode(audio), layers)    # [B, T50, L, D]
    frames = features_to_frames(hidden, num_frames)         # [B, F, L, D]
    return projector(frame_windows(frames, projector.window))  # [B, F, N_a, D_out]


def encode_windows(encoder, audio: jax.Array, num_frames: int, window: int,
                   layers: Sequence[int] | None = None) -> jax.Array:
    """``audio [B, (F + 2w) * 640]`` (F frames with w frames of audio context each side) ->
    per-frame windows ``[B, F, 2w+1, L, D]`` for the model's ``AudioProjector``.

    The one function training and inference both call: the encoder sees exactly the span of
    one chunk (the built-in encoder normalises per clip, wav2vec2 attends over the whole span,
    so a longer span would give other tokens). Encode the span, interpolate to ``F + 2w``
    frames, take ±w windows and keep the middle ``F``: every window holds real neighbouring
    audio, never edge repeats.
    """
    hidden = select_layers(encoder.encode(audio), layers)            # [B, T50, L, D]
    frames = features_to_frames(hidden, num_frames + 2 * window)     # [B, F+2w, L, D]
    return frame_windows(frames, window)[:, window:window + num_frames]  # [B, F, 2w+1, L, D]
