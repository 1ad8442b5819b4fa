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

from starcaster_jax.diffusion import objectives as obj
from starcaster_jax.diffusion.schedules import make_schedule
from starcaster_jax.models.audio.alignment import features_to_frames, frame_windows, select_layers
from starcaster_jax.models.conditioning import rebase_view
from starcaster_jax.training import frozen as frozen_lib

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
    p_context_multiview: float
    p_drop_id: float
    p_drop_audio: float
    p_drop_view: float
    lip_weight: float
    lip_low_noise_power: float       # lip weight per frame = (alpha^2 / (alpha^2 + sigma^2)) ** p
    identity_source: str
    embed_dim: int
    audio_window: int
    audio_layers: tuple | None
    use_audio: bool
    use_view: bool
    strict_reference: bool
    vae_latent_noise: bool           # sample the VAE posterior (True) or use its mean

    @classmethod
    def from_config(cls, config) -> "LossConfig":
        t = config.train
        d = config.diffusion
        sched = dict(type=d.schedule)
        if d.schedule == "ddpm":
            sched["zero_terminal_snr"] = bool(d.zero_terminal_snr)
        else:
            sched["shift"] = float(d.flow_shift)
        layers = config.model.audio.get("layers", None)
        return cls(
            schedule=make_schedule(sched), objective=d.objective,
            weighting=d.loss_weighting or None, min_snr_gamma=float(d.min_snr_gamma),
            num_frames=int(config.data.num_frames), context_frames=int(config.data.context_frames),
            p_context=float(t.get("p_context", 0.7)),
            p_context_multiview=float(t.get("p_context_multiview", 0.5)),
            p_drop_id=float(t.p_drop_id), p_drop_audio=float(t.p_drop_audio),
            p_drop_view=float(t.p_drop_view), lip_weight=float(t.get("lip_weight", 0.0)),
            lip_low_noise_power=float(t.get("lip_low_noise_power", 1.0)),
            identity_source=frozen_lib.identity_source(config),
            embed_dim=int(config.model.identity.embed_dim),
            audio_window=int(config.model.audio.window),
            audio_layers=tuple(layers) if layers else None,
            use_audio=frozen_lib.uses_audio(config),
            use_view=bool(config.model.unet.get("view_dim")) and bool(t.get("use_view", True)),
            strict_reference=bool(t.get("strict_reference", False)),
            vae_latent_noise=bool(t.get("vae_latent_noise", False)),
        )


# ----------------------------------------------------------------------------------------------
# Conditioning signals from a batch
# ----------------------------------------------------------------------------------------------
def identity_embedding(nets, batch, lc: LossConfig):
    """[B, 512] unit identity embedding from the reference (first) frame, the record, or the
    ground-truth vector, per ``model.identity.source``."""
    if lc.identity_source == "encoder":
        from starcaster_jax.models.builtin_encoders import identity_embedding as embed
        return jax.lax.stop_gradient(embed(nets["identity"], batch["frames"][:, 0]))
    if lc.identity_source == "precomputed":
        e = batch["identity"].astype(jnp.float32)
        if e.shape[-1] != lc.embed_dim:
            raise ValueError(f"model.identity.source='precomputed': records hold {e.shape[-1]}-d "
                             f"identities, the model expects {lc.embed_dim}-d embeddings")
        return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-6)
    return frozen_lib.pad_identity(batch["id_vector"].astype(jnp.float32), lc.embed_dim)


def audio_windows(nets, audio, num_frames: int, lc: LossConfig):
    """``audio [B, (T + 2w) * 640]`` (frames -w .. T+w) -> windows ``[B, T, 2w+1, L, D]``."""
    w = lc.audio_window
    hidden = select_layers(nets["audio"].encode(audio), lc.audio_layers)   # [B, T50, L, D]
    feats = features_to_frames(hidden, num_frames + 2 * w)                 # [B, T+2w, L, D]
    return jax.lax.stop_gradient(frame_windows(feats, w)[:, w:w + num_frames])


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


