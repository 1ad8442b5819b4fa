"""Train-step throughput of the real ``Trainer`` -> a markdown table on stdout.

    python benchmarks/train_step.py [--stage 2] [--variants tiny,small] [--steps 3]
        [--kinds video,video_sf,multiview] [--warmup 1] [--set model.unet.dtype=bfloat16 ...]
        [--json out.json]

For each variant this builds ``Trainer(config, make_mesh(config))`` for the stage's config
(``configs/stage{1_motion,2_audio,3_views}.py:<variant>``), ``init_state()``, and a synthetic
global batch of the shapes the Grain pipeline produces (``data_pipelines/transforms.py``):

    video / video_sf   T = trainer.window_frames() frames (K + F, or K + (R+1) F with
                       self-forcing), audio [(T + 2w) * 640], stream id 0
    multiview          T = data.num_views views, audio zeros, stream id 1

Per step kind it AOT-compiles the step (``trainer.precompile``, timed on its own), runs
``--warmup`` untimed steps, then ``--steps`` timed steps (each ``block_until_ready``; the state
is donated, so it is reassigned every step). Columns: parameters of the trainable tree,
compile seconds, median ms/step, steps/s, examples/s (global batch / step time), model
GFLOPs/step from XLA's cost analysis of the compiled step (``metrics.step_flops``), and MFU
against ``metrics.device_peak_flops()`` (on CPU a measured f32 matmul rate; on TPU/GPU the
bf16 table peak of all devices).

Frozen networks (VAE, audio, lip reader) are the random ones the Trainer builds when no
``model.encoders_dir`` is set: same shapes and cost as trained ones. On a shared CPU the
timings are noisy: the script also prints the load average and CPU seconds per step.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import starcaster_jax  # noqa: E402,F401  (flax config)
from starcaster_jax.training import metrics as metrics_lib  # noqa: E402
from starcaster_jax.training.loop import make_mesh  # noqa: E402
from starcaster_jax.training.step import Trainer  # noqa: E402

STAGES = {"1": "configs.stage1_motion", "2": "configs.stage2_audio", "3": "configs.stage3_views"}
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps (data_pipelines.schema.SAMPLES_PER_FRAME)
KINDS = ("video", "video_sf", "multiview")


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def make_config(stage: str, variant: str, overrides: list[str]):
    config = importlib.import_module(STAGES[stage]).get_config(variant)
    if overrides:
        flat = {}
        for item in overrides:
            key, _, value = item.partition("=")
            flat[key.strip()] = _parse_value(value.strip())
        config.update_from_flattened_dict(flat)
    return config


def synthetic_batch(config, trainer: Trainer, kind: str, seed: int = 0) -> dict:
    """Per-process numpy batch with the pipeline's keys/shapes/dtypes (the ones steps read)."""
    rng = np.random.default_rng(seed)
    b = int(config.data.batch_size) // jax.process_count()
    r = int(config.data.resolution)
    w = int(config.model.audio.window)
    multiview = kind == "multiview"
    t = int(config.data.num_views) if multiview else int(trainer.window_frames())
    frames = rng.uniform(-1.0, 1.0, (b, t, r, r, 3)).astype(np.float32)
    audio = (np.zeros if multiview else lambda s: 0.1 * rng.standard_normal(s))(
        (b, (t + 2 * w) * SAMPLES_PER_FRAME)).astype(np.float32)
    pose = np.tile(np.array([0, 0, 0, 0, 0, 1], np.float32), (b, t, 1))
    pose[..., :3] += 0.1 * rng.standard_normal((b, t, 3)).astype(np.float32)
    pose[:, 0] = (0, 0, 0, 0, 0, 1)                  # relative to frame / view 0
    mouth_box = np.tile(np.array([0.6, 0.3, 0.85, 0.7], np.float32), (b, t, 1))
    id_vector = rng.standard_normal((b, 48)).astype(np.float32)
    id_vector /= np.linalg.norm(id_vector, axis=-1, keepdims=True)
    return {
        "stream": np.full((b,), 1 if multiview else 0, np.int32),
        "frames": frames,
        "audio": audio,
        "pose": pose,
        "pose_valid": np.ones((b,), np.bool_),
        "mouth_box": mouth_box,
        "identity": id_vector.copy(),
        "id_vector": id_vector,
    }


