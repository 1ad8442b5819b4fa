"""Score a trained STARCaster workdir on the built-in corpus's held-out identities: every mode
(animate, synthesize, free-viewpoint, multi-view stills, long horizon, motion diversity) beside
its baselines (ground truth, copy-reference, the untrained model, majority class), by evaluator
networks that never trained the model (``starcaster_jax/evaluation``).

    python -m launch.evaluate --checkpoint runs/s3 [--data DIR] [--encoders DIR] [--seed 0]
        [--modes animate,synthesize,...] [--num_clips 8] [--num_multiview 4] [--num_novel_view 4]
        [--long_seconds 30] [--long_clips 1] [--out FILE.json] [--strip out.png]
    python -m launch.evaluate --compare runs/a runs/b ... [same flags]

Prints markdown (one table per mode; ``--compare``: one table over checkpoints, reading each
``<dir>/eval/metrics.json`` written at the same seed on the same records, or evaluating the
checkpoint when there is none). ``--data`` / ``--encoders`` default to the checkpoint config's
``data.root`` / ``model.encoders_dir``; the other defaults come from its ``eval`` section.
Results go to ``<checkpoint>/eval/metrics.json`` unless ``--out`` says otherwise. Bad inputs
print one ``error:`` line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from launch import cli

METRICS_FILE = os.path.join("eval", "metrics.json")


class UsageError(ValueError):
    """Reported as one ``error:`` line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(prog="python -m launch.evaluate", description=__doc__.splitlines()[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="training workdir")
    which.add_argument("--compare", nargs="+", metavar="DIR", help="training workdirs to tabulate together")
    ap.add_argument("--data", default="", help="built-in corpus root (default: config data.root)")
    ap.add_argument("--encoders", default="", help="built-in encoders dir (default: config model.encoders_dir)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--modes", default="", help="comma-separated subset of the modes (default: config eval.modes)")
    for name in ("num_clips", "num_multiview", "num_novel_view", "long_clips"):
        ap.add_argument(f"--{name}", type=int, default=None, help=f"default: config eval.{name}")
    ap.add_argument("--long_seconds", type=float, default=None, help="default: config eval.long_seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no_ema", action="store_true")
    ap.add_argument("--out", default="", help=f"metrics JSON (default: <checkpoint>/{METRICS_FILE})")
    ap.add_argument("--strip", default="", help="write a PNG of true (top) vs generated frames of every mode")
    # The field's standard metrics beside the exact ones, when their networks are given (local
    # files; launch/evaluate_videos.py documents each protocol).
    for name, what in (("inception", "FID: Inception feature extractor (.onnx)"),
                       ("i3d", "FVD: I3D feature extractor (.onnx)"),
                       ("syncnet", "LSE-D / LSE-C: syncnet_python's syncnet_v2.model"),
                       ("arcface", "CSIM: insightface ArcFace (.onnx)")):
        ap.add_argument(f"--{name}", default="", help=what)
    return ap


def eval_settings(config, args):
    """The checkpoint config's ``eval`` section over the current defaults, then the flags."""
    from configs import common  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    ev = common.base_config(config.variant).eval
    ev.update({k: v for k, v in config.eval.items() if k in ev})
    if args.modes:
        ev.modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    for name in ("num_clips", "num_multiview", "num_novel_view", "long_clips", "long_seconds"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 0:
                raise UsageError(f"--{name}: must be >= 0, got {getattr(args, name)}")
            ev[name] = getattr(args, name)
    from starcaster_jax.evaluation.modes import MODES  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    bad = [m for m in ev.modes if m not in MODES]
    if bad or not ev.modes:
        raise UsageError(f"--modes: expected a comma-separated subset of {','.join(MODES)}, got {args.modes!r}")
    return ev


def evaluate_checkpoint(path: str, args) -> dict:
    """Evaluate one workdir (all modes, all baselines); writes its metrics JSON and strip."""
    from starcaster_jax.evaluation import baselines, report  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.evaluation import synthetic as S  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.evaluation.standard.synthetic import SyntheticStandard  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.inference.chunking import GenerationError  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.inference.generate import Generator  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.inference.loading import resolve_dir  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    try:
        standard = SyntheticStandard.from_paths(inception=args.inception, i3d=args.i3d,
                                                syncnet=args.syncnet, arcface=args.arcface)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise GenerationError(str(e).splitlines()[0]) from None
    gen = Generator.from_checkpoint(path, use_ema=not args.no_ema, need_identity=True)
    ev_cfg = eval_settings(gen.config, args)
    data = args.data or resolve_dir(gen.config.data.root or "", path)
    enc = args.encoders or resolve_dir(gen.config.model.encoders_dir or "", path)
    if not data or not os.path.isdir(data):
        raise GenerationError(f"--data {data or '(unset)'}: no built-in corpus there")
    if not enc or not os.path.isdir(enc):
        raise GenerationError(f"--encoders {enc or '(unset)'}: no built-in encoders there")
    try:
        ev = S.Evaluators.load(enc)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise GenerationError(f"--encoders {enc}: {str(e).splitlines()[0]}") from None
    try:
        inputs = S.load_inputs(data, ev_cfg, split=args.split)
        ev.calibrate(S.calibration_records(data, ev_cfg, split=args.split),
                     frames_per_clip=ev_cfg.calib_frames, far=ev_cfg.far, resolution=gen.resolution)
    except (ValueError, FileNotFoundError) as e:
        raise GenerationError(f"--data {data}: {str(e).splitlines()[0]}") from None
    gens = {"model": gen, "untrained": baselines.untrained_generator(gen)}
    opts = S.Options(synthesize_poses=bool(ev_cfg.synthesize_poses), segment_seconds=float(ev_cfg.segment_seconds))
    result = S.evaluate(gens, inputs, ev, modes=tuple(ev_cfg.modes), seed=args.seed, opts=opts,
                        keep_frames=bool(args.strip), standard=standard,
                        progress=lambda m: print(f"  scored {m}", file=sys.stderr, flush=True))
    frames = result.pop("frames", None)
    result.update(checkpoint=os.path.abspath(path), split=args.split, data=os.path.abspath(data),
                  encoders=os.path.abspath(enc), eval=ev_cfg.to_dict())
    out = args.out if args.out and not args.compare else os.path.join(path, METRICS_FILE)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=_json)
    print(f"wrote {out}", file=sys.stderr)
    if args.strip and frames:
        strip = args.strip
        if args.compare:
            root, ext = os.path.splitext(args.strip)
            strip = f"{root}_{os.path.basename(os.path.normpath(path))}{ext or '.png'}"
        report.save_strip(strip, frames)
        print(f"wrote {strip}", file=sys.stderr)
    return result


def _json(x):
    import numpy as np  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    return np.asarray(x).tolist() if hasattr(x, "tolist") else str(x)


def stored_result(path: str, args) -> dict | None:
    """``<path>/eval/metrics.json`` when it was made at ``--seed`` (else None: evaluate again)."""
    f = os.path.join(path, METRICS_FILE)
    if not os.path.isfile(f):
        return None
    try:
        with open(f) as fh:
            res = json.load(fh)
    except json.JSONDecodeError as e:
        raise UsageError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(res, dict) or "modes" not in res:
        raise UsageError(f"{f}: not an evaluation result (no 'modes')")
    return res if res.get("seed") == args.seed else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from starcaster_jax.evaluation import report  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.inference.chunking import GenerationError  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    try:
        for flag, path in (("--out", args.out), ("--strip", args.strip)):   # before any model load
            problem = path and cli.output_problem(path, flag=flag)
            if problem:
                raise UsageError(problem)
        if args.compare:
            if args.out:
                raise UsageError("--out: not with --compare (each checkpoint keeps its own eval/metrics.json)")
            results = []
            for d in args.compare:
                if not os.path.isdir(d):
                    raise UsageError(f"--compare {d}: no such training workdir")
                results.append(stored_result(d, args) or evaluate_checkpoint(d, args))
            names = [os.path.basename(os.path.normpath(d)) for d in args.compare]
            try:
                print(report.compare_markdown(results, names))
            except ValueError as e:
                raise UsageError(str(e)) from None
        else:
            print(report.format_markdown(evaluate_checkpoint(args.checkpoint, args)))
    except (GenerationError, UsageError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
