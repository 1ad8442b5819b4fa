"""Train the six built-in encoders on the built-in corpus and save them for the other stages.

    python -m launch.train_encoders --data DIR --workdir DIR [--config=configs/stage2_audio.py:demo]
        [--steps_scale 1.0] [--steps N | --steps vae=300,audio=200] [--encoders vae,audio,...]
        [--schedule vae.batch=8,lip_loss.lr=1e-3]

``--data`` is the TFDS directory of the built-in corpus (``python -m data_pipelines.synthetic.build
--out DIR``; the prepared dataset directory or any folder holding exactly one). Trains ``vae``
(frames <-> latents), ``audio`` (speech -> viseme-aware features), ``identity_cond`` and
``identity_eval`` (ArcFace-margin face embeddings: the first conditions the denoiser, the second
only evaluates it), ``lip_loss`` and ``lip_eval`` (per-frame viseme readers of mouth crops: the
first is frozen inside the lip-reading loss, the second only evaluates), ``pose_eval`` (head
yaw/pitch/roll from a frame: only evaluates motion diversity), evaluates each on the
held-out TEST identities (split ``test_video``), prints a table and writes
``<workdir>/encoders/<name>/`` with ``starcaster_jax.models.builtin_encoders.save``.

Model sizes come from the config (``model.vae``, ``model.audio.builtin``) and the presets of
``BuiltinIdentityConfig`` (``for_conditioning`` / ``for_evaluation``) and ``LipReaderConfig``
(``tiny``); steps, batch sizes and learning rates from ``schedules()`` (x ``--steps_scale`` x
``VARIANT_SCALE[variant]``). XLA:CPU compiles one program at a time on one core, and compiling
is a large share of a CPU run, so every encoder's programs are compiled ahead of time on a
background pool while the previous encoders train.

Held-out metrics (chance levels alongside):
  vae        PSNR (dB, peak-to-peak 2) of posterior-mode reconstructions of test frames
  audio      per-frame viseme accuracy from speech; chance = majority-class frequency
  identity_* TAR at FAR=1e-2 over cross-clip pairs of test-identity frames, and rank-1
             (the nearest frame of another clip shows the same identity); chance TAR = FAR,
             chance rank-1 = the rate at which a random other-clip frame shares the identity
  lip_*      per-frame viseme accuracy from mouth crops; chance = majority-class frequency
  pose_eval  mean absolute (yaw, pitch, roll) error in degrees on test frames; chance = the
             error of always answering the training frames' mean pose
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from launch import cli
from starcaster_jax.models.rngs import InitRngs

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(_REPO, "configs", "stage2_audio.py") + ":demo"


# Bad flags or data: reported as one ``error:`` line by ``main``, exit 2 (launch/cli.py).
UsageError = cli.UsageError


# ----------------------------------------------------------------------------- schedules

@dataclasses.dataclass(frozen=True)
class Schedule:
    """How one encoder is trained: optimiser steps, batch, peak learning rate, seed."""
    steps: int
    batch: int
    lr: float
    seed: int
    warmup: float = 0.1          # fraction of steps of linear warm-up, then cosine decay to 10%
    window: int = 0              # frames per training window (audio, lip); crop side (vae)


def schedules(scale: float = 1.0) -> dict[str, Schedule]:
    """The demo schedules, ``steps`` scaled by ``scale``. Seeds differ per encoder (the two
    identity encoders and the two lip readers are independent trainings)."""
    s = lambda n: max(1, int(round(n * scale)))  # noqa: E731
    return {
        # random 32x32 crops of frames (the VAE is fully convolutional): at equal CPU time they
        # reached a higher test PSNR than whole 64x64 frames (17.3 vs 16.9 dB after 300 steps).
        # The VAE converges slowly (test PSNR 17 / 19 / 22 dB after 300 / 500 / 1000 steps) and
        # gets the largest share of the budget; --steps vae=N trades time for sharpness.
        "vae": Schedule(s(300), 8, 2e-3, 0, window=32),
        "audio": Schedule(s(150), 8, 1e-3, 1, window=32),
        "identity_cond": Schedule(s(140), 32, 3e-3, 2),
        "identity_eval": Schedule(s(140), 32, 3e-3, 3),
        "lip_loss": Schedule(s(120), 8, 2e-3, 4, window=16),
        "lip_eval": Schedule(s(120), 8, 2e-3, 5, window=16),
        # 150 steps: no better than the mean pose on the demo corpus (5.1 vs 5.0 deg); 1000: 2.9 deg
        "pose_eval": Schedule(s(600), 32, 2e-3, 6),
    }


# per config variant: multiplier of the demo step counts (more data -> more steps)
VARIANT_SCALE = {"tiny": 1.0, "demo": 1.0, "small": 10.0, "paper": 50.0}


def module_configs(config) -> dict[str, Any]:
    """The module config of every encoder, from the experiment config (+ the presets)."""
    from data_pipelines.schema import NUM_VISEMES
    from starcaster_jax.models.audio.builtin import BuiltinAudioConfig
    from starcaster_jax.models.identity.builtin import BuiltinIdentityConfig
    from starcaster_jax.models.lipreading import LipReaderConfig
    from starcaster_jax.models.pose_regressor import PoseRegressorConfig
    from starcaster_jax.models.vae import VAEConfig

    res = int(config.data.resolution)
    vae = VAEConfig.from_diffusers(config.model.vae.to_dict(), sample_size=res)
    audio_kw = dict(config.model.audio.builtin)
    audio = BuiltinAudioConfig.from_dict({**audio_kw, "num_visemes": NUM_VISEMES})
    id_size = min(res, 32)
    return {
        "vae": vae,
        "audio": audio,
        "identity_cond": BuiltinIdentityConfig.for_conditioning(image_size=id_size),
        "identity_eval": BuiltinIdentityConfig.for_evaluation(image_size=id_size),
        "lip_loss": LipReaderConfig.tiny(num_visemes=NUM_VISEMES),
        # the evaluator: another seed and a different trunk (wider front-end, longer temporal
        # context), so that its errors are not the loss network's errors
        "lip_eval": LipReaderConfig.tiny(num_visemes=NUM_VISEMES, frontend_width=24,
                                         widths=(24, 48, 64), temporal_kernel=7),
        "pose_eval": PoseRegressorConfig(image_size=id_size),
    }



# ----------------------------------------------------------------------------- data

@dataclasses.dataclass
class Clip:
    label: int
    frames: np.ndarray          # uint8 [F, H, W, 3]
    audio: np.ndarray           # float32 [F*640]
    viseme: np.ndarray          # int32 [F]
    mouth_box: np.ndarray       # float32 [F, 4]
    pose: np.ndarray | None = None  # float32 [F, 6] (schema pose: yaw, pitch, roll, x, y, scale)


@dataclasses.dataclass
class Corpus:
    path: str
    train: list[Clip]
    test: list[Clip]
    train_views: np.ndarray     # uint8 [N, H, W, 3] multi-view stills of train identities
    train_view_labels: np.ndarray
    num_train_ids: int
    resolution: int
    train_view_poses: np.ndarray | None = None   # float32 [N, 6] poses of train_views


def _read(builder, split: str) -> list[dict]:
    from data_pipelines import schema
    if split not in builder.info.splits:
        return []
    src = builder.as_data_source(split)
    return [schema.decode(src[i]) for i in range(len(src))]


def load_corpus(data_dir: str) -> Corpus:
    """Decode the built-in corpus's splits (train_video, train_multiview, test_video)."""
    import tensorflow_datasets as tfds

    from data_pipelines.sources import find_tfds_dir
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data {data_dir}: no such directory (build the corpus with "
                                f"`python -m data_pipelines.synthetic.build --out DIR`)")
    path = find_tfds_dir(data_dir)
    if path is None:
        raise FileNotFoundError(f"--data {data_dir}: no (single) prepared TFDS dataset below it "
                                f"(dataset_info.json)")
    builder = tfds.builder_from_directory(path)
    missing = [s for s in ("train_video", "test_video") if s not in builder.info.splits]
    if missing:
        raise UsageError(f"--data {path}: the built-in encoders need splits train_video and "
                         f"test_video; missing {missing}")

    def clips(split):
        out = []
        for r in _read(builder, split):
            out.append(Clip(int(r["id_label"]), np.array(r["frames"]), np.array(r["audio"]),
                            np.array(r["viseme"], np.int32), np.array(r["mouth_box"], np.float32),
                            np.array(r["pose"], np.float32)))
        return out

    train, test = clips("train_video"), clips("test_video")
    if not train or not test:
        raise UsageError(f"--data {path}: empty train_video or test_video split")
    views = _read(builder, "train_multiview")
    res = train[0].frames.shape[1]
    tv = (np.concatenate([r["frames"] for r in views]) if views
          else np.zeros((0, res, res, 3), np.uint8))
    tl = (np.concatenate([np.full(len(r["frames"]), int(r["id_label"])) for r in views]) if views
          else np.zeros((0,), np.int64))
    labels = sorted({c.label for c in train})
    test_labels = {c.label for c in test}
    if test_labels & set(labels):
        raise UsageError(f"--data {path}: test identities overlap the training ones")
    remap = {lab: i for i, lab in enumerate(labels)}           # ArcFace classes 0..N-1
    for c in train:
        c.label = remap[c.label]
    keep = np.isin(tl, labels)
    tl = np.array([remap[int(v)] for v in tl[keep]], np.int64)
    tp = (np.concatenate([np.asarray(r["pose"], np.float32) for r in views]) if views
          else np.zeros((0, 6), np.float32))
    return Corpus(path, train, test, tv[keep], tl, len(labels), res, tp[keep])


