"""What every encoder training shares: its schedule, the compile pool, the optimiser and train
step, the progress bar, and the job whose loop each encoder fills in (``batch``, ``evaluate``).
"""
from __future__ import annotations

import dataclasses
import functools
import time
import types
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.config_schema import OptimConfig, ScheduleConfig
from starcaster_jax.training.encoders.corpus import Clip, Corpus, chance, pad_batch, pad_take, to_float, windows
from starcaster_jax.training.metrics import MetricWriter
from starcaster_jax.training.optim import make_optimizer

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


# ----------------------------------------------------------------------------- compiling

def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def spec(*shape: int, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


class Compiler:
    """Ahead-of-time lowering + compilation of jitted functions on a thread pool (XLA releases
    the GIL while it compiles), so that encoder k+1 compiles while encoder k trains. Not
    ``Trainer.precompile`` (training/step.py): that one blocks until its own step kinds are done."""

    def __init__(self, workers: int = 2, options: Mapping[str, Any] | None = None):
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="xla-compile")
        self.options = dict(options or {})

    def submit(self, jitted, *abstract_args) -> Future:
        return self.pool.submit(lambda: jitted.lower(*abstract_args).compile(self.options or None))

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def optimizer(model, sched: Schedule, *, weight_decay: float = 1e-4, clip: float = 1.0) -> nnx.Optimizer:
    """AdamW (optax defaults) after a global-norm clip, from ``training.optim.make_optimizer``
    with one parameter group; the LR warms up from 0 over ``sched.warmup`` of the steps, then
    decays (cosine) to 10%."""
    sections = types.SimpleNamespace(
        optim=OptimConfig(name="adamw", lr=float(sched.lr), b1=0.9, b2=0.999, eps=1e-8,
                          weight_decay=weight_decay, grad_clip=clip, ema_decay=0.0,
                          update_program="fused", param_groups=()),
        schedule=ScheduleConfig(total_steps=max(2, sched.steps),
                                warmup_steps=max(1, int(sched.warmup * sched.steps)), decay="cosine"))
    tx, _ = make_optimizer(sections, nnx.as_pure(nnx.state(model, nnx.Param)), warmup_from=0.0)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def train_step(graphdef, loss_fn):
    """Pure jitted step over the (model, optimizer) state: ``(state, *batch) -> (state, aux)``;
    ``loss_fn(model, *batch) -> (loss, aux)``. The state is donated. Not training/step.py's
    ``Trainer``: that one steps a sharded TrainState of the denoiser (EMA, frozen nets, NaN skip)."""

    def step(state, *batch):
        model, opt = nnx.merge(graphdef, state)
        (_, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, *batch)
        opt.update(model, grads)
        return nnx.state((model, opt)), aux

    return jax.jit(step, donate_argnums=0)


def eval_fn(graphdef, fn):
    """Pure jitted ``(model_state, *inputs) -> fn(model, *inputs)``."""
    return jax.jit(lambda state, *xs: fn(nnx.merge(graphdef, state), *xs))


# ----------------------------------------------------------------------------- progress

class Progress:
    """One bar over all encoders' steps (training/metrics.py's ``MetricWriter``, without
    TensorBoard: an encoder's record is its metrics.json); the postfix shows the current encoder's
    loss. Also times the phases of the current encoder (waiting for its compile, steps, evaluation)."""

    def __init__(self, total: int, enabled: bool):
        self.writer = MetricWriter(None, total_steps=total, progress=enabled)
        self.name, self.done = "", 0
        self.marks: dict[str, float] = {}

    def start(self, name: str):
        self.name = name
        self.marks = {"start": time.perf_counter()}

    def mark(self, what: str):
        self.marks[what] = time.perf_counter()

    def step(self, loss: float | None = None):
        self.done += 1
        if loss is not None:
            self.writer.add(self.name, {"loss": loss})
            self.writer.write(self.done)
        self.writer.advance()

    def timing(self) -> dict[str, float]:
        m, now = self.marks, time.perf_counter()
        ready, trained = m.get("ready", m["start"]), m.get("trained", now)
        return {"wait_compile_s": round(ready - m["start"], 2),
                "steps_s": round(trained - ready, 2), "eval_s": round(now - trained, 2)}

    def close(self):
        self.writer.close()


