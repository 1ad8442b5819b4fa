"""Train what you infer (issue 11): each test here fails on the code before its fix.

Cheap NumPy/JAX checks of the training objective's wiring against the inference path; no
model is trained.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import stage2_audio
from starcaster_jax.inference import chunking
from starcaster_jax.models.lipreading import LipReader, LipReaderConfig, lip_loss
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.training import losses as L
from starcaster_jax.training.self_forcing import SelfForcingConfig
from starcaster_jax.weights.vae import vae_path_from_config

SPF = chunking.SAMPLES_PER_FRAME


def _lc(**train):
    c = stage2_audio.get_config("micro")
    c.train.update(**train)
    return L.LossConfig.from_config(c), c


def test_lip_loss_weight_scales_the_loss():
    """A batch drawn at high noise (every weight 0.1) gets a tenth of the lip loss: normalising
    by sum(w) (the old rule) gave it the full loss whatever the noise level."""
    reader = LipReader(LipReaderConfig.tiny(), rngs=InitRngs(0))
    k1, k2 = jax.random.split(jax.random.key(0))
    gen = jax.random.uniform(k1, (2, 4, 32, 32, 3), minval=-1, maxval=1)
    gt = jax.random.uniform(k2, (2, 4, 32, 32, 3), minval=-1, maxval=1)
    boxes = jnp.tile(jnp.asarray([0.5, 0.3, 0.8, 0.7]), (2, 4, 1))
    full = lip_loss(reader, gen, gt, boxes)
    assert float(full) > 1e-4
    w = jnp.full((2, 4), 0.1)
    low = lip_loss(reader, gen, gt, boxes, weights=w, normalizer=8.0)
    np.testing.assert_allclose(float(low), 0.1 * float(full), rtol=1e-5)


def test_training_audio_span_is_the_inference_chunk_span():
    """The audio a training chunk encodes is exactly ``chunking.chunk_audio`` of the clip for
    that chunk (the encoder sees the same span, so the tokens are equal)."""
    lc, _ = _lc()
    k, f, w = lc.context_frames, lc.num_frames, lc.audio_window
    clip = np.random.default_rng(0).standard_normal(40 * SPF).astype(np.float32)
    a = 7                                            # the window starts at clip frame a
    total = k + 3 * f
    window_audio = clip[(a - w) * SPF:(a + total + w) * SPF][None]   # transforms.VideoWindow layout
    for s in (0, f, 2 * f):
        got = np.asarray(L.chunk_audio(jnp.asarray(window_audio), s, k + f, w))[0]
        want = chunking.chunk_audio(clip, a + s, k + f, w)
        np.testing.assert_array_equal(got, want)


def test_reference_layout_is_the_first_animate_chunk():
    """With the reference layout, the training chunk's context latents, mask, audio span and
    views are the ones Generator builds for the first animate chunk from frame 0."""
    lc, _ = _lc()
    k, f, w = lc.context_frames, lc.num_frames, lc.audio_window
    rng = np.random.default_rng(1)
    n = k + f
    x0 = rng.standard_normal((1, n, 2, 2, 4)).astype(np.float32)
    frames = rng.standard_normal((1, n, 4, 4, 3)).astype(np.float32)
    boxes = rng.random((1, n, 4)).astype(np.float32)
    clip = rng.standard_normal(30 * SPF).astype(np.float32)
    window_audio = np.concatenate([np.zeros(w * SPF, np.float32), clip[:(n + w) * SPF]])[None]
    poses = np.concatenate([np.tile([[0, 0, 0, 0, 0, 1.0]], (1, 1)),
                            rng.normal(0, 0.1, (n - 1, 6)) * [1, 1, 1, 1, 1, 0] + [0, 0, 0, 0, 0, 1]])
    poses = poses.astype(np.float32)
    lx0, lframes, lboxes, laudio, lview = L.reference_layout(
        jnp.asarray(x0), jnp.asarray(frames), jnp.asarray(boxes), jnp.asarray(window_audio),
        jnp.asarray(poses[None]), lc)
    ch = chunking.plan_chunks(20, n, k, animate=True)[0]
    mask, ctx = chunking.chunk_context(jnp.zeros((1, n, 2, 2, 4)), jnp.asarray(x0[:, :1]), ch, k)
    assert mask[0, :k].all() and not mask[0, k:].any()
    np.testing.assert_array_equal(np.asarray(lx0)[:, :k], np.asarray(ctx)[:, :k])
    np.testing.assert_array_equal(np.asarray(lx0)[:, k:], x0[:, :f])
    np.testing.assert_array_equal(np.asarray(laudio)[0], chunking.chunk_audio(clip, ch.slot0, n, w))
    want_view = chunking.slot_views(poses, ch.slot0, n, True, "chunk")
    np.testing.assert_allclose(np.asarray(lview)[0], want_view, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(lframes)[:, :k], np.repeat(frames[:, :1], k, 1))


def test_invalid_identity_and_pose_are_dropped_and_drop_all_drops_everything():
    lc, _ = _lc(p_drop_id=0.0, p_drop_audio=0.0, p_drop_view=0.0, p_drop_all=0.0)
    lc = L.LossConfig(**{**lc.__dict__, "identity_source": "precomputed"})
    batch = {"id_vector_valid": jnp.asarray([True, False]), "pose_valid": jnp.asarray([False, True])}
    d_id, d_a, d_v = L.drops(jax.random.key(0), 2, lc, batch)
    assert np.asarray(d_id).tolist() == [False, True]
    assert np.asarray(d_v).tolist() == [True, False]
    assert not np.asarray(d_a).any()
    lc_all = L.LossConfig(**{**lc.__dict__, "p_drop_all": 1.0})
    d = L.drops(jax.random.key(0), 2, lc_all, {})
    assert all(np.asarray(x).all() for x in d)


def test_self_forcing_rollout_defaults_to_the_inference_sampler():
    _, c = _lc()
    sf = SelfForcingConfig.from_config(c)
    d = c.diffusion
    assert (sf.sampler, sf.steps, sf.spacing, sf.audio_cfg, sf.id_cfg) == (
        d.sampler, d.sample_steps, d.timestep_spacing, d.audio_cfg, d.id_cfg)
    c.self_forcing.update(steps=3, sampler="dpmpp_2m")
    sf = SelfForcingConfig.from_config(c)
    assert (sf.sampler, sf.steps) == ("dpmpp_2m", 3)


@pytest.mark.parametrize("field", ["vae_checkpoint", "pretrained"])
def test_one_vae_rule_for_training_and_inference(field):
    _, c = _lc()
    if field == "pretrained":
        c.model.pretrained.vae = "/models/sd15"
    else:
        c.model.vae_checkpoint = "/models/sd15"
    assert vae_path_from_config(c.model) == "/models/sd15"
