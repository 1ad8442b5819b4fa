"""Export a trained STARCaster workdir for serving: params-only (bf16 by default) + the compiled
sampler serialized with ``jax.export`` (format: ``starcaster_jax/inference/export.py``).

    python -m launch.export --checkpoint runs/s3 --out export/s3 [--dtype bfloat16|float32] \
        [--platforms cpu,cuda,tpu] [--sampler ddim --steps 10 --audio_cfg 2 --id_cfg 1.5] [--no_ema]
    python -m starcaster_jax.inference.serve --artefact export/s3 --audio speech.wav --reference face.png --out o.mp4

Sampler, steps and CFG scales are fixed in the exported program (defaults: the checkpoint
config's ``diffusion`` section). Bad inputs print one ``error:`` line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from launch import cli


def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(prog="python -m launch.export", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="training workdir (stage 2 or 3)")
    ap.add_argument("--out", required=True, help="artefact directory to write")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                    help="stored weight dtype (compute stays in each weight's own dtype)")
    ap.add_argument("--platforms", default="", help="comma list of cpu,cuda,rocm,tpu (default: this machine's)")
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--audio_cfg", type=float, default=None)
    ap.add_argument("--id_cfg", type=float, default=None)
    ap.add_argument("--eta", type=float, default=None)
    ap.add_argument("--no_ema", action="store_true", help="export the raw weights instead of the EMA")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from starcaster_jax.inference.chunking import GenerationError  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.inference.export import export_checkpoint  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    problem = cli.output_problem(args.out, is_dir=True)   # before loading the checkpoint
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    platforms = [p for p in args.platforms.split(",") if p] or None
    try:
        m = export_checkpoint(args.checkpoint, args.out, use_ema=not args.no_ema, dtype=args.dtype,
                              platforms=platforms,
                              settings_overrides=dict(sampler=args.sampler, steps=args.steps,
                                                      audio_cfg=args.audio_cfg, id_cfg=args.id_cfg, eta=args.eta))
    except GenerationError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    n = sum(m["num_params"].values())
    print(f"{args.out}: {', '.join(m['functions'])} for {','.join(m['platforms'])}; "
          f"{n / 1e6:.2f}M params in {m['dtype']}; {m['export_seconds']}s")
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
