"""Self-forcing (DESIGN §3): train on the model's *own* autoregressive context.

The video window holds ``K + (R + 1) F`` frames. Chunk ``r`` covers frames
``[rF, rF + K + F)``: its first K frames are context, the F after are generated. The rollout
samples chunks ``0 .. R-1`` from pure noise with the inference sampler, grid and guidance
(``self_forcing.*`` fields left empty take the ``diffusion`` section's), each starting from the
previous chunk's last K generated frames (chunk 0 from the ground-truth context) — all under
``stop_gradient``: no gradient ever reaches the rollout. Each chunk encodes its own audio span
and keeps the sample's condition drops, as inference would. Chunk ``R`` is then trained:

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
from starcaster_jax.diffusion.chunk import chunk_noise, sample_chunk
from starcaster_jax.diffusion.samplers import denoise_steps
from starcaster_jax.training import losses as L

MODES = ("context_stopgrad", "last_step")


@dataclasses.dataclass(frozen=True)
class SelfForcingConfig:
    """The rollout's settings, resolved: empty config fields take the inference setting."""
    enabled: bool = False
    probability: float = 0.5     # fraction of video batches that take the self-forcing step
    chunks: int = 2              # R: rolled-out chunks before the trained one
    mode: str = "context_stopgrad"
    sampler: str = "ddim"        # the rollout's sampler / steps / grid / guidance = inference's
    steps: int = 10
    spacing: str = "trailing"
    audio_cfg: float = 2.0
    id_cfg: float = 1.5

    @classmethod
    def from_config(cls, config) -> SelfForcingConfig:
        c, d = config.self_forcing, config.diffusion
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(c.keys()) - names)
        if bad:
            raise ValueError(f"self_forcing: unknown field(s) {bad}; known: {sorted(names)}")
        sf = cls(enabled=bool(c.enabled), probability=float(c.probability), chunks=int(c.chunks),
                 mode=str(c.mode), sampler=str(c.sampler or d.sampler),
                 steps=int(c.steps or d.sample_steps), spacing=str(c.spacing or d.timestep_spacing),
                 audio_cfg=float(d.audio_cfg if c.audio_cfg < 0 else c.audio_cfg),
                 id_cfg=float(d.id_cfg if c.id_cfg < 0 else c.id_cfg))
        if sf.mode not in MODES:
            raise ValueError(f"self_forcing.mode {sf.mode!r}: expected one of {MODES}")
        if sf.enabled and sf.chunks < 1:
            raise ValueError("self_forcing.chunks must be >= 1 when enabled")
        if sf.sampler == "euler" and d.schedule != "flow":
            raise ValueError("self_forcing.sampler 'euler' integrates rectified flow; this config "
                             "trains a DDPM schedule: use ddim or dpmpp_2m")
        return sf

    def window_frames(self, k: int, f: int) -> int:
        return k + (self.chunks + 1) * f if self.enabled else k + f

    def guidance(self, lc: L.LossConfig) -> tuple[float, float]:
        """(s_id, s_audio) as ``Generator`` picks them: no audio conditioning -> s_audio = 0;
        strict_reference (no identity tokens) -> s_id = s_audio (the id branch is pruned)."""
        s_audio = self.audio_cfg if lc.use_audio else 0.0
        s_id = s_audio if lc.strict_reference else self.id_cfg
        return s_id, s_audio


