"""Compiled train steps, one per stream, and the object that owns them.

A step is two XLA programs by default (:class:`TwoProgramStep`: the stream's gradients, then
one update program shared by all streams); ``optim.update_program="fused"`` makes it one.

``Trainer`` resolves everything static once (model graph, shardings, optimiser, losses, frozen
networks) and exposes ``init_state()``, ``abstract_state()`` and
``step(state, host_batch, step)``, the one call the loop makes: it picks the batch's step kind,
makes the global batch, compiles the kind's programs on first sight, and runs it:

    "video"     losses.video_loss
    "video_sf"  self_forcing.self_forcing_loss   (a video batch chosen with prob. p)
    "multiview" losses.multiview_loss

Every step skips a non-finite update (loss or gradient NaN/Inf): parameters, optimiser state
and EMA stay as they were and ``state.skipped`` counts it.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines.pipeline import to_global_batch
from starcaster_jax import sharding as shd
from starcaster_jax.training import frozen as frozen_lib
from starcaster_jax.training import lora as lora_lib
from starcaster_jax.training import losses as L
from starcaster_jax.training import optim
from starcaster_jax.training.metrics import step_flops
from starcaster_jax.training.self_forcing import SelfForcingConfig, self_forcing_loss
from starcaster_jax.training.state import (
    ModelDef,
    TrainState,
    load_pretrained,
    lora_config,
    make_rng,
    replicated,
)

log = logging.getLogger(__name__)

STREAM_NAMES = {0: "video", 1: "multiview"}
# What the steps read from a batch (everything else stays on the host).
BATCH_KEYS = ("stream", "frames", "audio", "pose", "pose_valid", "mouth_box", "identity", "id_vector",
              "id_vector_valid")


class Trainer:
    def __init__(self, config, mesh, *, frozen_nets=None):
        self.config = config
        self.mesh = mesh
        self.mdef = ModelDef(config, mesh)
        self.lc = L.LossConfig.from_config(config)
        self.sf = SelfForcingConfig.from_config(config)
        self.lora = lora_config(config)
        self.lora_scale = (float(self.lora["alpha"]) / self.lora["rank"]
                           if self.lora else 1.0)
        nets = frozen_lib.build_frozen(config) if frozen_nets is None else frozen_nets
        self.frozen_graphdefs, frozen_states = frozen_lib.split_frozen(nets)
        with jax.set_mesh(mesh):
            self.frozen_states = jax.device_put(frozen_states, replicated(mesh))

        abstract_params = {"model": self.mdef.abstract_params}
        params_sh = {"model": self.mdef.param_shardings}
        if self.lora:
            abs_lora = jax.eval_shape(lambda p: lora_lib.init_lora(
                p, self.lora["targets"], int(self.lora["rank"]), jax.random.key(0)),
                self.mdef.abstract_params)
            abstract_params["lora"] = abs_lora
            params_sh["lora"] = jax.tree.map(lambda _: replicated(mesh), abs_lora)
        self.abstract_params = abstract_params
        groups = list(config.optim.param_groups or ())
        if self.lora and not self.lora["train_base"]:
            # adapters train, the base is frozen except the small layers named in also_train
            also = self.lora["also_train"]
            groups = ([(also, 1.0)] if also else []) + [(r"^model\.", "freeze")] + groups
        self.groups = groups
        self.tx, self.lr = optim.make_optimizer(config, abstract_params, groups)
        self.mask = optim.trainable_mask(abstract_params, groups)
        abs_opt = jax.eval_shape(self.tx.init, abstract_params)
        rep = replicated(mesh)
        # Adam moments follow their params; counts and masked-out leaves are replicated.
        opt_sh = optim.opt_state_shardings(abs_opt, params_sh, abstract_params, rep)
        self.state_shardings = TrainState(step=rep, params=params_sh, opt_state=opt_sh,
                                          ema=params_sh, rng=rep, skipped=rep)
        self._abs_opt = abs_opt
        self._steps: dict[str, callable] = {}
        self._compiled_aot: dict[str, object] = {}
        self._update_aot = None
        self.flops: dict[str, float | None] = {}   # per compiled kind (None: XLA gave no cost)
        self.compile_seconds = 0.0                  # spent compiling in step(): not training time

    # -- state ---------------------------------------------------------------------------------
    def eval_loss(self, params, batch, seeds=(0, 1, 2, 3), kind: str = "video"):
        """Mean loss of ``params`` on ``batch`` over fixed rngs (noise, t, dropout): a
        low-variance number to compare checkpoints with."""
        if ("eval", kind) not in self._steps:
            loss_fn = self.loss_fn(kind)

            def ev(params, frozen_states, batch):
                nets = frozen_lib.merge_frozen(self.frozen_graphdefs, frozen_states)
                model = self.model_from(params)
                return jnp.mean(jnp.stack([loss_fn(model, nets, batch, jax.random.key(s))[0]
                                           for s in seeds]))
            self._steps[("eval", kind)] = jax.jit(ev)
        with jax.set_mesh(self.mesh):
            return float(self._steps[("eval", kind)](params, self.frozen_states, batch))

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs carrying the target shardings (Orbax restores into them)."""
        abs_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=self.abstract_params,
                               opt_state=self._abs_opt, ema=self.abstract_params,
                               rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
                               skipped=jax.ShapeDtypeStruct((), jnp.int32))
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abs_state, self.state_shardings)

    def init_state(self, model_params=None) -> TrainState:
        """Fresh state; ``model_params`` (e.g. the previous stage's, LoRA merged) replace the
        random init."""
        if model_params is None:
            model_params = load_pretrained(self.mdef, self.mdef.init_params())
        params = {"model": model_params}
        if self.lora:
            params["lora"] = lora_lib.init_lora(model_params, self.lora["targets"],
                                                int(self.lora["rank"]),
                                                jax.random.key(self.config.seed + 1))

        def build(params):
            return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=self.tx.init(params), ema=params,
                              rng=make_rng(self.config.seed), skipped=jnp.zeros((), jnp.int32))

        with jax.set_mesh(self.mesh):
            return jax.jit(build, out_shardings=self.state_shardings)(params)

    # -- steps ---------------------------------------------------------------------------------
    def loss_fn(self, kind: str):
        lc, sf = self.lc, self.sf
        if kind == "video":
            return functools.partial(L.video_loss, lc=lc)
        if kind == "video_sf":
            return functools.partial(self_forcing_loss, lc=lc, sf=sf)
        if kind == "multiview":
            return functools.partial(L.multiview_loss, lc=lc)
        raise ValueError(f"unknown step kind {kind!r}")

    def model_from(self, params):
        """Trainable tree -> the STARCaster module (LoRA merged)."""
        return self.mdef.module(lora_lib.merge(params["model"], params.get("lora"), self.lora_scale))

    def _grads_fn(self, kind: str):
        """(state, frozen, batch) -> (loss, loss metrics, grads): forward + backward."""
        loss_fn = self.loss_fn(kind)
        mask = self.mask

        def grads_fn(state: TrainState, frozen_states, batch):
            rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

            def objective(params):
                nets = frozen_lib.merge_frozen(self.frozen_graphdefs, frozen_states)
                return loss_fn(self.model_from(params), nets, batch, rng)

            (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
            # frozen leaves: constant zeros, so XLA drops their weight gradients entirely
            grads = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)
            return loss, metrics, grads

        return grads_fn

    def _update_fn(self):
        """(state, loss, grads) -> (state, update metrics): clipping, optimiser, EMA, and the
        non-finite skip. The same for every stream."""
        decay = float(self.config.optim.ema_decay)

        def update_fn(state: TrainState, loss, grads):
            gnorm = optax.global_norm(grads)
            ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
            updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            ema = optim.ema_update(state.ema, params, decay, state.step)

            def keep(new, old):
                return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

            new = TrainState(step=state.step + 1, params=keep(params, state.params),
                             opt_state=keep(opt_state, state.opt_state), ema=keep(ema, state.ema),
                             rng=state.rng, skipped=state.skipped + (~ok).astype(jnp.int32))
            return new, dict(grad_norm=gnorm, lr=self.lr(state.step),
                             update_skipped=(~ok).astype(jnp.float32))

        return update_fn

    def _step_fn(self, kind: str):
        grads_fn, update_fn = self._grads_fn(kind), self._update_fn()

        def step(state: TrainState, frozen_states, batch):
            loss, metrics, grads = grads_fn(state, frozen_states, batch)
            state, more = update_fn(state, loss, grads)
            return state, dict(metrics, **more)

        return step

    @property
    def separate_update(self) -> bool:
        mode = str(self.config.optim.update_program)
        if mode not in ("separate", "fused"):
            raise ValueError(f"optim.update_program {mode!r}: expected 'separate' or 'fused'")
        return mode == "separate"

    def compiled(self, kind: str, batch):
        """The step for ``kind``: ``fn(state, frozen_states, batch) -> (state, metrics)``,
        AOT-compiled once ``precompile`` has run, else jitted."""
        if kind in self._compiled_aot:
            return self._compiled_aot[kind]
        if kind not in self._steps:
            batch_sh = {k: shd.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}
            rep = replicated(self.mesh)
            if self.separate_update:
                grads = jax.jit(self._grads_fn(kind),
                                in_shardings=(self.state_shardings, rep, batch_sh),
                                out_shardings=(rep, rep, self.state_shardings.params))
                if "update" not in self._steps:
                    self._steps["update"] = jax.jit(
                        self._update_fn(),
                        in_shardings=(self.state_shardings, rep, self.state_shardings.params),
                        out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
                self._steps[kind] = TwoProgramStep(grads, self._steps["update"])
            else:
                self._steps[kind] = jax.jit(
                    self._step_fn(kind), in_shardings=(self.state_shardings, rep, batch_sh),
                    out_shardings=(self.state_shardings, rep), donate_argnums=(0,))
        return self._steps[kind]

    def kind_for(self, batch, step: int) -> str:
        """Which compiled step a batch goes to; deterministic in (seed, step) so resumes replay."""
        stream = STREAM_NAMES[int(np.asarray(batch["stream"]).reshape(-1)[0])]
        if stream == "video" and self.sf.enabled:
            u = np.random.default_rng([int(self.config.seed), int(step), 7]).random()
            if u < self.sf.probability:
                return "video_sf"
        return stream

    def step(self, state: TrainState, host_batch, step: int):
        """One train step on this process's rows of the batch -> ``(state, metrics, kind)``.

        Everything about step kinds stays here: which kind the batch goes to (``kind_for``:
        its stream, and self-forcing's draw for video), the global batch, and compiling on the
        first batch of a stream every kind that stream can dispatch to (video and video_sf
        together, so a later self-forcing draw never stops training to compile). ``kind`` names
        the metrics' curve; ``compile_seconds`` and ``flops[kind]`` say what compiling cost and
        what a step computes."""
        kind = self.kind_for(host_batch, step)
        batch = self.global_batch(host_batch)
        if kind not in self._compiled_aot:
            siblings = ["video", "video_sf"] if kind.startswith("video") and self.sf.enabled else [kind]
            t0 = time.perf_counter()
            self.precompile({k: batch for k in siblings})
            self.compile_seconds += time.perf_counter() - t0
            for k in siblings:
                self.flops[k] = step_flops(self.compiled(k, batch))
        state, metrics = self.step_kind(state, batch, kind)
        return state, metrics, kind

    def step_kind(self, state: TrainState, batch, kind: str):
        """The step of one given ``kind`` on a global ``batch`` (``global_batch``): for callers
        that choose the kind themselves (benchmarks, tests). -> ``(state, metrics)``."""
        with jax.set_mesh(self.mesh):
            return self.compiled(kind, batch)(state, self.frozen_states, batch)

    def global_batch(self, batch) -> dict:
        """Per-process numpy batch -> global arrays split as the ``batch`` rule says (``data x
        fsdp``; the keys steps read)."""
        batch = {k: v for k, v in batch.items() if k in BATCH_KEYS}
        axes = shd.mesh_axes("batch", self.mesh)
        n = int(np.prod([self.mesh.shape[a] for a in axes]))
        rows = int(np.asarray(batch["stream"]).shape[0]) * jax.process_count()
        if rows % n:
            raise ValueError(f"data.batch_size={rows} is not divisible by mesh {' x '.join(axes)} = {n}")
        sh = {k: shd.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}
        return to_global_batch(batch, sh)

    def precompile(self, batches: dict) -> None:
        """AOT-compile the steps for ``{kind: global batch}``, every XLA program concurrently
        (compiles release the GIL; the shared update program is compiled once)."""
        todo = {k: b for k, b in batches.items() if k not in self._compiled_aot}
        if not todo:
            return
        with jax.set_mesh(self.mesh):
            lowered = {k: self.compiled(k, b).lower(self.abstract_state(), self.frozen_states, b)
                       for k, b in todo.items()}
        jobs = {}
        for k, lo in lowered.items():
            if isinstance(lo, TwoProgramStep):
                jobs[(k, "grads")] = lo.grads
                if self._update_aot is None:
                    jobs[("update", "update")] = lo.update
            else:
                jobs[(k, "step")] = lo
        with cf.ThreadPoolExecutor(max_workers=max(1, min(len(jobs), 4))) as ex:
            done = dict(zip(jobs, ex.map(lambda lo: lo.compile(), list(jobs.values()))))
        if ("update", "update") in done:
            self._update_aot = done[("update", "update")]
        for k in todo:
            self._compiled_aot[k] = (TwoProgramStep(done[(k, "grads")], self._update_aot)
                                     if (k, "grads") in done else done[(k, "step")])

    def window_frames(self) -> int:
        return self.sf.window_frames(self.lc.context_frames, self.lc.num_frames)


class TwoProgramStep:
    """A train step as two XLA programs (``optim.update_program="separate"``, the default):

    ``grads(state, frozen, batch) -> (loss, metrics, grads)``   forward + backward of the stream
    ``update(state, loss, grads) -> (state, metrics)``            clip, optimiser, EMA, NaN skip

    Why two: the global-norm clip and the non-finite check read every gradient before any
    parameter may change, so the fused program materialises all gradients too; splitting costs
    one dispatch and saves compilation (the two halves compile concurrently, each smaller than
    the fused program), and one update program serves every stream. The
    object mirrors ``jax.jit``'s stages: call it, ``.lower(...)``, ``.compile()``,
    ``.cost_analysis()``.
    """

    def __init__(self, grads, update):
        self.grads, self.update = grads, update

    def __call__(self, state, frozen_states, batch):
        loss, metrics, grads = self.grads(state, frozen_states, batch)
        state, more = self.update(state, loss, grads)
        return state, dict(metrics, **more)

    def lower(self, state, frozen_states, batch):
        grads = self.grads.lower(state, frozen_states, batch)
        loss, _, abs_grads = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                          grads.out_info)
        return TwoProgramStep(grads, self.update.lower(state, loss, abs_grads))

    def compile(self):
        return TwoProgramStep(self.grads.compile(), self.update.compile())

    def cost_analysis(self):
        out = {}
        for part in (self.grads, self.update):
            ca = part.cost_analysis()
            ca = ca[0] if isinstance(ca, (list, tuple)) else ca
            for k, v in (ca or {}).items():
                if isinstance(v, (int, float)):
                    out[k] = out.get(k, 0.0) + float(v)
        return out
