"""One code path for training and serving (issue 12): the chunk loop ``chunking.run_chunks`` that
``Generator`` and the served artefact share, and the audio windows the training objective
encodes, which are the generator's for the same chunk.

The audio check records, through a host callback, the windows the Generator's jitted chunk
program hands the denoiser (a stub that returns zeros), and compares them with the training
side's windows of the same chunk, from the record layout ``VideoWindow`` gives a window that
starts at clip frame 0: self-forcing chunk ``r`` (window frame ``r * F``) is synthesize chunk
``r``, and the reference layout is the first animate chunk.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import stage2_audio
from starcaster_jax.inference import chunking as C
from starcaster_jax.inference.generate import Generator, SamplingSettings
from starcaster_jax.inference.random_init import random_parts
from starcaster_jax.training import losses as L

SPF = C.SAMPLES_PER_FRAME
WINDOWS: list[np.ndarray] = []   # one entry per denoiser call, appended by WindowSpy


def _record(w):
    WINDOWS.append(np.asarray(w))


class WindowSpy(nnx.Module):
    """A denoiser that predicts zeros and records the audio windows it is given."""

    def __call__(self, x, t, *, audio_windows, **kw):
        jax.debug.callback(_record, audio_windows[:1], ordered=True)    # [1, T, 2w+1, L, D]
        return jnp.zeros_like(x)


@pytest.fixture(scope="module")
def setup():
    cfg = stage2_audio.get_config("tiny")
    parts = random_parts(cfg, seed=0)
    gen = Generator(WindowSpy(), parts.vae, parts.audio_encoder, cfg)
    lc = L.LossConfig.from_config(cfg)
    return gen, lc, {"audio": parts.audio_encoder}


def _generator_windows(gen, clip, **kw):
    """The windows of every chunk of ``gen.video(clip)`` (one sampler step: one call a chunk)."""
    WINDOWS.clear()
    list(gen.video(clip, id_emb=np.ones(512, np.float32), settings=SamplingSettings(steps=1), **kw))
    return list(WINDOWS)


def test_training_audio_windows_are_the_generators_for_the_same_chunk(setup):
    gen, lc, nets = setup
    k, f, w = lc.context_frames, lc.num_frames, lc.audio_window
    total = k + 3 * f                                                  # a self-forcing window
    clip = np.random.default_rng(0).uniform(-0.5, 0.5, (total + w + 3) * SPF).astype(np.float32)
    window_audio = jnp.asarray(np.concatenate([np.zeros(w * SPF, np.float32),
                                               clip[:(total + w) * SPF]]))[None]   # frames -w .. total+w
    train = jax.jit(lambda a, s: L.chunk_audio_windows(nets, a, s, lc), static_argnums=1)

    chunks = gen.plan(clip.size, animate=False)
    got = _generator_windows(gen, clip)
    assert len(got) == len(chunks)
    for r in range(3):
        assert chunks[r].slot0 == r * f
        np.testing.assert_allclose(got[r], np.asarray(train(window_audio, r * f)), rtol=1e-5, atol=1e-6,
                                   err_msg=f"chunk {r}")

    # the reference layout (training) is the first animate chunk (generation), slots -K .. F-1
    ref = np.zeros((gen.resolution, gen.resolution, 3), np.uint8)
    assert gen.plan(clip.size, animate=True)[0].slot0 == -k
    got = _generator_windows(gen, clip, reference=ref)
    dummy = jnp.zeros((1, total, 1, 1, 1))
    laudio = L.reference_layout(dummy, dummy, dummy, window_audio, None, lc)[3]   # [1, (K+F+2w)*640]
    want = jax.jit(lambda a: L.audio_windows(nets, a, k + f, lc))(laudio)
    np.testing.assert_allclose(got[0], np.asarray(want), rtol=1e-5, atol=1e-6)


def test_run_chunks_carries_the_context_and_writes_the_new_slots():
    """Each chunk's context is the previous chunk's last K latents (the first: the reference latent
    repeated), a hook's replacement is what is carried and decoded, and only new slots are written."""
    slots, k, shape = 5, 2, (1, 1, 1)
    chunks = C.plan_chunks(11, slots, k, animate=True)
    seen = []

    def sample(ch, span, context, mask, view, drop_view):  # latents [1, T, 1, 1, 1] = 100 * chunk + slot
        seen.append((ch, np.asarray(context)[0, :, 0, 0, 0], np.asarray(mask)[0], np.asarray(drop_view)))
        assert span.shape == (1, (slots + 2) * SPF) and view.shape == (1, slots, 6)
        return jnp.asarray(100.0 * ch.index + np.arange(slots, dtype=np.float32)).reshape((1, slots) + shape)

    out = list(C.run_chunks(sample, lambda z: np.asarray(z)[0, :, 0, 0, 0], np.ones(11 * SPF, np.float32), chunks,
                            slots=slots, context=k, window=1, latent_shape=shape,
                            encode_reference=lambda: jnp.full((1, 1) + shape, 7.0),
                            latent_hook=lambda ch, lat: lat + 0.5))
    np.testing.assert_array_equal(seen[0][1], [7, 7, 0, 0, 0])
    for (_, ctx, mask, drop), prev in zip(seen[1:], seen):
        np.testing.assert_array_equal(ctx[:k], 100.0 * prev[0].index + np.arange(slots - k, slots) + 0.5)
        assert mask.tolist() == [True] * k + [False] * (slots - k) and drop.tolist() == [True]
    assert [len(o) for o in out] == [c.num_new for c in chunks] and sum(map(len, out)) == 11
    np.testing.assert_array_equal(out[0], np.arange(k, slots) + 0.5)
