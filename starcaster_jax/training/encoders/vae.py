"""``vae``: frames <-> latents, trained on random crops of training frames and multi-view stills;
scored by the PSNR of posterior-mode reconstructions of test frames, whole and inside the
mouth box (the lips are a few percent of a frame: a whole-frame PSNR hides them). Its latent scaling factor
is estimated after training (how SD's 0.18215 was found) and saved in its config."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from starcaster_jax.evaluation.metrics import mouth_psnr
from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.vae_training import vae_loss
from starcaster_jax.training.encoders.common import Compiler, Job, Schedule, spec
from starcaster_jax.training.encoders.corpus import Corpus, pad_batch, to_float, train_frames


def _encode_decode(m, x):
    """Reconstruction (posterior mode) and the posterior means' per-image moments."""
    post = m.encode(x)
    return m.decode(post.mode()), jnp.mean(post.mean, axis=(1, 2, 3)), jnp.mean(post.mean ** 2, axis=(1, 2, 3))


class VAEJob(Job):
    EVAL_BATCH = 32

    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler):
        super().__init__(cfg, sched, corpus)
        self.images = train_frames(corpus, 3)                                   # uint8 [N, H, W, 3]
        model = be.init_params(be.abstract_module("vae", cfg), sched.seed)
        crop = min(sched.window or corpus.resolution, corpus.resolution)
        self.crop = crop - crop % cfg.downsample_factor
        key = jax.eval_shape(lambda: jax.random.key(0))
        r, c = corpus.resolution, self.crop
        # L2 reconstruction (+ LDM's 1e-6 KL): faster to leave the flat-colour plateau than L1
        self.compile(compiler, model, lambda m, x, k: vae_loss(m, x, k, recon="l2"),
                     (spec(sched.batch, c, c, 3), key), _encode_decode,
                     (spec(self.EVAL_BATCH, r, r, 3),), weight_decay=0.0, clip=10.0)

    def prepare(self):
        self.key = jax.random.key(self.sched.seed)

    def batch(self, rng, i):
        idx = rng.integers(0, len(self.images), self.sched.batch)
        y0, x0 = rng.integers(0, self.corpus.resolution - self.crop + 1, 2)
        x = to_float(self.images[idx, y0:y0 + self.crop, x0:x0 + self.crop])   # [B, c, c, 3]
        return x, jax.random.fold_in(self.key, i)

    def _moments(self, ev, images, boxes=None):
        """-> (reconstruction MSE per pixel value, mean and mean square of the posterior means,
        mouth-box PSNR in dB of the uint8 reconstructions, or None without ``boxes``)."""
        B = self.EVAL_BATCH
        se, s1, s2, n, recs = 0.0, 0.0, 0.0, 0, []
        for i in range(0, len(images), B):
            x = to_float(images[i:i + B])
            rec, m1, m2 = (np.asarray(a) for a in ev(jnp.asarray(pad_batch(x, B))))
            k = len(x)
            se += float(((rec[:k] - x) ** 2).sum())
            s1 += float(m1[:k].sum())
            s2 += float(m2[:k].sum())
            n += k
            if boxes is not None:
                recs.append(np.round((np.clip(rec[:k], -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8))
        mouth = None if boxes is None else mouth_psnr(np.concatenate(recs), images, boxes)
        return se / (n * np.prod(images.shape[1:])), s1 / n, s2 / n, mouth

    def evaluate(self, model, ev, rng):
        pick = [np.linspace(0, len(c.frames) - 1, 2).astype(int) for c in self.corpus.test]
        test = np.concatenate([c.frames[i] for c, i in zip(self.corpus.test, pick)])
        boxes = np.concatenate([c.mouth_box[i] for c, i in zip(self.corpus.test, pick)])
        mse, _, _, mouth = self._moments(ev, test, boxes)
        # latent scaling: 1 / std of the posterior means over (a sample of) the training images
        sub = self.images[rng.choice(len(self.images), min(128, len(self.images)), replace=False)]
        _, m1, m2, _ = self._moments(ev, sub)
        scaling = float(1.0 / max(m2 - m1 ** 2, 1e-12) ** 0.5)
        model.config = dataclasses.replace(model.config, scaling_factor=scaling)
        return model, {"psnr_db": float(10.0 * np.log10(4.0 / max(mse, 1e-12))),
                       "mouth_psnr_db": mouth, "mse": float(mse), "scaling_factor": scaling,
                       "test_images": int(len(test))}
