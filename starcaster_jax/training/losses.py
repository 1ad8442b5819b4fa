"""The two decoupled objectives (DESIGN §3): one per data stream, each with its own metrics.

video stream      diffusion loss on the non-context frames of a K + F chunk, conditioned on
                  identity tokens, audio tokens and the per-frame view (each dropped with its
                  own probability) + ``lip_weight`` x the lip-reading loss on decoded x̂0.
multiview stream  diffusion loss with the frame axis as views, view embedding = camera pose
                  relative to view 0, no audio; view 0 is clean context with prob
                  ``p_context_multiview`` (animate-from-reference) else every view is generated.

All functions are pure and jit-friendly: ``model`` is the STARCaster being trained, ``nets``
the frozen networks (training/frozen.py), ``lc`` the static :class:`LossConfig`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from data_pipelines.schema import SAMPLES_PER_FRAME
from starcaster_jax.diffusion import objectives as obj
from starcaster_jax.diffusion.schedules import schedule_from_config
from starcaster_jax.models.audio.alignment import encode_windows
from starcaster_jax.models.conditioning import rebase_view
from starcaster_jax.models.identity import resolve as identity_resolve
from starcaster_jax.models.lipreading import boxes_in_window, crop_windows, lip_loss, mouth_window
from starcaster_jax.training import frozen as frozen_lib

# (yaw, pitch, roll, tx, ty, scale) of a frame seen from its own view (the reference image's).
IDENTITY_POSE = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0)

ABLATIONS = ("none", "no_lip_loss", "no_self_forcing", "strict_reference", "no_view_embedding",
             "full_finetune_stage3", "no_audio_cfg_dropout")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Everything static the losses need, resolved once from the config."""
    schedule: Any
    objective: str
    weighting: str | None
    min_snr_gamma: float
    num_frames: int                  # F: generated frames per chunk
    context_frames: int              # K
    p_context: float                 # video: P(first K frames are clean context)
    p_reference_context: float       # video: P(that context is the inference reference layout)
    p_drop_all: float                # P(identity, audio and view dropped together)
    per_frame_t: bool                # diffusion forcing: independent timestep per frame
    p_context_multiview: float
    p_drop_id: float
    p_drop_audio: float
    p_drop_view: float
    lip_weight: float
    lip_low_noise_power: float       # lip weight per frame = (alpha^2 / (alpha^2 + sigma^2)) ** p
    lip_latent_crop: int             # side of the decoded mouth window, latent pixels (0: full frame)
    identity_source: str
    embed_dim: int
    audio_window: int
    audio_layers: tuple | None
    use_audio: bool
    use_view: bool
    strict_reference: bool
    vae_latent_noise: bool           # sample the VAE posterior (True) or use its mean

    @classmethod
    def from_config(cls, config) -> LossConfig:
        t = config.train
        d = config.diffusion
        layers = config.model.audio.layers
        return cls(
            schedule=schedule_from_config(d), objective=d.objective,
            weighting=d.loss_weighting or None, min_snr_gamma=float(d.min_snr_gamma),
            num_frames=int(config.data.num_frames), context_frames=int(config.data.context_frames),
            p_context=float(t.p_context), p_reference_context=float(t.p_reference_context),
            p_drop_all=float(t.p_drop_all), per_frame_t=bool(t.per_frame_t),
            p_context_multiview=float(t.p_context_multiview),
            p_drop_id=float(t.p_drop_id), p_drop_audio=float(t.p_drop_audio),
            p_drop_view=float(t.p_drop_view), lip_weight=float(t.lip_weight),
            lip_low_noise_power=float(t.lip_low_noise_power),
            lip_latent_crop=int(t.lip_latent_crop),
            identity_source=frozen_lib.identity_source(config),
            embed_dim=int(config.model.identity.embed_dim),
            audio_window=int(config.model.audio.window),
            audio_layers=tuple(layers) if layers else None,
            use_audio=frozen_lib.uses_audio(config),
            use_view=bool(config.model.unet.view_dim) and bool(t.use_view),
            strict_reference=bool(t.strict_reference),
            vae_latent_noise=bool(t.vae_latent_noise),
        )


