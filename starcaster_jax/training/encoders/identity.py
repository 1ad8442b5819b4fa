"""``identity_cond`` and ``identity_eval``: ArcFace-margin face embeddings (the first conditions
the denoiser, the second only evaluates it), trained as classifiers of the training identities
on their frames and multi-view stills. Scored on the held-out test identities: TAR at FAR=1e-2
over cross-clip pairs, and rank-1 (the nearest frame of another clip shows the same identity)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.identity.builtin import ArcFaceModel, arcface_loss
from starcaster_jax.models.identity.metrics import verification_metrics
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.training.encoders.common import Compiler, Job, Schedule, apply_batched, spec
from starcaster_jax.training.encoders.corpus import Corpus, to_float, train_frames


def identity_test_set(corpus: Corpus, per_clip: int = 8):
    """``per_clip`` evenly spaced frames of every test clip -> (uint8 images, labels, clip ids)."""
    imgs, labels, groups = [], [], []
    for g, c in enumerate(corpus.test):
        idx = np.linspace(0, len(c.frames) - 1, per_clip).astype(int)
        imgs.append(c.frames[idx])
        labels += [c.label] * len(idx)
        groups += [g] * len(idx)
    return np.concatenate(imgs), np.asarray(labels), np.asarray(groups)


class IdentityJob(Job):
    EVAL_BATCH = 64

    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler):
        super().__init__(cfg, sched, corpus)
        self.images = train_frames(corpus, 2)                                   # uint8 [N, H, W, 3]
        self.labels = np.concatenate([np.concatenate([np.full(len(c.frames[::2]), c.label)
                                                      for c in corpus.train]),
                                      corpus.train_view_labels]).astype(np.int32)   # [N]
        n_cls = corpus.num_train_ids
        model = be.init_params(nnx.eval_shape(lambda: ArcFaceModel(cfg, n_cls, rngs=InitRngs(0))),
                               sched.seed)
        r, B = corpus.resolution, sched.batch
        self.compile(compiler, model, arcface_loss, (spec(B, r, r, 3), spec(B, dtype=jnp.int32)),
                     be.identity_embedding, (spec(self.EVAL_BATCH, r, r, 3),),
                     weight_decay=5e-4, clip=5.0)

    def eval_target(self, model):
        return model.encoder              # the ArcFace head is for training only

    def batch(self, rng, i):
        idx = rng.integers(0, len(self.images), self.sched.batch)
        x = self.images[idx]
        flip = rng.random(self.sched.batch) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return to_float(x), self.labels[idx]

    def evaluate(self, enc, ev, rng):
        timgs, tlabels, tgroups = identity_test_set(self.corpus)
        emb = apply_batched(ev, timgs, self.EVAL_BATCH)                         # [N, 512]
        vm = verification_metrics(emb, tlabels, fars=(1e-2, 1e-3), groups=tgroups)
        return enc, {"tar@far=0.01": vm["tar@far=0.01"], "tar@far=0.001": vm["tar@far=0.001"],
                     "rank1": vm["rank1"], "chance_tar@far=0.01": 0.01,
                     "chance_rank1": vm["rank1_chance"], "num_genuine": vm["num_genuine"],
                     "num_impostor": vm["num_impostor"],
                     "test_identities": int(len(set(tlabels.tolist()))),
                     "test_images": int(len(timgs)), "train_identities": int(self.corpus.num_train_ids)}
