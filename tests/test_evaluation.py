"""Evaluation on the built-in corpus: an oracle that returns the true frames scores the ceiling
(PSNR capped, SSIM 1, lip/identity scores equal to the ground truth's), a blank generator
scores far below it, the real generator runs through the same path, and the CLI rejects misuse.
The evaluator networks are random here: the properties tested do not depend on their training."""
from __future__ import annotations

import numpy as np
import pytest

from starcaster_jax.evaluation import synthetic as S
from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.identity.builtin import BuiltinIdentityConfig
from starcaster_jax.models.lipreading import LipReaderConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from data_pipelines.synthetic import build
    d = tmp_path_factory.mktemp("corpus_eval")
    assert build.main(["--out", str(d), "--preset", "tiny", "--workers", "1"]) == 0
    return str(d)


@pytest.fixture(scope="module")
def evaluators():
    lip = be.init_params(be.abstract_module("lip_reader", LipReaderConfig(crop_size=16, widths=(8, 16), feature_dim=16)), seed=1)
    ident = be.init_params(be.abstract_module("builtin_identity", BuiltinIdentityConfig(
        image_size=32, widths=(8, 16), norm_groups=4)), seed=2)
    return S.Evaluators(lip=lip, identity=ident)


class Oracle:
    """Returns the true frames (or a constant grey) for the record it was given."""

    def __init__(self, record, resolution=32, blank=False):
        self.truth = S._resize(record["frames"], resolution)
        self.resolution, self.blank, self.max_frames = resolution, blank, 16

    def _out(self, frames):
        return np.full_like(frames, 128) if self.blank else frames

    def video(self, audio, *, reference, poses, seed):
        assert np.array_equal(reference, self.truth[0]) and len(poses) == len(self.truth)
        np.testing.assert_allclose(poses[0], [0, 0, 0, 0, 0, 1], atol=1e-6)   # relative to frame 0
        yield self._out(self.truth)

    def multiview(self, poses, *, reference, seed):
        return self._out(self.truth[1:1 + len(poses)])


def test_oracle_scores_the_ceiling_and_blank_scores_below(corpus, evaluators):
    vid = S.held_out_records(corpus, "video", 1)[0]
    mv = S.held_out_records(corpus, "multiview", 1)[0]
    good = S.evaluate_video(Oracle(vid), vid, evaluators)
    assert good["psnr"] == 100.0 and good["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert good["lip_acc"] == good["lip_acc_gt"] and good["id_cos"] == pytest.approx(good["id_cos_gt"], abs=1e-6)
    assert 0 < good["lip_majority"] <= 1
    bad = S.evaluate_video(Oracle(vid, blank=True), vid, evaluators)
    assert bad["psnr"] < 25 and bad["ssim"] < 0.9 and bad["id_cos"] < good["id_cos"]
    g = S.evaluate_multiview(Oracle(mv), mv, evaluators)
    b = S.evaluate_multiview(Oracle(mv, blank=True), mv, evaluators)
    assert g["psnr"] == 100.0 and b["psnr"] < 25 and b["ssim"] < g["ssim"]


def test_held_out_records_are_test_identities(corpus):
    from data_pipelines.sources import default_spec, make_source
    train = make_source(default_spec("video", corpus, "train"), "video", split="train", root=corpus)
    train_ids = {int(train[i]["id_label"]) for i in range(len(train))}
    recs = S.held_out_records(corpus, "video", 10)
    assert recs and not {int(r["id_label"]) for r in recs} & train_ids


def test_real_generator_through_the_evaluation(corpus, evaluators):
    from configs import stage2_audio
    from starcaster_jax.inference import generate as G
    cfg = stage2_audio.get_config("tiny")
    cfg.diffusion.sample_steps = 1
    p = G.random_parts(cfg, seed=0)
    gen = G.Generator(p.model, p.vae, p.audio_encoder, cfg, identity_fn=p.identity_fn)
    res = S.evaluate(gen, S.held_out_records(corpus, "video", 1), S.held_out_records(corpus, "multiview", 1),
                     evaluators)
    assert res["num_video"] == 1 and res["num_multiview"] == 1
    assert set(res["video"]) == set(S.VIDEO_METRICS) and set(res["multiview"]) == set(S.MULTIVIEW_METRICS)
    assert all(np.isfinite(v) for v in list(res["video"].values()) + list(res["multiview"].values()))
    assert res["video"]["psnr"] < 100 and "video" in S.format_table(res)


def test_cli_misuse_exits_2(tmp_path, capsys):
    from launch import evaluate as cli
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    assert cli.main(["--checkpoint", str(tmp_path), "--num_clips", "0", "--num_multiview", "0"]) == 2
    assert cli.main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such training workdir" in capsys.readouterr().err