# ----------------------------------------------------------------------------------------------
# Conditioning signals from a batch
# ----------------------------------------------------------------------------------------------
def identity_embedding(nets, batch, lc: LossConfig):
    """[B, 512] unit identity embedding from the reference (first) frame, the record, or the
    ground-truth vector, per ``model.identity.source``."""
    if lc.identity_source == "encoder":   # model.identity.encoder, as generation embeds a reference
        return jax.lax.stop_gradient(identity_resolve.embed_frames(nets["identity"], batch["frames"][:, 0]))
    if lc.identity_source == "precomputed":
        e = batch["identity"].astype(jnp.float32)
        if e.shape[-1] != lc.embed_dim:
            raise ValueError(f"model.identity.source='precomputed': records hold {e.shape[-1]}-d "
                             f"identities, the model expects {lc.embed_dim}-d embeddings")
        return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-6)
    return frozen_lib.pad_identity(batch["id_vector"].astype(jnp.float32), lc.embed_dim)


def audio_windows(nets, audio, num_frames: int, lc: LossConfig):
    """``audio [B, (T + 2w) * 640]`` (frames -w .. T+w) -> windows ``[B, T, 2w+1, L, D]``:
    the function ``Generator`` calls on a chunk's span (``alignment.encode_windows``)."""
    return jax.lax.stop_gradient(encode_windows(nets["audio"], audio, num_frames, lc.audio_window,
                                                lc.audio_layers))


def chunk_audio(audio, start: int, length: int, w: int):
    """The audio span of window frames ``[start, start + length)`` with ±w frames of context:
    samples ``[start * 640, (start + length + 2w) * 640)`` of the window's audio, which begins at
    frame -w (``transforms.VideoWindow``). The layout ``inference.chunking.chunk_audio`` gives
    a chunk, so the encoder sees the same span in training and at inference."""
    spf = SAMPLES_PER_FRAME
    return audio[:, start * spf:(start + length + 2 * w) * spf]


def latents(nets, frames, rng, lc: LossConfig):
    """frames [B, T, R, R, 3] in [-1, 1] -> scaled latents [B, T, h, w, C] (frozen VAE)."""
    z = nets["vae"].encode_video(frames, rng if lc.vae_latent_noise else None)
    return jax.lax.stop_gradient(z)


def _bernoulli(rng, p: float, b: int):
    if p <= 0.0:
        return jnp.zeros((b,), bool)
    if p >= 1.0:
        return jnp.ones((b,), bool)
    return jax.random.uniform(rng, (b,)) < p


def context_mask_for(rng, b: int, f_total: int, k: int, p: float, strict: bool):
    """[B, F] bool: first ``k`` frames clean with probability ``p`` per sample (always when
    ``strict``)."""
    on = jnp.ones((b,), bool) if strict else _bernoulli(rng, p, b)
    first = jnp.arange(f_total) < k
    return on[:, None] & first[None, :]


def low_noise_weight(schedule, t, power: float):
    """Per-frame weight towards low noise: signal fraction ``alpha^2 / (alpha^2 + sigma^2)``."""
    alpha, sigma = schedule.alpha_sigma(t)
    return (alpha**2 / (alpha**2 + sigma**2)) ** power


def mouth_latent_window(x0_hat, mouth_box, size: int):
    """The corner ``[B, T, 2]`` of each frame's ``size x size`` mouth window of latents
    ``x0_hat [B, T, h, w, C]``, or None when the window would be the whole frame (``size`` 0,
    or at least the latent side): then the lip loss decodes full frames."""
    h, w = x0_hat.shape[2:4]
    if size <= 0 or size >= min(h, w):
        return None
    return mouth_window(mouth_box, (h, w), size)


