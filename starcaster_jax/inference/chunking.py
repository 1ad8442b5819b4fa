"""The side of generation shared by :mod:`~starcaster_jax.inference.generate` (training
checkpoints) and :mod:`~starcaster_jax.inference.serve` (exported artefacts): chunk planning,
per-chunk audio and view inputs, input checks, and the chunk loop itself (:func:`run_chunks`),
so both produce the same video from the same inputs. No Flax here, so serving needs only JAX.

The chunk layout is described in ``generate.py``'s module docstring.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator

import jax.numpy as jnp
import numpy as np

from starcaster_jax.inference import views as views_lib

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS   # 640
MIN_AUDIO_SECONDS = 0.2                  # shorter clips are almost surely a mistake
SILENCE_PEAK = 1e-3                      # -60 dBFS: below this the clip carries no speech


class GenerationError(ValueError):
    """A problem with the user's inputs; the message is one line naming it."""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One window of ``slots`` consecutive output frames starting at output frame ``slot0``
    (negative for the reference-image context of the first animate chunk)."""
    index: int
    slot0: int
    num_context: int   # leading slots that are clean context (t = 0)
    num_new: int       # slots after the context that are written out (the rest is padding)

    @property
    def first_new(self) -> int:
        return self.slot0 + self.num_context


def num_output_frames(num_samples: int) -> int:
    """``ceil(seconds * 25)`` video frames for ``num_samples`` at 16 kHz."""
    return max(1, -(-int(num_samples) // SAMPLES_PER_FRAME))


def plan_chunks(num_frames: int, slots: int, context: int, *, animate: bool) -> list[Chunk]:
    """Chunks covering output frames ``[0, num_frames)`` (module docstring layout)."""
    if slots <= context:
        raise ValueError(f"chunk of {slots} slots cannot hold {context} context frames and new ones")
    new = slots - context
    out, start = [], 0
    if not animate:  # first chunk: no context, every slot is output
        out.append(Chunk(0, 0, 0, min(slots, num_frames)))
        start = slots
    elif context == 0:
        raise ValueError("animate mode needs context frames (data.context_frames >= 1)")
    while start < num_frames:
        out.append(Chunk(len(out), start - context, context, min(new, num_frames - start)))
        start += new
    return out


def check_speech(audio: np.ndarray, source: str = "audio") -> np.ndarray:
    """float32 mono ``[S]`` at 16 kHz, at least ``MIN_AUDIO_SECONDS`` long and not silent."""
    a = np.asarray(audio, np.float32).reshape(-1)
    seconds = a.size / SAMPLE_RATE
    if seconds < MIN_AUDIO_SECONDS:
        raise GenerationError(f"{source}: too short ({seconds:.2f} s); at least {MIN_AUDIO_SECONDS} s "
                              f"of speech is needed")
    if not np.all(np.isfinite(a)):
        raise GenerationError(f"{source}: audio contains NaN or Inf samples")
    peak = float(np.max(np.abs(a)))
    if peak < SILENCE_PEAK:
        level = "-inf" if peak == 0 else f"{20 * math.log10(peak):.0f}"
        raise GenerationError(f"{source}: audio is silent (peak level {level} dBFS); give speech")
    return a


def chunk_audio(audio: np.ndarray, slot0: int, slots: int, window: int) -> np.ndarray:
    """Samples ``[(slot0-w)*640, (slot0+slots+w)*640)`` of ``audio``, zero outside it.
    -> ``[(slots + 2w) * 640]`` (the ``transforms.audio_window`` layout)."""
    s = SAMPLES_PER_FRAME
    out = np.zeros(((slots + 2 * window) * s,), np.float32)
    lo, hi = (slot0 - window) * s, (slot0 + slots + window) * s
    a, b = max(lo, 0), min(hi, audio.shape[0])
    if b > a:
        out[a - lo:b - lo] = audio[a:b]
    return out


def slot_views(poses: np.ndarray, slot0: int, slots: int, animate: bool, view_reference: str) -> np.ndarray:
    """Model view input ``[slots, 6]`` for the slots starting at output frame ``slot0``:
    relative to the chunk's slot 0 (``"chunk"``, the training transform ``RelativePose``) or to
    the video's first frame (``"video"``)."""
    idx = slot0 + np.arange(slots)
    slot_poses = poses[np.clip(idx, 0, len(poses) - 1)].copy()
    slot_poses[idx < 0] = views_lib.IDENTITY_POSE  # the reference image's own view
    if view_reference == "chunk":
        ref = slot_poses[0]
    else:
        ref = views_lib.IDENTITY_POSE if animate else poses[0]
    return views_lib.relative_to(slot_poses, ref)


def chunk_context(zeros, ctx_lat, ch: Chunk, k: int):
    """The chunk's clean context: ``(mask [1, T] bool, latents [1, T, h, w, c])`` with the first
    ``ch.num_context`` slots holding ``ctx_lat`` (the previous chunk's last ``K`` latents, or the
    reference latent ``[1, 1, ...]`` repeated) and zeros elsewhere. ``zeros`` is a jax array."""
    mask = np.zeros((1, zeros.shape[1]), bool)
    mask[:, :ch.num_context] = True
    if not ch.num_context:
        return mask, zeros
    src = ctx_lat if ctx_lat.shape[1] != 1 else ctx_lat.repeat(k, axis=1)
    return mask, zeros.at[:, :k].set(src)


