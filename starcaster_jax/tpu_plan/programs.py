"""Every XLA program a config runs, lowered with abstract, sharded inputs: no parameter is ever
allocated, the shardings are the ones the trainer and the generator would give the real arrays.

Train programs follow ``optim.update_program``: ``separate`` (the default) lowers one gradient
program per step kind (``grads:<kind>``) and the update program they share (``update``);
``fused`` lowers one whole step per kind (``step:<kind>``). The generation chunk program
(``generate_chunk``) runs at batch 1, so its activations are replicated; its parameters are
sharded like the trainer's."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from starcaster_jax import sharding as shd
from starcaster_jax.inference import Generator, SamplingSettings
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.starcaster import STARCaster
from starcaster_jax.training import frozen as frozen_lib
from starcaster_jax.training.step import Trainer

SAMPLES_PER_FRAME = 640  # 16 kHz audio at 25 fps (data_pipelines)
PROGRAMS = ("video", "video_sf", "multiview", "update", "generate")
TRAIN_PREFIXES = ("grads:", "step:")  # names of the per-kind train programs (separate, fused)


@dataclasses.dataclass
class Program:
    """One lowered XLA program and what lives in HBM while it runs.

    ``call_args``: the abstract positional arguments it was lowered with, with the shardings
    they live in. ``groups(call_args)`` names the parts of the memory breakdown (params,
    optimiser state, ...). ``resident``: state that stays in HBM during the program without
    being one of its arguments (the frozen networks and the batch during the update; generation
    runs on its own, without a train state)."""
    name: str
    lowered: Any
    call_args: tuple
    groups: Callable[[tuple], dict]
    resident: dict = dataclasses.field(default_factory=dict)
    steps: int = 1            # times the compiled loop body runs (sampler steps; see analyse())


# -- bytes of abstract trees -------------------------------------------------------------------------
def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of ``tree`` (sharded ShapeDtypeStructs): its largest shard per leaf."""
    total = 0
    for a in jax.tree.leaves(tree):
        shape = a.sharding.shard_shape(a.shape) if getattr(a, "sharding", None) is not None else a.shape
        total += int(np.prod(shape)) * _itemsize(a.dtype)
    return total


def _itemsize(dtype) -> int:
    return int(getattr(dtype, "itemsize", None) or jnp.dtype(dtype).itemsize)  # PRNG key dtypes too


def global_bytes(tree) -> int:
    return sum(int(np.prod(a.shape)) * _itemsize(a.dtype) for a in jax.tree.leaves(tree))


# -- abstract inputs ---------------------------------------------------------------------------------
def _with_sharding(tree, sharding_tree):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, sharding_tree)


def _replicated_abstract(tree, mesh):
    rep = NamedSharding(mesh, P())
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), tree)


def abstract_batch(config, mesh, kind: str, window_frames: int) -> dict:
    """The pipeline's batch (the keys the steps read) as sharded ShapeDtypeStructs."""
    b, r, w = int(config.data.batch_size), int(config.data.resolution), int(config.model.audio.window)
    t = int(config.data.num_views) if kind == "multiview" else int(window_frames)
    shapes = {"stream": ((b,), jnp.int32), "frames": ((b, t, r, r, 3), jnp.float32),
              "audio": ((b, (t + 2 * w) * SAMPLES_PER_FRAME), jnp.float32),
              "pose": ((b, t, 6), jnp.float32), "pose_valid": ((b,), jnp.bool_),
              "mouth_box": ((b, t, 4), jnp.float32), "identity": ((b, 48), jnp.float32),
              "id_vector": ((b, 48), jnp.float32)}
    return {k: jax.ShapeDtypeStruct(s, d, sharding=shd.batch_sharding(mesh, len(s)))
            for k, (s, d) in shapes.items()}


def abstract_frozen(config):
    """(graphdefs, abstract states) of the frozen networks, built with ``nnx.eval_shape``."""
    nets = nnx.eval_shape(lambda: frozen_lib.build_frozen(config))
    return frozen_lib.split_frozen(nets)


def check_batch(config, mesh) -> int:
    """-> per-chip batch; ValueError when ``data.batch_size`` does not split over data x fsdp."""
    n = int(mesh.shape["data"] * mesh.shape["fsdp"])
    b = int(config.data.batch_size)
    if b % n:
        raise ValueError(f"data.batch_size={b} does not split over mesh data x fsdp = {n} chips: "
                         f"use a multiple of {n}")
    return b // n


# -- train programs ----------------------------------------------------------------------------------
def kinds_of(config) -> list[str]:
    """The train step kinds this config dispatches to (Trainer.kind_for)."""
    mix = dict(config.data.mixture)
    kinds = []
    if float(mix.get("video", 0.0)) > 0:
        kinds.append("video")
        if bool(config.self_forcing.enabled):
            kinds.append("video_sf")
    if float(mix.get("multiview", 0.0)) > 0:
        kinds.append("multiview")
    return kinds


def separate_update(config) -> bool:
    """Trainer.separate_update, read from the config before a Trainer exists."""
    mode = str(config.optim.update_program)
    if mode not in ("separate", "fused"):
        raise ValueError(f"optim.update_program {mode!r}: expected 'separate' or 'fused'")
    return mode == "separate"


def _state_groups(state) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "ema": state.ema,
            "other": (state.step, state.rng, state.skipped)}


def _step_groups(a) -> dict:
    """The groups of a program called as ``(state, frozen, batch)``."""
    return dict(_state_groups(a[0]), frozen=a[1], batch=a[2])


