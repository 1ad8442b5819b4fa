"""Evaluation on the built-in corpus: ground truth scores the ceiling, copy-reference exactly the
static answer, the untrained baseline is the config's step-0 model, and ``launch.evaluate``
prints every mode with every baseline (and compares checkpoints). The evaluator networks are
random here except in the calibration test: these properties do not depend on their training."""
from __future__ import annotations

import json
import os

import eval_fixtures as F
import numpy as np
import pytest

from launch import evaluate as cli
from starcaster_jax.evaluation import baselines, report
from starcaster_jax.evaluation import metrics as M
from starcaster_jax.evaluation import modes as modes_lib
from starcaster_jax.evaluation import synthetic as S
from starcaster_jax.inference.generate import Generator
from starcaster_jax.media.video import load_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return F.make_all(str(tmp_path_factory.mktemp("eval")))


@pytest.fixture(scope="module")
def evaluators(setup):
    ev = S.Evaluators.load(setup["encoders"])
    ev.calibrate(S.calibration_records(setup["corpus"], setup["config"].eval), resolution=16)
    return ev


@pytest.fixture(scope="module")
def inputs(setup):
    return S.load_inputs(setup["corpus"], setup["config"].eval)


class Oracle:
    """Returns the true frames of the record it is asked about (or a constant grey)."""
    resolution, max_frames, config = 16, 16, None

    def __init__(self, truth, blank=False):
        self.truth, self.blank = truth, blank

    def _out(self, f):
        return np.full_like(f, 128) if self.blank else f

    def video(self, audio, *, reference=None, id_emb=None, poses=None, seed=0):
        yield self._out(self.truth)

    def multiview(self, poses, *, reference, seed):
        return self._out(self.truth[1:1 + len(poses)])

    def identity_from_image(self, image):
        return np.ones(512, np.float32) / np.sqrt(512)


def _truth(record):
    return S.resize_frames(record["frames"], 16)


def test_oracle_scores_ground_truth_and_blank_scores_below(inputs, evaluators):
    cases = [("animate", inputs.video[0], _truth(inputs.video[0])),
             ("novel_view", inputs.novel_view[0], _truth(inputs.novel_view[0][1])),
             ("multiview", inputs.multiview[0], _truth(inputs.multiview[0])),
             ("long_horizon", inputs.long[0], _truth(inputs.long[0]))]
    for mode, item, truth in cases:
        good = modes_lib.MODE_FNS[mode]({"model": Oracle(truth)}, item, evaluators).systems
        assert good["model"] == good["ground_truth"], mode
        psnr = [v for k, v in good["ground_truth"].items() if k.startswith("psnr")]
        assert psnr and all(p == M.PSNR_CAP for p in psnr), mode
        bad = modes_lib.MODE_FNS[mode]({"model": Oracle(truth, blank=True)}, item, evaluators).systems
        for k, v in bad["model"].items():
            if k.startswith(("psnr", "ssim")):
                assert v < good["ground_truth"][k] - (5 if k.startswith("psnr") else 0.1), (mode, k, v)


def test_copy_reference_scores_exactly_the_static_answer(inputs, evaluators):
    rec = inputs.video[0]
    truth = _truth(rec)
    static = np.repeat(truth[:1], len(truth), 0)
    orc = {"model": Oracle(truth, blank=True)}
    sc = modes_lib.animate(orc, rec, evaluators).systems["copy_reference"]
    want = M.image_metrics(static, truth)
    assert sc["psnr"] == want["psnr"] and sc["ssim"] == want["ssim"] and want["psnr"] < M.PSNR_CAP
    assert sc["id_cos"] == pytest.approx(1.0, abs=1e-5) and sc["id_ver"] == 1.0   # the reference itself
    mo = modes_lib.motion(orc, rec, evaluators)
    assert mo.systems["copy_reference"]["pose_std"] == pytest.approx(0.0, abs=1e-6)
    assert mo.systems["ground_truth"]["pose_std"] > 0.01
    assert modes_lib.animate(orc, rec, evaluators).systems["majority"]["lip_acc"] == M.majority_fraction(rec["viseme"])


def test_untrained_baseline_is_the_step0_model(setup, inputs, evaluators, tmp_path):
    init_wd = F.write_checkpoint(setup["config"], str(tmp_path / "init"), noise=0.0)
    gen0 = Generator.from_checkpoint(init_wd, need_identity=True)
    gen1 = Generator.from_checkpoint(setup["workdir"], need_identity=True)
    u = baselines.untrained_generator(gen1)
    rec = inputs.video[0]
    same = modes_lib.animate({"model": gen0, "untrained": u}, rec, evaluators)
    assert np.array_equal(same.frames["model"], same.frames["untrained"])
    assert same.systems["model"] == same.systems["untrained"]
    other = modes_lib.animate({"model": gen1, "untrained": u}, rec, evaluators)
    assert not np.array_equal(other.frames["model"], other.frames["untrained"])