def run_chunks(sample: Callable, decode: Callable, audio: np.ndarray, chunks: list[Chunk], *,
               slots: int, context: int, window: int, latent_shape: tuple,
               encode_reference: Callable | None = None, poses: np.ndarray | None = None,
               view_reference: str = "chunk", latent_hook: Callable | None = None) -> Iterator[np.ndarray]:
    """The chunk loop of generation and serving (layout: ``generate.py``'s module docstring),
    one function so that a checkpoint and its exported artefact give the same video: uint8
    frames ``[n, H, W, 3]`` per chunk, produced as it is iterated. Only the last ``context``
    latents live between chunks, so memory does not grow with the length of the video.

    Per chunk, its clean context (:func:`chunk_context`), view (:func:`slot_views`; the dropped
    null view when ``poses`` is None) and audio span (:func:`chunk_audio`) go to
    ``sample(chunk, audio, context, context_mask, view, drop_view) -> latents [1, T, h, w, c]``;
    ``latent_hook(chunk, latents) -> latents`` may replace them before they are decoded
    (``decode(latents [1, n, h, w, c])``) and carried into the next chunk.
    ``encode_reference() -> [1, 1, h, w, c]`` is the reference image's latent (animate mode;
    None: synthesize), called once, when the first chunk is made.
    """
    animate = encode_reference is not None
    zeros = jnp.zeros((1, slots) + tuple(latent_shape), jnp.float32)        # [1, T, h, w, c]
    ctx_lat = encode_reference() if animate else None                        # [1, 1, h, w, c]
    no_view = jnp.asarray(views_lib.static(slots))[None]                     # [1, T, 6], ignored when dropped
    drop_view = jnp.asarray([poses is None])                                 # [1]
    for ch in chunks:
        mask, ctx = chunk_context(zeros, ctx_lat, ch, context)              # [1, T], [1, T, h, w, c]
        view = no_view if poses is None else jnp.asarray(
            slot_views(poses, ch.slot0, slots, animate, view_reference))[None]
        span = jnp.asarray(chunk_audio(audio, ch.slot0, slots, window))[None]  # [1, (T+2w)*640]
        lat = sample(ch, span, ctx, jnp.asarray(mask), view, drop_view)      # [1, T, h, w, c]
        if latent_hook is not None:
            lat = latent_hook(ch, lat)
        ctx_lat = lat[:, slots - context:] if context else None             # [1, K, h, w, c] carried over
        yield decode(lat[:, ch.num_context:ch.num_context + ch.num_new])


def check_poses(poses, num_frames: int) -> np.ndarray:
    """A view trajectory ``[N, 6]`` fitted to ``num_frames`` (``views.fit_length``)."""
    poses = np.asarray(poses, np.float32)
    if poses.ndim != 2 or poses.shape[1] != 6 or not len(poses):
        raise GenerationError(f"view trajectory: expected poses [N, 6], got shape {poses.shape}")
    return views_lib.fit_length(poses, num_frames)


def decode_in_groups(decode: Callable, latents, group: int) -> np.ndarray:
    """Latents ``[1, n, h, w, c]`` -> uint8 ``[n, H, W, 3]`` through ``decode`` of ``[1, group,
    ...]`` latents only (one compiled shape whatever ``n``): the last group is padded with its
    last frame, and the padding dropped."""
    n = latents.shape[1]
    out = []
    for i in range(0, n, group):
        part = np.asarray(latents[:, i:i + group])
        m = part.shape[1]
        if m < group:
            part = np.concatenate([part, np.repeat(part[:, -1:], group - m, axis=1)], axis=1)
        out.append(np.asarray(decode(part))[:m])
    return np.concatenate(out, axis=0)


def normalize_embedding(emb, source: str = "identity embedding") -> np.ndarray:
    """``[512]`` / ``[1, 512]`` finite, non-zero -> L2-normalised float32 ``[512]``."""
    e = np.asarray(emb, np.float32)
    if e.ndim == 2 and e.shape[0] == 1:
        e = e[0]
    if e.ndim != 1:
        raise GenerationError(f"{source}: expected a vector [512], got shape {e.shape}")
    if not np.all(np.isfinite(e)):
        raise GenerationError(f"{source}: contains NaN or Inf")
    norm = float(np.linalg.norm(e))
    if norm == 0.0:
        raise GenerationError(f"{source}: is all zeros")
    return e / norm


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre square crop, resized to ``size`` (uint8 [H, W, 3] -> [size, size, 3])."""
    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = np.ascontiguousarray(image[y0:y0 + s, x0:x0 + s])
    if s == size:
        return crop
    import cv2  # noqa: PLC0415 (the media extra)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)


def prepare_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> float32 ``[R, R, 3]`` in [-1, 1] (centre crop + resize)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise GenerationError(f"reference image: expected uint8 [H, W, 3], got {img.dtype} {img.shape}")
    return resize_square(img, resolution).astype(np.float32) / 127.5 - 1.0