def abstract_trainer(config, mesh):
    """-> (Trainer, abstract frozen states): the Trainer with abstract frozen networks (no
    weight is ever built), frozen states replicated as the trainer's are."""
    separate_update(config)  # a bad optim.update_program fails here, before anything is built
    trainer = Trainer(config, mesh, frozen_nets={})
    # The Trainer would device_put real frozen weights; give it abstract ones instead.
    graphdefs, states = abstract_frozen(config)
    trainer.frozen_graphdefs = graphdefs
    return trainer, _replicated_abstract(states, mesh)


def resident_state(trainer, frozen_abs) -> dict[str, int]:
    """Per-chip bytes of what a training run keeps in HBM between steps."""
    st = trainer.abstract_state()
    return {"params": per_chip_bytes(st.params), "opt_state": per_chip_bytes(st.opt_state),
            "ema": per_chip_bytes(st.ema), "frozen": per_chip_bytes(frozen_abs)}


def train_programs(config, mesh, kinds=None, built=None) -> tuple[list[Program], Any]:
    """Lowered train programs per kind, and the Trainer: ``grads:<kind>`` + the shared
    ``update`` (separate), or ``step:<kind>`` (fused).

    The grads program takes the whole train state (JAX prunes the unused optimiser state and
    EMA from its XLA arguments, but they stay resident in HBM, so they count)."""
    trainer, frozen_abs = built or abstract_trainer(config, mesh)
    state_abs = trainer.abstract_state()
    programs, update_done = [], False
    for kind in kinds or kinds_of(config):
        batch = abstract_batch(config, mesh, kind, trainer.window_frames())
        with jax.set_mesh(mesh):
            lo = trainer.compiled(kind, batch).lower(state_abs, frozen_abs, batch)
        if not trainer.separate_update:  # one jitted step: lowered as it is
            programs.append(Program(f"step:{kind}", lo, (state_abs, frozen_abs, batch), _step_groups))
            continue
        programs.append(Program(f"grads:{kind}", lo.grads, (state_abs, frozen_abs, batch), _step_groups))
        if not update_done:
            loss_abs, _, grads_abs = lo.grads.out_info
            grads_abs = _with_sharding(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                    grads_abs), trainer.state_shardings.params)
            programs.append(Program(
                "update", lo.update, (state_abs, jax.ShapeDtypeStruct(loss_abs.shape, loss_abs.dtype),
                                      grads_abs),
                lambda a: dict(_state_groups(a[0]), grads=a[2]),
                resident={"frozen": frozen_abs, "batch": batch}))
            update_done = True
    return programs, trainer


# -- generation --------------------------------------------------------------------------------------
def generation_program(config, mesh) -> Program:
    """The generation chunk program (inference/generate.py's one jitted chunk sampler), lowered
    with abstract weights: the model's sharded by the logical-axis rules, frozen nets replicated."""
    model = nnx.eval_shape(lambda: STARCaster(config.model, rngs=InitRngs(jax.random.key(0, impl="rbg"))))
    graphdefs, frozen = abstract_frozen(config)
    nets = {k: nnx.merge(graphdefs[k], frozen[k]) for k in graphdefs}
    gen = Generator(model, nets["vae"], nets.get("audio"), config)
    settings = SamplingSettings.from_config(config)
    slots = gen.chunk_frames
    with_audio = gen.has_audio
    fn = gen._chunk_fn(settings, slots, with_audio, True)
    states = gen._states()
    model_sh = shd.state_shardings(states["model"], mesh)
    states_abs = dict(states)
    states_abs["model"] = jax.tree.map(
        lambda v, s: v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype, sharding=s)),
        states["model"], model_sh, is_leaf=lambda x: isinstance(x, nnx.Variable))
    for k in states_abs:
        if k != "model":
            states_abs[k] = _replicated_abstract(states[k], mesh)
    rep = NamedSharding(mesh, P())
    h, w, c = gen.latent_shape
    sds = lambda s, d: jax.ShapeDtypeStruct(s, d, sharding=rep)  # noqa: E731
    win = int(config.model.audio.window)
    audio = sds((1, (slots + 2 * win) * SAMPLES_PER_FRAME), jnp.float32) if with_audio else None
    key = jax.eval_shape(lambda: jax.random.key(0))
    inputs = (audio, sds((1, slots, h, w, c), jnp.float32), sds((1, slots), jnp.bool_),
              sds((1, slots, 6), jnp.float32), sds((1,), jnp.bool_), sds((1, 512), jnp.float32),
              jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep))
    with jax.set_mesh(mesh):
        lowered = fn.lower(states_abs, *inputs)
    return Program("generate_chunk", lowered, (states_abs, *inputs),
                   lambda a: {"params": a[0]["model"],
                              "frozen": {k: v for k, v in a[0].items() if k != "model"},
                              "inputs": [x for x in a[1:] if x is not None]},
                   steps=int(settings.steps))


# -- the programs of a whole config ------------------------------------------------------------------
def lower_programs(config, mesh, wanted=PROGRAMS, built=None) -> list[Program]:
    """Every program the config would run (restricted to ``wanted``: step kinds, ``update``,
    ``generate``), lowered abstractly; ``built``: ``abstract_trainer``'s result, when the caller
    has it already. A fused config has no ``update`` program of its own."""
    kinds = [k for k in kinds_of(config) if k in wanted]
    progs: list[Program] = []
    if kinds or ("update" in wanted and separate_update(config)):
        train, _ = train_programs(config, mesh, kinds or kinds_of(config)[:1], built)
        progs += [p for p in train if p.name == "update" and "update" in wanted
                  or p.name.startswith(TRAIN_PREFIXES) and p.name.split(":", 1)[1] in kinds]
    if "generate" in wanted:
        progs.append(generation_program(config, mesh))
    return progs