def _frozen(model):
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def rollout(model, nets, x0, cond, drops, rng, lc: L.LossConfig, sf: SelfForcingConfig):
    """Self-generated context for chunk R: ``[B, K, h, w, C]`` (no gradient).

    Each chunk is sampled from pure noise by :func:`~starcaster_jax.diffusion.chunk.sample_chunk`,
    the function ``Generator`` samples with, with the inference sampler, grid and guidance,
    its own audio span and the sample's condition drops; chunk 0's context is the ground truth."""
    k, f = lc.context_frames, lc.num_frames
    gen_model = _frozen(model)
    drop_id, drop_audio, drop_view = drops
    s_id, s_audio = sf.guidance(lc)
    ctx = x0[:, :k]
    b = x0.shape[0]
    mask = jnp.broadcast_to(jnp.arange(k + f) < k, (b, k + f))
    for r in range(sf.chunks):
        s = r * f
        noise, _ = chunk_noise(jax.random.fold_in(rng, r), (b, k + f) + x0.shape[2:], x0.dtype)
        context = jnp.concatenate([ctx, jnp.zeros_like(noise[:, k:])], axis=1)
        out = sample_chunk(gen_model, noise, context=context, context_mask=mask,
                           id_emb=cond["id_emb"], audio_windows=L.chunk_audio_windows(nets, cond["audio"], s, lc),
                           view=L.chunk_view(cond["view"], s, k + f), drop_view=drop_view,
                           drop_id=drop_id, drop_audio=drop_audio, schedule=lc.schedule,
                           objective=lc.objective, sampler=sf.sampler, steps=sf.steps,
                           spacing=sf.spacing, s_id=s_id, s_audio=s_audio)
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
    b = x0.shape[0]
    drops = L.drops(k_drop, b, lc, batch)
    ctx = rollout(model, nets, x0, cond, drops, k_roll, lc, sf)
    s = sf.chunks * f                                                        # chunk R start
    x0_r = jnp.concatenate([ctx, x0[:, s + k:s + k + f]], axis=1)             # [B, K+F, ...]
    frames_r = frames[:, s:s + k + f]
    box_r = batch["mouth_box"][:, s:s + k + f]
    view_r = L.chunk_view(cond["view"], s, k + f)
    aud_r = L.chunk_audio_windows(nets, cond["audio"], s, lc)
    mask = jnp.broadcast_to(jnp.arange(k + f) < k, (b, k + f))
    drop_id, drop_audio, drop_view = drops
    if sf.mode == "context_stopgrad":
        loss, m = L.chunk_loss(model, nets, x0_r, k_noise, lc, context_mask=mask,
                               id_emb=cond["id_emb"], audio_win=aud_r, view=view_r,
                               drop_id=drop_id, drop_audio=drop_audio, drop_view=drop_view,
                               frames=frames_r, mouth_box=box_r)
        return loss, {f"sf_{n}": v for n, v in m.items()} | {"loss": loss}
    return _last_step_loss(model, nets, x0_r, frames_r, box_r, mask, view_r, aud_r, cond["id_emb"],
                           drops, k_noise, k_exit, lc, sf)


def _last_step_loss(model, nets, x0_r, frames_r, box_r, mask, view, aud, id_emb, drops, k_noise,
                    k_exit, lc: L.LossConfig, sf: SelfForcingConfig):
    drop_id, drop_audio, drop_view = drops
    grid = lc.schedule.sampling_grid(sf.steps, sf.spacing)
    exit_step = jax.random.randint(k_exit, (), 0, sf.steps)
    gen_model = _frozen(model)

    def fn(x, t):
        return gen_model(x, t, id_emb=id_emb, audio_windows=aud, view=view, context_mask=mask,
                         drop_id=drop_id, drop_audio=drop_audio, drop_view=drop_view)

    noise = jax.random.normal(k_noise, x0_r.shape, x0_r.dtype)
    x_e, _ = denoise_steps(fn, noise, schedule=lc.schedule, objective=lc.objective,
                           sampler=sf.sampler, steps=sf.steps, start=0, stop=exit_step,
                           context=x0_r, context_mask=mask, spacing=sf.spacing)
    x_e = jax.lax.stop_gradient(x_e)
    b, t_len = x0_r.shape[:2]
    t_e = jnp.asarray(grid.t, jnp.float32)[exit_step]
    t = jnp.where(mask, 0.0, jnp.full((b, t_len), t_e))
    pred = model(x_e, t, id_emb=id_emb, audio_windows=aud, view=view, context_mask=mask,
                 drop_id=drop_id, drop_audio=drop_audio, drop_view=drop_view)
    x0_hat = obj.predict_x0(lc.objective, lc.schedule, x_e, pred, t)
    keep = (~mask).astype(jnp.float32)
    err = jnp.mean(jnp.square(x0_hat - x0_r), axis=tuple(range(2, x0_r.ndim)))  # [B, T]
    rec = jnp.sum(err * keep) / jnp.maximum(jnp.sum(keep), 1.0)
    metrics = {"sf_recon": rec, "sf_exit_step": exit_step.astype(jnp.float32)}
    total = rec
    if lc.lip_weight > 0 and "lip" in nets:
        lip = L.noise_weighted_lip_loss(nets, x0_hat, t, frames_r, box_r, mask, lc)
        total = total + lc.lip_weight * lip
        metrics["sf_lip"] = lip
    metrics["loss"] = total
    return total, metrics
