"""``pose_eval``: (yaw, pitch, roll) regression from whole frames; it only evaluates motion
diversity. Scored by the mean absolute error in degrees on test frames, against always
answering the training frames' mean pose."""
from __future__ import annotations

import numpy as np

from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.pose_regressor import pose_loss
from starcaster_jax.training.encoders.common import Compiler, Job, Schedule, apply_batched, spec
from starcaster_jax.training.encoders.corpus import Corpus, to_float, train_frames


class PoseJob(Job):
    EVAL_BATCH = 64

    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler):
        super().__init__(cfg, sched, corpus)
        # talking clips (head turns on the neck) + multi-view stills (camera orbits: wider yaw)
        self.images = train_frames(corpus, 2)                                   # uint8 [N, H, W, 3]
        self.ypr = np.concatenate([c.pose[::2, :3] for c in corpus.train]
                                  + [corpus.train_view_poses[:, :3]]).astype(np.float32)   # [N, 3]
        model = be.init_params(be.abstract_module("pose_regressor", cfg), sched.seed)
        r, B = corpus.resolution, sched.batch
        self.compile(compiler, model, pose_loss, (spec(B, r, r, 3), spec(B, 3)),
                     lambda m, x: m(x), (spec(self.EVAL_BATCH, r, r, 3),))

    def batch(self, rng, i):
        idx = rng.integers(0, len(self.images), self.sched.batch)
        return to_float(self.images[idx]), self.ypr[idx]

    def evaluate(self, model, ev, rng):
        imgs = np.concatenate([c.frames for c in self.corpus.test])
        true = np.concatenate([c.pose[:, :3] for c in self.corpus.test])        # [N, 3] radians
        pred = apply_batched(ev, imgs, self.EVAL_BATCH)
        deg = 180.0 / np.pi
        return model, {"mae_deg": float(np.mean(np.abs(pred - true)) * deg),
                       "chance_mae_deg": float(np.mean(np.abs(self.ypr.mean(0) - true)) * deg),
                       "true_std_deg": float(np.mean(true.std(0)) * deg), "test_frames": int(len(imgs))}
