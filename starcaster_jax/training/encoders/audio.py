"""``audio``: speech -> viseme-aware features, pretrained as a per-frame viseme classifier on
windows of the training clips' audio; scored by per-frame viseme accuracy on the test clips."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from data_pipelines.schema import SAMPLES_PER_FRAME
from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.audio.builtin import viseme_loss
from starcaster_jax.training.encoders.common import Compiler, Job, Schedule, spec, viseme_scores
from starcaster_jax.training.encoders.corpus import Corpus, long_enough, pad_take


def _correct(m, audio, labels):
    aux = viseme_loss(m, audio, labels)[1]
    return aux["accuracy"] * aux["frames"], aux["frames"]


class AudioJob(Job):
    EVAL_BATCH = 16

    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler):
        super().__init__(cfg, sched, corpus)
        model = be.init_params(be.abstract_module("builtin_audio", cfg), sched.seed)
        T, S, B, E = sched.window, SAMPLES_PER_FRAME, sched.batch, self.EVAL_BATCH
        self.compile(compiler, model, viseme_loss, (spec(B, T * S), spec(B, T, dtype=jnp.int32)),
                     _correct, (spec(E, T * S), spec(E, T, dtype=jnp.int32)))

    def prepare(self):
        self.clips = [self.corpus.train[i] for i in long_enough(self.corpus.train, self.sched.window, "audio")]

    def batch(self, rng, i):
        T, S, B = self.sched.window, SAMPLES_PER_FRAME, self.sched.batch
        audio = np.zeros((B, T * S), np.float32)
        labels = np.zeros((B, T), np.int32)
        for b in range(B):
            c = self.clips[rng.integers(len(self.clips))]
            s = int(rng.integers(0, len(c.viseme) - T + 1))
            audio[b] = c.audio[s * S:(s + T) * S] * rng.uniform(0.5, 1.5)   # level jitter
            labels[b] = c.viseme[s:s + T]
        return audio, labels

    def evaluate(self, model, ev, rng):
        T, S, test = self.sched.window, SAMPLES_PER_FRAME, self.corpus.test
        return model, viseme_scores(ev, test, T, self.EVAL_BATCH,
                                    lambda c, s: pad_take(test[c].audio, s * S, T * S, 0.0),
                                    self.cfg.num_visemes)