def lip_inputs(vae, x0_hat, frames, mouth_box, context_mask, size: int):
    """What the lip reader compares: ``(gen, gt, boxes)``, decoded x̂0 and the real frames over
    the same pixels, and the mouth boxes in those pixels' coordinates.

    With a mouth window (``size`` latent pixels, ``train.lip_latent_crop``) only the window of
    x̂0 is decoded, ``[B, T, size*f, size*f, 3]``, and ``gt`` is the real frames' pixel window
    under it: the decoder (and its backward pass) runs on ``(size / h)^2`` of the frame. The
    window is centred on the mouth box, so the margin around the box is context for the
    decoder's receptive field; its GroupNorm statistics and mid-block attention see the window
    only, so the decode is close to, not equal to, the full frame's pixels there. Context
    frames are the clean real frames (the lip reader's temporal convolutions see them next to
    the generated ones), not the model's prediction."""
    corner = mouth_latent_window(x0_hat, mouth_box, size)
    if corner is not None:
        f = frames.shape[2] // x0_hat.shape[2]                                # VAE factor
        mouth_box = boxes_in_window(mouth_box, corner, size, frames.shape[2:4], f)
        frames = crop_windows(frames, corner, size, f)                        # [B, T, S*f, S*f, 3]
        x0_hat = crop_windows(x0_hat, corner, size)                           # [B, T, S, S, C]
    gen = vae.decode_video(x0_hat)                                            # [B, T, R', R', 3]
    gen = jnp.where(context_mask[:, :, None, None, None], frames.astype(gen.dtype), gen)
    return gen, frames, mouth_box


def noise_weighted_lip_loss(nets, x0_hat, t, frames, mouth_box, context_mask, lc: LossConfig):
    """Lip-reading loss of decoded ``x0_hat [B, T, h, w, C]`` against ``frames``, weighted per
    frame towards low noise and normalised by the number of supervised (non-context) frames, so
    a batch drawn at high noise really gets a small lip loss. Only the mouth window of x̂0 is
    decoded when ``lc.lip_latent_crop`` is set (:func:`lip_inputs`)."""
    gen, gt, boxes = lip_inputs(nets["vae"], x0_hat, frames, mouth_box, context_mask,
                                lc.lip_latent_crop)
    keep = (~context_mask).astype(jnp.float32)                               # [B, T]
    w = low_noise_weight(lc.schedule, t, lc.lip_low_noise_power) * keep
    return lip_loss(nets["lip"], gen, gt, boxes, weights=w, normalizer=jnp.sum(keep))


# ----------------------------------------------------------------------------------------------
# The chunk loss both streams (and self-forcing) share
# ----------------------------------------------------------------------------------------------
def chunk_loss(model, nets, x0, rng, lc: LossConfig, *, context_mask, id_emb, audio_win, view,
               drop_id, drop_audio, drop_view, frames=None, mouth_box=None):
    """Diffusion (+ lip) loss of one chunk ``x0 [B, T, h, w, C]``; returns (loss, metrics)."""
    x_t, t, target, _ = obj.training_inputs(lc.schedule, lc.objective, rng, x0, context_mask,
                                            per_frame_t=lc.per_frame_t)
    pred = model(x_t, t, id_emb=id_emb, audio_windows=audio_win, view=view,
                 context_mask=context_mask, drop_id=drop_id, drop_audio=drop_audio,
                 drop_view=drop_view)
    loss, per_frame = obj.diffusion_loss(pred, target, t, context_mask, weighting=lc.weighting,
                                         min_snr_gamma=lc.min_snr_gamma, schedule=lc.schedule,
                                         objective=lc.objective)
    keep = (~context_mask).astype(jnp.float32)
    metrics = {"diffusion": loss,
               "mse": jnp.sum(per_frame) / jnp.maximum(jnp.sum(keep), 1.0)}
    total = loss
    if lc.lip_weight > 0 and frames is not None and "lip" in nets:
        x0_hat = obj.predict_x0(lc.objective, lc.schedule, x_t, pred, t)
        lip = noise_weighted_lip_loss(nets, x0_hat, t, frames, mouth_box, context_mask, lc)
        total = total + lc.lip_weight * lip
        metrics["lip"] = lip
    metrics["loss"] = total
    return total, metrics


