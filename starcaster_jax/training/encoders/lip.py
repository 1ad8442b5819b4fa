"""``lip_loss`` and ``lip_eval``: per-frame viseme readers of grey mouth crops (the first is
frozen inside the lip-reading loss, the second only evaluates), trained on windows of the
training clips; scored by per-frame viseme accuracy on the test clips."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.lipreading import crop_mouths, viseme_loss
from starcaster_jax.training.encoders.common import Compiler, Job, Schedule, spec, viseme_scores
from starcaster_jax.training.encoders.corpus import Clip, Corpus, long_enough, pad_batch, pad_take


class MouthCrops:
    """Grey mouth crops ``[F, S, S, 1]`` of every clip, made once per (crop size, margin) with
    the ``crop_mouths`` the lip loss uses (compiled on the pool; computed on first use)."""
    CHUNK = 256

    def __init__(self, cfg, corpus: Corpus, compiler: Compiler):
        self.corpus, r, C = corpus, corpus.resolution, self.CHUNK
        fn = jax.jit(lambda f, b: crop_mouths(f, b, cfg.crop_size, cfg.margin))
        self.fn = compiler.submit(fn, spec(C, 1, r, r, 3, dtype=jnp.uint8), spec(C, 1, 4))
        self._done = None

    def get(self):
        """-> (train crops, test crops): a list per split, one ``[F, S, S, 1]`` array a clip."""
        if self._done is None:
            self._done = (self._crop(self.corpus.train), self._crop(self.corpus.test))
        return self._done

    def _crop(self, clips: list[Clip]):
        fn, C = self.fn.result(), self.CHUNK
        frames = np.concatenate([c.frames for c in clips])                     # uint8 [N, H, W, 3]
        boxes = np.concatenate([c.mouth_box for c in clips])                   # [N, 4]
        out = []
        for i in range(0, len(frames), C):
            f, b = frames[i:i + C], boxes[i:i + C]
            n = len(f)
            b = np.concatenate([b, np.tile(np.array([[0, 0, 1, 1]], np.float32), (C - n, 1))])
            out.append(np.asarray(fn(jnp.asarray(pad_batch(f, C))[:, None], jnp.asarray(b)[:, None]))[:n, 0])
        return np.split(np.concatenate(out), np.cumsum([len(c.frames) for c in clips])[:-1])


def _loss(m, x, y):
    v = viseme_loss(m, x, y)
    return v, {"loss": v}


def _correct(m, x, y):
    pred = jnp.argmax(m.logits(m(x)), -1)                                      # [E, T]
    valid = y >= 0
    return jnp.sum((pred == y) & valid), jnp.sum(valid)


class LipJob(Job):
    EVAL_BATCH, EVAL_WINDOW = 8, 32

    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler, crops: MouthCrops):
        super().__init__(cfg, sched, corpus)
        self.crops = crops
        model = be.init_params(be.abstract_module("lip_reader", cfg), sched.seed)
        S, T, B, E, TE = cfg.crop_size, sched.window, sched.batch, self.EVAL_BATCH, self.EVAL_WINDOW
        self.compile(compiler, model, _loss, (spec(B, T, S, S, 1), spec(B, T, dtype=jnp.int32)),
                     _correct, (spec(E, TE, S, S, 1), spec(E, TE, dtype=jnp.int32)))

    def prepare(self):
        self.train_crops, self.test_crops = self.crops.get()
        self.ok = long_enough(self.corpus.train, self.sched.window, "lip readers")

    def batch(self, rng, i):
        T, S, B, train = self.sched.window, self.cfg.crop_size, self.sched.batch, self.corpus.train
        x = np.empty((B, T, S, S, 1), np.float32)
        y = np.empty((B, T), np.int32)
        for b in range(B):
            j = self.ok[rng.integers(len(self.ok))]
            s = int(rng.integers(0, len(train[j].viseme) - T + 1))
            x[b] = self.train_crops[j][s:s + T]
            y[b] = train[j].viseme[s:s + T]
            if rng.random() < 0.5:                                              # mirror the mouth
                x[b] = x[b, :, :, ::-1]
        return x, y

    def evaluate(self, model, ev, rng):
        TE, crops = self.EVAL_WINDOW, self.test_crops
        return model, viseme_scores(ev, self.corpus.test, TE, self.EVAL_BATCH,
                                    lambda c, s: pad_take(crops[c], s, TE, 0.0), self.cfg.num_visemes)
