r"""What a config costs on a Cloud TPU slice, before paying for one: every program it runs,
compiled ahead of time for that topology by XLA:TPU on this (CPU-only) machine.

    python -m launch.train_compile --config=configs/stage2_audio.py:paper --topology=v5p-8 \
        [--num_slices=2] [--config.mesh.fsdp=4] [--config.model.unet.remat_policy=full] \
        [--programs=video,update,generate]

Needs the ``tpu`` extra (``pip install -e '.[tpu]'``: libtpu). Nothing is allocated: the train
state and batch are abstract, with the shardings the logical-axis rules give them. Prints one
markdown table per program (``grads:<kind>`` per train step kind the config enables and the
shared ``update``, or one ``step:<kind>`` per kind with ``optim.update_program=fused``; the
``generate_chunk`` sampler): per-chip memory (params, optimiser state, EMA, frozen networks,
batch, temporaries, outputs; total against the chip's HBM), FLOPs (XLA's plus the analytic
FLOPs of the splash kernels, which XLA counts as ~0), collective bytes by kind, a roofline step
time and MFU at the chip's bf16 peak. Multi-slice (``--num_slices=N``) puts
``mesh.data`` over the slices.

Exit status 0 when every program fits; 2 with one ``error:`` line (misuse: unknown topology,
a batch that does not split, ...) or one line per program that does not fit, each with a
suggestion (a remat policy, a larger ``mesh.fsdp``, a smaller per-chip batch).
"""
from __future__ import annotations

import logging
import os
import sys
import time

# The host compiles for the TPU; it never runs on one.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/<stage>.py:<variant>[,ablation=<name>]",
                                lock_config=True)
flags.DEFINE_string("topology", None, "v5p-8 | v5p-64 | v6e-8 | v5e-16 | <v5p|v6e|v5e>:<AxB[xC]>")
flags.DEFINE_integer("num_slices", 1, "slices joined over DCN; mesh.data spans them")
flags.DEFINE_string("programs", "", "comma-separated subset of video,video_sf,multiview,update,generate "
                                    "(default: every program the config runs)")


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def main(argv) -> int:
    if len(argv) > 1:
        return _error(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.config is None:
        return _error("--config is required (e.g. --config=configs/stage2_audio.py:paper)")
    from starcaster_jax import tpu_plan as tp  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    if not FLAGS.topology:
        return _error(f"--topology is required: one of {', '.join(tp.TOPOLOGIES)}")
    try:
        tp.parse_topology(FLAGS.topology)
    except ValueError as e:
        return _error(str(e))
    tp.quiet_libtpu(FLAGS.topology)
    if FLAGS.num_slices < 1:
        return _error(f"--num_slices={FLAGS.num_slices}: must be >= 1")
    config = FLAGS.config
    try:
        fused = not tp.separate_update(config)
    except ValueError as e:
        return _error(str(e))
    kinds = tp.kinds_of(config)
    runs = kinds + ([] if fused else ["update"]) + ["generate"]
    wanted = [p.strip() for p in FLAGS.programs.split(",") if p.strip()] or runs
    bad = [p for p in wanted if p not in runs]
    if bad:
        return _error(f"--programs: {','.join(bad)} not run by this config (it runs {','.join(runs)})")

    import jax  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    # executables compiled for a topology cannot be reloaded from a persistent cache here
    jax.config.update("jax_enable_compilation_cache", False)
    logging.getLogger("absl").setLevel(logging.WARNING)
    # frozen networks are abstract here: the "random init, tests only" warnings do not apply
    logging.getLogger("starcaster_jax.training.frozen").setLevel(logging.ERROR)
    with config.unlocked():
        tp.resolve_for_tpu(config)
    try:
        chip, devices = tp.topology_devices(FLAGS.topology, FLAGS.num_slices)
        mesh = tp.tpu_mesh(config, devices, FLAGS.num_slices)
        per_chip = tp.check_batch(config, mesh)
    except (RuntimeError, ValueError) as e:
        return _error(str(e).splitlines()[0])
    m = dict(mesh.shape)
    header = (f"{FLAGS.topology}" + (f" x {FLAGS.num_slices} slices" if FLAGS.num_slices > 1 else "")
              + f": {len(devices)} chips of {chip.name}, mesh data={m['data']} fsdp={m['fsdp']} "
              f"tensor={m['tensor']}, per-chip batch {per_chip}, dtype {config.model.unet.dtype}, "
              f"remat {config.model.unet.remat_policy}, attention {config.model.unet.attention_impl}")
    print(f"# {config.stage}:{config.variant} on {header}\n", flush=True)
    t0 = time.time()
    built = None
    if any(p != "generate" for p in wanted):
        # the train state is known before anything is lowered: a state that cannot fit ends here
        built = tp.abstract_trainer(config, mesh)
        state = tp.resident_state(*built)
        fix = tp.state_suggestion(state, chip, mesh, FLAGS.num_slices)
        print("train state per chip: " + ", ".join(f"{k} {tp.size(v)}" for k, v in state.items())
              + f" = {tp.gib(sum(state.values()))} / {tp.gib(chip.hbm_bytes)} GiB HBM\n", flush=True)
        if fix:
            return _error(f"the train state does not fit on {FLAGS.topology}: {fix}")
    programs = tp.lower_programs(config, mesh, wanted, built)
    print(f"(lowered {len(programs)} programs in {time.time() - t0:.0f} s)\n", flush=True)
    failures = []
    for prog in programs:
        t = time.time()
        report, _ = tp.plan_program(prog, chip)
        print(tp.format_report(report), flush=True)
        print(f"\n(compiled in {time.time() - t:.0f} s)\n", flush=True)
        if not report.fits:
            failures.append(f"error: {report.program} does not fit on {FLAGS.topology} "
                            f"(needs {tp.size(report.total)} of {tp.gib(chip.hbm_bytes)} GiB per chip): "
                            + tp.suggestion(report, config, mesh, FLAGS.num_slices))
    for line in failures:
        print(line, file=sys.stderr)
    return 2 if failures else 0


def run() -> None:
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
