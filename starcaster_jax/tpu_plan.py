"""What a config costs on a Cloud TPU slice, found without a TPU.

With ``libtpu`` installed (the ``tpu`` extra), ``jax.experimental.topologies`` describes the
chips of a real TPU topology on any machine; every program a config runs is lowered with
abstract, sharded inputs (no parameter is ever allocated) and compiled by XLA:TPU/Mosaic, whose
``memory_analysis()`` / ``cost_analysis()`` and compiled HLO give per-chip memory, FLOPs and
collective traffic (MaxText's ``train_compile.py`` pattern). ``launch/train_compile.py`` prints
the result; ``tests/test_tpu_aot.py`` checks it.

Programs: one gradient program per train step kind (``video``, ``video_sf``, ``multiview``), the
shared update program, and the generation chunk program (batch 1: replicated activations there
are expected; its parameters are sharded like the trainer's).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax._src import hardware_utils
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from starcaster_jax import sharding as shd
from starcaster_jax.inference.generate import Generator, SamplingSettings
from starcaster_jax.models.attention import resolve_implementation
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.starcaster import STARCaster
from starcaster_jax.models.unet import resolve_dtype
from starcaster_jax.training import frozen as frozen_lib
from starcaster_jax.training.step import Trainer

SAMPLES_PER_FRAME = 640  # 16 kHz audio at 25 fps (data_pipelines)


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip facts. Peak, bandwidths and chips per host: cloud.google.com/tpu/docs (v5p, v6e,
    v5e system architecture; ICI given there in Gbit/s, here in bytes/s). ``hbm_bytes`` is the HBM
    XLA:TPU lets a program use (libtpu 0.0.51's compile-time OOM message, "available HBM"), a
    little under the nominal 95/32/16 GiB."""
    name: str
    hbm_bytes: float          # usable HBM per chip
    peak_bf16: float          # dense bf16 FLOP/s
    hbm_bw: float             # bytes/s
    ici_bw: float             # bytes/s, inter-chip interconnect per chip (all links)
    chips_per_host: int


CHIPS = {
    "v5p": Chip("TPU v5p", 95.73 * 2**30, 459e12, 2765e9, 4800e9 / 8, 4),
    "v6e": Chip("TPU v6e", 31.24 * 2**30, 918e12, 1640e9, 3584e9 / 8, 8),
    "v5e": Chip("TPU v5e", 15.75 * 2**30, 197e12, 819e9, 1600e9 / 8, 4),
}

# slice name -> (chip, topology, chips-per-host bounds). v5p names count TensorCores (2/chip).
TOPOLOGIES = {
    "v5p-8": ("v5p", "2x2x1", (2, 2, 1)),
    "v5p-64": ("v5p", "2x4x4", (2, 2, 1)),
    "v6e-8": ("v6e", "2x4", (2, 4, 1)),
    "v5e-16": ("v5e", "4x4", (2, 2, 1)),
}
# Any "<chip>:<AxBxC>" works too (e.g. "v5p:2x2x1"), with the chip's default host bounds.
_HOST_BOUNDS = {"v5p": (2, 2, 1), "v6e": (2, 4, 1), "v5e": (2, 2, 1)}


def parse_topology(name: str) -> tuple[Chip, str, tuple[int, int, int]]:
    if name in TOPOLOGIES:
        chip, topo, bounds = TOPOLOGIES[name]
        return CHIPS[chip], f"{chip}:{topo}", bounds
    m = re.fullmatch(r"(v5p|v6e|v5e):(\d+(?:x\d+)+)", name)
    if not m:
        raise ValueError(f"unknown topology {name!r}: known are {', '.join(TOPOLOGIES)} "
                         "(or '<v5p|v6e|v5e>:<AxB[xC]>', e.g. v5p:2x2x1)")
    dims = [int(x) for x in m.group(2).split("x")]
    bounds = tuple(min(d, b) for d, b in zip(dims + [1] * (3 - len(dims)), _HOST_BOUNDS[m.group(1)]))
    return CHIPS[m.group(1)], name, bounds