def drops(rng, b: int, lc: LossConfig, batch):
    """Per-sample condition drops ``(drop_id, drop_audio, drop_view)``, each ``[B]`` bool, for
    every path that calls the model (video, self-forcing rollout and loss, multiview).

    CFG dropout of each condition, plus all three together with ``p_drop_all`` (the
    unconditional branch that guidance weights by ``1 - s_id``). An invalid pose is the null
    view; an invalid identity (a real record without an embedding: ``id_vector_valid`` False,
    sources other than the identity encoder) is the null identity, never a zero vector as a
    person."""
    k_id, k_a, k_v, k_all = jax.random.split(rng, 4)
    drop_all = _bernoulli(k_all, lc.p_drop_all, b)
    drop_id = jnp.ones((b,), bool) if lc.strict_reference else _bernoulli(k_id, lc.p_drop_id, b) | drop_all
    drop_audio = _bernoulli(k_a, lc.p_drop_audio, b) | drop_all
    drop_view = _bernoulli(k_v, lc.p_drop_view, b) | drop_all
    if "pose_valid" in batch:
        drop_view = drop_view | ~batch["pose_valid"].astype(bool).reshape(b)
    if lc.identity_source != "encoder" and "id_vector_valid" in batch:
        drop_id = drop_id | ~batch["id_vector_valid"].astype(bool).reshape(b)
    return drop_id, drop_audio, drop_view


def video_conditions(nets, batch, rng, lc: LossConfig, num_frames: int):
    """Frames, latents and window-level conditioning for the first ``num_frames`` frames of a
    video batch. The audio stays raw (``[B, (T + 2w) * 640]``): each chunk encodes its own span
    (:func:`chunk_audio`), as inference does."""
    frames = batch["frames"][:, :num_frames]                                # [B, T, R, R, 3]
    x0 = latents(nets, frames, rng, lc)
    cond = {"id_emb": identity_embedding(nets, batch, lc),
            "view": batch["pose"][:, :num_frames].astype(jnp.float32) if lc.use_view else None,
            "audio": batch["audio"] if lc.use_audio else None}
    return frames, x0, cond


def chunk_audio_windows(nets, audio, start: int, lc: LossConfig):
    """Windows ``[B, K+F, 2w+1, L, D]`` of the chunk at window frame ``start`` (None: no audio)."""
    if audio is None:
        return None
    t_len = lc.context_frames + lc.num_frames
    return audio_windows(nets, chunk_audio(audio, start, t_len, lc.audio_window), t_len, lc)


def reference_layout(x0, frames, boxes, audio, view, lc: LossConfig):
    """The first animate chunk as ``Generator`` builds it, from a window's first F frames.

    Slots ``0..K-1`` hold frame 0 (the reference image) repeated, slots ``K..K+F-1`` frames
    ``0..F-1``; the audio of the context slots (and of the w frames before frame 0) is zero,
    the view of the context slots is the reference's own (identity) pose. Returns
    ``(x0, frames, boxes, audio, view)`` in the chunk layout; ``audio`` is the span
    ``[B, (K+F+2w) * 640]`` that :func:`chunk_audio` gives the usual layout.
    """
    k, f, w = lc.context_frames, lc.num_frames, lc.audio_window

    def lay(a):  # [B, T, ...] -> [B, K+F, ...]: frame 0 K times, then frames 0..F-1
        return None if a is None else jnp.concatenate(
            [jnp.repeat(a[:, :1], k, axis=1), a[:, :f]], axis=1)

    out_audio = None
    if audio is not None:
        spf = SAMPLES_PER_FRAME
        out_audio = jnp.zeros((audio.shape[0], (k + f + 2 * w) * spf), audio.dtype)
        out_audio = out_audio.at[:, (k + w) * spf:].set(audio[:, w * spf:(f + 2 * w) * spf])
    out_view = None
    if view is not None:
        ident = jnp.broadcast_to(jnp.asarray(IDENTITY_POSE, view.dtype), (view.shape[0], k, 6))
        out_view = jnp.concatenate([ident, view[:, :f]], axis=1)  # already relative to frame 0
    return lay(x0), lay(frames), lay(boxes), out_audio, out_view


