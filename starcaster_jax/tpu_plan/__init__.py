"""What a config costs on a Cloud TPU slice, found without a TPU.

With ``libtpu`` installed (the ``tpu`` extra), ``jax.experimental.topologies`` describes the
chips of a real TPU topology on any machine; every program a config runs is lowered with
abstract, sharded inputs (no parameter is ever allocated) and compiled by XLA:TPU/Mosaic, whose
``memory_analysis()`` / ``cost_analysis()`` and compiled HLO give per-chip memory, FLOPs and
collective traffic (MaxText's ``train_compile.py`` pattern). ``launch/train_compile.py`` prints
the result; ``tests/test_tpu_aot.py`` checks it.

One job per module: ``chips`` (chip facts, topologies, devices, mesh), ``programs`` (the
abstract inputs and the lowered programs of a config), ``hlo`` (reading compiled HLO text),
``report`` (compiling, the per-chip report, its table, the suggestions). Every public name is
re-exported here: ``from starcaster_jax import tpu_plan as tp; tp.plan_program(...)``.
"""
from starcaster_jax.tpu_plan.chips import (
    CHIPS,
    TOPOLOGIES,
    Chip,
    accelerator_type,
    parse_topology,
    quiet_libtpu,
    resolve_for_tpu,
    topology_devices,
    tpu_mesh,
)
from starcaster_jax.tpu_plan.hlo import (
    COLLECTIVES,
    collective_bytes,
    entry_argument_bytes,
    hlo_instructions,
    largest_buffers,
    splash_flops,
)
from starcaster_jax.tpu_plan.programs import (
    PROGRAMS,
    SAMPLES_PER_FRAME,
    TRAIN_PREFIXES,
    Program,
    abstract_batch,
    abstract_frozen,
    abstract_trainer,
    check_batch,
    generation_program,
    global_bytes,
    kinds_of,
    lower_programs,
    per_chip_bytes,
    resident_state,
    separate_update,
    train_programs,
)
from starcaster_jax.tpu_plan.report import (
    REMAT_ORDER,
    CompileOOM,
    Report,
    analyse,
    compile_program,
    compiled_args,
    format_report,
    gib,
    oom_report,
    plan_program,
    size,
    state_suggestion,
    suggestion,
)

__all__ = [
    "CHIPS", "COLLECTIVES", "PROGRAMS", "REMAT_ORDER", "SAMPLES_PER_FRAME", "TOPOLOGIES", "TRAIN_PREFIXES",
    "Chip", "CompileOOM", "Program", "Report",
    "abstract_batch", "abstract_frozen", "abstract_trainer", "accelerator_type", "analyse", "check_batch",
    "collective_bytes", "compile_program", "compiled_args", "entry_argument_bytes", "format_report",
    "generation_program", "gib", "global_bytes", "hlo_instructions", "kinds_of", "largest_buffers",
    "lower_programs", "oom_report", "parse_topology", "per_chip_bytes", "plan_program", "quiet_libtpu",
    "resident_state", "resolve_for_tpu", "separate_update", "size", "splash_flops", "state_suggestion",
    "suggestion", "topology_devices", "tpu_mesh", "train_programs",
]
