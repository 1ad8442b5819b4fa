"""Audio conditioning: wav2vec2 port parity vs transformers, import errors, 50 Hz -> 25 fps
alignment, windows/projector shapes, log-mel vs librosa, built-in encoder pretraining on a toy,
the encoder switch, and bad inputs."""
from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import starcaster_jax  # noqa: F401  (flax config)
from starcaster_jax.models.audio import (
    AudioEncoder,
    AudioProjector,
    BuiltinAudioConfig,
    BuiltinAudioEncoder,
    audio_tokens,
    build_audio_encoder,
    build_audio_projector,
    eval_step,
    feature_attention_mask,
    features_to_frames,
    frame_windows,
    load_audio,
    make_pretrain_optimizer,
    mel_spectrogram,
    num_video_frames,
    pretrain_step,
)
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.weights.common import WeightImportError
from starcaster_jax.weights.wav2vec2 import load_wav2vec2

try:  # parity oracles (the `torch` extra); only the tests that compare against them need it
    import torch
    import transformers
except ImportError:  # pragma: no cover
    torch = transformers = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs the `torch` extra (torch, transformers)")

SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


TINY_BUILTIN = {"hidden_size": 16, "num_layers": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def small_encoders():
    """(built-in, wav2vec2) small random encoders, built once for the module."""
    return (build_audio_encoder({"encoder": "builtin", "builtin": TINY_BUILTIN}),
            build_audio_encoder({"encoder": "wav2vec2", "wav2vec2": SMALL, "wav2vec2_path": ""}))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _random_hf(**overrides):
    """transformers Wav2Vec2Model with every weight random, weight-norm g and norms included."""
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(**{**SMALL, **overrides})
    hf = transformers.Wav2Vec2Model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("original0", "weight_g")):
                p.mul_(0.5 + torch.rand(p.shape, generator=g))
            elif "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return hf


def _to_old_format(hf, path):
    """Save like the hub's ForCTC checkpoints: `wav2vec2.` prefix, weight_g/weight_v, lm_head."""
    os.makedirs(path, exist_ok=True)
    hf.config.save_pretrained(path)
    sd = {}
    for k, v in hf.state_dict().items():
        k = k.replace("parametrizations.weight.original0", "weight_g")
        k = k.replace("parametrizations.weight.original1", "weight_v")
        sd["wav2vec2." + k] = v.clone()
    sd["lm_head.weight"] = torch.randn(32, hf.config.hidden_size)
    sd["lm_head.bias"] = torch.randn(32)
    torch.save(sd, os.path.join(path, "pytorch_model.bin"))


