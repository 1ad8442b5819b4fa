"""Generation: chunk planning, one compile for any length, context carried between chunks, the
view signal the model receives, multi-view stills, and the generate CLI (mp4 length and audio,
every bad input -> one-line message + exit 2).

The parts are random `tiny` networks (``random_init.random_parts``: filled from their abstract
shapes, no init compile); a ``Spy`` wrapper records, through a host callback, what the sampler
hands the model.
"""
from __future__ import annotations

import json

import av
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
import soundfile
from flax import nnx
from scipy.signal import resample_poly

from configs import stage2_audio
from data_pipelines import schema
from data_pipelines.synthetic import speech
from launch import generate as cli_mod
from starcaster_jax.inference import chunking as C
from starcaster_jax.inference import generate as G
from starcaster_jax.inference import views
from starcaster_jax.inference.random_init import random_module, random_parts
from starcaster_jax.media import load_image, read_audio_from_video, read_video, save_image, write_mp4
from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.identity.builtin import BuiltinIdentityConfig, BuiltinIdentityEncoder
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.training import checkpoint as ck
from starcaster_jax.training.state import TrainState

SR = 16000
CALLS: list[dict] = []  # one entry per model evaluation, appended by Spy


def _record(d):
    CALLS.append({k: np.asarray(v) for k, v in d.items()})


class Spy(nnx.Module):
    """The model, plus a host record of its inputs at every evaluation."""

    def __init__(self, inner):
        self.inner = inner
        self.audio_proj = inner.audio_proj

    def __call__(self, x, t, **kw):
        rec = {"x": x, "t": t, "context_mask": kw["context_mask"], "view": kw["view"],
               "drop_view": kw["drop_view"], "has_audio": jnp.asarray(kw["audio_windows"] is not None)}
        jax.debug.callback(_record, rec, ordered=True)
        return self.inner(x, t, **kw)


@pytest.fixture(scope="module")
def cfg():
    c = stage2_audio.get_config("tiny")
    c.diffusion.sample_steps = 2
    return c


@pytest.fixture(scope="module")
def parts(cfg):
    return random_parts(cfg, seed=0)


@pytest.fixture(scope="module")
def gen(cfg, parts):
    return G.Generator(Spy(parts.model), parts.vae, parts.audio_encoder, cfg, identity_fn=parts.identity_fn)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Amplitude-modulated noise: not silent, different per seed (fast, no TTS needed)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    env = 0.5 + 0.5 * np.sin(np.arange(n) / SR * 2 * np.pi * 4)
    return (0.3 * env * rng.normal(size=n)).clip(-1, 1).astype(np.float32)


def reference_image(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3)).astype(np.uint8)


def chunk_records(calls, steps):
    """Model evaluations grouped per chunk (``steps`` evaluations each)."""
    assert len(calls) % steps == 0
    return [calls[i:i + steps] for i in range(0, len(calls), steps)]


# ----------------------------------------------------------------------------- planning

def test_plan_chunks_cover_every_frame_once():
    for animate in (True, False):
        for n in (1, 4, 5, 6, 13, 40):
            chunks = C.plan_chunks(n, 5, 1, animate=animate)
            covered = [c.first_new + i for c in chunks for i in range(c.num_new)]
            assert covered == list(range(n)), (animate, n)
            for a, b in zip(chunks, chunks[1:]):  # context of b = the last K slots of a
                assert b.num_context == 1 and b.slot0 == a.slot0 + 5 - 1
    assert C.plan_chunks(13, 5, 1, animate=True)[0].slot0 == -1  # reference slot before frame 0
    assert C.plan_chunks(13, 5, 1, animate=False)[0] == C.Chunk(0, 0, 0, 5)
    assert C.num_output_frames(SR) == 25 and C.num_output_frames(SR + 1) == 26  # ceil


def test_chunk_audio_layout():
    audio = np.arange(10 * 640, dtype=np.float32) + 1
    a = C.chunk_audio(audio, -1, 5, 2)  # slots = frames -1..3, +-2 frames of audio context
    assert a.shape == ((5 + 4) * 640,)
    assert (a[:3 * 640] == 0).all() and a[3 * 640] == 1  # frames -3..-1 are before the clip
    b = C.chunk_audio(audio, 8, 5, 2)  # runs past the end: zero padded
    assert b[0] == 6 * 640 + 1 and (b[4 * 640:] == 0).all()


# ----------------------------------------------------------------------------- views

