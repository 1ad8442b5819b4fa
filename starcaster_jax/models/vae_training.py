"""Training the small VAE the CPU demo uses (no pretrained VAE can be downloaded here).

Loss as in LDM's ``LPIPSWithDiscriminator`` minus the perceptual and GAN terms: pixel
reconstruction (L1 or L2) + ``kl_weight`` x KL, both normalised per pixel, so ``kl_weight=1e-6``
means what it means in LDM configs. After training, ``estimate_scaling_factor`` gives the
``1/std`` latent scaling the diffusion model expects (SD's 0.18215 was found the same way).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from starcaster_jax.models.vae import AutoencoderKL


def vae_loss(model: AutoencoderKL, x: jax.Array, rng: jax.Array, *, kl_weight: float = 1e-6,
             recon: str = "l1") -> tuple[jax.Array, dict[str, jax.Array]]:
    """``x: [N, H, W, 3]`` in [-1, 1] -> (scalar loss, metrics). Decodes a posterior sample."""
    post = model.encode(x)
    xr = model.decode(post.sample(rng))
    err = xr - x.astype(jnp.float32)
    if recon == "l1":
        rec = jnp.mean(jnp.abs(err))
    elif recon == "l2":
        rec = jnp.mean(err ** 2)
    else:
        raise ValueError(f"recon: expected 'l1' or 'l2', got {recon!r}")
    pixels = x.shape[1] * x.shape[2] * x.shape[3]
    kl = jnp.mean(post.kl()) / pixels
    loss = rec + kl_weight * kl
    mse = jnp.mean(err ** 2)
    psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))  # peak-to-peak 2 for [-1, 1]
    return loss, {"loss": loss, "recon": rec, "kl": kl, "psnr": psnr}


def make_vae_optimizer(model: AutoencoderKL, learning_rate: float = 5e-4, *, b1: float = 0.9,
                       b2: float = 0.999, grad_clip: float | None = 1.0) -> nnx.Optimizer:
    """Adam (optionally after global-norm clipping) over the VAE's ``nnx.Param``s. On the tiny
    preset 5e-4 learned fastest of 5e-4..1e-2 (higher rates stall on a flat-colour plateau)."""
    tx = optax.adam(learning_rate, b1=b1, b2=b2)
    if grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


@functools.partial(nnx.jit, static_argnames=("kl_weight", "recon"), donate_argnums=(0, 1))
def train_vae_step(model: AutoencoderKL, optimizer: nnx.Optimizer, x: jax.Array, rng: jax.Array, *,
                   kl_weight: float = 1e-6, recon: str = "l1") -> dict[str, jax.Array]:
    """One optimiser step on a batch ``x: [N, H, W, 3]``; updates ``model`` and ``optimizer`` in
    place and returns the metrics of the batch (before the update)."""

    def loss_fn(m):
        return vae_loss(m, x, rng, kl_weight=kl_weight, recon=recon)

    (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return metrics


@nnx.jit
def _latent_moments(model: AutoencoderKL, x: jax.Array):
    z = model.encode(x).mode()
    return jnp.mean(z), jnp.mean(z ** 2)


def estimate_scaling_factor(model: AutoencoderKL, images: jax.Array, batch_size: int = 16) -> float:
    """``1 / std`` of the posterior means over ``images: [N, H, W, 3]`` — the value to put in
    ``VAEConfig.scaling_factor`` so the diffusion model sees unit-variance latents."""
    s1 = s2 = 0.0
    n = 0
    for i in range(0, images.shape[0], batch_size):
        xb = images[i:i + batch_size]
        m1, m2 = _latent_moments(model, xb)
        s1 += float(m1) * xb.shape[0]
        s2 += float(m2) * xb.shape[0]
        n += xb.shape[0]
    var = s2 / n - (s1 / n) ** 2
    return float(1.0 / max(var, 1e-12) ** 0.5)