def accelerator_type(name: str) -> str:
    """Cloud TPU's accelerator-type name of a topology (``v5p-8``, ``v6e-8``, ``v5litepod-16``)."""
    chip, topo, _ = parse_topology(name)
    n = int(np.prod([int(x) for x in topo.split(":")[1].split("x")]))
    return {"v5p": f"v5p-{2 * n}", "v6e": f"v6e-{n}", "v5e": f"v5litepod-{n}"}[topo.split(":")[0]]


def quiet_libtpu(name: str) -> None:
    """On a machine without TPU chips, tell libtpu what it would otherwise look up in the GCE
    metadata server (and warn about, several lines per process). Call before it loads."""
    if hardware_utils.num_available_tpu_chips_and_device_id()[0]:
        return  # a real TPU VM: its own settings stand
    for k, v in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", accelerator_type(name)),
                 ("TPU_WORKER_ID", "0"), ("TPU_WORKER_HOSTNAMES", "localhost")):
        os.environ.setdefault(k, v)


def topology_devices(name: str, num_slices: int = 1) -> tuple[Chip, list]:
    """Real TPU device descriptions for ``name`` (needs libtpu), ordered slice-major so that the
    mesh's leading ``data`` axis spans slices (DCN) and ``fsdp``/``tensor`` stay inside one (ICI)."""
    chip, topo, bounds = parse_topology(name)
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topo,
                                            chip_config_name="default",
                                            chips_per_host_bounds=bounds, num_slices=num_slices)
    except Exception as e:  # libtpu missing or topology unknown to it
        raise RuntimeError(f"TPU topology {topo!r}: {e} (install the `tpu` extra: "
                           "pip install -e '.[tpu]')") from e
    devices = sorted(desc.devices, key=lambda d: (getattr(d, "slice_index", 0) or 0, d.id))
    return chip, devices


def resolve_for_tpu(config) -> None:
    """Fix the platform-dependent config choices to what a TPU run resolves them to (this host's
    default backend is not the target's)."""
    config.model.unet.attention_impl = resolve_implementation(config.model.unet.attention_impl, "tpu")
    config.model.unet.dtype = resolve_dtype(config.model.unet.dtype, "tpu")


def tpu_mesh(config, devices, num_slices: int = 1):
    shape = {a: int(config.mesh[a]) for a in shd.MESH_AXES}
    if num_slices > 1:
        if shape["data"] in (1, -1):
            shape["data"] = num_slices
        if shape["data"] % num_slices:
            raise ValueError(f"mesh.data={shape['data']}: must be a multiple of num_slices={num_slices}")
    return shd.make_mesh(tuple(shape[a] for a in shd.MESH_AXES), devices=devices)


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


def _state_groups(state) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "ema": state.ema,
            "other": (state.step, state.rng, state.skipped)}


def abstract_trainer(config, mesh):
    """-> (Trainer, abstract frozen states): the Trainer with abstract frozen networks (no
    weight is ever built), frozen states replicated as the trainer's are."""
    if not _separate_update(config):
        raise NotImplementedError("train_compile plans optim.update_program='separate' (the default); "
                                  "the fused program is not broken down into gradients and update")
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
    """Lowered gradient program per kind + the shared update program, and the Trainer.

    The grads program takes the whole train state (JAX prunes the unused optimiser state and
    EMA from its XLA arguments, but they stay resident in HBM, so they count)."""
    trainer, frozen_abs = built or abstract_trainer(config, mesh)
    state_abs = trainer.abstract_state()
    programs, update_done = [], False
    for kind in kinds or kinds_of(config):
        batch = abstract_batch(config, mesh, kind, trainer.window_frames())
        with jax.set_mesh(mesh):
            lo = trainer.compiled(kind, batch).lower(state_abs, frozen_abs, batch)
        programs.append(Program(
            f"grads:{kind}", lo.grads, (state_abs, frozen_abs, batch),
            lambda a: dict(_state_groups(a[0]), frozen=a[1], batch=a[2])))
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