def _to_float(u8: np.ndarray) -> np.ndarray:
    return u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)   # transforms.Normalize


def _windows(clips: list[Clip], length: int):
    """Every clip cut into consecutive windows of ``length`` frames, the tail padded (-1 labels):
    -> (clip index [W], start [W]). Static shapes for evaluation."""
    idx, starts = [], []
    for i, c in enumerate(clips):
        for s in range(0, len(c.viseme), length):
            idx.append(i)
            starts.append(s)
    return np.asarray(idx), np.asarray(starts)


def _pad_take(a: np.ndarray, start: int, length: int, fill) -> np.ndarray:
    part = a[start:start + length]
    if len(part) == length:
        return part
    pad = np.full((length - len(part), *a.shape[1:]), fill, a.dtype)
    return np.concatenate([part, pad])


def _chance(labels: np.ndarray) -> float:
    labels = labels[labels >= 0]
    return float(np.bincount(labels).max() / max(len(labels), 1))


# ----------------------------------------------------------------------------- machinery

def _abstract(tree):
    import jax
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


class Compiler:
    """Ahead-of-time lowering + compilation of jitted functions on a thread pool (XLA releases
    the GIL while it compiles), so that encoder k+1 compiles while encoder k trains."""

    def __init__(self, workers: int = 2, options: Mapping[str, Any] | None = None):
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="xla-compile")
        self.options = dict(options or {})

    def submit(self, jitted, *abstract_args) -> Future:
        return self.pool.submit(lambda: jitted.lower(*abstract_args).compile(self.options or None))

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def _optimizer(model, sched: Schedule, *, weight_decay=1e-4, clip=1.0):
    import optax
    from flax import nnx
    lr = optax.warmup_cosine_decay_schedule(0.0, sched.lr, max(1, int(sched.warmup * sched.steps)),
                                            max(2, sched.steps), end_value=0.1 * sched.lr)
    tx = optax.chain(optax.clip_by_global_norm(clip), optax.adamw(lr, weight_decay=weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _train_step(graphdef, loss_fn):
    """Pure jitted step over the (model, optimizer) state: ``(state, *batch) -> (state, aux)``;
    ``loss_fn(model, *batch) -> (loss, aux)``. The state is donated."""
    import jax
    from flax import nnx

    def step(state, *batch):
        model, opt = nnx.merge(graphdef, state)
        (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, *batch)
        opt.update(model, grads)
        return nnx.state((model, opt)), aux

    return jax.jit(step, donate_argnums=0)


def _eval_fn(graphdef, fn):
    """Pure jitted ``(model_state, *inputs) -> fn(model, *inputs)``."""
    import jax
    from flax import nnx
    return jax.jit(lambda state, *xs: fn(nnx.merge(graphdef, state), *xs))


def _num_params(model) -> int:
    import jax
    from flax import nnx
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _pad_batch(x: np.ndarray, n: int, fill=0) -> np.ndarray:
    if len(x) == n:
        return x
    return np.concatenate([x, np.full((n - len(x), *x.shape[1:]), fill, x.dtype)])


class _Bar:
    """One tqdm bar over all encoders' steps; the postfix shows the current encoder's loss.
    Also times the phases of the current encoder (waiting for its compile, steps, evaluation)."""

    def __init__(self, total: int, enabled: bool):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, disable=not enabled,
                        desc="encoders")
        self.marks: dict[str, float] = {}

    def start(self, name: str):
        self.bar.set_description(name)
        self.marks = {"start": time.perf_counter()}

    def mark(self, what: str):
        self.marks[what] = time.perf_counter()

    def step(self, loss: float | None = None):
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self.bar.update(1)

    def timing(self) -> dict[str, float]:
        m, now = self.marks, time.perf_counter()
        ready, trained = m.get("ready", m["start"]), m.get("trained", now)
        return {"wait_compile_s": round(ready - m["start"], 2),
                "steps_s": round(trained - ready, 2), "eval_s": round(now - trained, 2)}

    def close(self):
        self.bar.close()


@dataclasses.dataclass
class Result:
    name: str
    model: Any                  # the trained module (what builtin_encoders.save wrote)
    metrics: dict[str, Any]
    seconds: float
    steps: int
    params: int
    path: str = ""


class _Job:
    """One encoder: ``__init__`` builds the model and optimizer (NumPy init: no compile) and
    queues its programs on the compiler; ``run`` trains, evaluates and returns the module."""

    def _every(self, step: int, steps: int) -> bool:
        return step % 10 == 0 or step == steps - 1


# ----------------------------------------------------------------------------- VAE

class VAEJob(_Job):
    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from starcaster_jax.models import builtin_encoders as be
        from starcaster_jax.models.vae_training import vae_loss
        self.cfg, self.sched, self.corpus = cfg, sched, corpus
        self.images = np.concatenate([np.concatenate([c.frames[::3] for c in corpus.train]),
                                      corpus.train_views])
        model = be.init_params(be.abstract_module("vae", cfg), sched.seed)
        opt = _optimizer(model, sched, weight_decay=0.0, clip=10.0)
        self.graphdef, self.state = nnx.split((model, opt))
        self.model_graphdef = nnx.graphdef(model)
        crop = min(sched.window or corpus.resolution, corpus.resolution)
        self.crop = crop - crop % cfg.downsample_factor
        key = jax.eval_shape(lambda: jax.random.key(0))
        # L2 reconstruction (+ LDM's 1e-6 KL): faster to leave the flat-colour plateau than L1
        step = _train_step(self.graphdef, lambda m, x, k: vae_loss(m, x, k, recon="l2"))
        self.step = compiler.submit(step, _abstract(self.state), jax.ShapeDtypeStruct(
            (sched.batch, self.crop, self.crop, 3), jnp.float32), key)

        def ev(m, x):   # reconstruction (posterior mode) and the posterior means' moments
            post = m.encode(x)
            return m.decode(post.mode()), jnp.mean(post.mean, axis=(1, 2, 3)), \
                jnp.mean(post.mean ** 2, axis=(1, 2, 3))

        r = corpus.resolution
        self.eval_batch = 32
        self.eval = compiler.submit(_eval_fn(self.model_graphdef, ev),
                                    _abstract(nnx.state(model)),
                                    jax.ShapeDtypeStruct((self.eval_batch, r, r, 3), jnp.float32))

    def run(self, bar: _Bar):
        import jax
        import jax.numpy as jnp
        from flax import nnx
        sched, corpus, rng = self.sched, self.corpus, np.random.default_rng(self.sched.seed)
        step, state, key = self.step.result(), self.state, jax.random.key(sched.seed)
        bar.mark("ready")
        for i in range(sched.steps):
            idx = rng.integers(0, len(self.images), sched.batch)
            y0, x0 = rng.integers(0, corpus.resolution - self.crop + 1, 2)
            x = _to_float(self.images[idx, y0:y0 + self.crop, x0:x0 + self.crop])
            state, m = step(state, jnp.asarray(x), jax.random.fold_in(key, i))
            bar.step(float(m["loss"]) if self._every(i, sched.steps) else None)
        bar.mark("trained")
        model = nnx.merge(self.graphdef, state)[0]
        ev, ms, B = self.eval.result(), nnx.state(model), self.eval_batch

        def run_eval(images):
            se, s1, s2, n = 0.0, 0.0, 0.0, 0
            for i in range(0, len(images), B):
                x = _to_float(images[i:i + B])
                rec, m1, m2 = (np.asarray(a) for a in ev(ms, jnp.asarray(_pad_batch(x, B))))
                k = len(x)
                se += float(((rec[:k] - x) ** 2).sum())
                s1 += float(m1[:k].sum())
                s2 += float(m2[:k].sum())
                n += k
            return se / (n * np.prod(images.shape[1:])), s1 / n, s2 / n

        test = np.concatenate([c.frames[np.linspace(0, len(c.frames) - 1, 2).astype(int)]
                               for c in corpus.test])
        mse, _, _ = run_eval(test)
        # latent scaling (how SD's 0.18215 was found): 1/std of posterior means, train images
        sub = self.images[rng.choice(len(self.images), min(128, len(self.images)), replace=False)]
        _, m1, m2 = run_eval(sub)
        scaling = float(1.0 / max(m2 - m1 ** 2, 1e-12) ** 0.5)
        model.config = dataclasses.replace(model.config, scaling_factor=scaling)
        return model, {"psnr_db": float(10.0 * np.log10(4.0 / max(mse, 1e-12))),
                       "mse": float(mse), "scaling_factor": scaling,
                       "test_images": int(len(test))}


# ----------------------------------------------------------------------------- audio

class AudioJob(_Job):
    EVAL_BATCH = 16

    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from data_pipelines.schema import SAMPLES_PER_FRAME
        from starcaster_jax.models import builtin_encoders as be
        from starcaster_jax.models.audio.builtin import viseme_loss
        self.cfg, self.sched, self.corpus, self.S = cfg, sched, corpus, SAMPLES_PER_FRAME
        model = be.init_params(be.abstract_module("builtin_audio", cfg), sched.seed)
        self.graphdef, self.state = nnx.split((model, _optimizer(model, sched)))
        T, S, B = sched.window, SAMPLES_PER_FRAME, sched.batch
        self.step = compiler.submit(_train_step(self.graphdef, viseme_loss), _abstract(self.state),
                                    jax.ShapeDtypeStruct((B, T * S), jnp.float32),
                                    jax.ShapeDtypeStruct((B, T), jnp.int32))

        def ev(m, audio, labels):
            aux = viseme_loss(m, audio, labels)[1]
            return aux["accuracy"] * aux["frames"], aux["frames"]

        E = self.EVAL_BATCH
        self.eval = compiler.submit(_eval_fn(nnx.graphdef(model), ev), _abstract(nnx.state(model)),
                                    jax.ShapeDtypeStruct((E, T * S), jnp.float32),
                                    jax.ShapeDtypeStruct((E, T), jnp.int32))

    def run(self, bar: _Bar):
        import jax.numpy as jnp
        from flax import nnx
        sched, corpus, S = self.sched, self.corpus, self.S
        T, rng = sched.window, np.random.default_rng(sched.seed)
        clips = [c for c in corpus.train if len(c.viseme) >= T]
        if not clips:
            raise UsageError(f"audio: no training clip has {T} frames")
        step, state = self.step.result(), self.state
        bar.mark("ready")
        for i in range(sched.steps):
            audio = np.zeros((sched.batch, T * S), np.float32)
            labels = np.zeros((sched.batch, T), np.int32)
            for b in range(sched.batch):
                c = clips[rng.integers(len(clips))]
                s = int(rng.integers(0, len(c.viseme) - T + 1))
                audio[b] = c.audio[s * S:(s + T) * S] * rng.uniform(0.5, 1.5)   # level jitter
                labels[b] = c.viseme[s:s + T]
            state, m = step(state, jnp.asarray(audio), jnp.asarray(labels))
            bar.step(float(m["loss"]) if self._every(i, sched.steps) else None)
        bar.mark("trained")
        model = nnx.merge(self.graphdef, state)[0]
        ev, ms, E = self.eval.result(), nnx.state(model), self.EVAL_BATCH
        # every frame of every test clip, in windows of T frames (tails padded with label -1)
        ci, st = _windows(corpus.test, T)
        correct = total = 0.0
        for i in range(0, len(ci), E):
            a = np.stack([_pad_take(corpus.test[c].audio, s * S, T * S, 0.0)
                          for c, s in zip(ci[i:i + E], st[i:i + E])])
            y = np.stack([_pad_take(corpus.test[c].viseme, s, T, -1)
                          for c, s in zip(ci[i:i + E], st[i:i + E])])
            k, n = ev(ms, jnp.asarray(_pad_batch(a, E)), jnp.asarray(_pad_batch(y, E, -1)))
            correct += float(k)
            total += float(n)
        labels = np.concatenate([c.viseme for c in corpus.test])
        return model, {"viseme_accuracy": correct / max(total, 1.0), "chance": _chance(labels),
                       "uniform_chance": 1.0 / self.cfg.num_visemes, "test_frames": int(total)}


# ----------------------------------------------------------------------------- identity

def identity_test_set(corpus: Corpus, per_clip: int = 8):
    """``per_clip`` evenly spaced frames of every test clip -> (uint8 images, labels, clip ids)."""
    imgs, labels, groups = [], [], []
    for g, c in enumerate(corpus.test):
        idx = np.linspace(0, len(c.frames) - 1, per_clip).astype(int)
        imgs.append(c.frames[idx])
        labels += [c.label] * len(idx)
        groups += [g] * len(idx)
    return np.concatenate(imgs), np.asarray(labels), np.asarray(groups)


class IdentityJob(_Job):
    EVAL_BATCH = 64

    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from starcaster_jax.models import builtin_encoders as be
        from starcaster_jax.models.identity.builtin import ArcFaceModel, arcface_loss
        self.cfg, self.sched, self.corpus = cfg, sched, corpus
        self.images = np.concatenate([np.concatenate([c.frames[::2] for c in corpus.train]),
                                      corpus.train_views])
        self.labels = np.concatenate([np.concatenate([np.full(len(c.frames[::2]), c.label)
                                                      for c in corpus.train]),
                                      corpus.train_view_labels]).astype(np.int32)
        n_cls = corpus.num_train_ids
        model = be.init_params(nnx.eval_shape(lambda: ArcFaceModel(cfg, n_cls, rngs=InitRngs(0))),
                               sched.seed)
        opt = _optimizer(model, sched, weight_decay=5e-4, clip=5.0)
        self.graphdef, self.state = nnx.split((model, opt))
        r, B = corpus.resolution, sched.batch
        self.step = compiler.submit(_train_step(self.graphdef, arcface_loss), _abstract(self.state),
                                    jax.ShapeDtypeStruct((B, r, r, 3), jnp.float32),
                                    jax.ShapeDtypeStruct((B,), jnp.int32))
        self.eval = compiler.submit(_eval_fn(nnx.graphdef(model.encoder), be.identity_embedding),
                                    _abstract(nnx.state(model.encoder)),
                                    jax.ShapeDtypeStruct((self.EVAL_BATCH, r, r, 3), jnp.float32))

    def run(self, bar: _Bar):
        import jax.numpy as jnp
        from flax import nnx

        from starcaster_jax.models.identity.metrics import verification_metrics
        sched, rng = self.sched, np.random.default_rng(self.sched.seed)
        step, state = self.step.result(), self.state
        bar.mark("ready")
        for i in range(sched.steps):
            idx = rng.integers(0, len(self.images), sched.batch)
            x = self.images[idx]
            flip = rng.random(sched.batch) < 0.5
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
            state, m = step(state, jnp.asarray(_to_float(x)), jnp.asarray(self.labels[idx]))
            bar.step(float(m["loss"]) if self._every(i, sched.steps) else None)
        bar.mark("trained")
        enc = nnx.merge(self.graphdef, state)[0].encoder
        ev, ms, E = self.eval.result(), nnx.state(enc), self.EVAL_BATCH
        timgs, tlabels, tgroups = identity_test_set(self.corpus)
        emb = np.concatenate([np.asarray(ev(ms, jnp.asarray(_pad_batch(_to_float(timgs[i:i + E]), E))))
                              [:len(timgs[i:i + E])] for i in range(0, len(timgs), E)])
        vm = verification_metrics(emb, tlabels, fars=(1e-2, 1e-3), groups=tgroups)
        return enc, {"tar@far=0.01": vm["tar@far=0.01"], "tar@far=0.001": vm["tar@far=0.001"],
                     "rank1": vm["rank1"], "chance_tar@far=0.01": 0.01,
                     "chance_rank1": vm["rank1_chance"], "num_genuine": vm["num_genuine"],
                     "num_impostor": vm["num_impostor"],
                     "test_identities": int(len(set(tlabels.tolist()))),
                     "test_images": int(len(timgs)), "train_identities": int(self.corpus.num_train_ids)}


# ----------------------------------------------------------------------------- lip readers

class _Crops:
    """Grey mouth crops ``[F, S, S, 1]`` of every clip, made once per (crop size, margin) with
    the ``crop_mouths`` the lip loss uses (compiled on the pool; computed on first use)."""
    CHUNK = 256

    def __init__(self, cfg, corpus: Corpus, compiler: Compiler):
        import jax
        import jax.numpy as jnp

        from starcaster_jax.models.lipreading import crop_mouths
        self.corpus, r = corpus, corpus.resolution
        fn = jax.jit(lambda f, b: crop_mouths(f, b, cfg.crop_size, cfg.margin))
        self.fn = compiler.submit(fn, jax.ShapeDtypeStruct((self.CHUNK, 1, r, r, 3), jnp.uint8),
                                  jax.ShapeDtypeStruct((self.CHUNK, 1, 4), jnp.float32))
        self._done = None

    def get(self):
        if self._done is None:
            self._done = (self._crop(self.corpus.train), self._crop(self.corpus.test))
        return self._done

    def _crop(self, clips):
        import jax.numpy as jnp
        fn, C = self.fn.result(), self.CHUNK
        frames = np.concatenate([c.frames for c in clips])
        boxes = np.concatenate([c.mouth_box for c in clips])
        out = []
        for i in range(0, len(frames), C):
            f, b = frames[i:i + C], boxes[i:i + C]
            n = len(f)
            b = np.concatenate([b, np.tile(np.array([[0, 0, 1, 1]], np.float32), (C - n, 1))])
            out.append(np.asarray(fn(jnp.asarray(_pad_batch(f, C))[:, None], jnp.asarray(b)[:, None]))[:n, 0])
        return np.split(np.concatenate(out), np.cumsum([len(c.frames) for c in clips])[:-1])


class LipJob(_Job):
    EVAL_BATCH, EVAL_WINDOW = 8, 32

    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler, crops: _Crops):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from starcaster_jax.models import builtin_encoders as be
        from starcaster_jax.models.lipreading import viseme_loss
        self.cfg, self.sched, self.corpus, self.crops = cfg, sched, corpus, crops
        model = be.init_params(be.abstract_module("lip_reader", cfg), sched.seed)
        self.graphdef, self.state = nnx.split((model, _optimizer(model, sched)))
        S, T, B = cfg.crop_size, sched.window, sched.batch

        def loss(m, x, y):
            v = viseme_loss(m, x, y)
            return v, {"loss": v}

        self.step = compiler.submit(_train_step(self.graphdef, loss), _abstract(self.state),
                                    jax.ShapeDtypeStruct((B, T, S, S, 1), jnp.float32),
                                    jax.ShapeDtypeStruct((B, T), jnp.int32))

        def ev(m, x, y):
            pred = jnp.argmax(m.logits(m(x)), -1)
            valid = y >= 0
            return jnp.sum((pred == y) & valid), jnp.sum(valid)

        E, TE = self.EVAL_BATCH, self.EVAL_WINDOW
        self.eval = compiler.submit(_eval_fn(nnx.graphdef(model), ev), _abstract(nnx.state(model)),
                                    jax.ShapeDtypeStruct((E, TE, S, S, 1), jnp.float32),
                                    jax.ShapeDtypeStruct((E, TE), jnp.int32))

    def run(self, bar: _Bar):
        import jax.numpy as jnp
        from flax import nnx
        sched, corpus, cfg = self.sched, self.corpus, self.cfg
        T, rng = sched.window, np.random.default_rng(sched.seed)
        tr, te = self.crops.get()
        ok = [i for i, c in enumerate(corpus.train) if len(c.viseme) >= T]
        if not ok:
            raise UsageError(f"lip readers: no training clip has {T} frames")
        step, state = self.step.result(), self.state
        bar.mark("ready")
        S = cfg.crop_size
        for i in range(sched.steps):
            x = np.empty((sched.batch, T, S, S, 1), np.float32)
            y = np.empty((sched.batch, T), np.int32)
            for b in range(sched.batch):
                j = ok[rng.integers(len(ok))]
                s = int(rng.integers(0, len(corpus.train[j].viseme) - T + 1))
                x[b] = tr[j][s:s + T]
                y[b] = corpus.train[j].viseme[s:s + T]
                if rng.random() < 0.5:                                  # mirror the mouth
                    x[b] = x[b, :, :, ::-1]
            state, m = step(state, jnp.asarray(x), jnp.asarray(y))
            bar.step(float(m["loss"]) if self._every(i, sched.steps) else None)
        bar.mark("trained")
        model = nnx.merge(self.graphdef, state)[0]
        ev, ms, E, TE = self.eval.result(), nnx.state(model), self.EVAL_BATCH, self.EVAL_WINDOW
        ci, st = _windows(corpus.test, TE)
        correct = total = 0.0
        for i in range(0, len(ci), E):
            xs = np.stack([_pad_take(te[c], s, TE, 0.0) for c, s in zip(ci[i:i + E], st[i:i + E])])
            ys = np.stack([_pad_take(corpus.test[c].viseme, s, TE, -1)
                           for c, s in zip(ci[i:i + E], st[i:i + E])])
            k, n = ev(ms, jnp.asarray(_pad_batch(xs, E)), jnp.asarray(_pad_batch(ys, E, -1)))
            correct += float(k)
            total += float(n)
        labels = np.concatenate([c.viseme for c in corpus.test])
        return model, {"viseme_accuracy": correct / max(total, 1.0), "chance": _chance(labels),
                       "uniform_chance": 1.0 / cfg.num_visemes, "test_frames": int(total)}


