"""CLI: generate the built-in synthetic talking-head corpus as TFDS ArrayRecord shards.

    python -m data_pipelines.synthetic.build --out DIR --preset demo|small|large|tiny \
        [--resolution 64] [--seed 0] [--workers 2]

Re-running with the same arguments reuses the finished data; the same seed gives the same
bytes whatever the number of workers.
"""
from __future__ import annotations

import argparse
import os
import time

from data_pipelines.synthetic import tfds_builder


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_pipelines.synthetic.build",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="TFDS data_dir to write into")
    ap.add_argument("--preset", default="demo", choices=("demo", "small", "large", "tiny"))
    ap.add_argument("--resolution", type=int, default=None, help="frame size (default: preset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="render processes (results do not depend on it)")
    ap.add_argument("--supersample", type=int, default=None,
                    help="anti-aliasing factor per axis (default: preset; part of the data)")
    args = ap.parse_args(argv)

    import tensorflow_datasets as tfds  # noqa: PLC0415 (TensorFlow loads only where TFDS is read)


    tfds.disable_progress_bar()  # our own bar counts records across all splits
    over = {} if args.supersample is None else {"supersample": args.supersample}
    cfg = tfds_builder.make_config(args.preset, args.resolution, args.seed, **over)
    t0 = time.perf_counter()
    builder = tfds_builder.build(args.out, cfg, workers=args.workers, progress=True)
    dt = time.perf_counter() - t0
    path = str(builder.data_dir)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    print(f"\nSTARCaster synthetic corpus ({cfg.name}) at:\n  {path}")
    print(f"  {cfg.n_train_ids} train / {cfg.n_test_ids} test identities, "
          f"{cfg.resolution}x{cfg.resolution}, seed {cfg.seed}, {_human(size)} on disk")
    for split, info in builder.info.splits.items():
        print(f"  {split:16s} {info.num_examples:6d} records")
    if builder.frames_written:
        print(f"  built in {dt:.1f} s ({builder.frames_written} frames, "
              f"{builder.frames_written / dt:.0f} frames/s with {args.workers} worker(s))")
    print("Read it with:\n"
          "  builder = tensorflow_datasets.builder_from_directory(PATH)\n"
          "  record = data_pipelines.schema.decode(builder.as_data_source('train_video')[0])")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