def param_count(tree) -> int:
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)))


def bench_variant(stage: str, variant: str, kinds, steps: int, warmup: int, overrides, peak):
    config = make_config(stage, variant, overrides)
    mesh = make_mesh(config)
    t0 = time.perf_counter()
    trainer = Trainer(config, mesh)
    state = trainer.init_state()
    jax.block_until_ready(state)
    t_init = time.perf_counter() - t0
    n_params = param_count(trainer.abstract_params)
    global_b = int(config.data.batch_size)
    rows = []
    for kind in kinds:
        batch = trainer.global_batch(synthetic_batch(config, trainer, kind))
        t0 = time.perf_counter()
        trainer.precompile({kind: batch})
        t_compile = time.perf_counter() - t0
        flops = metrics_lib.step_flops(trainer.compiled(kind, batch))
        for _ in range(warmup):
            state, m = trainer.step_kind(state, batch, kind)
            jax.block_until_ready((state, m))
        times, cpu = [], []
        for _ in range(steps):
            w0, c0 = time.perf_counter(), time.process_time()
            state, m = trainer.step_kind(state, batch, kind)
            jax.block_until_ready((state, m))
            times.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
        loss = float(jax.device_get(m["loss"])) if "loss" in m else float("nan")
        dt = statistics.median(times)
        rows.append(dict(
            variant=variant, kind=kind, params=n_params, init_s=t_init, compile_s=t_compile,
            ms_per_step=1e3 * dt, steps_per_s=1.0 / dt, examples_per_s=global_b / dt,
            cpu_s_per_step=statistics.median(cpu), gflops_per_step=(flops or float("nan")) / 1e9,
            mfu=(flops / dt / peak) if flops else float("nan"), batch=global_b,
            frames=int(batch["frames"].shape[1]), resolution=int(config.data.resolution),
            loss=loss, skipped=int(jax.device_get(state.skipped)), step_times_s=times))
        print(f"  {variant}/{kind}: compile {t_compile:.1f} s, {1e3 * dt:.0f} ms/step, "
              f"loss {loss:.4f}", file=sys.stderr, flush=True)
    del state
    return rows


def table(rows) -> str:
    head = ("| variant | step kind | batch x frames @ res | params | compile s | ms/step | steps/s "
            "| examples/s | GFLOPs/step | MFU |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['kind']} | {r['batch']}x{r['frames']} @ {r['resolution']} "
            f"| {r['params'] / 1e6:.2f} M | {r['compile_s']:.1f} | {r['ms_per_step']:.0f} "
            f"| {r['steps_per_s']:.2f} | {r['examples_per_s']:.2f} | {r['gflops_per_step']:.1f} "
            f"| {100 * r['mfu']:.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", default="2", choices=sorted(STAGES))
    p.add_argument("--variants", default="tiny,small")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--steps", type=int, default=3, help="timed steps per kind")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. model.unet.dtype=bfloat16 (repeatable)")
    p.add_argument("--json", default="", help="also write the rows here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            p.error(f"--kinds: {k!r} is not one of {KINDS}")

    dev = jax.devices()[0]
    peak = metrics_lib.device_peak_flops()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} x "
          f"{dev.device_kind}, {jax.process_count()} process(es), {os.cpu_count()} CPUs, "
          f"load avg {load[0]:.1f}; peak for MFU {peak / 1e9:.0f} GFLOP/s"
          + (" (measured f32 matmul)" if jax.default_backend() == "cpu" else " (table)"),
          flush=True)
    if args.set:
        print("overrides: " + " ".join(args.set), flush=True)

    rows = []
    for variant in [v for v in args.variants.split(",") if v]:
        rows += bench_variant(args.stage, variant, kinds, args.steps, args.warmup, args.set, peak)
    print(f"\nstage {args.stage}, {args.steps} timed steps after {args.warmup} warm-up "
          f"(median), init = Trainer + init_state:")
    print(table(rows))
    print("\n" + ", ".join(f"{r['variant']} init {r['init_s']:.1f} s" for r in rows
                           if r["kind"] == kinds[0]))
    print("CPU s/step: " + ", ".join(f"{r['variant']}/{r['kind']} {r['cpu_s_per_step']:.2f}"
                                     for r in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_flops=peak, device=dev.device_kind, load_avg=load[0],
                           overrides=args.set, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
