r"""Train a STARCaster stage.

    python -m launch.train --config=configs/stage1_motion.py:tiny --workdir=/tmp/s1 \
        --config.data.root=/data/corpus [--config.schedule.total_steps=2000 ...]
    python -m launch.train --config=configs/stage2_audio.py:small,ablation=no_lip_loss \
        --workdir=gs://bucket/s2 --config.init_from=gs://bucket/s1

Multi-host: on TPU VMs ``jax.distributed.initialize()`` discovers everything; elsewhere pass
``--coordinator_address=host:port --num_processes=N --process_id=i`` (or set
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``). Every process runs the
same command; each reads its own Grain shard.

A misuse (unknown flag or variant, an override of an undeclared field, a missing ``--workdir``, a
missing corpus) prints one ``error:`` line and exits 2 (``launch/cli.py``).
"""
from __future__ import annotations

import json
import logging
import os

from absl import flags
from ml_collections import config_flags

from launch import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/<stage>.py:<variant>[,ablation=<name>]",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard logs and samples go here")
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                    "multi-host: host:port of process 0 (not needed on TPU VMs)")
flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0),
                     "multi-host: number of processes")
flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", "-1") or -1),
                     "multi-host: this process's index")
flags.DEFINE_boolean("distributed", False, "call jax.distributed.initialize() (auto on TPU pods)")
flags.DEFINE_integer("stop_after", 0, "stop after this many steps in this run (0 = run to the end)")
flags.DEFINE_string("summary_json", "", "write the run summary (losses per log step) here")


def _init_distributed() -> None:
    import jax  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    if FLAGS.coordinator_address and FLAGS.num_processes > 1:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()


def main(argv) -> int:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    cli.require(FLAGS, config="configs/stage1_motion.py:tiny", workdir="runs/s1")
    if "://" not in FLAGS.workdir:   # local: checked now, not after the model is built
        problem = cli.output_problem(FLAGS.workdir, flag="--workdir", is_dir=True)
        if problem:
            raise cli.UsageError(problem)
    logging.getLogger("absl").setLevel(logging.WARNING)
    _init_distributed()
    from starcaster_jax.training.loop import train  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    try:
        summary = train(FLAGS.config, FLAGS.workdir, stop_after=FLAGS.stop_after or None)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UsageError(str(e)) from None
    if FLAGS.summary_json:
        with open(FLAGS.summary_json, "w") as f:
            json.dump(summary, f, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    last = summary["history"][-1] if summary["history"] else {}
    loss = {k: round(v, 5) for k, v in last.items() if k.endswith("/loss")}
    print(f"trained {FLAGS.workdir}: step {summary['step']}, skipped updates "
          f"{summary['skipped']}, {loss}")
    return 0


def run() -> None:
    """Console script ``starcaster-train``."""
    cli.run(main, FLAGS)


if __name__ == "__main__":
    run()
