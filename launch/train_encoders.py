"""Train the six built-in encoders on the built-in corpus and save them for the other stages.

    python -m launch.train_encoders --data DIR --workdir DIR [--config=configs/stage2_audio.py:demo]
        [--steps_scale 1.0] [--steps N | --steps vae=300,audio=200] [--encoders vae,audio,...]
        [--schedule vae.batch=8,lip_loss.lr=1e-3]

``--data`` is the TFDS directory of the built-in corpus (``python -m data_pipelines.synthetic.build
--out DIR``; the prepared dataset directory or any folder holding exactly one). Trains ``vae``,
``audio``, ``identity_cond``, ``identity_eval``, ``lip_loss``, ``lip_eval`` and ``pose_eval``
(``starcaster_jax.training.encoders``: one module an encoder, and what each held-out metric
means), evaluates each on the held-out TEST identities, prints a table and writes
``<workdir>/encoders/<name>/`` with ``starcaster_jax.models.builtin_encoders.save``.

Model sizes come from the config (``model.vae``, ``model.audio.builtin``) and the presets of
``BuiltinIdentityConfig`` (``for_conditioning`` / ``for_evaluation``) and ``LipReaderConfig``
(``tiny``); steps, batch sizes and learning rates from ``encoders.schedules()`` (x
``--steps_scale`` x ``VARIANT_SCALE[variant]``), then ``--steps`` and ``--schedule``.

This file is the command line only: flags in, one call of ``encoders.train``; a misuse is one
``error:`` line and exit 2 (``launch/cli.py``), answered before JAX loads where the flags alone
tell.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from absl import flags
from ml_collections import config_flags

from launch import cli

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(_REPO, "configs", "stage2_audio.py") + ":demo"

# Bad flags or data: reported as one ``error:`` line by ``main``, exit 2 (launch/cli.py).
UsageError = cli.UsageError


def _parse_steps(spec: str | None, names) -> dict[str, int]:
    """``"300"`` (every encoder) or ``"vae=300,audio=200"`` -> ``{name: steps}``."""
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


def _parse_overrides(spec: str | None, scheds: dict, schedule_cls) -> dict:
    """``"vae.batch=8,lip_loss.lr=1e-3"`` -> updated schedules (``schedule_cls`` instances)."""
    if not spec:
        return scheds
    fields = {f.name: f.type for f in dataclasses.fields(schedule_cls)}
    for part in spec.split(","):
        key, _, val = part.partition("=")
        name, _, field = key.strip().partition(".")
        if name not in scheds or field not in fields:
            raise UsageError(f"--schedule: expected <encoder>.<{'|'.join(fields)}>=value, got {part!r}")
        cast = float if field in ("lr", "warmup") else int
        scheds[name] = dataclasses.replace(scheds[name], **{field: cast(val)})
    return scheds


def _flags(argv: list[str]) -> flags.FlagValues:
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
    flags.DEFINE_string("encoders", None, "comma-separated subset to train (default: all of "
                        "builtin_encoders.ENCODER_NAMES)", flag_values=fv)
    flags.DEFINE_integer("compile_workers", 2, "threads compiling ahead", flag_values=fv)
    flags.DEFINE_boolean("progress", True, "show a progress bar", flag_values=fv)
    return fv


def run(argv=None) -> dict:
    """Parse flags, train, evaluate and save; returns ``{name: encoders.Result}`` (models included)."""
    argv = ["train_encoders"] + list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        # given as an argument, not as the flag's default: config_flags would apply the overrides
        # to a default at definition time, outside cli.parse_flags' error reporting
        argv.insert(1, f"--config={DEFAULT_CONFIG}")
    fv = _flags(argv)
    rest = cli.parse_flags(argv, fv)
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments: {rest[1:]}")
    if not fv.data or not fv.workdir:
        raise UsageError("--data and --workdir are required")
    config = fv["config"].value

    from starcaster_jax.training import encoders  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)

    known = list(encoders.ENCODER_NAMES)
    names = [n.strip() for n in (fv.encoders or ",".join(known)).split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise UsageError(f"--encoders: unknown {bad} (known: {known})")
    scheds = encoders.schedules(fv.steps_scale * encoders.VARIANT_SCALE.get(config.variant, 1.0))
    for n, k in _parse_steps(fv.steps, names).items():
        scheds[n] = dataclasses.replace(scheds[n], steps=max(1, k))
    scheds = _parse_overrides(fv.schedule, scheds, encoders.Schedule)
    try:
        return encoders.train(config, fv.data, fv.workdir, names=names, scheds=scheds,
                              progress=fv.progress, compile_workers=fv.compile_workers)
    except encoders.CorpusError as e:
        raise UsageError(str(e)) from None


def main(argv=None) -> int:
    try:
        run(argv)
    except (FileNotFoundError, UsageError) as e:
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