# ----------------------------------------------------------------------------- pose evaluator

class PoseJob(_Job):
    """``pose_eval``: (yaw, pitch, roll) regression from whole frames of the training clips."""
    EVAL_BATCH = 64

    def __init__(self, cfg, sched: Schedule, corpus: Corpus, compiler: Compiler):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from starcaster_jax.models import builtin_encoders as be
        from starcaster_jax.models.pose_regressor import pose_loss
        self.cfg, self.sched, self.corpus = cfg, sched, corpus
        # talking clips (head turns on the neck) + multi-view stills (camera orbits: wider yaw)
        self.images = np.concatenate([c.frames[::2] for c in corpus.train] + [corpus.train_views])
        self.ypr = np.concatenate([c.pose[::2, :3] for c in corpus.train]
                                  + [corpus.train_view_poses[:, :3]]).astype(np.float32)
        model = be.init_params(be.abstract_module("pose_regressor", cfg), sched.seed)
        self.graphdef, self.state = nnx.split((model, _optimizer(model, sched)))
        r, B = corpus.resolution, sched.batch
        self.step = compiler.submit(_train_step(self.graphdef, pose_loss), _abstract(self.state),
                                    jax.ShapeDtypeStruct((B, r, r, 3), jnp.float32),
                                    jax.ShapeDtypeStruct((B, 3), jnp.float32))
        self.eval = compiler.submit(_eval_fn(nnx.graphdef(model), lambda m, x: m(x)),
                                    _abstract(nnx.state(model)),
                                    jax.ShapeDtypeStruct((self.EVAL_BATCH, r, r, 3), jnp.float32))

    def run(self, bar: _Bar):
        import jax.numpy as jnp
        from flax import nnx
        sched, rng = self.sched, np.random.default_rng(self.sched.seed)
        step, state = self.step.result(), self.state
        bar.mark("ready")
        for i in range(sched.steps):
            idx = rng.integers(0, len(self.images), sched.batch)
            state, m = step(state, jnp.asarray(_to_float(self.images[idx])), jnp.asarray(self.ypr[idx]))
            bar.step(float(m["loss"]) if self._every(i, sched.steps) else None)
        bar.mark("trained")
        model = nnx.merge(self.graphdef, state)[0]
        ev, ms, E = self.eval.result(), nnx.state(model), self.EVAL_BATCH
        imgs = np.concatenate([c.frames for c in self.corpus.test])
        true = np.concatenate([c.pose[:, :3] for c in self.corpus.test])
        pred = np.concatenate([np.asarray(ev(ms, jnp.asarray(_pad_batch(_to_float(imgs[i:i + E]), E))))
                               [:len(imgs[i:i + E])] for i in range(0, len(imgs), E)])
        deg = 180.0 / np.pi
        return model, {"mae_deg": float(np.mean(np.abs(pred - true)) * deg),
                       "chance_mae_deg": float(np.mean(np.abs(self.ypr.mean(0) - true)) * deg),
                       "true_std_deg": float(np.mean(true.std(0)) * deg), "test_frames": int(len(imgs))}


