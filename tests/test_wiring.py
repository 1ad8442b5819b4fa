"""Wiring tests (issue 16): each asserts the *right* effect at a point where two parts meet, so a
swapped argument, a shifted index or a silently dropped input fails.

- Generator CFG: with a stub denoiser whose branches are known constants, the mix the chunk
  function computes (Generator and exported/served artefact) is exactly
  ``u + id_cfg (c_id - u) + audio_cfg (c_full - c_id)``.
- Audio alignment: with a stub encoder whose features are local in time, perturbing the audio of
  frame k changes exactly window entry ``k - f + w`` of the frames f = k-w..k+w, at the inference
  call site (``chunk_audio`` + ``encode_windows``) and at the training one (``VideoWindow`` +
  ``losses.audio_windows``), and the two give the same windows for the same frames.
- View: the view embedding receives the pose itself (not zeros) and every temporal block receives
  that embedding; two poses give different outputs; a dropped view gives the null-view output.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import stage2_audio
from data_pipelines import transforms as T
from starcaster_jax import inference as G
from starcaster_jax.diffusion import chunk as chunk_lib
from starcaster_jax.inference import chunking as C
from starcaster_jax.inference import export as E
from starcaster_jax.inference import serve as S
from starcaster_jax.models.audio.alignment import encode_windows
from starcaster_jax.models.conditioning import ViewEmbedding
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.starcaster import STARCaster
from starcaster_jax.models.temporal import TemporalTransformer
from starcaster_jax.models.vae import AutoencoderKL, VAEConfig
from starcaster_jax.training import losses as L

SR = 16000
SPF = C.SAMPLES_PER_FRAME     # 640 samples per video frame
FEAT = 320                    # the stub encoder's hop: 50 Hz, like wav2vec2


@pytest.fixture(scope="module")
def cfg():
    c = stage2_audio.get_config("tiny")
    c.diffusion.sample_steps = 2
    return c


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    return (0.3 * rng.normal(size=n)).clip(-1, 1).astype(np.float32)


class LocalAudio(nnx.Module):
    """Stub audio encoder with a receptive field of one 20 ms hop: ``[B, S] -> [B, S/320, 1, 2]``
    (mean and mean |x| of each hop), so which features a sample reaches is known exactly."""

    def __init__(self):
        self.gain = nnx.Param(jnp.ones((), jnp.float32))

    def encode(self, audio):
        b = audio.shape[0]
        x = audio.reshape(b, -1, FEAT)                                       # [B, T50, 320]
        return jnp.stack([x.mean(-1), jnp.abs(x).mean(-1)], -1)[:, :, None] * self.gain[...]


# ----------------------------------------------------------------------------- Generator CFG

U0, P_ID, Q_AUDIO, R_BOTH = 0.5, 1.0, 10.0, 100.0


class BranchStub(nnx.Module):
    """A denoiser whose prediction is a known function of which conditions are live:
    ``U0 + P_ID [id] + Q_AUDIO [audio] + R_BOTH [id and audio]`` (``[.]`` = present and not
    dropped, per sample), broadcast over the latent. Any other guidance mix gives other numbers."""

    def __init__(self):
        self.audio_proj = nnx.Param(jnp.zeros(()))   # Generator: "this model has audio"
        self.scale = nnx.Param(jnp.ones((), jnp.float32))

    def __call__(self, x, t, *, id_emb=None, audio_windows=None, view=None, context_mask=None,
                 drop_id=None, drop_audio=None, drop_view=None):
        b = x.shape[0]
        has_id = jnp.zeros((b,)) if id_emb is None else 1.0 - drop_id.astype(jnp.float32)
        has_a = jnp.zeros((b,)) if audio_windows is None else 1.0 - drop_audio.astype(jnp.float32)
        val = U0 + P_ID * has_id + Q_AUDIO * has_a + R_BOTH * has_id * has_a          # [B]
        return jnp.broadcast_to(val[:, None, None, None, None], x.shape) * self.scale[...] + 0 * x


def _probe_sample(model_fn, noise, **kw):
    """Stand-in for the sampler that ``diffusion.chunk.sample_chunk`` (the Generator's and the
    artefact's chunk) hands the guided model to: one evaluation of it, returned as the result."""
    return model_fn(noise, jnp.full(noise.shape[:2], 500.0))


def expected_mix(s_id, s_audio, with_id=True):
    u, c_id = U0, U0 + (P_ID if with_id else 0.0)
    c_full = U0 + (P_ID + Q_AUDIO + R_BOTH if with_id else Q_AUDIO)
    if not with_id:          # no identity: the identity branch is the unconditional one
        return u + s_audio * (c_full - u)
    return u + s_id * (c_id - u) + s_audio * (c_full - c_id)


@pytest.fixture(scope="module")
def stub_gen(cfg):
    mc = cfg.model
    vc = dict(mc.vae.to_dict(), block_out_channels=tuple(mc.vae.block_out_channels))
    vae = G.random_module(lambda: AutoencoderKL(VAEConfig(**vc), rngs=InitRngs(0)), 1)
    return G.Generator(BranchStub(), vae, LocalAudio(), cfg)


def test_generator_cfg_mix_is_nested_guidance(stub_gen, monkeypatch):
    """The two scales reach guidance in the right places (swapping them gives 167.5, not 222)."""
    monkeypatch.setattr(chunk_lib, "sample", _probe_sample)  # behind sample_chunk's guidance
    gen = stub_gen
    audio = speechlike(0.3, 1)
    settings = G.SamplingSettings(sampler="ddim", steps=2, id_cfg=1.5, audio_cfg=2.0)
    for id_emb in (np.ones(512), None):
        gen._chunk_fns.clear()
        lats = []
        list(gen.video(audio, id_emb=id_emb, settings=settings,
                       latent_hook=lambda ch, lat: lats.append(np.asarray(lat)) or lat))
        assert lats
        want = expected_mix(1.5, 2.0, with_id=id_emb is not None)
        for lat in lats:
            np.testing.assert_allclose(lat, want, rtol=1e-6)
    assert expected_mix(1.5, 2.0) != expected_mix(2.0, 1.5)


def test_exported_and_served_cfg_mix(stub_gen, monkeypatch, tmp_path):
    """The artefact's chunk functions carry the same mix (export has its own settings path)."""
    monkeypatch.setattr(chunk_lib, "sample", _probe_sample)  # behind sample_chunk's guidance
    gen = stub_gen
    gen._chunk_fns.clear()
    settings = G.SamplingSettings(sampler="ddim", steps=2, id_cfg=3.0, audio_cfg=0.5)
    E.export_generator(gen, str(tmp_path), settings=settings, dtype="float32")
    gen._chunk_fns.clear()
    server = S.Server(str(tmp_path))
    assert server.manifest["sampling"]["id_cfg"] == 3.0 and server.manifest["sampling"]["audio_cfg"] == 0.5
    slots = gen.chunk_frames
    audio = jnp.asarray(C.chunk_audio(speechlike(0.3, 2), 0, slots, gen.audio_window))[None]
    ctx = jnp.zeros((1, slots) + gen.latent_shape)
    args = [audio, ctx, jnp.zeros((1, slots), bool), jnp.zeros((1, slots, 6)), jnp.ones((1,), bool)]
    lat = np.asarray(server._call("chunk", *args, jnp.ones((1, 512)), jnp.int32(0), jnp.int32(0)))
    np.testing.assert_allclose(lat, expected_mix(3.0, 0.5), rtol=1e-6)
    lat = np.asarray(server._call("chunk_noid", *args, jnp.int32(0), jnp.int32(0)))
    np.testing.assert_allclose(lat, expected_mix(3.0, 0.5, with_id=False), rtol=1e-6)


# ----------------------------------------------------------------------------- audio alignment

def _changed_entries(a, b):
    """``[F, 2w+1]`` bool: which (frame, window slot) entries differ between two window arrays."""
    return np.abs(np.asarray(a) - np.asarray(b)).reshape(a.shape[1], a.shape[2], -1).max(-1) > 0


def _expected_entries(k, first_frame, num_frames, w):
    """Perturbing absolute frame ``k``: frame ``f`` (absolute ``first_frame + i``) sees it at
    window slot ``k - f + w`` when ``|k - f| <= w``."""
    out = np.zeros((num_frames, 2 * w + 1), bool)
    for i in range(num_frames):
        j = k - (first_frame + i) + w
        if 0 <= j <= 2 * w:
            out[i, j] = True
    return out


def _perturb(audio, k):
    a = audio.copy()
    a[k * SPF:(k + 1) * SPF] += 0.5
    return a


def test_inference_audio_windows_are_aligned(cfg):
    enc, w = LocalAudio(), int(cfg.model.audio.window)
    slots = 5
    audio = speechlike(40 / 25, 3)                                   # 40 frames of speech
    windows = jax.jit(lambda a: encode_windows(enc, a, slots, w))

    def wins(a, slot0):
        return windows(jnp.asarray(C.chunk_audio(a, slot0, slots, w))[None])  # [1, F, 2w+1, 1, 2]

    for slot0 in (-1, 0, 17):
        base = wins(audio, slot0)
        for k in range(max(slot0 - w - 1, 0), slot0 + slots + w + 2):
            got = _changed_entries(wins(_perturb(audio, k), slot0), base)
            np.testing.assert_array_equal(got, _expected_entries(k, slot0, slots, w), err_msg=f"slot0={slot0} k={k}")


def test_training_audio_windows_are_aligned_and_match_inference(cfg):
    """``VideoWindow`` lays a record's audio out as the loss reads it; for the same frames the
    training and inference windows are identical."""
    enc, w = LocalAudio(), int(cfg.model.audio.window)
    lc = dataclasses.replace(L.LossConfig.from_config(cfg), audio_layers=None)
    t = int(cfg.data.num_frames) + int(cfg.data.context_frames)
    n = 30
    audio = speechlike(n / 25, 4)
    rec = {"frames": np.zeros((n, 4, 4, 3), np.float32), "audio": audio,
           "pose": np.tile(np.array([0, 0, 0, 0, 0, 1], np.float32), (n, 1)), "pose_valid": True,
           "viseme": np.zeros(n, np.int32), "mouth_box": np.zeros((n, 4), np.float32),
           "expression": np.zeros((n, 3), np.float32), "expression_valid": False,
           "id_embedding": np.zeros(0, np.float32), "id_vector": np.zeros(8, np.float32),
           "id_vector_valid": True, "id_label": 0}
    vw = T.VideoWindow(t, audio_window=w)
    windows = jax.jit(lambda a: L.audio_windows({"audio": enc}, a, t, lc))
    infer = jax.jit(lambda a: encode_windows(enc, a, t, w))
    starts = set()
    for seed in range(6):
        ex = vw.random_map(rec, np.random.default_rng(seed))
        s = int(ex["window_start"])
        starts.add(s)
        base = windows(jnp.asarray(ex["audio"])[None])
        np.testing.assert_array_equal(base, infer(jnp.asarray(C.chunk_audio(audio, s, t, w))[None]))
        for k in range(max(s - w - 1, 0), min(s + t + w + 2, n)):
            ex2 = vw.random_map(dict(rec, audio=_perturb(audio, k)), np.random.default_rng(seed))
            got = _changed_entries(windows(jnp.asarray(ex2["audio"])[None]), base)
            np.testing.assert_array_equal(got, _expected_entries(k, s, t, w), err_msg=f"start={s} k={k}")
    assert len(starts) > 1


# ----------------------------------------------------------------------------- view

class Recorder(nnx.Module):
    """Wraps a submodule; records (through a host callback) what it was called with and returned."""

    def __init__(self, inner, log, name):
        self.inner, self.name = inner, name
        self._log = log

    def __call__(self, x):
        y = self.inner(x)
        jax.debug.callback(lambda a, b: self._log.append((self.name, np.asarray(a), np.asarray(b))), x, y,
                           ordered=True)
        return y


@pytest.fixture(scope="module")
def live_model(cfg):
    """A tiny STARCaster with every parameter random (the zero-initialised ``view_proj`` and
    ``proj_out`` would otherwise hide the view path entirely)."""
    return G.random_module(lambda: STARCaster(cfg.model, rngs=InitRngs(0)), seed=3)


def test_view_embedding_receives_the_pose_and_changes_the_output(cfg, live_model):
    model = live_model
    assert model.unet.view_embedding is not None
    log: list = []
    direct = nnx.clone(model.unet.view_embedding)
    assert isinstance(direct, ViewEmbedding)
    model.unet.view_embedding = Recorder(model.unet.view_embedding, log, "embedding")
    temporal = [m for _, m in model.iter_modules() if isinstance(m, TemporalTransformer)]
    assert temporal and all(m.view_proj is not None for m in temporal)
    for i, m in enumerate(temporal):
        m.view_proj = Recorder(m.view_proj, log, f"view_proj{i}")
    try:
        b, f = 1, int(cfg.data.num_frames) + int(cfg.data.context_frames)
        h = cfg.data.resolution // 4
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(b, f, h, h, 4)), jnp.float32)
        t = jnp.full((b, f), 400.0)
        pose_a = jnp.asarray(np.stack([np.linspace(0, 0.4, f), np.zeros(f), np.zeros(f), np.zeros(f),
                                       np.zeros(f), np.ones(f)], -1)[None], jnp.float32)
        pose_b = pose_a.at[..., 1].set(-0.3).at[..., 3].set(0.1)
        fwd = nnx.jit(lambda m, v, d: m(x, t, id_emb=jnp.ones((b, 512)), view=v, drop_view=d))
        keep, drop = jnp.zeros((b,), bool), jnp.ones((b,), bool)
        outs = {}
        for name, pose in (("a", pose_a), ("b", pose_b)):
            log.clear()
            outs[name] = np.asarray(fwd(model, pose, keep))
            jax.effects_barrier()
            want = np.asarray(direct(pose))                                      # [B, F, Dv]
            emb = [r for r in log if r[0] == "embedding"]
            assert len(emb) == 1
            np.testing.assert_allclose(emb[0][1], np.asarray(pose), rtol=0, atol=0)   # the pose itself
            np.testing.assert_allclose(emb[0][2], want, rtol=1e-5, atol=1e-6)
            proj = [r for r in log if r[0].startswith("view_proj")]
            assert len(proj) == len(temporal)
            for _, inp, _ in proj:                   # every temporal block gets that embedding
                np.testing.assert_allclose(inp, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(np.asarray(direct(pose_a)), np.asarray(direct(pose_b)), atol=1e-3)
        diff = np.abs(outs["a"] - outs["b"]).mean() / np.abs(outs["a"]).mean()
        assert diff > 1e-3, diff                     # the pose reaches the prediction
        # a dropped view is the null view whatever the pose: the pose acts only through the gate
        np.testing.assert_allclose(np.asarray(fwd(model, pose_a, drop)), np.asarray(fwd(model, pose_b, drop)),
                                   rtol=1e-5, atol=1e-6)
    finally:
        model.unet.view_embedding = model.unet.view_embedding.inner
        for m in temporal:
            m.view_proj = m.view_proj.inner