def test_view_trajectories():
    o = views.orbit(100, 0.3, 50, 0.1)
    np.testing.assert_allclose(o[0], views.IDENTITY_POSE)
    assert abs(o[:, 0].max() - 0.3) < 1e-3 and abs(o[12, 0] - 0.3 * np.sin(2 * np.pi * 12 / 50)) < 1e-6
    np.testing.assert_allclose(o[50], o[0], atol=1e-6)  # periodic
    s = views.static(7, views.degrees_to_pose([10, -5]))
    assert s.shape == (7, 6) and np.allclose(s[:, 0], np.deg2rad(10)) and np.allclose(s[:, 1], np.deg2rad(-5))
    sp = views.spread(5, 0.5)
    np.testing.assert_allclose(sp[:, 0], np.linspace(-0.5, 0.5, 5), atol=1e-7)


def test_view_json_formats(tmp_path):
    p = tmp_path / "list.json"
    p.write_text(json.dumps([[0, 0], [10, 5, 1], [20, 0, 0, 0.1, 0, 1.2]]))
    t = views.from_json(str(p), 5)
    np.testing.assert_allclose(t[1, :3], np.deg2rad([10, 5, 1]), atol=1e-6)
    np.testing.assert_allclose(t[3], t[2])  # held past the end
    p.write_text(json.dumps({"units": "radians", "keyframes": [{"frame": 0}, {"time": 0.4, "yaw": 1.0}]}))
    t = views.from_json(str(p), 12)
    np.testing.assert_allclose(t[:, 0], np.clip(np.arange(12) / 10, 0, 1), atol=1e-6)  # time 0.4 s = frame 10
    for bad, msg in (("{", "not a JSON"), ('{"keyframes": [{"yaw": 1}]}', "needs 'frame' or 'time'"),
                     ('[[0, 0, 0, 0, 0, -1]]', "scale must be positive"), ('{"x": 1}', "expected a list")):
        p.write_text(bad)
        with pytest.raises(ValueError, match=msg):
            views.from_json(str(p), 3)


# ----------------------------------------------------------------------------- generator

def grey_change(a, b) -> float:
    """Mean absolute difference of two uint8 videos, in grey levels."""
    return float(np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).mean())


def test_chunk_function_compiles_once_for_any_length(gen, cfg):
    """Constant memory by design: one fixed-shape chunk function, traced once for 1 or 5 chunks."""
    e = np.random.default_rng(0).normal(size=512)
    short, long = speechlike(5 / 25), speechlike(21 / 25, 1)   # synthesize: 5 frames, 5 + 4*4 frames
    assert len(gen.plan(short.size, animate=False)) == 1 and len(gen.plan(long.size, animate=False)) == 5
    before = gen.trace_counts["chunk"]
    CALLS.clear()
    one = list(gen.video(short, id_emb=e))
    assert all(r["drop_view"].all() for r in CALLS)  # no trajectory: the view condition is dropped
    traced = gen.trace_counts["chunk"]
    five = list(gen.video(long, id_emb=e))
    with_views = list(gen.video(long, id_emb=e, poses=views.orbit(21)))
    assert traced - before <= 1 and gen.trace_counts["chunk"] == traced  # no retrace: 5x input, views
    settings = G.SamplingSettings.from_config(cfg)
    assert gen._chunk_fn(settings, gen.chunk_frames, True, True)._cache_size() == 1
    assert gen.trace_counts["decode"] == 1
    assert sum(map(len, one)) == 5 and sum(map(len, five)) == 21
    frames = np.concatenate(five)
    assert frames.dtype == np.uint8 and frames.shape == (21, 32, 32, 3)
    # the views act on the frames: a visible change (mean > 1 grey level), not rounding noise
    assert grey_change(np.concatenate(with_views), frames) > 1.0


def test_audio_drives_generation_and_seed_determinism(gen):
    e, a, b = np.ones(512), speechlike(0.36, 10), speechlike(0.36, 11)
    run = lambda audio, seed=0: np.concatenate(list(gen.video(audio, id_emb=e, seed=seed)))  # noqa: E731
    base = run(a)
    np.testing.assert_array_equal(run(a), base)            # same inputs and seed: same video
    assert grey_change(run(b), base) > 1.0                 # other speech: visibly other frames
    assert grey_change(run(a, seed=1), base) > 1.0          # other seed: other noise


