"""Denoiser speed at the `small` size: JAX forward and train step vs diffusers UNetMotionModel.

small = blocks 64/128/256/256, 2 layers/block, 8 heads, context 256, 8 frames of 32x32x4
latents, batch 1, f32. Reports median wall time after warm-up, XLA cost-analysis FLOPs and
achieved GFLOP/s, and (when torch + diffusers are installed) the PyTorch eager times and the
ratio. Usage: ``python benchmarks/denoiser.py [--iters 5] [--no-torch]``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import starcaster_jax  # noqa: F401  (flax config)
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.unet import UNet, UNetConfig

SMALL = dict(block_out_channels=(64, 128, 256, 256), cross_attn_blocks=(True, True, True, False),
             layers_per_block=2, num_attention_heads=8, cross_attention_dim=256, norm_num_groups=32,
             motion_num_attention_heads=8, motion_max_seq_length=32)
B, F, H, W, C, N_CTX = 1, 8, 32, 32, 4, 8


def _median_time(fn, iters):
    fn()  # warm-up (compile)
    fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    return float(ca.get("flops", float("nan"))) if ca else float("nan")


def bench_jax(iters):
    cfg = UNetConfig(**SMALL, audio_dim=None, view_dim=None, use_context_embedding=False)
    model = UNet(cfg, rngs=InitRngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (B, F, H, W, C))
    t = jnp.full((B, F), 500.0)
    ctx = jax.random.normal(k[1], (B, N_CTX, 256))
    target = jax.random.normal(k[2], x.shape)
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)

    def fwd(params, x, t, ctx):
        return nnx.merge(graphdef, params)(x, t, id_tokens=ctx)

    def train_step(params, opt_state, x, t, ctx, target):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((fwd(p, x, t, ctx) - target) ** 2))(params)
        upd, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    fwd_c = jax.jit(fwd).lower(params, x, t, ctx).compile()
    step_c = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, x, t, ctx, target).compile()
    t_fwd = _median_time(lambda: fwd_c(params, x, t, ctx).block_until_ready(), iters)
    state = {"p": params, "o": opt_state}

    def run_step():
        p, o, loss = step_c(state["p"], state["o"], x, t, ctx, target)
        loss.block_until_ready()
        state["p"], state["o"] = p, o

    t_step = _median_time(run_step, iters)
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    return dict(fwd=t_fwd, step=t_step, fwd_flops=_flops(fwd_c), step_flops=_flops(step_c), params=n_params)


def bench_torch(iters):
    import diffusers  # noqa: PLC0415 (the torch extra, parity oracle only)
    import torch  # noqa: PLC0415 (the torch extra, parity oracle only)
    torch.manual_seed(0)
    m = diffusers.UNetMotionModel(
        down_block_types=("CrossAttnDownBlockMotion",) * 3 + ("DownBlockMotion",),
        up_block_types=("UpBlockMotion",) + ("CrossAttnUpBlockMotion",) * 3,
        block_out_channels=SMALL["block_out_channels"], layers_per_block=2, num_attention_heads=8,
        cross_attention_dim=256, norm_num_groups=32, motion_num_attention_heads=8,
        motion_max_seq_length=32, use_motion_mid_block=True)
    x = torch.randn(B, C, F, H, W)
    t = torch.tensor([500.0])
    ctx = torch.randn(B * F, N_CTX, 256)
    target = torch.randn_like(x)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)

    def fwd():
        with torch.no_grad():
            m(x, t, encoder_hidden_states=ctx)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((m(x, t, encoder_hidden_states=ctx).sample - target) ** 2)
        loss.backward()
        opt.step()

    return dict(fwd=_median_time(fwd, iters), step=_median_time(step, iters),
                params=sum(p.numel() for p in m.parameters()), threads=torch.get_num_threads())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args()
    j = bench_jax(a.iters)
    tr = None
    if not a.no_torch:
        try:
            tr = bench_torch(a.iters)
        except ImportError:
            print("(torch/diffusers not installed: PyTorch column skipped)")
    print(f"\nsmall denoiser, B={B} F={F} latents {H}x{W}x{C}, f32, {jax.devices()[0].platform}, "
          f"JAX {jax.__version__}; params JAX {j['params']/1e6:.2f}M"
          + (f", torch {tr['params']/1e6:.2f}M ({tr['threads']} threads)" if tr else ""))
    print("| what | JAX ms | GFLOP (XLA) | JAX GFLOP/s | PyTorch eager ms | JAX / PyTorch |")
    print("|---|---|---|---|---|---|")
    for name, key, fk in (("forward", "fwd", "fwd_flops"), ("train step", "step", "step_flops")):
        gf = j[fk] / 1e9
        row = f"| {name} | {j[key]*1e3:.1f} | {gf:.1f} | {gf / j[key]:.1f} |"
        row += f" {tr[key]*1e3:.1f} | {j[key]/tr[key]:.2f} |" if tr else " - | - |"
        print(row)


if __name__ == "__main__":
    main()
