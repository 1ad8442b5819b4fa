"""Self-forcing (DESIGN §3): train on the model's *own* autoregressive context.

The video window holds ``K + (R + 1) F`` frames. Chunk ``r`` covers frames
``[rF, rF + K + F)``: its first K frames are context, the F after are generated. The rollout
samples chunks ``0 .. R-1`` with a few-step sampler (``steps``), each starting from the previous
chunk's last K generated frames (chunk 0 from the ground-truth context) — all under
``stop_gradient``: no gradient ever reaches the rollout. Chunk ``R`` is then trained:

* ``context_stopgrad``: the usual diffusion (+ lip) loss on the ground-truth frames of chunk R,
  conditioned on the self-generated context (exposure to its own drift).
* ``last_step`` (Self-Forcing, Huang et al. 2025): chunk R is denoised from noise for a random
  number ``e`` of sampler steps without gradient, then ONE model call at step ``e`` is taken
  with gradient; its x̂0 is regressed on the ground truth (+ lip loss on the decoded x̂0).

Views are re-expressed relative to each chunk's first frame, as at inference.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from starcaster_jax.diffusion import objectives as obj
from starcaster_jax.diffusion.samplers import denoise_steps
from starcaster_jax.diffusion.schedules import expand_to
from starcaster_jax.training import losses as L

MODES = ("context_stopgrad", "last_step")


@dataclasses.dataclass(frozen=True)
class SelfForcingConfig:
    enabled: bool = False
    probability: float = 0.5     # fraction of video batches that take the self-forcing step
    chunks: int = 2              # R: rolled-out chunks before the trained one
    steps: int = 4               # few-step sampler used for the rollout
    sampler: str = "ddim"
    mode: str = "context_stopgrad"

    @classmethod
    def from_config(cls, config) -> "SelfForcingConfig":
        d = dict(config.get("self_forcing", {}) or {})
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise ValueError(f"self_forcing: unknown field(s) {bad}; known: {sorted(names)}")
        sf = cls(**d)
        if sf.mode not in MODES:
            raise ValueError(f"self_forcing.mode {sf.mode!r}: expected one of {MODES}")
        if sf.enabled and sf.chunks < 1:
            raise ValueError("self_forcing.chunks must be >= 1 when enabled")
        return sf

    def window_frames(self, k: int, f: int) -> int:
        return k + (self.chunks + 1) * f if self.enabled else k + f


def _frozen(model):
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def rollout(model, x0, cond, rng, lc: L.LossConfig, sf: SelfForcingConfig):
    """Self-generated context for chunk R: ``[B, K, h, w, C]`` (no gradient)."""
    k, f = lc.context_frames, lc.num_frames
    gen_model = _frozen(model)
    ctx = x0[:, :k]
    b = x0.shape[0]
    mask = jnp.broadcast_to(jnp.arange(k + f) < k, (b, k + f))
    for r in range(sf.chunks):
        s = r * f
        view = L.chunk_view(cond["view"], s, k + f)
        aud = None if cond["audio_win"] is None else cond["audio_win"][:, s:s + k + f]

        def fn(x, t, view=view, aud=aud):
            return gen_model(x, t, id_emb=cond["id_emb"], audio_windows=aud, view=view,
                             context_mask=mask)

        noise = jax.random.normal(jax.random.fold_in(rng, r), (b, k + f) + x0.shape[2:], x0.dtype)
        context = jnp.concatenate([ctx, jnp.zeros_like(noise[:, k:])], axis=1)
        out, _ = denoise_steps(fn, noise, schedule=lc.schedule, objective=lc.objective,
                               sampler=sf.sampler, steps=sf.steps, context=context,
                               context_mask=mask)
        ctx = out[:, -k:]
    return jax.lax.stop_gradient(ctx)


def self_forcing_loss(model, nets, batch, rng, lc: L.LossConfig, sf: SelfForcingConfig):
    """The video stream's self-forcing objective (see module docstring)."""
    k, f = lc.context_frames, lc.num_frames
    if k < 1:
        raise ValueError("self-forcing needs data.context_frames >= 1")
    total_len = sf.window_frames(k, f)
    k_lat, k_roll, k_drop, k_noise, k_exit = jax.random.split(rng, 5)
    frames, x0, cond = L.video_conditions(nets, batch, k_lat, lc, total_len)
    ctx = rollout(model, x0, cond, k_roll, lc, sf)
    s = sf.chunks * f                                                        # chunk R start
    x0_r = jnp.concatenate([ctx, x0[:, s + k:s + k + f]], axis=1)             # [B, K+F, ...]
    frames_r = frames[:, s:s + k + f]
    box_r = batch["mouth_box"][:, s:s + k + f]
    view_r = L.chunk_view(cond["view"], s, k + f)
    aud_r = None if cond["audio_win"] is None else cond["audio_win"][:, s:s + k + f]
    b = x0.shape[0]
    mask = jnp.broadcast_to(jnp.arange(k + f) < k, (b, k + f))
    drop_id, drop_audio, drop_view = L._drops(k_drop, b, lc, batch.get("pose_valid"))
    if sf.mode == "context_stopgrad":
        loss, m = L.chunk_loss(model, nets, x0_r, k_noise, lc, context_mask=mask,
                               id_emb=cond["id_emb"], audio_win=aud_r, view=view_r,
                               drop_id=drop_id, drop_audio=drop_audio, drop_view=drop_view,
                               frames=frames_r, mouth_box=box_r)
        return loss, {f"sf_{n}": v for n, v in m.items()} | {"loss": loss}
    return _last_step_loss(model, nets, x0_r, frames_r, box_r, mask, view_r, aud_r, cond["id_emb"],
                           k_noise, k_exit, lc, sf)