def test_context_frames_carry_over(gen, cfg):
    """Chunk 2 starts from chunk 1's last latents: perturbing them changes chunk 2; perturbing a
    chunk-1 frame that is not carried leaves chunk 2 bit-identical."""
    audio, ref, e = speechlike(12 / 25, 2), reference_image(1), None
    k, t = gen.context_frames, gen.chunk_frames
    steps = cfg.diffusion.sample_steps

    def run(edit=None):
        lats = []

        def hook(ch, lat):
            if ch.index == 0 and edit is not None:
                lat = lat.at[:, edit].add(0.7)
            lats.append(np.asarray(lat))
            return lat
        CALLS.clear()
        out = list(gen.video(audio, reference=ref, id_emb=e, latent_hook=hook))
        return out, lats, list(CALLS)

    base, lats, calls = run()
    assert [len(x) for x in base] == [4, 4, 4]
    per_chunk = chunk_records(calls, steps)
    # chunk 0's context = the reference latent; chunk 1's = chunk 0's last K latents, clean (t=0)
    ref_lat = np.asarray(gen.encode_reference(ref))[0, 0]
    for rec in per_chunk[0]:
        np.testing.assert_allclose(rec["x"][0, :k], np.broadcast_to(ref_lat, rec["x"][0, :k].shape), atol=1e-6)
    for rec in per_chunk[1]:
        np.testing.assert_array_equal(rec["x"][0, :k], lats[0][0, t - k:])
        assert (rec["t"][:, :k] == 0).all() and rec["context_mask"][0, :k].all()
        assert not rec["context_mask"][0, k:].any() and (rec["t"][:, k:] == rec["t"][0, k]).all()
    assert (per_chunk[1][0]["t"][:, k:] > 0).all()  # the new frames start noisy

    carried, _, _ = run(edit=slice(t - k, t))
    assert grey_change(carried[1], base[1]) > 1.0                  # the carried latents steer chunk 2
    not_carried, _, _ = run(edit=slice(k, k + 1))
    assert grey_change(not_carried[0], base[0]) > 0.1              # the edit is visible...
    np.testing.assert_array_equal(not_carried[1], base[1])                     # ...but not carried


def _compose_check(captured, traj, slot0, slots):
    """Chunk-relative views must compose back to the trajectory: R(ref) R(view_i) = R(pose_i)."""
    idx = slot0 + np.arange(slots)
    abs_poses = np.where((idx < 0)[:, None], views.IDENTITY_POSE, traj[np.clip(idx, 0, len(traj) - 1)])
    ref = abs_poses[0]
    r = schema.pose_to_matrix(ref[None, :3])[0] @ schema.pose_to_matrix(captured[:, :3])
    np.testing.assert_allclose(r, schema.pose_to_matrix(abs_poses[:, :3]), atol=1e-5)
    np.testing.assert_allclose(captured[:, 3:5] + ref[3:5], abs_poses[:, 3:5], atol=1e-6)
    np.testing.assert_allclose(captured[:, 5] * ref[5], abs_poses[:, 5], atol=1e-6)


@pytest.mark.parametrize("kind", ["orbit", "static", "json"])
def test_view_signal_is_the_requested_trajectory(gen, cfg, kind, tmp_path):
    n = 13
    audio = speechlike(n / 25, 3)
    if kind == "orbit":
        traj = views.orbit(n, np.deg2rad(25), 10, np.deg2rad(8))
    elif kind == "static":
        traj = views.static(n, views.degrees_to_pose([15, 5, 0, 0.1, 0, 1.1]))
    else:
        p = tmp_path / "v.json"
        p.write_text(json.dumps({"keyframes": [{"frame": 0}, {"frame": 8, "yaw": 30},
                                               {"frame": 12, "yaw": -10, "pitch": 5, "scale": 0.9}]}))
        traj = views.from_json(str(p), n)
        expect_yaw = np.interp(np.arange(n), [0, 8, 12], [0, 30, -10])  # independent of views.py
        np.testing.assert_allclose(traj[:, 0], np.deg2rad(expect_yaw), atol=1e-6)
    steps, t = cfg.diffusion.sample_steps, gen.chunk_frames
    chunks = gen.plan(audio.size, animate=True)
    for mode in ("video", "chunk"):
        CALLS.clear()
        list(gen.video(audio, reference=reference_image(2), poses=traj, view_reference=mode))
        per_chunk = chunk_records(list(CALLS), steps)
        assert len(per_chunk) == len(chunks)
        seen = []
        for ch, recs in zip(chunks, per_chunk):
            v = recs[0]["view"][0]                                   # [T, 6]
            assert not any(r["drop_view"].any() for r in recs)
            for r in recs:                                           # same view at every step
                np.testing.assert_array_equal(r["view"][0], v)
            if mode == "video":  # relative to the reference, which is the identity: the poses themselves
                seen.append(v[ch.num_context:ch.num_context + ch.num_new])
                if ch.slot0 < 0:
                    np.testing.assert_allclose(v[:ch.num_context], np.tile(views.IDENTITY_POSE, (ch.num_context, 1)))
            else:
                np.testing.assert_allclose(v[0], views.IDENTITY_POSE, atol=1e-6)  # slot 0 is the origin
                _compose_check(v, traj, ch.slot0, t)
        if mode == "video":
            np.testing.assert_allclose(np.concatenate(seen), traj, atol=1e-5)