# ----------------------------------------------------------------------------- the job

class Job:
    """One encoder. The subclass's ``__init__`` builds the model (NumPy init: no compile) and
    calls ``compile``, which adds the optimizer and queues the train and eval programs on the
    compiler; ``run`` trains on ``batch(rng, i)`` and returns ``evaluate(target, ev, rng)``."""

    def __init__(self, cfg, sched: Schedule, corpus: Corpus):
        self.cfg, self.sched, self.corpus = cfg, sched, corpus

    def compile(self, compiler: Compiler, model, loss_fn: Callable, train_specs, evaluate: Callable,
                eval_specs, *, weight_decay: float = 1e-4, clip: float = 1.0):
        """``loss_fn(model, *batch) -> (loss, aux)`` over ``train_specs``; ``evaluate(target,
        *inputs)`` over ``eval_specs``, ``target = eval_target(model)``."""
        opt = optimizer(model, self.sched, weight_decay=weight_decay, clip=clip)
        self.graphdef, self.state = nnx.split((model, opt))
        target = self.eval_target(model)
        self.step = compiler.submit(train_step(self.graphdef, loss_fn), abstract(self.state), *train_specs)
        self.eval = compiler.submit(eval_fn(nnx.graphdef(target), evaluate), abstract(nnx.state(target)),
                                    *eval_specs)

    def eval_target(self, model):
        """The part of the trained model that is evaluated and saved."""
        return model

    def prepare(self):
        """Host work before the first step (checks, crops), while the step may still compile."""

    def batch(self, rng: np.random.Generator, i: int) -> tuple:
        """The host arrays of step ``i``."""
        raise NotImplementedError

    def evaluate(self, target, ev: Callable, rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
        """-> (the module to save, held-out metrics); ``ev(*inputs)`` runs the compiled
        ``evaluate`` on the trained ``target``."""
        raise NotImplementedError

    def run(self, progress: Progress):
        sched, rng = self.sched, np.random.default_rng(self.sched.seed)
        self.prepare()
        step, state = self.step.result(), self.state
        progress.mark("ready")
        for i in range(sched.steps):
            state, m = step(state, *self.batch(rng, i))
            progress.step(float(m["loss"]) if i % 10 == 0 or i == sched.steps - 1 else None)
        progress.mark("trained")
        target = self.eval_target(nnx.merge(self.graphdef, state)[0])
        return self.evaluate(target, functools.partial(self.eval.result(), nnx.state(target)), rng)


# ----------------------------------------------------------------------------- evaluation

def apply_batched(ev, images: np.ndarray, n: int) -> np.ndarray:
    """``ev(x)`` over uint8 images ``[N, H, W, 3]`` in padded batches of ``n`` -> ``[N, ...]``."""
    return np.concatenate([np.asarray(ev(jnp.asarray(pad_batch(to_float(images[i:i + n]), n))))
                           [:len(images[i:i + n])] for i in range(0, len(images), n)])


def viseme_scores(ev, clips: list[Clip], length: int, n: int, inputs: Callable,
                  num_visemes: int) -> dict[str, Any]:
    """Per-frame viseme accuracy over every frame of ``clips``, in windows of ``length`` frames
    (tails padded with label -1), ``n`` windows a batch: ``inputs(clip, start)`` is a window's
    input and ``ev(x, y) -> (correct, counted)``."""
    ci, st = windows(clips, length)
    correct = total = 0.0
    for i in range(0, len(ci), n):
        xs = np.stack([inputs(c, s) for c, s in zip(ci[i:i + n], st[i:i + n])])
        ys = np.stack([pad_take(clips[c].viseme, s, length, -1) for c, s in zip(ci[i:i + n], st[i:i + n])])
        k, m = ev(jnp.asarray(pad_batch(xs, n)), jnp.asarray(pad_batch(ys, n, -1)))
        correct += float(k)
        total += float(m)
    labels = np.concatenate([c.viseme for c in clips])
    return {"viseme_accuracy": correct / max(total, 1.0), "chance": chance(labels),
            "uniform_chance": 1.0 / num_visemes, "test_frames": int(total)}
