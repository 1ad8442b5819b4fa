"""The training loop: one linear function (big_vision style).

    mesh -> Trainer (abstract state, shardings, compiled steps) -> data iterator
    -> restore (workdir) | init_from (previous stage) | fresh init
    -> for each batch: trainer.step -> metrics (one curve per step kind) -> checkpoint
       -> every eval.every_steps: held-out evaluation (training/periodic_eval.py)
    -> final checkpoint

Which step a batch takes, and compiling it, is the Trainer's business (training/step.py).

Pre-emption: SIGTERM (what TPU maintenance / SLURM send) sets a flag; the loop saves a
checkpoint at the next step boundary and returns. ``kill -9`` loses at most the steps since the
last checkpoint, and a restart resumes bit-exactly (same params, same next batches).
"""
from __future__ import annotations

import collections
import logging
import signal
import time

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from data_pipelines.pipeline import make_train_iterator
from starcaster_jax import sharding as shd
from starcaster_jax.config_schema import sections
from starcaster_jax.training.checkpoint import Checkpointer, restore_params
from starcaster_jax.training.metrics import MetricWriter, device_peak_flops
from starcaster_jax.training.periodic_eval import PeriodicEval
from starcaster_jax.training.state import check_same_tree
from starcaster_jax.training.step import Trainer

log = logging.getLogger(__name__)


class _Preemption:
    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (e.g. under a test runner thread)
            self._old = None
        return self

    def _handler(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the next step boundary, then exiting")
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def data_config(config, trainer: Trainer) -> dict:
    """The pipeline's view of the config: the video window grows for self-forcing."""
    data = config.data.to_dict()
    data["window_frames"] = trainer.window_frames()
    return {"data": data, "model": config.model.to_dict(), "seed": config.seed}


def make_mesh(config):
    """Mesh from ``config.mesh``; an explicit shape smaller than the (single-process) device
    count uses the first devices (e.g. a 1-device run on a machine with 8)."""
    m = config.mesh
    shape = {"data": int(m.data), "fsdp": int(m.fsdp), "tensor": int(m.tensor)}
    devices = jax.devices()
    n = int(np.prod(list(shape.values())))
    if -1 not in shape.values() and n < len(devices) and jax.process_count() == 1:
        devices = devices[:n]
    return shd.make_mesh(shape, devices=devices)


def train(config, workdir: str, *, sources=None, stop_after: int | None = None,
          frozen_nets=None) -> dict:
    """Train ``config`` in ``workdir`` until ``schedule.total_steps`` (or ``stop_after`` steps
    in this call, for tests of resumption). Returns a summary dict."""
    sections(config)   # a misspelled or mistyped field fails here, before anything is built
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)   # local path or gs://
    mesh = make_mesh(config)
    trainer = Trainer(config, mesh, frozen_nets=frozen_nets)
    data = make_train_iterator(data_config(config, trainer), sources=sources)
    ckpt = Checkpointer(workdir, config.ckpt)
    total = int(config.schedule.total_steps)

    state = ckpt.restore(trainer.abstract_state(), data)
    if state is not None:
        log.info("resumed %s at step %d", workdir, int(state.step))
    elif config.init_from:
        prev, _, prev_step = restore_params(config.init_from, config=None, use_ema=bool(
            config.init_from_ema))
        check_same_tree(trainer.mdef.abstract_params, prev, f"init_from={config.init_from}")
        state = trainer.init_state(jax.device_put(prev, trainer.mdef.param_shardings))
        log.info("initialised from %s (step %d)", config.init_from, prev_step)
    else:
        state = trainer.init_state()
    step = int(jax.device_get(state.step))

    writer = MetricWriter(workdir, total_steps=total, progress=bool(config.log.progress))
    writer.advance(step)
    evaluation = PeriodicEval(config, trainer)
    log_every = max(int(config.log.every_steps), 1)
    ckpt_every = max(int(config.ckpt.every_steps), 1)
    max_wall = float(config.max_wall_minutes) * 60.0
    peak = None
    pending: list[tuple[str, dict]] = []
    in_flight = None
    t_start = time.perf_counter()
    t_log, n_log, ex_log = t_start, 0, 0
    steps_this_call = 0
    last_saved = step if ckpt.latest_step() == step else None
    summary = {"start_step": step}

    with _Preemption() as pre:
        while step < total:
            batch = next(data)
            state, metrics, kind = trainer.step(state, batch, step)
            # At most two steps in flight: the host reads the next batch while the device runs
            # this step, and the wall budget below counts finished steps, not a queue of them.
            if in_flight is not None:
                jax.block_until_ready(in_flight)
            in_flight = metrics
            step += 1
            steps_this_call += 1
            pending.append((kind, metrics))
            ex_log += int(np.asarray(batch["stream"]).shape[0]) * jax.process_count()
            n_log += 1
            writer.advance()

            # compilation and evaluation are excluded from the max_wall_minutes budget
            stop_now = pre.requested or bool(max_wall and time.perf_counter() - t_start
                                             - trainer.compile_seconds - evaluation.seconds > max_wall)
            if jax.process_count() > 1:   # every host must stop at the same step boundary
                stop_now = bool(np.any(multihost_utils.process_allgather(np.array([stop_now]))))
            done = step >= total or (stop_after and steps_this_call >= stop_after)
            timeout = stop_now
            if step % log_every == 0 or done or timeout:    # the last partial interval too
                # Each step kind is its own curve: video/loss and video_sf/loss are different
                # objectives and averaging them would hide both.
                kind_counts = collections.Counter(k for k, _ in pending)
                for k, m in jax.device_get(pending):
                    writer.add(k, m)
                pending.clear()
                dt = time.perf_counter() - t_log
                extra = {"perf/steps_per_s": n_log / dt, "perf/examples_per_s": ex_log / dt,
                         "skipped_total": float(jax.device_get(state.skipped))}
                # FLOPs of the interval: each kind's compiled cost times how often it ran.
                f = sum((trainer.flops[k] or 0.0) * n for k, n in kind_counts.items())
                if f:
                    peak = peak or device_peak_flops()
                    extra["perf/mfu"] = f / dt / peak
                writer.write(step, extra)
                t_log, n_log, ex_log = time.perf_counter(), 0, 0

            if step % ckpt_every == 0 or done or timeout:
                ckpt.save(step, state, config, data, force=True)
                last_saved = step
            if evaluation.due(step) and not timeout:
                # reads the state only: its own clips and noise (not the iterator, not state.rng)
                t_eval = evaluation.seconds
                evaluation.run(step, state, writer)
                t_log += evaluation.seconds - t_eval    # not counted as training throughput
            if done or timeout:
                break

    if last_saved != step:
        ckpt.save(step, state, config, data, force=True)
    ckpt.close()
    writer.close()
    summary.update(step=step, skipped=int(jax.device_get(state.skipped)),
                   skipped_records=data.skipped, history=writer.history,
                   preempted=pre.requested, wall_s=time.perf_counter() - t_start,
                   compile_s=trainer.compile_seconds,
                   eval_s=evaluation.seconds, eval_history=writer.eval_history)
    data.close()
    return summary