@needs_torch
@pytest.mark.parametrize("variant", ["base_group_postln_safetensors", "large_layer_stable_bin"])
def test_wav2vec2_parity(tmp_path, variant):
    if variant.startswith("base"):
        hf = _random_hf()
        hf.save_pretrained(tmp_path)
        assert "model.safetensors" in os.listdir(tmp_path)
    else:
        hf = _random_hf(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
        _to_old_format(hf, str(tmp_path))
    model, cfg = load_wav2vec2(str(tmp_path))
    assert cfg.do_stable_layer_norm == variant.startswith("large")
    x = np.random.RandomState(0).randn(2, 3201).astype(np.float32)  # odd sample count
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), output_hidden_states=True)
    out = model(jnp.asarray(x))
    assert len(out["hidden_states"]) == len(ref.hidden_states) == cfg.num_hidden_layers + 1
    errs = [rel(a, b.numpy()) for a, b in zip(out["hidden_states"], ref.hidden_states)]
    last = rel(out["last_hidden_state"], ref.last_hidden_state.numpy())
    feats = rel(out["extract_features"], ref.extract_features.numpy())
    print(f"\nwav2vec2 parity [{variant}] hidden_states rel.err: "
          + ", ".join(f"L{i}={e:.2e}" for i, e in enumerate(errs))
          + f"; last_hidden_state={last:.2e}; extract_features={feats:.2e}")
    assert max(errs + [last, feats]) <= 1e-4

    if variant.startswith("large"):  # padded batch with an attention mask (large checkpoints)
        am = np.ones((2, 3201), np.int32)
        am[1, 2000:] = 0
        xm = (x * am).astype(np.float32)
        with torch.no_grad():
            ref_m = hf(torch.from_numpy(xm), attention_mask=torch.from_numpy(am).long()).last_hidden_state
        t = cfg.num_feature_frames(3201)
        fmask = feature_attention_mask(cfg, am.sum(-1), t)
        err_m = rel(model(jnp.asarray(xm), attention_mask=fmask)["last_hidden_state"], ref_m.numpy())
        print(f"with attention mask: last_hidden_state rel.err {err_m:.2e}")
        assert err_m <= 1e-4

    # encode() = HF feature extractor normalisation + model, stacked [B, T, L+1, D]
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    iv = fe(list(x), sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        ref_n = torch.stack(hf(iv, output_hidden_states=True).hidden_states, dim=2).numpy()
    enc = model.encode(jnp.asarray(x))
    assert enc.shape == ref_n.shape == (2, cfg.num_feature_frames(3201), cfg.num_hidden_layers + 1, 64)
    assert rel(enc, ref_n) <= 1e-4


@needs_torch
def test_wav2vec2_import_errors(tmp_path):
    hf = _random_hf()
    hf.save_pretrained(tmp_path)
    with pytest.raises(WeightImportError, match="not a Hugging Face|directory"):
        load_wav2vec2(str(tmp_path / "nope"))
    cfgj = json.loads((tmp_path / "config.json").read_text())
    cfgj["hidden_size"] = 32  # checkpoint no longer matches its config
    (tmp_path / "config.json").write_text(json.dumps(cfgj))
    with pytest.raises(WeightImportError, match="shape|expects"):
        load_wav2vec2(str(tmp_path))
    os.remove(tmp_path / "config.json")
    with pytest.raises(WeightImportError, match="config.json"):
        load_wav2vec2(str(tmp_path))


def test_every_param_has_logical_axes():
    enc = nnx.eval_shape(lambda: build_audio_encoder({"encoder": "wav2vec2", "wav2vec2": SMALL, "wav2vec2_path": ""}))
    bi = nnx.eval_shape(lambda: BuiltinAudioEncoder(BuiltinAudioConfig(hidden_size=32), rngs=InitRngs(0)))
    proj = nnx.eval_shape(lambda: AudioProjector(window=2, num_layers=3, in_dim=8, out_dim=16,
                                                 num_tokens=4, hidden_dim=32, rngs=InitRngs(0)))
    for m in (enc, bi, proj):
        for path, var in nnx.to_flat_state(nnx.state(m, nnx.Param)):
            names = var.get_metadata().get("out_sharding")
            assert names is not None and len(names) == var.get_value().ndim, path


# ----------------------------------------------------------------------------- alignment

@pytest.mark.parametrize("frames", [1, 2, 7, 25, 38, 101])
@pytest.mark.parametrize("extra", [0, 1, -1, 157, -159])
def test_frames_for_any_length(frames, extra):
    s = frames * 640 + extra  # F/25 s of audio at 16 kHz, +- a few (often odd) samples
    if s <= 0:
        return
    assert num_video_frames(s) == frames


@needs_torch
def test_alignment_shapes_and_interpolation(small_encoders):
    bi, w2v = small_encoders
    encode = nnx.jit(lambda enc, x: enc.encode(x))
    for enc in (bi, w2v):
        for s in (1, 640 * 13 - 3):  # includes shorter than the receptive field
            f = num_video_frames(s)
            hidden = encode(enc, 0.1 * np.sin(np.arange(s) * 0.3)[None].repeat(2, 0))
            assert hidden.shape[0] == 2 and hidden.shape[2:] == (enc.num_hidden_states, enc.hidden_size)
            assert features_to_frames(hidden, f).shape == (2, f, enc.num_hidden_states, enc.hidden_size)
    # matches torch F.interpolate(mode="linear", align_corners=True) (Hallo's linear_interpolation)
    h = np.random.RandomState(0).randn(2, 49, 3, 5).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(h).permute(0, 2, 3, 1).reshape(2, 15, 49),
                                          size=25, mode="linear", align_corners=True)
    ref = ref.reshape(2, 3, 5, 25).permute(0, 3, 1, 2).numpy()
    np.testing.assert_allclose(features_to_frames(jnp.asarray(h), 25), ref, atol=1e-5)
    # windows: [B, F, 2w+1, ...] with edge padding
    feats = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    win = frame_windows(feats, 2)
    assert win.shape == (2, 4, 5, 3)
    np.testing.assert_array_equal(win[:, 0, :, 0] // 3 % 4, [[0, 0, 0, 1, 2]] * 2)
    np.testing.assert_array_equal(win[:, 3, :, 0] // 3 % 4, [[1, 2, 3, 3, 3]] * 2)


def test_encoder_switch_and_tokens(small_encoders):
    for kind in ("builtin", "wav2vec2"):
        cfg = {"encoder": kind, "wav2vec2": SMALL, "builtin": TINY_BUILTIN, "wav2vec2_path": "",
               "window": 2, "layers": [0, 1], "num_tokens": 4, "proj_hidden": 32}
        enc = build_audio_encoder(cfg, rngs=InitRngs(0))
        assert isinstance(enc, AudioEncoder)
        proj = build_audio_projector(cfg, enc, 24, rngs=InitRngs(1))
        tokens = nnx.jit(lambda e, p, x: audio_tokens(e, p, x, 5, layers=cfg["layers"]))
        tok = tokens(enc, proj, jnp.ones((2, 640 * 5 + 3)) * 0.1)
        assert tok.shape == (2, 5, 4, 24) and bool(jnp.all(jnp.isfinite(tok)))
    with pytest.raises(ValueError, match="audio.encoder"):
        build_audio_encoder({"encoder": "hubert"})
    with pytest.raises(ValueError, match="unknown field"):
        build_audio_encoder({"encoder": "builtin", "builtin": {"hiden_size": 3}})


# ----------------------------------------------------------------------------- built-in encoder

def test_mel_matches_librosa():
    import librosa  # noqa: PLC0415 (the media extra)
    cfg = BuiltinAudioConfig()
    x = np.random.RandomState(0).randn(16000 + 37).astype(np.float32) * 0.1
    ref = librosa.feature.melspectrogram(y=x, sr=16000, n_fft=512, win_length=400, hop_length=320,
                                         n_mels=80, power=2.0, center=True, pad_mode="constant")
    ours = np.asarray(mel_spectrogram(jnp.asarray(x)[None], cfg))[0].T
    assert ours.shape == ref.shape
    err = rel(ours, ref)
    print(f"\nlog-mel front-end vs librosa: rel.err {err:.2e}")
    assert err < 1e-4


def _tone_batch(rng, b, frames, freqs, sr=16000):
    """Toy 'visemes': each 5-frame segment is a tone of one class' frequency (+noise, gain)."""
    spf = sr // 25
    labels = np.repeat(rng.randint(0, len(freqs), size=(b, frames // 5)), 5, axis=1)
    f = np.asarray(freqs)[labels].repeat(spf, axis=1)                     # [B, S]
    phase = 2 * np.pi * np.cumsum(f, axis=1) / sr
    audio = np.sin(phase) * rng.uniform(0.05, 1.0, (b, 1)) + 0.01 * rng.randn(b, frames * spf)
    labels = labels.astype(np.int32)
    labels[:, 0] = -1  # ignored frames
    return jnp.asarray(audio, jnp.float32), jnp.asarray(labels)


def test_builtin_pretraining_learns_toy():
    freqs = [300.0, 700.0, 1500.0, 3200.0]
    cfg = BuiltinAudioConfig(hidden_size=32, num_layers=1, num_heads=2, num_visemes=len(freqs))
    model = BuiltinAudioEncoder(cfg, rngs=InitRngs(0))
    opt = make_pretrain_optimizer(model, learning_rate=3e-3)
    rng = np.random.RandomState(0)
    held_out = _tone_batch(np.random.RandomState(123), 8, 20, freqs)
    before = eval_step(model, *held_out)
    losses = [float(pretrain_step(model, opt, *_tone_batch(rng, 8, 20, freqs))["loss"])
              for _ in range(20)]
    after = eval_step(model, *held_out)
    print(f"\nbuilt-in encoder toy pretraining: held-out loss {float(before['loss']):.3f} -> "
          f"{float(after['loss']):.3f}, accuracy {float(before['accuracy']):.2f} -> "
          f"{float(after['accuracy']):.2f} (chance 0.25); train loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert float(after["loss"]) < 0.5 * float(before["loss"])
    assert float(after["accuracy"]) > 0.8
    assert int(after["frames"]) == 8 * 19  # the -1 frames are ignored


# ----------------------------------------------------------------------------- bad inputs

def test_load_audio_resamples_and_downmixes(tmp_path):
    import soundfile  # noqa: PLC0415 (the media extra)
    sr0, dur, f0 = 44100, 0.5, 440.0
    t = np.arange(int(sr0 * dur)) / sr0
    stereo = np.stack([np.sin(2 * np.pi * f0 * t), 0.5 * np.sin(2 * np.pi * f0 * t)], axis=1)
    path = tmp_path / "a.wav"
    soundfile.write(path, stereo, sr0, subtype="PCM_16")
    x = load_audio(str(path), 16000)
    assert x.dtype == np.float32 and x.ndim == 1 and abs(x.size - 8000) <= 1
    spec = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spec) * 16000 / x.size - f0) < 4.0  # pitch preserved
    assert abs(np.abs(x[1000:-1000]).max() - 0.75) < 0.02     # (1 + 0.5) / 2
    # arrays: [C, S] layout, int16 PCM, explicit rate
    y = load_audio((stereo.T * 32767).astype(np.int16), 16000, orig_sr=sr0)
    assert abs(y.size - 8000) <= 1 and abs(np.abs(y[1000:-1000]).max() - 0.75) < 0.02
    assert load_audio(np.zeros(123, np.float32)).shape == (123,)


def test_bad_audio_inputs(tmp_path, small_encoders):
    with pytest.raises(ValueError, match="empty audio"):
        load_audio(np.zeros((0,), np.float32))
    with pytest.raises(ValueError, match="empty audio"):
        load_audio(np.zeros((0, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load_audio(np.array([0.0, np.nan], np.float32))
    with pytest.raises(FileNotFoundError):
        load_audio(str(tmp_path / "missing.wav"))
    bogus = tmp_path / "not_audio.wav"
    bogus.write_bytes(b"this is not audio at all")
    with pytest.raises(ValueError, match="not a readable audio file"):
        load_audio(str(bogus))
    with pytest.raises(ValueError, match="empty audio"):
        num_video_frames(0)
    bi, w2v = small_encoders
    with pytest.raises(ValueError, match="empty audio"):
        bi.encode(jnp.zeros((1, 0)))
    with pytest.raises(ValueError, match="empty audio"):
        w2v.encode(jnp.zeros((2, 0)))
