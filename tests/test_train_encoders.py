"""launch.train_encoders end to end: the six built-in encoders train on a tiny corpus, save, and load
back (builtin_encoders.load) to modules with identical outputs; one-line errors for bad inputs; and
(slow) on the demo corpus they beat chance by a wide margin on held-out identities."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import starcaster_jax  # noqa: F401  (disables eager sharding)
from data_pipelines.synthetic import build
from launch import train_encoders
from starcaster_jax.evaluation import metrics as M
from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.audio.builtin import BuiltinAudioEncoder
from starcaster_jax.models.identity.builtin import BuiltinIdentityEncoder
from starcaster_jax.models.lipreading import LipReader, lip_features
from starcaster_jax.models.pose_regressor import PoseRegressor
from starcaster_jax.models.vae import AutoencoderKL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "configs", "stage2_audio.py") + ":tiny"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus_tiny")
    assert build.main(["--out", str(d), "--preset", "tiny", "--workers", "1"]) == 0
    return str(d)


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    wd = tmp_path_factory.mktemp("encoders_wd")
    results = train_encoders.run(["--data", tiny_corpus, "--workdir", str(wd),
                                  f"--config={TINY_CONFIG}", "--steps", "2", "--noprogress"])
    return str(wd / "encoders"), results


def _inputs(res=32):
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.uniform(-1, 1, (2, 3, res, res, 3)), jnp.float32)
    boxes = jnp.tile(jnp.array([0.6, 0.35, 0.8, 0.65], jnp.float32), (2, 3, 1))
    audio = jnp.asarray(0.1 * rng.normal(size=(2, 3 * 640)), jnp.float32)
    return frames, boxes, audio


@nnx.jit
def _outputs_vae(m, frames):
    z = m.encode_video(frames)
    return z, m.decode_video(z)


_outputs = {
    AutoencoderKL: lambda m, fr, bx, au: _outputs_vae(m, fr),
    BuiltinAudioEncoder: lambda m, fr, bx, au: (nnx.jit(lambda m, a: m.encode(a))(m, au),),
    BuiltinIdentityEncoder: lambda m, fr, bx, au: (nnx.jit(be.identity_embedding)(m, fr[:, 0]),),
    LipReader: lambda m, fr, bx, au: (nnx.jit(lip_features)(m, fr, bx),),
    PoseRegressor: lambda m, fr, bx, au: (nnx.jit(lambda m, x: m(x))(m, fr[:, 0]),),
}


def test_six_encoders_saved_and_reloaded_identically(trained):
    enc_dir, results = trained
    assert list(results) == list(be.ENCODER_NAMES)
    assert set(os.listdir(enc_dir)) == set(be.ENCODER_NAMES) | {"summary.json"}
    frames, boxes, audio = _inputs()
    for name in be.ENCODER_NAMES:
        r = results[name]
        loaded = be.load(enc_dir, name)
        assert type(loaded) is type(r.model), name
        assert loaded.config == r.model.config, name
        # parameters bit-identical, and so are the outputs
        for (p, a), (q, b) in zip(nnx.to_flat_state(nnx.state(r.model, nnx.Param)),
                                  nnx.to_flat_state(nnx.state(loaded, nnx.Param))):
            assert p == q and np.array_equal(np.asarray(a.get_value()), np.asarray(b.get_value())), (name, p)
        outs_a = _outputs[type(loaded)](r.model, frames, boxes, audio)
        outs_b = _outputs[type(loaded)](loaded, frames, boxes, audio)
        for x, y in zip(outs_a, outs_b):
            assert np.isfinite(np.asarray(x)).all()
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        meta = json.load(open(os.path.join(enc_dir, name, "config.json")))
        assert meta["kind"] == be.kind_of(loaded) and meta["config"]["schedule"]["steps"] == 2
        assert be.read_metrics(enc_dir, name)["steps"] == 2
    # the VAE carries the scaling factor estimated at training, and the video helpers use it
    vae = be.load(enc_dir, "vae")
    s = results["vae"].metrics["scaling_factor"]
    assert vae.config.scaling_factor == pytest.approx(s) and s != 1.0 and np.isfinite(s)
    z_unscaled = nnx.jit(lambda m, x: m.encode(x).mode())(vae, frames[:, 0])
    # encode_video is a different XLA program (5-D reshapes, fused scale): f32 round-off of
    # O(1) latents is ~1e-6 absolute, so the tolerance sits above it
    np.testing.assert_allclose(_outputs_vae(vae, frames)[0][:, 0], z_unscaled * s, rtol=1e-5, atol=1e-5)
    # identity embeddings are unit vectors of size 512; the two identity encoders differ
    e = nnx.jit(be.identity_embedding)(results["identity_cond"].model, frames[:, 0])
    assert e.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(e), axis=-1), 1.0, rtol=1e-5)
    assert results["identity_cond"].model.config != results["identity_eval"].model.config
    assert results["lip_loss"].model.config != results["lip_eval"].model.config
    # metric keys the README/table rely on, with chance levels
    m = results["lip_eval"].metrics
    assert 0 <= m["viseme_accuracy"] <= 1 and 0 < m["chance"] < 1
    assert {"tar@far=0.01", "rank1", "chance_rank1"} <= set(results["identity_eval"].metrics)
    assert np.isfinite(results["vae"].metrics["psnr_db"])
    assert 0 < results["vae"].metrics["mouth_psnr_db"] < M.PSNR_CAP
    summary = json.load(open(os.path.join(enc_dir, "summary.json")))
    assert set(be.ENCODER_NAMES) <= set(summary) and summary["total_seconds"] > 0


def test_identity_embedding_inside_jit_and_grad(trained):
    """The training step computes the conditioning embedding of a reference frame inside jit;
    gradients may flow to the frames (e.g. an identity loss on generated frames)."""
    enc_dir, results = trained
    enc = results["identity_cond"].model
    frames = _inputs()[0][:, 0]

    @nnx.jit
    def f(m, x):
        e = be.identity_embedding(m, x)
        return e, jax.grad(lambda x_: be.identity_embedding(m, x_)[0, 0])(x)

    e, g = f(enc, frames)
    assert e.shape == (2, 512) and float(jnp.abs(g).max()) > 0
    with pytest.raises(TypeError, match="BuiltinIdentityEncoder"):
        be.identity_embedding(results["lip_eval"].model, frames)


def test_load_errors_are_one_line(trained, tmp_path):
    enc_dir, results = trained
    with pytest.raises(FileNotFoundError, match="no built-in encoder 'vae'") as e:
        be.load(str(tmp_path), "vae")
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    # a lip reader's checkpoint under a config that describes another lip reader
    bad = tmp_path / "bad"
    shutil.copytree(os.path.join(enc_dir, "lip_loss"), bad / "lip_loss")
    cfg = json.load(open(bad / "lip_loss" / "config.json"))
    cfg["module"]["feature_dim"] = 48
    json.dump(cfg, open(bad / "lip_loss" / "config.json", "w"))
    with pytest.raises(ValueError, match="has shape") as e:
        be.load(str(bad), "lip_loss")
    assert "lip_loss/params" in str(e.value) and "\n" not in str(e.value)
    cfg["module"]["temporal_layers"] = 3
    cfg["module"]["feature_dim"] = 64
    json.dump(cfg, open(bad / "lip_loss" / "config.json", "w"))
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        be.load(str(bad), "lip_loss")
    cfg["module"]["bogus"] = 1
    json.dump(cfg, open(bad / "lip_loss" / "config.json", "w"))
    with pytest.raises(ValueError, match="unknown config field"):
        be.load(str(bad), "lip_loss")
    cfg["kind"] = "vae"
    json.dump(cfg, open(bad / "lip_loss" / "config.json", "w"))
    with pytest.raises(ValueError, match="must be a lip_reader"):
        be.load(str(bad), "lip_loss")
    (bad / "lip_loss" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        be.load(str(bad), "lip_loss")
    shutil.rmtree(bad / "lip_loss" / "params")
    (bad / "lip_loss" / "config.json").write_text(json.dumps(dict(cfg, kind="lip_reader", module={
        k: v for k, v in cfg["module"].items() if k != "bogus"})))
    with pytest.raises(FileNotFoundError, match="params: missing"):
        be.load(str(bad), "lip_loss")
    # saving a module under the wrong name
    with pytest.raises(ValueError, match="must be a vae"):
        be.save(str(tmp_path), "vae", results["lip_eval"].model, {}, {})


def test_cli_errors(tiny_corpus, tmp_path, capsys):
    assert train_encoders.main(["--data", str(tmp_path / "none"), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and err.count("\n") == 1
    assert train_encoders.main(["--data", tiny_corpus, "--workdir", str(tmp_path),
                                "--encoders", "vae,nose"]) == 2
    assert "unknown ['nose']" in capsys.readouterr().err
    assert train_encoders.main(["--data", tiny_corpus, "--workdir", str(tmp_path),
                                "--schedule", "vae.speed=3"]) == 2
    assert "--schedule" in capsys.readouterr().err
    assert train_encoders.main(["--workdir", str(tmp_path)]) == 2


# ----------------------------------------------------------------------------- accuracy (slow)

@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus_demo")
    assert build.main(["--out", str(d), "--preset", "demo", "--workers", "2"]) == 0
    return str(d)


@pytest.mark.slow
def test_builtin_encoders_beat_chance_on_heldout_identities(demo_corpus, tmp_path):
    """The demo schedule on the demo corpus (24 train / 6 held-out identities). Bounds: the
    measured values (README) minus a margin for seeds/platforms."""
    res = train_encoders.run(["--data", demo_corpus, "--workdir", str(tmp_path), "--noprogress",
                              "--encoders", "audio,identity_cond,identity_eval,lip_loss,lip_eval"])
    for name in ("identity_cond", "identity_eval"):
        m = res[name].metrics
        print(f"{name}: TAR@FAR=1e-2 {m['tar@far=0.01']:.3f} (chance 0.01), rank-1 {m['rank1']:.3f} "
              f"(chance {m['chance_rank1']:.3f})")
        assert m["test_identities"] == 6
        assert m["rank1"] > 3 * m["chance_rank1"] and m["rank1"] > IDENTITY_RANK1_MIN
        assert m["tar@far=0.01"] > IDENTITY_TAR_MIN
    for name in ("lip_loss", "lip_eval", "audio"):
        m = res[name].metrics
        print(f"{name}: viseme accuracy {m['viseme_accuracy']:.3f} (chance {m['chance']:.3f})")
        assert m["viseme_accuracy"] > m["chance"] + VISEME_MARGIN[name]


IDENTITY_RANK1_MIN, IDENTITY_TAR_MIN = 0.5, 0.2
VISEME_MARGIN = {"lip_loss": 0.1, "lip_eval": 0.1, "audio": 0.2}