# ----------------------------------------------------------------------------- driver

def _parse_steps(spec: str | None, names) -> dict[str, int]:
    if not spec:
        return {}
    if "=" not in spec:
        return {n: int(spec) for n in names}
    out = {}
    for part in spec.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in names:
            raise UsageError(f"--steps: unknown encoder {k!r} (known: {list(names)})")
        out[k] = int(v)
    return out


def _parse_overrides(spec: str | None, scheds: dict[str, Schedule]) -> dict[str, Schedule]:
    """``"vae.batch=8,lip_loss.lr=1e-3"`` -> updated schedules."""
    if not spec:
        return scheds
    fields = {f.name: f.type for f in dataclasses.fields(Schedule)}
    for part in spec.split(","):
        key, _, val = part.partition("=")
        name, _, field = key.strip().partition(".")
        if name not in scheds or field not in fields:
            raise UsageError(f"--schedule: expected <encoder>.<{'|'.join(fields)}>=value, got {part!r}")
        cast = float if field in ("lr", "warmup") else int
        scheds[name] = dataclasses.replace(scheds[name], **{field: cast(val)})
    return scheds


def _f(x, fmt=".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _metric_cells(name: str, m: Mapping[str, Any]) -> tuple[str, str, str]:
    if name == "vae":
        return "PSNR test frames (dB)", _f(m["psnr_db"], ".1f"), "-"
    if name == "pose_eval":
        return "pose MAE (deg)", _f(m["mae_deg"], ".1f"), _f(m["chance_mae_deg"], ".1f")
    if name.startswith("identity"):
        return ("TAR@FAR=1e-2 / rank-1", f"{_f(m['tar@far=0.01'])} / {_f(m['rank1'])}",
                f"0.010 / {_f(m['chance_rank1'])}")
    return "viseme acc/frame", _f(m["viseme_accuracy"]), _f(m["chance"])


def format_table(results: Mapping[str, Result]) -> str:
    rows = [("encoder", "params", "steps", "time s", "held-out metric", "value", "chance")]
    for name, r in results.items():
        rows.append((name, f"{r.params / 1e6:.2f}M", str(r.steps), f"{r.seconds:.1f}",
                     *_metric_cells(name, r.metrics)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _names():
    from starcaster_jax.models.builtin_encoders import ENCODER_NAMES
    return ENCODER_NAMES


def run(argv=None) -> dict[str, Result]:
    """Parse flags, train, evaluate and save; returns ``{name: Result}`` (models included)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["train_encoders"] + list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        # given as an argument, not as the flag's default: config_flags would apply the overrides
        # to a default at definition time, outside cli.parse_flags' error reporting
        argv.insert(1, f"--config={DEFAULT_CONFIG}")
    fv = flags.FlagValues()
    # sys_argv: config_flags reads the --config.<field> overrides from it (default: sys.argv)
    config_flags.DEFINE_config_file("config", None, f"experiment config[:variant] (default {DEFAULT_CONFIG})",
                                    flag_values=fv, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("data", None, "TFDS dir of the built-in corpus", flag_values=fv)
    flags.DEFINE_string("workdir", None, "writes <workdir>/encoders/<name>", flag_values=fv)
    flags.DEFINE_float("steps_scale", 1.0, "multiplies every encoder's step count", flag_values=fv)
    flags.DEFINE_string("steps", None, "N (all encoders) or name=N,name=N (wins over the scale)",
                        flag_values=fv)
    flags.DEFINE_string("schedule", None, "overrides, e.g. vae.batch=8,lip_loss.lr=1e-3",
                        flag_values=fv)
    flags.DEFINE_string("encoders", ",".join(_names()), "comma-separated subset to train",
                        flag_values=fv)
    flags.DEFINE_integer("compile_workers", 2, "threads compiling ahead", flag_values=fv)
    flags.DEFINE_boolean("progress", True, "show a progress bar", flag_values=fv)
    rest = cli.parse_flags(argv, fv)
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments: {rest[1:]}")
    if not fv.data or not fv.workdir:
        raise UsageError("--data and --workdir are required")
    config = fv["config"].value
    names = [n.strip() for n in fv.encoders.split(",") if n.strip()]
    bad = [n for n in names if n not in _names()]
    if bad:
        raise UsageError(f"--encoders: unknown {bad} (known: {list(_names())})")
    scheds = schedules(fv.steps_scale * VARIANT_SCALE.get(config.variant, 1.0))
    for n, k in _parse_steps(fv.steps, names).items():
        scheds[n] = dataclasses.replace(scheds[n], steps=max(1, k))
    scheds = _parse_overrides(fv.schedule, scheds)
    return train(config, fv.data, fv.workdir, names=names, scheds=scheds, progress=fv.progress,
                 compile_workers=fv.compile_workers)


def train(config, data_dir: str, workdir: str, *, names=None,
          scheds: Mapping[str, Schedule] | None = None, progress: bool = True,
          compile_workers: int = 2) -> dict[str, Result]:
    """Train ``names`` (default: all seven) and save them under ``<workdir>/encoders``."""
    import starcaster_jax  # noqa: F401  (no eager sharding)
    from starcaster_jax.models import builtin_encoders as be

    names = list(names or be.ENCODER_NAMES)
    scheds = dict(scheds or schedules(VARIANT_SCALE.get(config.variant, 1.0)))
    t0, cpu0 = time.perf_counter(), time.process_time()
    corpus = load_corpus(data_dir)
    t_data = time.perf_counter() - t0
    cfgs = module_configs(config)
    out_dir = os.path.join(workdir, "encoders")
    print(f"built-in encoders: corpus {corpus.path} ({len(corpus.train)} train / "
          f"{len(corpus.test)} test clips, {corpus.num_train_ids} train identities, "
          f"{corpus.resolution}px), read in {t_data:.1f}s; config variant {config.variant}",
          flush=True)
    compiler = Compiler(compile_workers)
    bar = None
    results: dict[str, Result] = {}
    try:
        crops: dict[tuple, _Crops] = {}

        def build(name):   # model + optimizer (NumPy init) and its programs queued for compiling
            cfg, sched = cfgs[name], scheds[name]
            if name == "vae":
                return VAEJob(cfg, sched, corpus, compiler)
            if name == "audio":
                return AudioJob(cfg, sched, corpus, compiler)
            if name.startswith("identity"):
                return IdentityJob(cfg, sched, corpus, compiler)
            if name == "pose_eval":
                return PoseJob(cfg, sched, corpus, compiler)
            key = (cfg.crop_size, cfg.margin)
            if key not in crops:
                crops[key] = _Crops(cfg, corpus, compiler)
            return LipJob(cfg, sched, corpus, compiler, crops[key])

        # the first job is built here; the others on a builder thread, in order, while it trains
        builder = ThreadPoolExecutor(1, thread_name_prefix="encoder-build")
        jobs: dict[str, Future] = {names[0]: Future()}
        jobs[names[0]].set_result(build(names[0]))
        for name in names[1:]:
            jobs[name] = builder.submit(build, name)
        builder.shutdown(wait=False)
        bar = _Bar(sum(scheds[n].steps for n in names), progress)
        for name in names:
            bar.start(name)
            t = time.perf_counter()
            model, metrics = jobs.pop(name).result().run(bar)
            secs = time.perf_counter() - t
            metrics = dict(metrics, train_seconds=round(secs, 2), steps=scheds[name].steps,
                           timing=bar.timing())
            record = {"schedule": dataclasses.asdict(scheds[name]), "data": corpus.path,
                      "config_variant": config.variant, "trained_by": "launch.train_encoders"}
            path = be.save(out_dir, name, model, record, metrics)
            results[name] = Result(name, model, metrics, secs, scheds[name].steps,
                                   _num_params(model), path)
    finally:
        if bar is not None:
            bar.close()
        compiler.close()
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print("\n" + format_table(results))
    print(f"total {total:.1f}s wall, {cpu:.1f}s CPU (data {t_data:.1f}s); "
          f"saved under {os.path.abspath(out_dir)}", flush=True)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({n: r.metrics for n, r in results.items()}
                  | {"total_seconds": round(total, 2), "cpu_seconds": round(cpu, 2)},
                  f, indent=1, default=float)
    return results


def main(argv=None) -> int:
    try:
        run(argv)
    except (FileNotFoundError, UsageError) as e:
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
