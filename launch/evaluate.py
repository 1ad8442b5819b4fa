"""Score a trained STARCaster workdir on the built-in corpus's held-out identities: PSNR/SSIM
against the true frames and views, lip sync and identity by the evaluator networks
(``starcaster_jax/evaluation/synthetic.py``). Ablations are compared by running this on each
workdir with the same ``--seed``.

    python -m launch.evaluate --checkpoint runs/s3 [--data DIR] [--encoders DIR] \
        [--num_clips 8] [--num_multiview 4] [--seed 0] [--out metrics.json]

``--data`` / ``--encoders`` default to the checkpoint config's ``data.root`` /
``model.encoders_dir``. Bad inputs print one ``error:`` line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m launch.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="training workdir")
    ap.add_argument("--data", default="", help="built-in corpus root (default: config data.root)")
    ap.add_argument("--encoders", default="", help="built-in encoders dir (default: config model.encoders_dir)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--num_clips", type=int, default=8)
    ap.add_argument("--num_multiview", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no_ema", action="store_true")
    ap.add_argument("--out", default="", help="write the metrics (and per-record rows) as JSON here")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_clips < 0 or args.num_multiview < 0 or args.num_clips + args.num_multiview == 0:
        print("error: --num_clips/--num_multiview: give at least one record to score", file=sys.stderr)
        return 2
    from starcaster_jax.evaluation import synthetic as S
    from starcaster_jax.inference.chunking import GenerationError
    from starcaster_jax.inference.generate import Generator, _resolve_dir
    try:
        gen = Generator.from_checkpoint(args.checkpoint, use_ema=not args.no_ema, need_identity=True)
        data = args.data or _resolve_dir(gen.config.data.get("root", "") or "", args.checkpoint)
        enc = args.encoders or _resolve_dir(gen.config.model.get("encoders_dir", "") or "", args.checkpoint)
        if not data or not os.path.isdir(data):
            raise GenerationError(f"--data {data or '(unset)'}: no built-in corpus there")
        if not enc or not os.path.isdir(enc):
            raise GenerationError(f"--encoders {enc or '(unset)'}: no built-in encoders there")
        try:
            ev = S.Evaluators.load(enc)
        except (ValueError, FileNotFoundError, OSError) as e:
            raise GenerationError(f"--encoders {enc}: {str(e).splitlines()[0]}") from None
        vids = S.held_out_records(data, "video", args.num_clips, split=args.split)
        mvs = S.held_out_records(data, "multiview", args.num_multiview, split=args.split)
        if not vids and not mvs:
            raise GenerationError(f"--data {data}: no usable {args.split} records")
        result = S.evaluate(gen, vids, mvs, ev, seed=args.seed,
                            progress=lambda m: print(f"  scored {m}", file=sys.stderr, flush=True))
    except GenerationError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    result.update(checkpoint=os.path.abspath(args.checkpoint), seed=args.seed, split=args.split)
    print(S.format_table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
