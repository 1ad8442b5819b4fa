"""The training loop's held-out evaluation (``eval.every_steps``; 0 = off).

Every ``eval.every_steps`` steps the current weights (EMA with ``eval.use_ema``, what
``launch.generate`` samples by default) animate ``eval.quick_clips`` held-out clips of
``data.root`` (split ``test``) exactly as generation would (``inference.generate.Generator``
with the VAE / audio / identity encoders that ``load_parts`` would give this checkpoint), and
``evaluation.synthetic.quick_eval`` scores them beside the copy-reference and majority
baselines. Its scalars go to TensorBoard as ``eval/animate/<metric>[_<baseline>]`` and a strip
of true frames above generated ones as the image ``eval/samples``.

Why it cannot change training: it reads the state and never writes it, draws its noise from
``jax.random.key(config.seed)`` (not the train state's key), and reads its clips through its own
data source (the training iterator is not touched), so a run with the evaluation on takes the
same steps, on the same batches, as one with it off, and resumes bit-exactly.

It needs the built-in evaluator networks (``lip_eval``, ``identity_eval`` in
``model.encoders_dir``, from ``launch.train_encoders``), held-out clips of two identities or
more (to calibrate identity verification) and the encoders generation needs. When one is
missing the evaluation is switched off for the run with one logged line, or, with
``eval.required``, the run stops with that line as the error.
"""
from __future__ import annotations

import logging
import time

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from starcaster_jax.evaluation import synthetic as S
from starcaster_jax.evaluation.baselines import with_model_state
from starcaster_jax.inference.chunking import GenerationError
from starcaster_jax.inference.generate import Generator
from starcaster_jax.inference.loading import encoder_parts
from starcaster_jax.training import lora as lora_lib

log = logging.getLogger(__name__)


class EvalUnavailable(RuntimeError):
    """``eval.required`` and the held-out evaluation cannot run (the message says why)."""


class PeriodicEval:
    """Held-out evaluation at every ``eval.every_steps``-th step of ``train``."""

    def __init__(self, config, trainer):
        self.config = config
        self.trainer = trainer
        self.every = int(config.eval.every_steps)
        self.required = bool(config.eval.required)
        self.use_ema = bool(config.eval.use_ema)
        self.available: bool | None = None   # None: not set up yet; False: switched off
        self.seconds = 0.0                    # wall time spent evaluating (outside the train budget)
        self._gen = None
        self._parts = None
        self._records = None
        self._evaluators = None

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0 and self.available is not False

    def _off(self, why: str) -> None:
        msg = f"eval.every_steps={self.every}: held-out evaluation off for this run: {why}"
        if self.required:
            raise EvalUnavailable(msg + " (eval.required)")
        log.warning(msg)
        self.available = False

    def _setup(self) -> None:
        """Evaluators, calibrated, and the held-out clips: every process decides alike (the
        same files), so none waits in a collective that another skipped."""
        c = self.config
        root, enc = str(c.data.root or ""), str(c.model.encoders_dir or "")
        if not root:
            return self._off("data.root is empty (no held-out clips)")
        if not enc:
            return self._off("model.encoders_dir is empty (the evaluators lip_eval, identity_eval "
                             "come from `python -m launch.train_encoders`)")
        try:
            ev = S.Evaluators.load(enc)
        except (ValueError, FileNotFoundError, OSError) as e:
            return self._off(f"evaluators: {str(e).splitlines()[0]}")
        try:
            records = S.held_out_records(root, "video", int(c.eval.quick_clips), split="test")
            if not records:
                return self._off(f"data.root={root!r} has no held-out (test) video clips")
            ev.calibrate(S.calibration_records(root, c.eval, split="test"),
                         frames_per_clip=int(c.eval.calib_frames), far=float(c.eval.far),
                         resolution=int(c.data.resolution))
        except (ValueError, FileNotFoundError, OSError, KeyError) as e:
            return self._off(f"data.root={root!r}: {str(e).splitlines()[0]}")
        try:   # the encoders load_parts would give this checkpoint
            self._parts = encoder_parts(c.model, need_identity=True)
        except GenerationError as e:
            return self._off(f"generation: {str(e).splitlines()[0]}")
        self._records, self._evaluators = records, ev
        self.available = True

    def _host_params(self, state):
        """The weights to evaluate, gathered to the host (every process takes part)."""
        tree = state.ema if self.use_ema else state.params
        if jax.process_count() > 1:
            return multihost_utils.process_allgather(tree, tiled=True)
        return jax.device_get(tree)

    def _generator(self, params):
        """The Generator of these weights (built once; later calls swap the denoiser's
        parameters, so its compiled sampling programs are reused)."""

        tr = self.trainer
        merged = lora_lib.merge(params["model"], params.get("lora"), tr.lora_scale)
        model = tr.mdef.module(jax.device_put(merged, jax.devices()[0]))
        if self._gen is None:
            vae, audio, identity_fn = self._parts
            self._gen = Generator(model, vae, audio, self.config, identity_fn=identity_fn)
            return self._gen
        return with_model_state(self._gen, nnx.state(model))

    def run(self, step: int, state, writer) -> dict | None:
        """Evaluate at ``step``; returns the scalars written (None when off or not process 0)."""
        t0 = time.perf_counter()
        try:
            if self.available is None:
                self._setup()
            if not self.available:
                return None
            params = self._host_params(state)
            if jax.process_index() != 0:
                return None
            gen = self._generator(params)
            out = S.quick_eval(gen, self._records, self._evaluators, seed=int(self.config.seed))
            scalars = {f"eval/{k}": float(v) for k, v in out["scalars"].items()}
            writer.write_eval(step, scalars, {"eval/samples": np.asarray(out["strip"], np.uint8)})
            log.info("eval at step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))
            return scalars
        finally:
            self.seconds += time.perf_counter() - t0
