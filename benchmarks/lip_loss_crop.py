"""Lip-loss cost, full-frame decode vs the mouth window (``train.lip_latent_crop``) -> a table.

    python benchmarks/lip_loss_crop.py [--sizes demo small paper] [--repeats 3] [--time_paper]

For each size the lip loss's forward + backward w.r.t. x̂0 (what a training step adds for the
lip loss: frozen VAE decode, lip reader on generated and true mouths) is jitted with the frozen
networks as arguments, compiled, and reported as

    time/call    median wall time of ``repeats`` calls after one warm-up (``--time_paper`` to
                 run the paper size too; by default it is only compiled)
    temp, total  ``compiled.memory_analysis()``: temporary buffers, and arguments + outputs +
                 temporaries - aliased (what the program holds at most); XLA's own peak figure
                 is printed where the backend reports one (XLA:CPU reports none that is useful)
    |Δloss|      relative difference of the two losses (random weights: the decoder's
                 GroupNorm / attention statistics differ over a window; informative only)

Sizes (random weights; cost does not depend on their values):
    demo   64 x 64 frames, the demo f=4 VAE (16 x 16 latents), window 8, B=1 x K+F=10 frames,
           the built-in lip reader
    small  256 x 256 frames, the small f=8 VAE (32 x 32 latents), window 16, B=1 x 4 frames,
           the built-in lip reader
    paper  512 x 512 frames, the SD-1.5-size f=8 VAE (64 x 64 latents), window 32, B=1 x 4
           frames, the lip reader at the public VSR ResNet-18 size (88 px crops)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import stage2_audio
from starcaster_jax.inference.random_init import random_module
from starcaster_jax.models.lipreading import LipReader, LipReaderConfig
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.vae import AutoencoderKL, VAEConfig
from starcaster_jax.training import losses as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = {
    # name: (variant, frames per clip, lip reader preset)
    "demo": ("demo", 10, "tiny"),
    "small": ("small", 4, "tiny"),
    "paper": ("paper", 4, "real"),
}


def build(name: str):
    """-> (jitted value_and_grad fn per crop setting, its args, description)."""


    variant, t_len, reader = SIZES[name]
    cfg = stage2_audio.get_config(variant)
    vc = VAEConfig.from_diffusers(cfg.model.vae.to_dict(), dtype="float32")
    vae = random_module(lambda: AutoencoderKL(vc, rngs=InitRngs(0)), 1)
    lip = random_module(lambda: LipReader(getattr(LipReaderConfig, reader)(), rngs=InitRngs(0)), 2)
    res = int(cfg.data.resolution)
    f = vc.downsample_factor
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.uniform(-1, 1, (1, t_len, res, res, 3)), jnp.float32)
    x0 = jnp.asarray(rng.normal(size=(1, t_len, res // f, res // f, vc.latent_channels)), jnp.float32)
    cy = 0.78 + 0.03 * np.sin(np.arange(t_len))                       # a corpus-like mouth track
    cx = 0.55 + 0.03 * np.cos(np.arange(t_len))
    boxes = jnp.asarray(np.stack([cy - 0.08, cx - 0.09, cy + 0.08, cx + 0.09], -1)[None], jnp.float32)
    k = int(cfg.data.context_frames) if t_len > int(cfg.data.context_frames) else 0
    ctx = jnp.asarray(np.arange(t_len)[None] < k)
    t = jnp.where(ctx, 0.0, 200.0)
    graphs = {"vae": nnx.split(vae)[0], "lip": nnx.split(lip)[0]}
    states = {"vae": nnx.split(vae)[1], "lip": nnx.split(lip)[1]}
    fns = {}
    for label, crop in (("full", 0), ("crop", int(cfg.train.lip_latent_crop))):
        cfg.train.update(lip_weight=0.1, lip_latent_crop=crop)
        lc = L.LossConfig.from_config(cfg)

        def loss(states, x0_hat, lc=lc):
            nets = {n: nnx.merge(graphs[n], states[n]) for n in graphs}
            return L.noise_weighted_lip_loss(nets, x0_hat, t, frames, boxes, ctx, lc)

        fns[label] = (jax.jit(jax.value_and_grad(loss, argnums=1)), crop)
    desc = (f"{res}x{res} f={f} VAE, {res // f}x{res // f} latents, B=1 x {t_len} frames "
            f"({k} context), lip reader '{reader}'")
    return fns, (states, x0), desc


def measure(fn, args, repeats: int, run: bool) -> dict:
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    out = {"compile_s": time.perf_counter() - t0}
    mem = compiled.memory_analysis()
    out["temp"] = mem.temp_size_in_bytes
    out["total"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                    - mem.alias_size_in_bytes)
    peak = getattr(mem, "peak_memory_in_bytes", 0)
    out["peak"] = peak if peak >= out["temp"] else None
    if run:
        val, _ = jax.block_until_ready(compiled(*args))          # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - t0)
        out["time_s"] = sorted(times)[len(times) // 2]
        out["loss"] = float(val)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["demo", "small", "paper"], choices=sorted(SIZES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--time_paper", action="store_true",
                    help="also run (not only compile) the paper size: its full decode needs ~23 GiB")
    a = ap.parse_args(argv)
    mib = 2.0 ** 20
    rows = []
    for name in a.sizes:
        fns, args, desc = build(name)
        run = name != "paper" or a.time_paper
        res = {label: measure(fn, args, a.repeats, run) for label, (fn, _) in fns.items()}
        rows.append((name, desc, fns, res))
    print(f"\nlip loss forward + backward w.r.t. x̂0, {jax.default_backend()} "
          f"({jax.devices()[0].device_kind}), f32\n")
    print("| size | decode | window | time/call | temp MiB | total MiB | XLA peak MiB | compile s | |Δloss|/loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _desc, fns, res in rows:
        full = res["full"]
        for label, (_, crop) in fns.items():
            r = res[label]
            t = f"{r['time_s'] * 1e3:.1f} ms" if "time_s" in r else "(not run)"
            if label == "crop" and "time_s" in r:
                t += f" ({full['time_s'] / r['time_s']:.1f}x)"
            d = (f"{abs(r['loss'] - full['loss']) / abs(full['loss']):.3f}"
                 if label == "crop" and "loss" in r else "")
            win = f"{crop}x{crop} latents" if crop else "full frame"
            peak = "n/a" if r["peak"] is None else f"{r['peak'] / mib:.1f}"
            print(f"| {name} | {label} | {win} | {t} | {r['temp'] / mib:.1f} | {r['total'] / mib:.1f} | "
                  f"{peak} | {r['compile_s']:.1f} | {d} |")
    print()
    for name, desc, _, _ in rows:
        print(f"{name}: {desc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
