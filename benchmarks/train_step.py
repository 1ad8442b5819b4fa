"""Train-step throughput of the real ``Trainer`` -> a markdown table on stdout.

    python benchmarks/train_step.py [--stage 2] [--variants tiny,small] [--steps 3]
        [--kinds video,video_sf,multiview] [--warmup 1] [--set model.unet.dtype=bfloat16 ...]
        [--json out.json] [--breakdown] [--against COMMIT]

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

``--breakdown`` also compiles the parts of the ``video`` step as programs of their own, on the
same batch and state: the frozen VAE encode of the K + F frames, the audio windows, the
denoiser forward and forward + backward (loss = mean square of the prediction), the lip loss
forward + backward through the decoder and the lip reader, and the shared update. Each row
has its ms, XLA GFLOPs, GFLOP/s, MFU and share of the whole ``grads`` program.

``--against COMMIT`` runs this same command on a ``git worktree`` of ``COMMIT`` (its own
``benchmarks/train_step.py``, which must take ``--json``) and then on this tree, one after the
other on the same machine, and prints both tables and the steps/s ratio per row.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import starcaster_jax  # noqa: E402,F401  (flax config)
from starcaster_jax.training import frozen as frozen_lib  # noqa: E402
from starcaster_jax.training import losses as losses_lib  # noqa: E402
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


def bench_variant(stage: str, variant: str, kinds, steps: int, warmup: int, overrides, peak,
                  parts: list | None = None):
    """Rows of the step table; with ``parts`` (a list) also appends the video step's breakdown."""
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
    if parts is not None:
        batch = trainer.global_batch(synthetic_batch(config, trainer, "video"))
        parts += [dict(r, variant=variant) for r in breakdown(trainer, state, batch, peak)]
    del state
    return rows


def _time_program(fn, *args, repeats: int = 3):
    """(median seconds, XLA FLOPs or None, output) of ``jax.jit(fn)(*args)`` after one call."""
    compiled = jax.jit(fn).lower(*args).compile()
    out = compiled(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), metrics_lib.step_flops(compiled), out


def breakdown(trainer: Trainer, state, batch, peak: float, repeats: int = 3) -> list[dict]:
    """The parts of one ``video`` step, each compiled alone (see the module docstring)."""
    lc = trainer.lc
    t_len = lc.context_frames + lc.num_frames
    gd, fs = trainer.frozen_graphdefs, trainer.frozen_states
    frames = batch["frames"][:, :t_len]                                     # [B, K+F, R, R, 3]
    boxes = batch["mouth_box"][:, :t_len]                                   # [B, K+F, 4]
    b = frames.shape[0]
    cmask = jnp.zeros((b, t_len), bool).at[:, :lc.context_frames].set(True)
    view = batch["pose"][:, :t_len] if lc.use_view else None
    rows = []

    def add(part, fn, *args):
        with jax.set_mesh(trainer.mesh):
            dt, flops, out = _time_program(fn, *args, repeats=repeats)
        rows.append(dict(part=part, ms=1e3 * dt, gflops=(flops or float("nan")) / 1e9,
                         gflops_per_s=(flops or float("nan")) / dt / 1e9,
                         mfu=(flops or float("nan")) / dt / peak))
        return out

    x0 = add("VAE encode (K+F frames)",
             lambda fs, x: frozen_lib.merge_frozen(gd, fs)["vae"].encode_video(x, None), fs, frames)
    audio_win = None
    if lc.use_audio:
        audio_win = add("audio windows", lambda fs, a: losses_lib.audio_windows(
            frozen_lib.merge_frozen(gd, fs), losses_lib.chunk_audio(a, 0, t_len, lc.audio_window),
            t_len, lc), fs, batch["audio"])
    id_emb = frozen_lib.pad_identity(batch["id_vector"].astype(jnp.float32), lc.embed_dim)

    def denoise(params):
        t = jnp.full((b, t_len), 0.5)
        pred = trainer.model_from(params)(x0, t, id_emb=id_emb, audio_windows=audio_win, view=view,
                                          context_mask=cmask)
        return jnp.mean(jnp.square(pred))

    add("denoiser forward", denoise, state.params)
    add("denoiser forward + backward", jax.grad(denoise), state.params)
    if lc.lip_weight > 0 and "lip" in trainer.frozen_graphdefs:
        def lip(fs, z):
            nets = frozen_lib.merge_frozen(gd, fs)
            t = jnp.full((b, t_len), 0.3)
            return jax.grad(lambda z: losses_lib.noise_weighted_lip_loss(
                nets, z, t, frames, boxes, cmask, lc))(z)
        add("lip loss forward + backward (decode + reader)", lip, fs, x0)
    add("whole grads program (video)", trainer._grads_fn("video"), state, fs, batch)
    whole = rows[-1]["ms"]
    for r in rows:
        r["share"] = r["ms"] / whole
    return rows