def test_multiview_views_and_no_audio(gen, cfg):
    poses = views.spread(3, np.deg2rad(30))
    CALLS.clear()
    out = gen.multiview(poses, reference=reference_image(3))
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    recs = list(CALLS)
    assert len(recs) == cfg.diffusion.sample_steps
    for r in recs:
        assert not r["has_audio"]
        assert r["context_mask"][0].tolist() == [True, False, False, False]  # the reference view
        # views relative to the reference (identity): the requested cameras themselves
        np.testing.assert_allclose(r["view"][0], np.concatenate([views.IDENTITY_POSE[None], poses]), atol=1e-6)
    with pytest.raises(C.GenerationError, match="at most"):
        gen.multiview(views.spread(40), reference=reference_image(3))


def test_bad_schedule_is_a_generation_error(cfg, parts):
    """``schedule_from_config``'s ValueError reaches a launcher as one GenerationError line."""
    bad = mlc.ConfigDict(cfg.to_dict())
    bad.diffusion.schedule = "fow"
    with pytest.raises(C.GenerationError, match=r"^config diffusion\.schedule: expected 'ddpm' or 'flow'"):
        G.Generator(parts.model, parts.vae, parts.audio_encoder, bad)


def test_input_checks():
    with pytest.raises(C.GenerationError, match="too short"):
        C.check_speech(np.ones(100, np.float32))
    with pytest.raises(C.GenerationError, match="silent"):
        C.check_speech(np.zeros(SR, np.float32))
    with pytest.raises(C.GenerationError, match="all zeros"):
        C.normalize_embedding(np.zeros(512))
    e = C.normalize_embedding(np.arange(512.0))
    assert abs(np.linalg.norm(e) - 1) < 1e-6


# ----------------------------------------------------------------------------- CLI

@pytest.fixture
def cli(gen, monkeypatch):
    """``launch.generate.main`` with the random tiny generator standing in for a checkpoint."""
    monkeypatch.setattr(cli_mod, "build_generator", lambda args, need_identity: gen)
    return cli_mod


def _wav(path, audio, sr=SR):
    soundfile.write(str(path), audio, sr)
    return str(path)


def test_cli_animate_mp4_length_and_audio(cli, tmp_path, capsys):
    """Real speech (espeak-ng) at 22.05 kHz stereo in; the mp4 holds ceil(s*25) frames and the
    (resampled, downmixed) speech for the same duration."""
    utt = speech.synthesize("hi there", "en-us", rate=300).audio[: int(0.45 * SR)]
    audio22 = resample_poly(utt, 22050, SR).astype(np.float32)
    wav = _wav(tmp_path / "s.wav", np.stack([audio22, 0.5 * audio22], -1), 22050)
    seconds = audio22.size / 22050
    yy, xx = np.mgrid[:32, :32]  # a smooth image: H.264 keeps it close
    smooth = np.stack([xx * 8, yy * 8, np.full_like(xx, 128)], -1).astype(np.uint8)
    ref = save_image(str(tmp_path / "ref.png"), smooth)
    out = str(tmp_path / "out" / "animate.mp4")
    rc = cli.main(["--checkpoint", str(tmp_path), "--reference", ref, "--audio", wav, "--out", out,
                   "--grid", "--quiet"])
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == out
    frames, fps = read_video(out)
    assert frames.shape == (int(np.ceil(seconds * 25)), 32, 32 + 2 + 32, 3) and fps == 25
    assert np.abs(frames[:, :, :32].astype(float) - smooth).mean() < 8  # grid: reference | generated
    back = read_audio_from_video(out)
    assert abs(back.size / SR - seconds) < 0.01
    with av.open(out) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.audio[0].codec_context.name == "aac"
    mono = resample_poly(0.75 * audio22, SR, 22050)[: back.size]
    assert np.corrcoef(back[:mono.size], mono[:back.size])[0, 1] > 0.9  # the input speech, muxed