def _last_step_loss(model, nets, x0_r, frames_r, box_r, mask, view, aud, id_emb, k_noise, k_exit,
                    lc: L.LossConfig, sf: SelfForcingConfig):
    grid = lc.schedule.sampling_grid(sf.steps)
    exit_step = jax.random.randint(k_exit, (), 0, sf.steps)
    gen_model = _frozen(model)

    def fn(x, t):
        return gen_model(x, t, id_emb=id_emb, audio_windows=aud, view=view, context_mask=mask)

    noise = jax.random.normal(k_noise, x0_r.shape, x0_r.dtype)
    x_e, _ = denoise_steps(fn, noise, schedule=lc.schedule, objective=lc.objective,
                           sampler=sf.sampler, steps=sf.steps, start=0, stop=exit_step,
                           context=x0_r, context_mask=mask)
    x_e = jax.lax.stop_gradient(x_e)
    b, t_len = x0_r.shape[:2]
    t_e = jnp.asarray(grid.t, jnp.float32)[exit_step]
    t = jnp.where(mask, 0.0, jnp.full((b, t_len), t_e))
    pred = model(x_e, t, id_emb=id_emb, audio_windows=aud, view=view, context_mask=mask)
    x0_hat = obj.predict_x0(lc.objective, lc.schedule, x_e, pred, t)
    keep = (~mask).astype(jnp.float32)
    err = jnp.mean(jnp.square(x0_hat - x0_r), axis=tuple(range(2, x0_r.ndim)))  # [B, T]
    rec = jnp.sum(err * keep) / jnp.maximum(jnp.sum(keep), 1.0)
    metrics = {"sf_recon": rec, "sf_exit_step": exit_step.astype(jnp.float32)}
    total = rec
    if lc.lip_weight > 0 and "lip" in nets:
        from starcaster_jax.models.lipreading import lip_loss
        gen = nets["vae"].decode_video(jnp.where(expand_to(mask, x0_hat), x0_r, x0_hat))
        lip = lip_loss(nets["lip"], gen, frames_r, box_r, weights=keep)
        total = total + lc.lip_weight * lip
        metrics["sf_lip"] = lip
    metrics["loss"] = total
    return total, metrics