def breakdown_table(rows) -> str:
    lines = ["| part of the video step | ms | share of grads | GFLOPs | GFLOP/s | MFU |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['part']} | {r['ms']:.0f} | {100 * r['share']:.0f}% | {r['gflops']:.1f} "
                     f"| {r['gflops_per_s']:.0f} | {100 * r['mfu']:.1f}% |")
    return "\n".join(lines)


def against(commit: str, argv: list[str]) -> int:
    """Run this command on ``commit`` and on this tree, one after the other; print the ratio."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    passed, skip = [], False
    for a in argv:       # drop --against/--json/--breakdown: each side writes its own json
        if skip:
            skip = False
            continue
        if a in ("--against", "--json"):
            skip = True
            continue
        if a.startswith(("--against=", "--json=")) or a == "--breakdown":
            continue
        passed.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        tree = os.path.join(tmp, "tree")
        if subprocess.run(["git", "-C", root, "worktree", "add", "--detach", tree, commit],
                          capture_output=True).returncode:
            print(f"error: --against {commit}: not a commit of {root}", file=sys.stderr)
            return 2
        try:
            results = {}
            for name, where in ((commit, tree), ("this tree", root)):
                out = os.path.join(tmp, f"{len(results)}.json")
                print(f"\n## {name}", flush=True)
                env = dict(os.environ, PYTHONPATH=where)
                rc = subprocess.run([sys.executable, os.path.join(where, "benchmarks", "train_step.py"),
                                     *passed, "--json", out], cwd=where, env=env).returncode
                if rc:
                    return rc
                with open(out) as f:
                    results[name] = json.load(f)["rows"]
        finally:
            subprocess.run(["git", "-C", root, "worktree", "remove", "--force", tree], capture_output=True)
    print(f"\n| variant | step kind | {commit} ms/step | this tree ms/step | speed-up (steps/s) |")
    print("|---|---|---|---|---|")
    old = {(r["variant"], r["kind"]): r for r in results[commit]}
    for r in results["this tree"]:
        o = old.get((r["variant"], r["kind"]))
        if o:
            print(f"| {r['variant']} | {r['kind']} | {o['ms_per_step']:.0f} | {r['ms_per_step']:.0f} "
                  f"| {o['ms_per_step'] / r['ms_per_step']:.2f}x |")
    return 0


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
    p.add_argument("--breakdown", action="store_true",
                   help="also time the parts of the video step, each compiled alone")
    p.add_argument("--against", default="", metavar="COMMIT",
                   help="run the same benchmark on COMMIT first, then here, and print the ratio")
    args = p.parse_args(argv)
    if args.against:
        return against(args.against, list(sys.argv[1:] if argv is None else argv))
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

    rows, parts = [], ([] if args.breakdown else None)
    for variant in [v for v in args.variants.split(",") if v]:
        rows += bench_variant(args.stage, variant, kinds, args.steps, args.warmup, args.set, peak,
                              parts)
    print(f"\nstage {args.stage}, {args.steps} timed steps after {args.warmup} warm-up "
          f"(median), init = Trainer + init_state:")
    print(table(rows))
    print("\n" + ", ".join(f"{r['variant']} init {r['init_s']:.1f} s" for r in rows
                           if r["kind"] == kinds[0]))
    print("CPU s/step: " + ", ".join(f"{r['variant']}/{r['kind']} {r['cpu_s_per_step']:.2f}"
                                     for r in rows))
    for variant in sorted({r["variant"] for r in parts or ()}):
        print(f"\n{variant}: the video step's parts, each compiled alone (median of 3):")
        print(breakdown_table([r for r in parts if r["variant"] == variant]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_flops=peak, device=dev.device_kind, load_avg=load[0],
                           overrides=args.set, rows=rows, breakdown=parts), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