def _separate_update(config) -> bool:
    """Trainer.separate_update, read from the config before a Trainer exists."""
    mode = str(config.optim.update_program)
    if mode not in ("separate", "fused"):
        raise ValueError(f"optim.update_program {mode!r}: expected 'separate' or 'fused'")
    return mode == "separate"


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


# -- analysis -----------------------------------------------------------------------------------------
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


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([\w\-]+)\(")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def _shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _SHAPE.findall(text)]


def _nbytes(dtype: str, dims) -> int:
    return int(np.prod(dims)) * _DTYPE_BYTES.get(dtype, 4)


def hlo_instructions(hlo: str):
    """(opcode, result-shape text, full line) of every instruction of a compiled HLO module."""
    for line in hlo.splitlines():
        m = _INSTR.match(line)
        if m:
            yield m.group(2), m.group(1), line


def collective_bytes(hlo: str) -> dict[str, int]:
    """Result bytes of each collective kind, per chip, per execution of the module text (ops in
    a while body count once). Async ``-start`` ops count their output buffer; ``-done`` nothing."""
    out = {k: 0 for k in COLLECTIVES}
    for op, shape, _ in hlo_instructions(hlo):
        base = op[:-len("-start")] if op.endswith("-start") else op
        if base not in out:
            continue
        sizes = [_nbytes(d, dims) for d, dims in _shapes(shape)]
        if sizes:
            out[base] += max(sizes) if op.endswith("-start") else sum(sizes)
    return out


# Matmuls (2 * Lq * Lk * D FLOPs each) per splash kernel: fwd QK^T, PV; dq recomputes QK^T, dP,
# dS K; dkv recomputes QK^T, dP, P^T dO, dS^T Q.
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}


def splash_flops(hlo: str) -> tuple[float, int]:
    """Analytic FLOPs of the splash kernels in a compiled module (XLA counts custom calls as ~0),
    from each custom call's operand shapes: (flops, number of kernel calls)."""
    flops, calls = 0.0, 0
    for op, _, line in hlo_instructions(hlo):
        if op != "custom-call" or "tpu_custom_call" not in line:
            continue
        found = re.search(r"splash_mha_(dkv|dq|fwd)", line)  # kernel name: instruction or config
        if found is None:
            continue
        kind = found.group(1)
        # operand shapes: printed inline in XLA's dumps, else in operand_layout_constraints
        inline = re.search(r"custom-call\((.*?)\),\s*custom_call_target", line)
        ops = re.search(r"operand_layout_constraints=\{(.*?)\}(?:,\s*[a-z_]+=|$)", line)
        text = inline.group(1) if inline and _shapes(inline.group(1)) else (ops.group(1) if ops else "")
        arrays = [s for s in _shapes(text) if len(s[1]) >= 3 and s[0] in ("bf16", "f16", "f32")]
        if len(arrays) < 2:
            continue
        q, k = arrays[0][1], arrays[1][1]          # [..., H, Lq, D], [..., H, Lk, D]
        flops += 2.0 * _SPLASH_MATMULS[kind] * np.prod(q[:-1]) * k[-2] * q[-1]
        calls += 1
    return flops, calls


def entry_argument_bytes(hlo: str) -> int:
    """Bytes of the compiled module's ENTRY parameters as XLA declares them (per-chip shapes,
    no layout padding): what each chip is really handed."""
    for line in hlo.splitlines():
        if line.startswith("ENTRY"):
            signature = line.split(" -> ")[0]
            return sum(_nbytes(d, dims) for d, dims in _shapes(signature))
    raise ValueError("no ENTRY computation in the HLO text")


def largest_buffers(hlo: str, n: int = 5, skip=("parameter", "get-tuple-element", "tuple", "bitcast")):
    """The ``n`` largest per-chip instruction results (bytes, opcode, shape) of a compiled module."""
    rows = []
    for op, shape, _ in hlo_instructions(hlo):
        if op in skip or op.endswith("-done"):
            continue
        for d, dims in _shapes(shape):
            rows.append((_nbytes(d, dims), op, f"{d}[{','.join(map(str, dims))}]"))
    return sorted(rows, reverse=True)[:n]


