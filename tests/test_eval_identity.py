"""Calibrated identity verification with a trained ``identity_eval``: at the threshold set from
impostor pairs of some held-out identities, uniform noise and a held-out identity that took no
part in the calibration are almost never "the same person", while the true frames of the
reference's clip almost always are."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from configs import stage2_audio
from data_pipelines.synthetic import tfds_builder
from starcaster_jax.evaluation import metrics as M
from starcaster_jax.evaluation import synthetic as S
from starcaster_jax.training import encoders as te


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_id")
    # 12 training identities, 6 held out (5 calibrate, 1 is the stranger). With 6 / 4 the
    # 100-step evaluator did not generalise: across schedule seeds the true-frame rate ranged
    # 0.43-1.0 and the stranger rate up to 0.19, so the outcome hung on XLA:CPU rounding
    # (it flipped between two machines). At 12 / 6 seeds 0-5 gave true >= 0.93, noise <= 0.013,
    # stranger <= 0.055.
    cfg = tfds_builder.make_config("tiny", n_train_ids=12, n_test_ids=6, clips_per_id=2)
    tfds_builder.build(str(root / "corpus"), cfg, workers=1)
    sched = {"identity_eval": dataclasses.replace(te.schedules()["identity_eval"], steps=100)}
    res = te.train(stage2_audio.get_config("tiny"), str(root / "corpus"), str(root / "wd"),
                   names=["identity_eval"], scheds=sched, progress=False)
    recs = S.held_out_records(str(root / "corpus"), "video", 100)
    return res["identity_eval"].model, recs


def test_noise_and_strangers_score_near_zero_true_frames_high(trained):
    ident, recs = trained
    ev = S.Evaluators(lip=None, identity=ident)
    labels = sorted({int(r["id_label"]) for r in recs})
    stranger = labels[-1]
    calib = [r for r in recs if int(r["id_label"]) != stranger]   # the stranger is not in the calibration
    ev.calibrate(calib, far=0.01)
    assert ev.calibration["identities"] == len(labels) - 1
    rng = np.random.default_rng(0)
    ver_true, ver_noise, ver_stranger = [], [], []
    for r in calib:
        f = np.asarray(r["frames"])
        ver_true.append(ev.identity_scores(f[1:], f[0])["id_ver"])
        noise = rng.integers(0, 256, f.shape, dtype=np.uint8)
        ver_noise.append(ev.identity_scores(noise, f[0])["id_ver"])
        for s in (x for x in recs if int(x["id_label"]) == stranger):
            ver_stranger.append(ev.identity_scores(np.asarray(s["frames"]), f[0])["id_ver"])
    print(f"identity verification @FAR=1%: true frames {np.mean(ver_true):.3f}, "
          f"noise {np.mean(ver_noise):.3f}, stranger {np.mean(ver_stranger):.3f} -> threshold {ev.threshold:.3f}")
    assert np.mean(ver_noise) <= 0.05
    assert np.mean(ver_stranger) <= 0.1
    assert np.mean(ver_true) >= 0.8


def test_far_threshold_accepts_at_most_far_of_the_impostors():
    imp = np.random.default_rng(1).normal(size=1000)
    t = M.far_threshold(imp, 0.01)
    assert np.mean(imp > t) <= 0.01 and np.mean(imp > np.nextafter(t, -np.inf)) > 0.01 - 1e-9
    with pytest.raises(ValueError, match="cannot resolve FAR"):
        M.far_threshold(imp[:50], 0.01)