def test_cli_synthesize_orbit_and_multiview(cli, tmp_path, capsys):
    emb = tmp_path / "id.npy"
    np.save(emb, np.random.default_rng(5).normal(size=512).astype(np.float32))
    wav = _wav(tmp_path / "a.wav", speechlike(0.3, 6))
    out = str(tmp_path / "syn.mp4")
    assert cli.main(["--checkpoint", str(tmp_path), "--identity", str(emb), "--audio", wav,
                     "--views", "orbit", "--out", out, "--quiet", "--upscale", "2"]) == 0
    frames, _ = read_video(out)
    assert frames.shape == (8, 64, 64, 3)
    # identity from an image, speech from a video file's audio track
    clip = write_mp4(str(tmp_path / "talk.mp4"), np.zeros((10, 16, 16, 3), np.uint8), audio=speechlike(0.4, 7))
    face = save_image(str(tmp_path / "face.png"), reference_image(8))
    out2 = str(tmp_path / "syn2.mp4")
    assert cli.main(["--checkpoint", str(tmp_path), "--identity_from", face, "--audio", clip,
                     "--out", out2, "--quiet"]) == 0
    assert read_video(out2)[0].shape == (10, 32, 32, 3)
    mv = str(tmp_path / "mv.mp4")
    assert cli.main(["--checkpoint", str(tmp_path), "--identity", str(emb), "--multiview", "4",
                     "--out", mv, "--grid", "--quiet"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-2:] == [mv, str(tmp_path / "mv.png")]
    assert read_video(mv)[0].shape[0] == 4
    assert load_image(str(tmp_path / "mv.png")).shape == (32, 4 * 32 + 3 * 2, 3)


def _bad_inputs(tmp):
    """(name, argv, expected message fragment) for every kind of bad input."""
    ok_wav = _wav(tmp / "ok.wav", speechlike(0.5))
    ok_img = str(tmp / "ok.png")
    save_image(ok_img, reference_image(0))
    junk_img = tmp / "junk.png"
    junk_img.write_bytes(b"\x89PNG\r\n not really")
    junk_wav = tmp / "junk.wav"
    junk_wav.write_bytes(b"RIFF....WAVEjunk" * 4)
    noface = str(tmp / "noface.png")
    save_image(noface, np.full((200, 200, 3), 128, np.uint8))
    silent = _wav(tmp / "silent.wav", np.zeros(SR, np.float32))
    short = _wav(tmp / "short.wav", speechlike(0.05))
    bad_npy = tmp / "bad.npy"
    np.save(bad_npy, np.ones(128, np.float32))
    bad_json = tmp / "bad.json"
    bad_json.write_text("{ not json")
    ck = ["--checkpoint", str(tmp)]
    return [
        ("missing reference", ck + ["--reference", str(tmp / "nope.png"), "--audio", ok_wav], "no such image file"),
        ("unreadable reference", ck + ["--reference", str(junk_img), "--audio", ok_wav], "not a readable image"),
        ("no face", ck + ["--reference", noface, "--audio", ok_wav], "no face detected"),
        ("missing audio", ck + ["--reference", ok_img, "--audio", str(tmp / "nope.wav")], "no such audio file"),
        ("unreadable audio", ck + ["--reference", ok_img, "--audio", str(junk_wav)], "not a readable audio file"),
        ("silent audio", ck + ["--reference", ok_img, "--audio", silent], "silent"),
        ("too-short audio", ck + ["--reference", ok_img, "--audio", short], "too short"),
        ("no audio", ck + ["--reference", ok_img], "--audio is required"),
        ("bad embedding", ck + ["--identity", str(bad_npy), "--audio", ok_wav], "expected a 512-d embedding"),
        ("missing embedding", ck + ["--identity", str(tmp / "x.npy"), "--audio", ok_wav], "no such identity"),
        ("bad views file", ck + ["--reference", ok_img, "--audio", ok_wav, "--views", str(bad_json)], "not a JSON"),
        ("unknown views", ck + ["--reference", ok_img, "--audio", ok_wav, "--views", "spin"], "--views spin"),
        ("too many views", ck + ["--reference", ok_img, "--multiview", "40"], "at most"),
        ("bad sampler", ck + ["--reference", ok_img, "--audio", ok_wav, "--sampler", "heun"], "sampler 'heun'"),
        ("not mp4", ck + ["--reference", ok_img, "--audio", ok_wav, "--out", str(tmp / "x.avi")], "must be an .mp4"),
    ]


def test_cli_bad_inputs_exit_2(cli, tmp_path, capsys):
    for name, argv, msg in _bad_inputs(tmp_path):
        rc = cli.main(argv + (["--out", str(tmp_path / "o.mp4")] if "--out" not in argv else []) + ["--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, (name, err)
        assert msg in err and err.startswith("error: ") and len(err.splitlines()) == 1, (name, err)
    assert not (tmp_path / "o.mp4").exists()


def _write_workdir(tmp_path, cfg, parts, name="work", **model_over):
    """An Orbax training workdir (the trainer's ``Checkpointer``) holding ``parts.model``'s params,
    its stored config ``cfg`` (with ``model_over`` applied to ``model.unet``) and an encoders
    directory (``builtin_encoders.save``)."""
    c = mlc.ConfigDict(cfg.to_dict())
    c.model.encoders_dir = str(tmp_path / "encoders")
    c.model.unet.update(model_over)
    be.save(c.model.encoders_dir, "vae", parts.vae, None, None)
    be.save(c.model.encoders_dir, "audio", parts.audio_encoder, None, None)
    ident = random_module(lambda: BuiltinIdentityEncoder(BuiltinIdentityConfig(), rngs=InitRngs(0)), 4)
    be.save(c.model.encoders_dir, "identity_cond", ident, None, None)
    params = {"model": nnx.to_pure_dict(nnx.state(parts.model, nnx.Param))}
    state = TrainState(step=jnp.int32(1), params=params, opt_state={}, ema=params,
                       rng=jnp.zeros((2,), jnp.uint32), skipped=jnp.int32(0))
    saver = ck.Checkpointer(str(tmp_path / name), mlc.ConfigDict(dict(keep=1, async_save=False)),
                            enable_data=False)
    saver.save(1, state, c, force=True)
    saver.close()
    return str(tmp_path / name)


def test_cli_checkpoint_problems_exit_2(cfg, parts, tmp_path, capsys):
    """A missing workdir, a checkpoint whose params do not fit its own stored config, and an
    explicit --config whose model differs from the stored one: one line each, exit 2, through
    the real loading path (``training.checkpoint.load_for_inference``)."""
    wav = _wav(tmp_path / "ok.wav", speechlike(0.5))
    emb = tmp_path / "id.npy"
    np.save(emb, np.ones(512, np.float32))
    args = ["--identity", str(emb), "--audio", wav, "--out", str(tmp_path / "o.mp4"), "--quiet"]
    good = _write_workdir(tmp_path, cfg, parts)
    wider = tuple(2 * c for c in cfg.model.unet.block_out_channels)
    bad = _write_workdir(tmp_path, cfg, parts, name="bad", block_out_channels=wider)
    cases = [(["--checkpoint", str(tmp_path / "missing")], "no such training workdir"),
             (["--checkpoint", bad], "the config expects"),
             (["--checkpoint", good, "--config", "configs/stage2_audio.py:demo"], "does not match --config: model.")]
    for extra, msg in cases:
        assert cli_mod.main(extra + args) == 2, extra
        err = capsys.readouterr().err.strip()
        assert msg in err and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o.mp4").exists()


def test_cli_smoke_with_a_real_checkpoint(cfg, parts, tmp_path, capsys):
    """The generate CLI at `tiny` end to end from disk: an Orbax training workdir (the trainer's
    ``Checkpointer``) and an encoders directory (``builtin_encoders.save``), animate mode."""
    work = _write_workdir(tmp_path, cfg, parts)
    ref = save_image(str(tmp_path / "ref.png"), reference_image(9))
    out = str(tmp_path / "o.mp4")
    rc = cli_mod.main(["--checkpoint", work, "--reference", ref, "--audio",
                       _wav(tmp_path / "a.wav", speechlike(0.24)), "--out", out, "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == out
    assert read_video(out)[0].shape == (6, 32, 32, 3)
