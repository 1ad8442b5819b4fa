"""Peak memory of generation vs video length -> a markdown table on stdout.

    python benchmarks/generate_memory.py [--seconds 4 60] [--steps 4] [--checkpoint WORKDIR]

Each length runs in its own subprocess under ``/usr/bin/time -v`` (peak RSS of that process;
without it, ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``). The subprocess runs the
generate CLI's own code path (``launch.generate.generate``: chunked sampling, streamed mp4
writing with the audio muxed) on speech synthesized by espeak-ng and tiled to the length, in
synthesize mode with an orbit trajectory. Without ``--checkpoint`` the model is the ``tiny``
architecture with random weights (memory does not depend on the weights' values); the
sampling steps only change the time, not the memory.

Generation is designed so that peak memory does not grow with length (one fixed-shape chunk
function, frames streamed to the file): the two rows should agree to within noise.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from configs import stage2_audio
from data_pipelines.synthetic import speech
from launch import generate as cli
from starcaster_jax import inference as G
from starcaster_jax import media
from starcaster_jax.media import read_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(seconds: float, out: str, steps: int, checkpoint: str | None) -> None:
    """One generation of ``seconds`` of speech (runs inside the measured subprocess)."""
    import soundfile  # noqa: PLC0415 (the media extra)


    utt = speech.synthesize("the quick brown fox jumps over the lazy dog, and then it rests", "en-us").audio
    sr = G.SAMPLE_RATE
    audio = np.tile(np.concatenate([utt, np.zeros(sr // 4, np.float32)]), int(seconds * sr / utt.size) + 2)
    wav = os.path.splitext(out)[0] + ".wav"
    soundfile.write(wav, audio[:int(seconds * sr)], sr)
    np.save(os.path.splitext(out)[0] + ".npy", np.ones(512, np.float32))
    if checkpoint is None:
        cfg = stage2_audio.get_config("tiny")
        parts = G.random_parts(cfg)
        cli.build_generator = lambda args, need_identity: G.Generator(
            parts.model, parts.vae, parts.audio_encoder, cfg, identity_fn=parts.identity_fn)
    # RSS sampled at every chunk written: flat after warm-up if nothing accumulates per chunk
    samples, write = [], media.VideoWriter.write

    def write_and_sample(self, frames):
        write(self, frames)
        with open("/proc/self/status") as f:
            samples.append(next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")))
    media.VideoWriter.write = write_and_sample
    argv = ["--checkpoint", checkpoint or ROOT, "--identity", os.path.splitext(out)[0] + ".npy",
            "--audio", wav, "--views", "orbit", "--steps", str(steps), "--out", out, "--quiet"]
    t = time.perf_counter()
    rc = cli.main(argv)
    print(f"generate_seconds={time.perf_counter() - t:.1f}", flush=True)
    if samples:  # RSS (KiB) after 10% of the chunks and after the last one
        print(f"rss_early={samples[len(samples) // 10]} rss_last={samples[-1]} chunks={len(samples)}", flush=True)
    sys.exit(rc)


def measure(seconds: float, steps: int, checkpoint: str | None, tmp: str) -> dict:
    out = os.path.join(tmp, f"gen_{seconds:g}s.mp4")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(seconds), "--steps", str(steps),
           "--out", out] + (["--checkpoint", checkpoint] if checkpoint else [])
    timer = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if timer:
        cmd = [timer, "-v"] + cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    wall = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"worker for {seconds} s failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if m:
        peak_kb, how = int(m.group(1)), "/usr/bin/time -v"
    else:  # getrusage keeps the max over all children so far: only valid for the first/largest
        peak_kb, how = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before), "getrusage"
    gen = re.search(r"generate_seconds=([\d.]+)", p.stdout)
    trace = re.search(r"rss_early=(\d+) rss_last=(\d+) chunks=(\d+)", p.stdout)
    frames = read_video(out)[0].shape[0]
    early, last, chunks = (int(trace.group(i)) for i in (1, 2, 3)) if trace else (0, 0, 0)
    return dict(seconds=seconds, frames=frames, peak_mib=peak_kb / 1024, wall=wall, chunks=chunks,
                early=early / 1024, last=last / 1024,
                gen=float(gen.group(1)) if gen else float("nan"), how=how)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, nargs="+", default=[4.0, 60.0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--checkpoint", default=None, help="a training workdir (default: random tiny model)")
    ap.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker is not None:
        worker(a.worker, a.out, a.steps, a.checkpoint)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(s, a.steps, a.checkpoint, tmp) for s in a.seconds]
    model = a.checkpoint or "tiny (random weights)"
    print(f"\nGeneration peak memory, {model}, {a.steps} sampling steps, synthesize + orbit, CPU\n")
    print("| audio | frames | chunks | peak RSS (MiB) | RSS at 10% of chunks -> at the end (MiB) "
          "| generation (s) | process wall (s) | peak measured with |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['seconds']:g} s | {r['frames']} | {r['chunks']} | {r['peak_mib']:.0f} | "
              f"{r['early']:.0f} -> {r['last']:.0f} | {r['gen']:.1f} | {r['wall']:.1f} | {r['how']} |")
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        print(f"\n{hi['seconds'] / lo['seconds']:.0f}x the length: peak RSS x{hi['peak_mib'] / lo['peak_mib']:.3f} "
              f"({hi['peak_mib'] - lo['peak_mib']:+.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