# ----------------------------------------------------------------------------------------------
# The chunk loss both streams (and self-forcing) share
# ----------------------------------------------------------------------------------------------
def chunk_loss(model, nets, x0, rng, lc: LossConfig, *, context_mask, id_emb, audio_win, view,
               drop_id, drop_audio, drop_view, frames=None, mouth_box=None):
    """Diffusion (+ lip) loss of one chunk ``x0 [B, T, h, w, C]``; returns (loss, metrics)."""
    x_t, t, target, _ = obj.training_inputs(lc.schedule, lc.objective, rng, x0, context_mask)
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
        from starcaster_jax.models.lipreading import lip_loss
        x0_hat = obj.predict_x0(lc.objective, lc.schedule, x_t, pred, t)
        gen = nets["vae"].decode_video(x0_hat)                               # [B, T, R, R, 3]
        w = low_noise_weight(lc.schedule, t, lc.lip_low_noise_power) * keep
        lip = lip_loss(nets["lip"], gen, frames, mouth_box, weights=w)
        total = total + lc.lip_weight * lip
        metrics["lip"] = lip
    metrics["loss"] = total
    return total, metrics


def _drops(rng, b: int, lc: LossConfig, pose_valid=None):
    k_id, k_a, k_v = jax.random.split(rng, 3)
    drop_id = jnp.ones((b,), bool) if lc.strict_reference else _bernoulli(k_id, lc.p_drop_id, b)
    drop_audio = _bernoulli(k_a, lc.p_drop_audio, b)
    drop_view = _bernoulli(k_v, lc.p_drop_view, b)
    if pose_valid is not None:
        drop_view = drop_view | ~pose_valid.astype(bool)
    return drop_id, drop_audio, drop_view


def video_conditions(nets, batch, rng, lc: LossConfig, num_frames: int):
    """Latents and conditioning for the first ``num_frames`` frames of a video batch (the
    window may be longer when self-forcing needs more)."""
    frames = batch["frames"][:, :num_frames]                                # [B, T, R, R, 3]
    x0 = latents(nets, frames, rng, lc)
    cond = {"id_emb": identity_embedding(nets, batch, lc),
            "view": batch["pose"][:, :num_frames].astype(jnp.float32) if lc.use_view else None}
    if lc.use_audio:
        total = batch["frames"].shape[1]
        cond["audio_win"] = audio_windows(nets, batch["audio"], total, lc)[:, :num_frames]
    else:
        cond["audio_win"] = None
    return frames, x0, cond


def video_loss(model, nets, batch, rng, lc: LossConfig):
    """The video stream's objective on the window's first K + F frames."""
    k_lat, k_ctx, k_drop, k_noise = jax.random.split(rng, 4)
    t_len = lc.context_frames + lc.num_frames
    frames, x0, cond = video_conditions(nets, batch, k_lat, lc, t_len)
    b = x0.shape[0]
    cmask = context_mask_for(k_ctx, b, t_len, lc.context_frames, lc.p_context, lc.strict_reference)
    drop_id, drop_audio, drop_view = _drops(k_drop, b, lc, batch.get("pose_valid"))
    return chunk_loss(model, nets, x0, k_noise, lc, context_mask=cmask, id_emb=cond["id_emb"],
                      audio_win=cond["audio_win"], view=cond["view"], drop_id=drop_id,
                      drop_audio=drop_audio, drop_view=drop_view, frames=frames,
                      mouth_box=batch["mouth_box"][:, :t_len])


def multiview_loss(model, nets, batch, rng, lc: LossConfig):
    """The multi-view stream's objective: frame axis = views, no audio, no lip loss."""
    k_lat, k_ctx, k_drop, k_noise = jax.random.split(rng, 4)
    frames = batch["frames"]                                                # [B, V, R, R, 3]
    x0 = latents(nets, frames, k_lat, lc)
    b, v = x0.shape[:2]
    cmask = context_mask_for(k_ctx, b, v, 1, lc.p_context_multiview, lc.strict_reference)
    drop_id, _, _ = _drops(k_drop, b, lc)
    view = batch["pose"].astype(jnp.float32) if lc.use_view else None
    return chunk_loss(model, nets, x0, k_noise, lc, context_mask=cmask,
                      id_emb=identity_embedding(nets, batch, lc), audio_win=None, view=view,
                      drop_id=drop_id, drop_audio=None, drop_view=None)


def chunk_view(view, start: int, length: int):
    """The view of frames [start, start+length) re-expressed relative to ``start``."""
    if view is None:
        return None
    return rebase_view(view[:, start:start + length], 0)