def test_quick_eval_reports_the_model_beside_its_baselines(setup, inputs, evaluators):
    gen = Generator.from_checkpoint(setup["workdir"], need_identity=True)
    out = S.quick_eval(gen, inputs.video[:1], evaluators)
    s = out["scalars"]
    full = modes_lib.animate({"model": gen}, inputs.video[0], evaluators).systems
    for k in modes_lib.VIDEO_METRICS:
        assert s[f"animate/{k}"] == full["model"][k] and s[f"animate/{k}_copy_reference"] == full["copy_reference"][k]
    assert s["animate/lip_acc_majority"] == full["majority"]["lip_acc"]
    n = min(8, len(inputs.video[0]["frames"]))
    assert out["strip"].shape == (2 * 16, n * 16, 3) and out["strip"].dtype == np.uint8
    np.testing.assert_array_equal(out["strip"][:16, :16], _truth(inputs.video[0])[0])


def test_cli_prints_every_mode_with_every_baseline(setup, capsys, tmp_path):
    strip = str(tmp_path / "strip.png")
    assert cli.main(["--checkpoint", setup["workdir"], "--strip", strip]) == 0
    out = capsys.readouterr().out
    for mode in modes_lib.MODES:
        assert report.MODE_TITLES[mode] in out, mode
    assert "skipped" not in out
    header = "| metric | ground truth | copy-reference | untrained | majority | model |"
    assert out.count(header) == len(modes_lib.MODES)
    res = json.load(open(os.path.join(setup["workdir"], "eval", "metrics.json")))
    assert list(res["modes"]) == list(modes_lib.MODES)
    for mode, sec in res["modes"].items():
        assert {"ground_truth", "copy_reference", "untrained", "model"} <= set(sec["systems"]), mode
        for s in ("ground_truth", "copy_reference", "untrained", "model"):
            assert set(sec["systems"][s]) == set(sec["metrics"]), (mode, s)
    assert "lip_acc" in res["modes"]["animate"]["systems"]["majority"]
    long = res["modes"]["long_horizon"]["metrics"]
    assert [m for m in long if m.startswith("psnr@")] == ["psnr@0-1s", "psnr@1-2s"]      # 2 s, 1 s segments
    img = load_image(strip)
    assert img.shape[0] == 2 * 16 * len(modes_lib.MODES)


def test_compare_tabulates_checkpoints_and_rejects_other_clips(setup, capsys, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    F.write_checkpoint(setup["config"], a, noise=0.05)
    F.write_checkpoint(setup["config"], b, noise=0.0)        # b IS the untrained model
    flags = ["--modes", "animate,multiview"]
    assert cli.main(["--compare", a, b] + flags) == 0
    out = capsys.readouterr().out
    rows = [ln.split(" | ") for ln in out.splitlines() if ln.startswith("| animate") or ln.startswith("| multiview")]
    assert len(rows) == len(modes_lib.VIDEO_METRICS) + len(modes_lib.MULTIVIEW_METRICS)
    # columns: mode, metric, ground truth, copy-reference, majority, untrained (a), a, b
    assert all(r[5] == r[7].rstrip(" |") for r in rows)        # b's model column == the untrained
    assert any(r[6] != r[5] for r in rows)
    path = os.path.join(b, "eval", "metrics.json")          # stored: compare reads it back
    res = json.load(open(path))
    res["modes"]["animate"]["systems"]["copy_reference"]["psnr"] += 1.0   # as if other clips
    json.dump(res, open(path, "w"))
    capsys.readouterr()
    assert cli.main(["--compare", a, b] + flags) == 2
    assert "differs" in capsys.readouterr().err


def test_cli_misuse_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    assert cli.main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such training workdir" in capsys.readouterr().err
    assert cli.main(["--compare", str(tmp_path / "nope")]) == 2
    assert cli.main(["--compare", str(tmp_path), "--out", "x.json"]) == 2
    assert capsys.readouterr().err.count("error:") == 2


def test_mouth_psnr_sees_only_the_mouth_box():
    """A change outside the box leaves the mouth PSNR at the cap while the whole-frame PSNR
    falls; the same change inside the box gives the PSNR of that box by hand."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    boxes = np.tile(np.array([[0.5, 0.25, 0.75, 0.75]], np.float32), (3, 1))   # rows 16:24, cols 8:24
    outside = truth.copy()
    outside[:, :8] = 255 - outside[:, :8]
    assert M.mouth_psnr(outside, truth, boxes) == M.PSNR_CAP
    assert M.image_metrics(outside, truth)["psnr"] < 20
    inside = truth.copy()
    inside[:, 16:24, 8:24] = np.clip(inside[:, 16:24, 8:24].astype(int) + 10, 0, 255).astype(np.uint8)
    d = (inside[:, 16:24, 8:24].astype(np.float64) - truth[:, 16:24, 8:24]) / 255.0
    want = np.mean([10 * np.log10(1.0 / np.mean(x ** 2)) for x in d])
    assert abs(M.mouth_psnr(inside, truth, boxes) - want) < 1e-9
    with pytest.raises(ValueError, match="mouth_psnr: 3 generated vs 3 true frames vs 2 boxes"):
        M.mouth_psnr(inside, truth, boxes[:2])