@dataclasses.dataclass
class Report:
    program: str
    chip: Chip
    groups: dict[str, int]           # per-chip bytes per group (arguments as compiled + resident)
    xla_argument: int                # XLA's argument size (includes TPU layout padding; pruned args excluded)
    temp: int
    output: int
    alias: int
    xla_flops: float
    kernel_flops: float
    kernel_calls: int
    bytes_accessed: float
    collectives: dict[str, int]
    steps: int
    oom: str = ""                    # XLA:TPU refused to compile: its message

    @property
    def argument(self) -> int:
        """Resident bytes per chip: the larger of the shard sizes of everything held (pruned
        arguments included) and XLA's own argument size (tile padding included)."""
        return max(sum(self.groups.values()), self.xla_argument)

    @property
    def total(self) -> int:
        return self.argument + self.temp + self.output - self.alias

    @property
    def fits(self) -> bool:
        return not self.oom and self.total <= self.chip.hbm_bytes

    @property
    def flops(self) -> float:
        return self.steps * (self.xla_flops + self.kernel_flops)

    @property
    def times(self) -> dict[str, float]:
        c = self.chip
        return {"compute": self.flops / c.peak_bf16, "hbm": self.steps * self.bytes_accessed / c.hbm_bw,
                "ici": self.steps * sum(self.collectives.values()) / c.ici_bw}

    @property
    def step_time(self) -> float:
        return max(self.times.values())

    @property
    def mfu(self) -> float:
        t = self.step_time
        return self.flops / (t * self.chip.peak_bf16) if t > 0 else 0.0


def compiled_args(prog: Program, compiled) -> tuple:
    """``prog.call_args`` with the shardings the compiled program takes them in (arguments it
    does not read, which JAX prunes, come back replicated)."""
    shardings = compiled.input_shardings[0]
    return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                        tuple(prog.call_args), tuple(shardings))


def analyse(prog: Program, compiled, hlo: str, chip: Chip) -> Report:
    """Per-chip memory, FLOPs and collectives of one compiled program.

    XLA's cost analysis counts a while loop's body once; the generation chunk's sampler is a
    ``fori_loop`` over ``steps``, so its figures are multiplied by ``prog.steps`` (which
    overcounts the once-per-chunk audio encoder a little)."""
    mem = compiled.memory_analysis()
    ca = compiled.cost_analysis()
    ca = (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}
    kflops, kcalls = splash_flops(hlo)
    # the shardings the arrays live in (the trainer's); the compiled program takes its used
    # arguments in exactly these (tests/test_tpu_aot.py), and reports the pruned ones replicated
    groups = {k: per_chip_bytes(v) for k, v in prog.groups(tuple(prog.call_args)).items()}
    groups.update({k: per_chip_bytes(v) for k, v in prog.resident.items()})
    return Report(program=prog.name, chip=chip, groups=groups,
                  xla_argument=int(mem.argument_size_in_bytes),
                  temp=int(mem.temp_size_in_bytes), output=int(mem.output_size_in_bytes),
                  alias=int(mem.alias_size_in_bytes), xla_flops=float(ca.get("flops", 0.0)),
                  kernel_flops=kflops, kernel_calls=kcalls,
                  bytes_accessed=float(ca.get("bytes accessed", 0.0)),
                  collectives=collective_bytes(hlo), steps=prog.steps)


_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM")
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def oom_report(prog: Program, message: str, chip: Chip) -> Report:
    """A program XLA:TPU refused to compile for lack of HBM: what it said its temporaries need."""
    m = _OOM.search(message)
    temp = int(float(m.group(1)) * _UNIT[m.group(2)]) if m else 0
    groups = {k: per_chip_bytes(v) for k, v in prog.groups(tuple(prog.call_args)).items()}
    groups.update({k: per_chip_bytes(v) for k, v in prog.resident.items()})
    return Report(program=prog.name, chip=chip, groups=groups, xla_argument=0, temp=temp, output=0,
                  alias=0, xla_flops=0.0, kernel_flops=0.0, kernel_calls=0, bytes_accessed=0.0,
                  collectives={k: 0 for k in COLLECTIVES}, steps=prog.steps,
                  oom=message.strip().splitlines()[0])


