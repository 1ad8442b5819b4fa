"""Score generated talking-head videos against real ones with the field's standard metrics.

    python -m launch.evaluate_videos --generated out/ --real test/ [--audio speech/]
        [--inception inception.onnx] [--i3d i3d.onnx] [--syncnet syncnet_v2.model]
        [--arcface w600k_r50.onnx] [--out report.json]

Each metric runs when its network is given, from a local file (nothing is downloaded):
    FID      --inception: an Inception-style feature extractor exported to ONNX (e.g. pytorch-fid's
             pool3 network), run with onnxruntime; every frame, whole frame resized to 299
    FVD      --i3d: an I3D feature extractor exported to ONNX; non-overlapping 16-frame clips, 224 px
    LSE-D/C  --syncnet: syncnet_python's syncnet_v2.model (a PyTorch state dict; reading it needs
             torch), ported to JAX; Wav2Lip's scores_LSE protocol (25 fps, +-15 frame offsets)
    CSIM     --arcface: an insightface ArcFace ONNX model; cosine to the real video's first frame
Videos pair by file name without extension; ``--audio`` files likewise (else each generated
video's own audio track drives LSE). The protocol of every metric (frames, crop, clip length,
pixel range) is in ``starcaster_jax/evaluation/standard`` and in the report. Bad input prints one
``error:`` line and exits 2; a video that cannot be decoded is skipped and counted in the report.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from launch import cli


def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(prog="python -m launch.evaluate_videos", description=__doc__.splitlines()[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--generated", required=True, help="directory of generated videos")
    ap.add_argument("--real", required=True, help="directory of the real videos (same file names)")
    ap.add_argument("--audio", default="", help="directory of the driving audio (same file names)")
    ap.add_argument("--inception", default="", help="Inception feature extractor .onnx (FID)")
    ap.add_argument("--i3d", default="", help="I3D feature extractor .onnx (FVD)")
    ap.add_argument("--syncnet", default="", help="syncnet_python syncnet_v2.model (LSE-D / LSE-C)")
    ap.add_argument("--arcface", default="", help="insightface ArcFace .onnx (CSIM)")
    ap.add_argument("--out", default="", help="write the full report (per-video numbers, protocols) as JSON")
    ap.add_argument("--fid_max_frames", type=int, default=0, help="FID frames per video, evenly spaced (0: all)")
    ap.add_argument("--fvd_max_clips", type=int, default=0, help="FVD clips per video (0: all non-overlapping)")
    ap.add_argument("--inception_range", default="unit", choices=("unit", "symmetric", "byte"),
                    help="pixel range the Inception export expects: [0,1], [-1,1] or [0,255]")
    ap.add_argument("--i3d_range", default="symmetric", choices=("unit", "symmetric", "byte"),
                    help="pixel range the I3D export expects")
    ap.add_argument("--csim_crop", default="haar", choices=("haar", "whole"),
                    help="CSIM face crop: Haar detection, or the whole frame (already aligned crops)")
    ap.add_argument("--csim_max_frames", type=int, default=0, help="CSIM frames per video (0: all)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    return ap


def check_args(args) -> str | None:
    """The first problem with the command line that needs no model or video (one line), or None."""
    weights = {"--inception": args.inception, "--i3d": args.i3d, "--syncnet": args.syncnet, "--arcface": args.arcface}
    if not any(weights.values()):
        return "no metric to compute: give at least one of --inception, --i3d, --syncnet, --arcface"
    for flag, path in weights.items():
        if path and not os.path.isfile(path):
            return f"{flag} {path}: no such file"
    for flag, d in (("--generated", args.generated), ("--real", args.real), ("--audio", args.audio)):
        if d and not os.path.isdir(d):
            return f"{flag} {d}: no such directory"
    for name in ("fid_max_frames", "fvd_max_clips", "csim_max_frames"):
        if getattr(args, name) < 0:
            return f"--{name} {getattr(args, name)}: must be >= 0"
    return cli.output_problem(args.out) if args.out else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        cli.fail(problem)
    from starcaster_jax.evaluation.standard import Settings, StandardMetrics, summary_lines  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.evaluation.standard.directories import InputError, evaluate_directories, pair_directories  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.evaluation.standard.onnx_features import FeatureModelError  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.weights.common import WeightImportError  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    settings = Settings(fid_max_frames=args.fid_max_frames, fvd_max_clips=args.fvd_max_clips,
                        inception_range=args.inception_range, i3d_range=args.i3d_range,
                        csim_crop=args.csim_crop, csim_max_frames=args.csim_max_frames)
    try:
        pair_directories(args.generated, args.real, args.audio or None)   # names match: before loading models
        metrics = StandardMetrics.from_paths(inception=args.inception, i3d=args.i3d, syncnet=args.syncnet,
                                             arcface=args.arcface, settings=settings)
    except (InputError, FeatureModelError, WeightImportError, FileNotFoundError, ValueError) as e:
        cli.fail(e)               # ValueError: a model of the wrong input layout (OnnxArcFace's checks)
    progress = None if args.quiet else (lambda m: print(f"  scored {m}", file=sys.stderr, flush=True))
    try:
        result = evaluate_directories(args.generated, args.real, metrics, audio=args.audio or None,
                                      progress=progress)
    except InputError as e:
        cli.fail(e)
    result["settings"] = vars(args)
    print("\n".join(summary_lines(result)))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