def _select(on, a, b):
    """Per-sample ``where(on [B], a, b)`` over arrays with the batch first (None passes)."""
    if a is None:
        return None
    return jnp.where(on.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def video_loss(model, nets, batch, rng, lc: LossConfig):
    """The video stream's objective on the window's first K + F frames (one inference chunk).

    The context is, per sample: none (synthesize), the K real frames before the chunk
    (autoregressive continuation), or the reference layout of the first animate chunk
    (``p_reference_context`` of the samples that have context)."""
    k_lat, k_ctx, k_ref, k_drop, k_noise = jax.random.split(rng, 5)
    t_len = lc.context_frames + lc.num_frames
    frames, x0, cond = video_conditions(nets, batch, k_lat, lc, t_len)
    b = x0.shape[0]
    cmask = context_mask_for(k_ctx, b, t_len, lc.context_frames, lc.p_context, lc.strict_reference)
    boxes = batch["mouth_box"][:, :t_len]
    audio = None if cond["audio"] is None else chunk_audio(cond["audio"], 0, t_len, lc.audio_window)
    view = cond["view"]
    if lc.context_frames > 0 and lc.p_reference_context > 0:
        ref = _bernoulli(k_ref, lc.p_reference_context, b) & cmask[:, 0]
        laid = reference_layout(x0, frames, boxes, cond["audio"], view, lc)
        x0, frames, boxes, audio, view = (_select(ref, a, o) for a, o in
                                          zip(laid, (x0, frames, boxes, audio, view)))
    audio_win = None if audio is None else audio_windows(nets, audio, t_len, lc)
    drop_id, drop_audio, drop_view = drops(k_drop, b, lc, batch)
    return chunk_loss(model, nets, x0, k_noise, lc, context_mask=cmask, id_emb=cond["id_emb"],
                      audio_win=audio_win, view=view, drop_id=drop_id,
                      drop_audio=drop_audio, drop_view=drop_view, frames=frames, mouth_box=boxes)


def multiview_loss(model, nets, batch, rng, lc: LossConfig):
    """The multi-view stream's objective: frame axis = views, no audio, no lip loss."""
    k_lat, k_ctx, k_drop, k_noise = jax.random.split(rng, 4)
    frames = batch["frames"]                                                # [B, V, R, R, 3]
    x0 = latents(nets, frames, k_lat, lc)
    b, v = x0.shape[:2]
    cmask = context_mask_for(k_ctx, b, v, 1, lc.p_context_multiview, lc.strict_reference)
    drop_id, _, drop_view = drops(k_drop, b, lc, batch)
    view = batch["pose"].astype(jnp.float32) if lc.use_view else None
    return chunk_loss(model, nets, x0, k_noise, lc, context_mask=cmask,
                      id_emb=identity_embedding(nets, batch, lc), audio_win=None, view=view,
                      drop_id=drop_id, drop_audio=None, drop_view=drop_view)


def chunk_view(view, start: int, length: int):
    """The view of frames [start, start+length) re-expressed relative to ``start``."""
    if view is None:
        return None
    return rebase_view(view[:, start:start + length], 0)
