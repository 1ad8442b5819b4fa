"""Evaluation during training (issue 11, fix 12): every ``eval.every_steps`` steps the loop
writes a held-out evaluation (scalars beside their baselines) and a strip of true / generated
frames to TensorBoard, without changing what training does.

A ``micro`` stage-1 run of 4 steps on the tiny built-in corpus, with random built-in encoders
(``eval_fixtures.write_encoders``) and one sampling step.
"""
from __future__ import annotations

import io
import logging

import eval_fixtures as F
import jax
import numpy as np
import pytest
from PIL import Image

from configs import stage1_motion
from starcaster_jax.training import periodic_eval
from starcaster_jax.training.checkpoint import restore_params
from starcaster_jax.training.loop import train
from starcaster_jax.training.metrics import read_events


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_eval")
    corpus = F.build_corpus(str(root / "corpus"))
    enc = F.write_encoders(F.micro_config(corpus, str(root / "enc")), str(root / "enc"))
    return {"root": root, "corpus": corpus, "enc": enc}


def _config(corpus, enc, every):
    c = stage1_motion.get_config("micro")
    c.data.root = corpus
    c.model.encoders_dir = enc
    c.log.update(progress=False, every_steps=1)
    c.schedule.update(total_steps=4, warmup_steps=2)
    c.ckpt.update(every_steps=2, async_save=False)
    c.optim.lr = 1e-3
    c.mesh.update(data=1, fsdp=1, tensor=1)
    c.diffusion.sample_steps = 1
    c.eval.update(every_steps=every, quick_clips=1)
    return c


def test_eval_every_steps_writes_scalars_and_samples_and_leaves_training_unchanged(setup):

    runs = {}
    for every in (0, 2):
        wd = setup["root"] / f"every{every}"
        runs[every] = (wd, train(_config(setup["corpus"], setup["enc"], every), str(wd)))
    (wd_off, s_off), (wd_on, s_on) = runs[0], runs[2]
    assert s_off["step"] == s_on["step"] == 4
    print(f"micro 4 steps, eval every 2 -> {s_on['eval_s']:.1f} s in 2 evals (wall {s_on['wall_s']:.1f} s, "
          f"without eval {s_off['wall_s']:.1f} s)")
    assert s_off["eval_history"] == [] and [h["step"] for h in s_on["eval_history"]] == [2, 4]
    # the event files: scalars at steps 2 and 4, model and baselines, and the sample strip
    ev = read_events(str(wd_on / "tensorboard"))
    scalars = {(e["tag"], e["step"]): e["value"] for e in ev if "value" in e}
    for tag in ("eval/animate/psnr", "eval/animate/id_ver", "eval/animate/psnr_copy_reference",
                "eval/animate/lip_acc_majority"):
        assert {(tag, 2), (tag, 4)} <= set(scalars), tag
        assert np.isfinite(scalars[(tag, 2)])
    assert scalars[("eval/animate/psnr", 4)] == pytest.approx(s_on["eval_history"][1]["eval/animate/psnr"])
    images = [e for e in ev if "image" in e and e["tag"] == "eval/samples"]
    assert sorted(e["step"] for e in images) == [2, 4]
    img = np.asarray(Image.open(io.BytesIO(images[0]["image"])))
    r = 16                                                    # micro resolution
    assert img.shape[0] == 2 * r and img.shape[1] % r == 0 and img.shape[1] >= 2 * r   # truth over generated
    assert not any(e["tag"].startswith("eval/") for e in read_events(str(wd_off / "tensorboard")))
    # the evaluation took nothing from training: same weights, same data position
    for ema in (False, True):
        a, _, _ = restore_params(str(wd_off), use_ema=ema)
        b, _, _ = restore_params(str(wd_on), use_ema=ema)
        assert all(np.array_equal(np.asarray(x), np.asarray(y))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), f"params differ (ema={ema})"

    def grain_state(d):
        return sorted((f.name, f.read_bytes()) for f in (d / "checkpoints" / "4" / "data").glob("*.json"))
    assert grain_state(wd_off) and grain_state(wd_off) == grain_state(wd_on)


def test_missing_evaluators_switch_the_eval_off_with_one_line_unless_required(setup, caplog, tmp_path):
    c = _config(setup["corpus"], str(tmp_path / "no_encoders"), 2)
    pe = periodic_eval.PeriodicEval(c, trainer=None)
    with caplog.at_level(logging.WARNING, logger=periodic_eval.__name__):
        pe._setup()
    assert pe.available is False and not pe.due(2)
    lines = [r.getMessage() for r in caplog.records if r.name == periodic_eval.__name__]
    assert len(lines) == 1 and "\n" not in lines[0] and "evaluators" in lines[0], lines
    c.eval.required = True
    with pytest.raises(periodic_eval.EvalUnavailable, match="eval.required"):
        periodic_eval.PeriodicEval(c, trainer=None)._setup()
    off = _config(setup["corpus"], setup["enc"], 0)
    assert not periodic_eval.PeriodicEval(off, trainer=None).due(2)
