"""Wiring tests of the training objectives (issue 16), on a ``micro`` STARCaster with every
parameter random (the real init zeroes ``proj_out`` and ``view_proj``, which hides the context
and view paths from any test) and the frozen nets the step would build.

- The loss mask at the level training calls (``video_loss``), not only in ``objectives``: a
  garbage (NaN) prediction on the context frames leaves the loss unchanged.
- ``drop_audio`` removes the audio path and nothing else: the loss no longer depends on the
  audio, and still depends on the identity and the pose.
- Self-forcing: the rollout's context is not the ground truth, and equals an independent
  guided ``denoise_steps`` run written out here and what ``Generator`` makes for the same seed;
  no gradient leaks into the rollout, checked
  with a model whose context actually matters to the loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import stage2_audio
from data_pipelines.schema import SAMPLES_PER_FRAME as SPF
from starcaster_jax.diffusion.samplers import denoise_steps
from starcaster_jax.inference.generate import Generator, SamplingSettings
from starcaster_jax.inference.random_init import random_module
from starcaster_jax.inference.views import IDENTITY_POSE
from starcaster_jax.models.audio.alignment import encode_windows
from starcaster_jax.models.conditioning import rebase_view
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.starcaster import STARCaster
from starcaster_jax.training import frozen as frozen_lib
from starcaster_jax.training import losses as L
from starcaster_jax.training import self_forcing as SF


def _config(**train):
    c = stage2_audio.get_config("micro")
    c.train.update(p_drop_id=0.0, p_drop_audio=0.0, p_drop_view=0.0, p_drop_all=0.0,
                   p_reference_context=0.0)
    c.train.update(**train)
    c.self_forcing.update(enabled=True, chunks=2, steps=2)
    return c


@pytest.fixture(scope="module")
def parts():
    c = _config()
    model = random_module(lambda: STARCaster(c.model, rngs=InitRngs(0)), seed=1)
    nets = frozen_lib.build_frozen(c)
    return c, model, nets


def _batch(c, frames_total: int, seed: int = 0, b: int = 2):
    r, w = int(c.data.resolution), int(c.model.audio.window)
    rng = np.random.default_rng(seed)
    yaw = np.linspace(0, 0.5, frames_total)
    pose = np.stack([yaw, 0.3 * yaw, 0 * yaw, 0 * yaw, 0 * yaw, 1 + 0 * yaw], -1)
    return dict(
        frames=jnp.asarray(rng.uniform(-1, 1, (b, frames_total, r, r, 3)), jnp.float32),
        audio=jnp.asarray(rng.normal(0, 0.3, (b, (frames_total + 2 * w) * SPF)), jnp.float32),
        pose=jnp.asarray(np.tile(pose[None], (b, 1, 1)), jnp.float32),
        pose_valid=jnp.ones((b,), bool),
        mouth_box=jnp.tile(jnp.asarray([r * .3, r * .6, r * .7, r * .8], jnp.float32), (b, frames_total, 1)),
        identity=jnp.asarray(rng.normal(size=(b, 48)), jnp.float32),
        id_vector=jnp.asarray(rng.normal(size=(b, 48)), jnp.float32),
        id_vector_valid=jnp.ones((b,), bool))


# ---------------------------------------------------------------------------------------------
# The loss mask, at the level training calls
# ---------------------------------------------------------------------------------------------
class ContextGarbage:
    """The model, except that its prediction on the first ``k`` frames is NaN (``nan=True``) or
    left alone: a loss that counts context frames is NaN, one that masks them is unchanged."""

    def __init__(self, model, k: int, nan: bool):
        self.model, self.k, self.nan = model, k, nan

    def __call__(self, x, t, **kw):
        out = self.model(x, t, **kw)
        if not self.nan:
            return out
        return out.at[:, :self.k].set(jnp.nan)


@pytest.mark.parametrize("lip_weight", [0.0, 0.5])
def test_video_loss_ignores_the_prediction_on_context_frames(parts, lip_weight):
    c, model, nets = parts
    c = _config(p_context=1.0, lip_weight=lip_weight)           # every sample has K context frames
    nets = frozen_lib.build_frozen(c)
    lc = L.LossConfig.from_config(c)
    k = lc.context_frames
    batch = _batch(c, k + lc.num_frames)
    rng = jax.random.key(4)
    clean, m_clean = L.video_loss(ContextGarbage(model, k, nan=False), nets, batch, rng, lc)
    garbage, m_garbage = L.video_loss(ContextGarbage(model, k, nan=True), nets, batch, rng, lc)
    assert np.isfinite(float(clean)) and float(clean) > 0
    np.testing.assert_allclose(float(garbage), float(clean), rtol=1e-6)
    if lip_weight:
        np.testing.assert_allclose(float(m_garbage["lip"]), float(m_clean["lip"]), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# drop_audio removes the audio path, and only it
# ---------------------------------------------------------------------------------------------
class Capture:
    """The model, recording the prediction ``video_loss`` gets back."""

    def __init__(self, model):
        self.model, self.out = model, None

    def __call__(self, x, t, **kw):
        self.out = self.model(x, t, **kw)
        return self.out


def test_drop_audio_removes_only_the_audio_path(parts):
    """With every sample's audio dropped, the prediction is exactly independent of the audio,
    and the identity and the pose still change it (by more than 0.1% of its size)."""
    _, model, _ = parts

    def pred_of(c, **swap):
        lc = L.LossConfig.from_config(c)
        batch = _batch(c, lc.context_frames + lc.num_frames) | swap
        cap = Capture(model)
        L.video_loss(cap, frozen_lib.build_frozen(c), batch, jax.random.key(7), lc)
        return np.asarray(cap.out)

    other = _batch(_config(), 3, seed=9)
    swaps = {"audio": dict(audio=other["audio"]), "identity": dict(id_vector=other["id_vector"]),
             "view": dict(pose=other["pose"][..., ::-1, :] * jnp.asarray([-1, 1, 1, 1, 1, 1.0]))}

    def effects(c):
        ref = pred_of(c)
        return {name: float(np.abs(pred_of(c, **s) - ref).mean() / np.abs(ref).mean())
                for name, s in swaps.items()}

    # p < 1 keeps the audio encoder in the graph (p_drop_audio = 1 means "no audio model");
    # with key 7 both samples draw the drop (the exact independence below shows it).
    dropped = effects(_config(p_drop_audio=0.999999))
    kept = effects(_config())
    assert dropped["audio"] == 0.0, dropped                  # the audio no longer matters ...
    assert kept["audio"] > 1e-3, kept                        # (it did without the drop)
    assert dropped["identity"] > 1e-3 and dropped["view"] > 1e-3, dropped   # ... the rest still does


# ---------------------------------------------------------------------------------------------
# Self-forcing
# ---------------------------------------------------------------------------------------------
def _independent_rollout(model, nets, x0, batch, rng, lc, sf):
    """The context chunk R sees, written out from ``denoise_steps`` and the guidance formula
    ``u + s_id (c_id - u) + s_audio (c_full - c_id)``: each chunk r starts from
    ``normal(split(fold_in(rng, r))[0])``, keeps the previous chunk's last K frames as clean context, and
    encodes its own audio span ``[rF - w, rF + K + F + w)`` and its own relative view."""
    k, f, w = lc.context_frames, lc.num_frames, lc.audio_window
    b = x0.shape[0]
    s_id, s_audio = sf.guidance(lc)
    id_emb = L.identity_embedding(nets, batch, lc)
    mask = jnp.broadcast_to(jnp.arange(k + f) < k, (b, k + f))
    yes, no = jnp.ones((b,), bool), jnp.zeros((b,), bool)
    ctx = x0[:, :k]
    for r in range(sf.chunks):
        s = r * f
        span = batch["audio"][:, s * SPF:(s + k + f + 2 * w) * SPF]
        aud = encode_windows(nets["audio"], span, k + f, w, lc.audio_layers)
        view = rebase_view(batch["pose"][:, s:s + k + f], 0)

        def call(x, t, drop_id, drop_audio):
            return model(x, t, id_emb=id_emb, audio_windows=aud, view=view, context_mask=mask,
                         drop_id=drop_id, drop_audio=drop_audio, drop_view=no)

        def guided(x, t):
            u, c_id, c_full = call(x, t, yes, yes), call(x, t, no, yes), call(x, t, no, no)
            return u + s_id * (c_id - u) + s_audio * (c_full - c_id)

        k_noise = jax.random.split(jax.random.fold_in(rng, r))[0]   # Generator's rule
        noise = jax.random.normal(k_noise, (b, k + f) + x0.shape[2:], x0.dtype)
        context = jnp.concatenate([ctx, jnp.zeros_like(noise[:, k:])], axis=1)
        out, _ = denoise_steps(guided, noise, schedule=lc.schedule, objective=lc.objective,
                               sampler=sf.sampler, steps=sf.steps, context=context,
                               context_mask=mask, spacing=sf.spacing)
        ctx = out[:, -k:]
    return ctx


def test_self_forcing_context_is_the_models_own_rollout(parts):
    c, model, nets = parts
    lc, sf = L.LossConfig.from_config(c), SF.SelfForcingConfig.from_config(c)
    assert sf.steps == 2 and sf.chunks == 2 and sf.audio_cfg != 1.0 and sf.id_cfg != 1.0
    k, f = lc.context_frames, lc.num_frames
    total = sf.window_frames(k, f)
    batch = _batch(c, total)
    _, x0, cond = L.video_conditions(nets, batch, jax.random.key(0), lc, total)
    b = x0.shape[0]
    no = jnp.zeros((b,), bool)
    rng = jax.random.key(5)
    ctx = SF.rollout(model, nets, x0, cond, (no, no, no), rng, lc, sf)
    want = _independent_rollout(model, nets, x0, batch, rng, lc, sf)
    s = sf.chunks * f
    gt = x0[:, s:s + k]                                  # the ground-truth context of chunk R
    assert ctx.shape == gt.shape
    assert float(jnp.abs(ctx - gt).mean()) > 0.1 * float(jnp.abs(gt).mean())
    np.testing.assert_allclose(np.asarray(ctx), np.asarray(want), rtol=1e-4, atol=1e-4)


def test_self_forcing_context_equals_what_the_generator_makes(parts):
    """The rollout, given the first animate chunk's layout (the reference latent as context, zero
    audio before frame 0, no view), makes exactly the latents ``Generator.video`` makes for the
    same seed, speech, reference and identity: chunk R's context is chunk R-1's last K latents.
    Catches any drift between the two callers: noise keys, audio spans, guidance, grid."""
    c, model, nets = parts
    lc, sf = L.LossConfig.from_config(c), SF.SelfForcingConfig.from_config(c)
    k, f, w = lc.context_frames, lc.num_frames, lc.audio_window
    total = sf.window_frames(k, f)
    r_px = int(c.data.resolution)
    rng = np.random.default_rng(3)
    reference = rng.integers(0, 256, (r_px, r_px, 3), dtype=np.uint8)
    speech = rng.normal(0, 0.3, ((sf.chunks + 1) * f * SPF,)).astype(np.float32)  # >= 0.2 s
    id_vec = rng.normal(size=(int(c.model.identity.embed_dim),)).astype(np.float32)
    id_vec /= np.linalg.norm(id_vec)
    seed = 11
    settings = SamplingSettings(sampler=sf.sampler, steps=sf.steps, audio_cfg=sf.audio_cfg,
                                id_cfg=sf.id_cfg, spacing=sf.spacing)
    gen = Generator(model, nets["vae"], nets["audio"], c)
    made = []
    list(gen.video(speech, reference=reference, id_emb=id_vec, settings=settings, seed=seed,
                   latent_hook=lambda ch, lat: made.append(np.asarray(lat)) or lat))
    assert len(made) > sf.chunks

    # The same inputs in the training window's layout: window frame j is output frame j - K,
    # and the window's audio starts at window frame -w.
    ref_lat = gen.encode_reference(reference)                           # [1, 1, h, w, c]
    x0 = jnp.zeros((1, total) + ref_lat.shape[2:], jnp.float32).at[:, :k].set(
        jnp.repeat(ref_lat, k, axis=1))
    audio = np.zeros(((total + 2 * w) * SPF,), np.float32)
    audio[(k + w) * SPF:(k + w) * SPF + speech.size] = speech
    cond = {"id_emb": jnp.asarray(id_vec)[None], "audio": jnp.asarray(audio)[None],
            "view": jnp.tile(jnp.asarray(IDENTITY_POSE)[None, None], (1, total, 1))}  # dropped
    yes, no = jnp.ones((1,), bool), jnp.zeros((1,), bool)
    ctx = SF.rollout(model, nets, x0, cond, (no, no, yes), jax.random.key(seed), lc, sf)
    want = made[sf.chunks - 1][:, -k:]
    assert float(np.abs(want).mean()) > 0
    np.testing.assert_allclose(np.asarray(ctx), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["context_stopgrad", "last_step"])
def test_self_forcing_gradient_does_not_leak_into_the_rollout(parts, monkeypatch, mode):
    """The gradient of the self-forcing loss equals the gradient with the rollout's context
    replaced by a constant: nothing flows back through the rollout. The model is fully random, so
    the context does change the loss (checked: a different constant changes the gradient)."""
    c, model, nets = parts
    c = _config()
    c.self_forcing.mode = mode
    lc, sf = L.LossConfig.from_config(c), SF.SelfForcingConfig.from_config(c)
    batch = _batch(c, sf.window_frames(lc.context_frames, lc.num_frames))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = jax.random.key(3)
    real_rollout = SF.rollout

    def loss(p, ctx):
        m = nnx.merge(graphdef, p, rest)
        if ctx is not None:
            monkeypatch.setattr(SF, "rollout", lambda *a, **kw: ctx)
        try:
            return SF.self_forcing_loss(m, nets, batch, rng, lc, sf)[0]
        finally:
            monkeypatch.setattr(SF, "rollout", real_rollout)

    def ctx_of(p):
        m = nnx.merge(graphdef, p, rest)
        k_lat, k_roll, k_drop = jax.random.split(rng, 5)[:3]
        _, x0, cond = L.video_conditions(nets, batch, k_lat, lc, sf.window_frames(lc.context_frames,
                                                                                   lc.num_frames))
        drops = L.drops(k_drop, x0.shape[0], lc, batch)
        return real_rollout(m, nets, x0, cond, drops, k_roll, lc, sf)

    ctx = jax.jit(ctx_of)(params)
    g_sf = jax.jit(jax.grad(lambda p: loss(p, None)))(params)
    g_const = jax.jit(jax.grad(lambda p: loss(p, ctx)))(params)
    g_other = jax.jit(jax.grad(lambda p: loss(p, ctx + 1.0)))(params)

    def dist(a, b):
        return sum(float(jnp.abs(x - y).sum()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(g_sf))
    assert norm > 0
    assert dist(g_other, g_const) > 1e-3 * norm          # the context matters to the gradient ...
    assert dist(g_sf, g_const) < 1e-5 * norm             # ... yet none flows through the rollout
