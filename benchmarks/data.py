"""Data benchmarks -> a markdown table on stdout.

    python benchmarks/data.py [--skip-build] [--workers 2] [--out DIR]

Rows: render throughput at 64x64 (with and without 2x2 supersampling), speech synthesis,
record encode/decode, and the wall time of building the demo corpus. Throughput is given
per wall second and per CPU second of this process: the machines we share are often busy,
and CPU seconds are what a quiet machine's wall seconds would be.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import schema  # noqa: E402
from data_pipelines.synthetic import corpus, motion, speech, tfds_builder  # noqa: E402


def _timed(fn, repeat: int):
    fn()  # warm-up
    w, c = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - w) / repeat, (time.process_time() - c) / repeat, out


def bench_render(res: int, ss: int, n_frames: int = 100):
    person = corpus.make_person(0, 1, speech.VOICES_TRAIN)
    rng = np.random.default_rng(0)
    traj = motion.head_trajectory(rng, n_frames)
    cam, _ = corpus.video_camera(traj)
    expr = np.concatenate([rng.uniform(0, 1, (n_frames, 3)), motion.blinks(rng, n_frames)[:, None]],
                          -1).astype(np.float32)
    gaze = motion.gaze(rng, n_frames)
    light = np.broadcast_to(np.array([0.3, 0.5, 0.8], np.float32), (n_frames, 3))
    bg = np.full((n_frames, res, res, 3), 0.5, np.float32)
    cloth = np.array([0.2, 0.3, 0.6], np.float32)
    wall, cpu, _ = _timed(lambda: corpus.render_frames(person, expr, gaze, cam, light, bg, cloth,
                                                       res, ss), 3)
    return n_frames / wall, n_frames / cpu


def bench_speech():
    rng = np.random.default_rng(0)
    texts = [speech.random_sentence(rng, 9) for _ in range(10)]
    it = iter(range(10**9))
    wall, cpu, _ = _timed(lambda: speech.synthesize(texts[next(it) % 10], "en-us+m3"), 10)
    return 1 / wall, 1 / cpu


def bench_codec():
    person = corpus.make_person(0, 1, speech.VOICES_TRAIN)
    rec = corpus.make_video_record(0, person, 0, 64)
    blob = schema.encode(rec)
    enc, _, _ = _timed(lambda: schema.encode(rec, check=False), 5)
    dec, _, _ = _timed(lambda: schema.decode(blob), 20)
    return rec["frames"].shape[0], len(blob), enc, dec


def bench_build(out: str, workers: int):
    shutil.rmtree(out, ignore_errors=True)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    w, c = time.perf_counter(), time.process_time()
    builder = tfds_builder.build(out, tfds_builder.make_config("demo"), workers=workers)
    wall = time.perf_counter() - w
    path = str(builder.data_dir)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    n = sum(s.num_examples for s in builder.info.splits.values())
    return wall, n, size, builder.frames_written


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-build", action="store_true", help="skip the demo corpus build")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="where to build the demo corpus (default: tmp)")
    args = ap.parse_args()

    rows = []
    for ss in (1, 2):
        fw, fc = bench_render(64, ss)
        rows.append((f"render 64x64, supersample {ss}x{ss}", f"{fw:.0f} frames/s",
                     f"{fc:.0f} frames/CPU-s"))
    uw, _ = bench_speech()  # the synthesis runs in the espeak server: no local CPU figure
    rows.append(("espeak-ng utterance (9 words) -> 16 kHz", f"{uw:.1f} utt/s",
                 "fork-per-utterance server, resample, events"))
    n, size, enc, dec = bench_codec()
    rows.append((f"record encode / decode ({n} frames, 64x64, {size / 2**20:.2f} MiB)",
                 f"{enc * 1e3:.1f} / {dec * 1e3:.1f} ms", ""))
    if not args.skip_build:
        tmp = args.out or tempfile.mkdtemp(prefix="starcaster_demo_")
        wall, n_rec, size, frames = bench_build(tmp, args.workers)
        rows.append((f"build demo corpus ({args.workers} workers)", f"{wall:.0f} s",
                     f"{n_rec} records, {frames} frames, {size / 2**20:.0f} MiB"))
        if args.out is None:
            shutil.rmtree(tmp, ignore_errors=True)
    # Pipeline batches/s (Grain, tiny/small training batch shapes): added by the pipeline work.

    print("| benchmark | wall | notes |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