class CompileOOM(Exception):
    """XLA:TPU's compile-time "ran out of memory on HBM"."""


def compile_program(prog: Program):
    """-> (compiled, per-chip optimised HLO text). Raises ``CompileOOM`` when XLA:TPU finds the
    program's temporaries alone exceed the chip's HBM.

    The text is ``compiled.as_text()``; where a module does not print (some XLA:TPU async ops
    did not round-trip through this jaxlib's HLO printer), the program is compiled again with
    XLA's own dump, which always works but costs a second compile."""
    try:
        compiled = prog.lowered.compile()
    except Exception as e:  # jax.errors.JaxRuntimeError; its type moved between jax releases
        if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
            raise CompileOOM(str(e)) from None
        raise
    try:
        return compiled, compiled.as_text()
    except Exception:  # noqa: BLE001 - any printer failure: fall back to the dump
        pass
    with tempfile.TemporaryDirectory() as d:
        again = prog.lowered.compile(compiler_options={"xla_dump_to": d, "xla_dump_hlo_as_text": True})
        files = sorted(glob.glob(os.path.join(d, "*.after_optimizations.txt")), key=os.path.getsize)
        if not files:
            raise RuntimeError(f"{prog.name}: XLA wrote no optimised HLO dump")
        with open(files[-1]) as f:
            return again, f.read()


def plan_program(prog: Program, chip: Chip) -> tuple[Report, str]:
    """Compile and analyse one program -> (report, optimised HLO text; "" when it did not compile)."""
    try:
        compiled, hlo = compile_program(prog)
    except CompileOOM as e:
        return oom_report(prog, str(e), chip), ""
    return analyse(prog, compiled, hlo, chip), hlo


def gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def size(x: float) -> str:
    """Bytes -> "1.23 GiB" / "45.6 MiB" / "7.8 KiB"."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale or unit == "KiB":
            return f"{x / scale:.{2 if unit in ('GiB', 'TiB') else 1}f} {unit}"


def format_report(r: Report, header: str = "") -> str:
    """One markdown table per program."""
    rows = [(f"{k}", size(v)) for k, v in r.groups.items() if k != "other" or v > 2**20]
    if r.oom:
        rows.append(("temporaries (XLA:TPU refused to compile)", size(r.temp)))
    else:
        rows += [("XLA argument size", size(r.xla_argument)), ("temporaries", size(r.temp)),
                 ("outputs", size(r.output)), ("aliased (donated) outputs", f"-{size(r.alias)}")]
    verdict = "fits" if r.fits else "**DOES NOT FIT**"
    rows.append(("**total / HBM**", f"**{size(r.total)} / {gib(r.chip.hbm_bytes)} GiB** {verdict}"))
    if r.oom:
        rows.append(("XLA:TPU", r.oom))
    else:
        mult = f" x {r.steps} steps" if r.steps > 1 else ""
        rows += [(f"FLOPs, XLA{mult}", f"{r.steps * r.xla_flops:.3e}"),
                 (f"FLOPs, splash kernels (analytic, {r.kernel_calls} calls){mult}",
                  f"{r.steps * r.kernel_flops:.3e}"),
                 ("FLOPs per chip", f"{r.flops:.3e}")]
        rows += [(k + mult, size(r.steps * v)) for k, v in r.collectives.items() if v]
        t = r.times
        rows += [("roofline: compute / HBM / ICI (ms)",
                  f"{t['compute'] * 1e3:.1f} / {t['hbm'] * 1e3:.1f} / {t['ici'] * 1e3:.1f}"),
                 ("**step time (roofline)**", f"**{r.step_time * 1e3:.1f} ms**"),
                 (f"MFU at {r.chip.peak_bf16 / 1e12:.0f} TFLOP/s bf16 (FLOPs as executed)", f"{100 * r.mfu:.0f}%")]
    w = max(len(a) for a, _ in rows)
    title = f"### {r.program}" + (f" ({header})" if header else "")
    lines = [title, "", f"| {'per chip'.ljust(w)} | value |", f"|{'-' * (w + 2)}|-------|"]
    lines += [f"| {a.ljust(w)} | {b} |" for a, b in rows]
    return "\n".join(lines)


# -- the plan of a whole config -------------------------------------------------------------------
PROGRAMS = ("video", "video_sf", "multiview", "update", "generate")
# remat policies from most to least memory kept for the backward pass (models/unet.py)
REMAT_ORDER = ("none", "dots_saveable", "dots", "full")


def check_batch(config, mesh) -> int:
    """-> per-chip batch; ValueError when ``data.batch_size`` does not split over data x fsdp."""
    n = int(mesh.shape["data"] * mesh.shape["fsdp"])
    b = int(config.data.batch_size)
    if b % n:
        raise ValueError(f"data.batch_size={b} does not split over mesh data x fsdp = {n} chips: "
                         f"use a multiple of {n}")
    return b // n


def lower_programs(config, mesh, wanted=PROGRAMS, built=None) -> list[Program]:
    """Every program the config would run (restricted to ``wanted``), lowered abstractly;
    ``built``: ``abstract_trainer``'s result, when the caller has it already."""
    kinds = [k for k in kinds_of(config) if k in wanted]
    progs: list[Program] = []
    if kinds or "update" in wanted:
        train, _ = train_programs(config, mesh, kinds or kinds_of(config)[:1], built)
        progs += [p for p in train if p.name == "update" and "update" in wanted
                  or p.name.startswith("grads:") and p.name[len("grads:"):] in kinds]
    if "generate" in wanted:
        progs.append(generation_program(config, mesh))
    return progs


def _shard_more(state: int, mesh, num_slices: int) -> str:
    fsdp, data = int(mesh.shape["fsdp"]), int(mesh.shape["data"])
    if data > num_slices:
        return (f"the train state alone is {gib(state)} GiB per chip: shard it over more chips, "
                f"--config.mesh.fsdp={fsdp * data // num_slices} --config.mesh.data={num_slices}")
    return f"the train state alone is {gib(state)} GiB per chip: use a larger slice (more fsdp)"


def suggestion(r: Report, config, mesh, num_slices: int = 1) -> str:
    """One line: what to change so that ``r``'s program fits."""
    state = sum(r.groups.get(k, 0) for k in ("params", "opt_state", "ema", "grads"))
    if state > r.chip.hbm_bytes / 2:
        return _shard_more(state, mesh, num_slices)
    per_chip = int(config.data.batch_size) // max(int(mesh.shape["data"] * mesh.shape["fsdp"]), 1)
    if r.program.startswith("grads:"):
        policy = str(config.model.unet.remat_policy)
        order = list(REMAT_ORDER)
        nxt = order[order.index(policy) + 1] if policy in order and policy != order[-1] else ""
        smaller = (f"--config.data.batch_size={int(config.data.batch_size) // 2} "
                   f"(per-chip batch {per_chip} -> {per_chip // 2})") if per_chip > 1 else ""
        if nxt and smaller:
            return f"try --config.model.unet.remat_policy={nxt}, or a smaller per-chip batch: {smaller}"
        if nxt:
            return f"try --config.model.unet.remat_policy={nxt}"
        if smaller:
            return f"a smaller per-chip batch: {smaller}"
    return "use a larger slice or a larger --config.mesh.fsdp / --config.mesh.tensor"


def state_suggestion(state: dict[str, int], chip: Chip, mesh, num_slices: int = 1) -> str:
    """"" when the resident train state fits in HBM, else the one-line fix."""
    total = sum(state.values())
    return "" if total <= chip.hbm_bytes else _shard_more(total, mesh, num_slices)
