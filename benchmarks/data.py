"""Data benchmarks -> a markdown table on stdout.

    python benchmarks/data.py [--skip-build] [--workers 2] [--out DIR] [--batches 40]

Rows: render throughput at 64x64 (with and without 2x2 supersampling), speech synthesis,
record encode/decode, the wall time of building the demo corpus, the Grain training
pipeline (``make_train_iterator``: batches/s and examples/s for the video stream alone and
the 0.7/0.3 video/multi-view mixture, at the tiny and small training batch shapes, on the
``tiny`` preset corpus rendered at those resolutions, in-process: ``num_workers=0``), and
real-video ingestion (frames/s of 640x480 30 fps H.264 -> 256 px clips). Throughput is given
per wall second and per CPU second of this process: the machines we share are often busy,
and CPU seconds are what a quiet machine's wall seconds would be.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from data_pipelines.ingest import testdata, videos
from data_pipelines.pipeline import make_train_iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.common import base_config  # noqa: E402
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
    import tensorflow_datasets as tfds  # noqa: PLC0415 (TensorFlow loads only where TFDS is read)

    tfds.disable_progress_bar()
    w = time.perf_counter()
    builder = tfds_builder.build(out, tfds_builder.make_config("demo"), workers=workers)
    wall = time.perf_counter() - w
    path = str(builder.data_dir)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    n = sum(s.num_examples for s in builder.info.splits.values())
    return wall, n, size, builder.frames_written


# Batch shapes of configs/common.py's tiny and small presets. The tiny corpus has 4 views
# per multi-view set, so the small preset's 8 views become 4 here.
PIPELINE_SHAPES = {
    "tiny": dict(resolution=32, num_frames=4, context_frames=1, batch_size=2, num_views=4),
    "small": dict(resolution=256, num_frames=8, context_frames=2, batch_size=8, num_views=4),
}


def bench_pipeline(root: str, shape: str, mixture: dict, n_batches: int):
    """-> (batches/s, batches/CPU-s, examples/s, first-batch seconds) of make_train_iterator."""

    d = dict(base_config("tiny").data.to_dict(), **PIPELINE_SHAPES[shape], mixture=mixture,
             root=root, audio_window=2, seed=0, num_workers=0)
    w = time.perf_counter()
    it = make_train_iterator(d, process_index=0, process_count=1)
    next(it)
    first = time.perf_counter() - w
    for _ in range(3):
        next(it)
    w, c = time.perf_counter(), time.process_time()
    n_ex = 0
    for _ in range(n_batches):
        n_ex += next(it)["frames"].shape[0]
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    it.close()
    return n_batches / wall, n_batches / cpu, n_ex / wall, first


def build_tiny(out: str, resolution: int) -> str:
    """The ``tiny`` preset corpus (as ``python -m data_pipelines.synthetic.build --preset tiny
    --resolution R``) -> its TFDS dataset directory."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 (TensorFlow loads only where TFDS is read)

    tfds.disable_progress_bar()
    return str(tfds_builder.build(out, tfds_builder.make_config("tiny", resolution)).data_dir)


def bench_ingest(tmp: str, workers: int = 1, seconds: float = 4.0, videos_n: int = 4):
    """Ingest ``videos_n`` 640x480 30 fps talking videos (ingest/testdata.py's drawn face,
    swaying; stereo AAC) with the Beam pipeline on ``workers`` DirectRunner processes (1:
    in_memory) -> (25 fps output frames per wall second, per CPU second of this process,
    frames). Wall time includes the pipeline's start-up."""


    src, out = os.path.join(tmp, "ingest_src"), os.path.join(tmp, f"ingest_out{workers}")
    os.makedirs(src, exist_ok=True)

    def frame(j):
        img = np.full((480, 640, 3), 90, np.uint8)
        testdata.draw_face(img, 320 + 30 * np.sin(j / 15), 240, 200, mouth=(j % 12) / 11)
        return img

    def audio(n, sr):
        t = np.arange(n) / sr
        return np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * 2).astype(np.float32)

    for i in range(videos_n):
        path = os.path.join(src, f"talk{i}.mp4")
        if not os.path.exists(path):
            testdata.write_video(path, frame, int(seconds * 30), 30, audio_fn=audio, crf=18)
    mode = ["--direct_running_mode", "in_memory"] if workers == 1 else [
        "--direct_running_mode", "multi_processing", "--direct_num_workers", str(workers)]
    wall, cpu = time.perf_counter(), time.process_time()
    rc = videos.main(["--src", src, "--out", out, "--clip_frames", "25", "--quiet", *mode])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    frames = json.load(open(os.path.join(out, "ingest_report.json")))["counts"]["records"] * 25
    if rc != 0 or frames == 0:
        raise RuntimeError(f"ingestion benchmark: nothing ingested (rc {rc}); see {out}")
    return frames / wall, frames / cpu, frames


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-build", action="store_true", help="skip the demo corpus build")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="where to build the demo corpus (default: tmp)")
    ap.add_argument("--batches", type=int, default=40, help="batches timed per pipeline row")
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
    tmp = tempfile.mkdtemp(prefix="starcaster_bench_")
    try:
        for shape, cfg in PIPELINE_SHAPES.items():
            w = time.perf_counter()
            root = build_tiny(os.path.join(tmp, f"tiny{cfg['resolution']}"), cfg["resolution"])
            built = time.perf_counter() - w
            t = cfg["num_frames"] + cfg["context_frames"]
            for name, mix in (("video", {"video": 1.0}),
                              ("mixture 0.7/0.3", {"video": 0.7, "multiview": 0.3})):
                bw, bc, ew, first = bench_pipeline(root, shape, mix, args.batches)
                views = f", V={cfg['num_views']}" if len(mix) > 1 else ""
                rows.append((f"pipeline {name}, {shape} shapes (B={cfg['batch_size']}, T={t}"
                             f"{views}, {cfg['resolution']} px)",
                             f"{bw:.1f} batches/s, {ew:.0f} examples/s",
                             f"{bc:.1f} batches/CPU-s; first batch {first:.2f} s"
                             + (f"; tiny corpus built in {built:.1f} s" if len(mix) == 1 else "")))
        for workers in (1, 2):
            fw, fc, n = bench_ingest(tmp, workers)
            rows.append((f"ingest videos (Beam DirectRunner, {workers} worker(s)): 640x480 "
                         "30 fps H.264+AAC -> 256 px, 25 fps", f"{fw:.0f} frames/s",
                         f"{fc:.0f} frames/CPU-s of the driver ({n} frames; Haar on 480 px)"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("| benchmark | wall | notes |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
