"""Parameterisations (eps, v, flow), their conversions, training targets and the masked loss.

For any schedule with ``x_t = alpha x0 + sigma eps`` the three predictions are linear in
``(x0, eps)``:

* ``eps``  : ``eps``                         (SD-1.5)
* ``v``    : ``alpha * eps - sigma * x0``     (Salimans & Ho 2022)
* ``flow`` : ``eps - x0``                     (rectified-flow velocity ``dx_t/dsigma``)

The inverse maps below solve the 2x2 system exactly for *general* ``(alpha, sigma)`` (not only
variance-preserving ones), so every objective works with every schedule; a config can mix them.
Only ``eps`` is singular where ``alpha = 0`` (the zero-terminal-SNR first step): there ``alpha``
is clamped to ``2**-12`` (diffusers clamps ``alphas_cumprod[-1] = 2**-24`` for the same reason);
use ``v`` with zero-terminal-SNR, as Lin et al. 2023 prescribe.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from starcaster_jax.diffusion.schedules import expand_to

__all__ = [
    "OBJECTIVES",
    "to_x0_eps",
    "from_x0_eps",
    "predict_x0",
    "target",
    "min_snr_weight",
    "diffusion_loss",
    "training_inputs",
]

OBJECTIVES = ("eps", "v", "flow")
_ALPHA_MIN = 2.0**-12


def _check(objective: str):
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def to_x0_eps(objective: str, pred, x_t, alpha, sigma):
    """Raw prediction -> ``(x0_hat, eps_hat)``. ``alpha, sigma`` broadcast against ``x_t``
    (use :func:`expand_to` for per-frame ``[B, F]`` levels)."""
    _check(objective)
    if objective == "eps":
        eps = pred
        x0 = (x_t - sigma * eps) / jnp.maximum(alpha, _ALPHA_MIN)
    elif objective == "v":
        norm = alpha * alpha + sigma * sigma  # 1 for VP schedules
        x0 = (alpha * x_t - sigma * pred) / norm
        eps = (sigma * x_t + alpha * pred) / norm
    else:  # flow: x_t = alpha x0 + sigma (u + x0)
        x0 = (x_t - sigma * pred) / (alpha + sigma)  # alpha + sigma = 1 for rectified flow
        eps = pred + x0
    return x0, eps


def from_x0_eps(objective: str, x0, eps, alpha, sigma):
    """``(x0, eps)`` -> the raw prediction the network is trained to output."""
    _check(objective)
    if objective == "eps":
        return eps
    if objective == "v":
        return alpha * eps - sigma * x0
    return eps - x0


def predict_x0(objective: str, schedule, x_t, pred, t):
    """x0_hat from a raw prediction at per-frame model time ``t: [B, F]`` (lip loss, previews).
    x_t, pred: [B, F, H, W, C]."""
    alpha, sigma = schedule.alpha_sigma(t)
    return to_x0_eps(objective, pred, x_t, expand_to(alpha, x_t), expand_to(sigma, x_t))[0]


def target(objective: str, schedule, x0, noise, t):
    """Regression target for ``x_t = schedule.add_noise(x0, noise, t)``; [B, F, H, W, C]."""
    alpha, sigma = schedule.alpha_sigma(t)
    return from_x0_eps(objective, x0, noise, expand_to(alpha, x0), expand_to(sigma, x0))


def min_snr_weight(objective: str, alpha, sigma, gamma: float = 5.0):
    """Min-SNR-gamma loss weight (Hang et al. 2023) for a loss taken on ``objective``.

    The paper's rule is: weight the *x0-space* error by ``min(SNR, gamma)``. An error ``d`` in
    the raw prediction maps to an x0 error ``|dx0/dpred| * d``, so the weight on the raw MSE is
    ``min(SNR, gamma) * |dx0/dpred|^2``:

    * eps : ``min(SNR, gamma) / SNR``                         = ``min(1, gamma/SNR)``
    * v   : ``min(SNR, gamma) * sigma^2 / (alpha^2+sigma^2)^2`` = ``min(SNR, gamma)/(SNR+1)`` (VP)
    * flow: ``min(SNR, gamma) * sigma^2 / (alpha+sigma)^2``     = ``min(SNR, gamma) sigma^2`` (RF)
    """
    _check(objective)
    alpha = jnp.asarray(alpha, jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)
    snr = alpha**2 / jnp.maximum(sigma**2, 1e-20)
    clipped = jnp.minimum(snr, gamma)
    if objective == "eps":
        return jnp.minimum(1.0, gamma / jnp.maximum(snr, 1e-20))
    if objective == "v":
        return clipped * sigma**2 / (alpha**2 + sigma**2) ** 2
    return clipped * sigma**2 / (alpha + sigma) ** 2


def diffusion_loss(
    pred,
    target,
    t,
    context_mask=None,
    *,
    weighting: str | None = None,
    min_snr_gamma: float = 5.0,
    schedule=None,
    objective: str | None = None,
):
    """Per-frame MSE averaged over the non-context frames of the whole batch.

    Args:
      pred, target: [B, F, H, W, C] raw prediction and its target.
      t: [B, F] model time (used for the weighting only).
      context_mask: [B, F] bool, True = clean context frame (no loss), or None (all frames).
      weighting: None (plain MSE) or "min_snr" (needs ``schedule`` and ``objective``).

    Returns:
      ``(loss, per_frame)``: scalar weighted mean over non-context frames (every noised frame
      counts equally, so chunks with more context do not get up-weighted), and ``per_frame``
      [B, F] *unweighted* MSE for metrics, 0 on context frames.
    """
    err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    mse = jnp.mean(err, axis=tuple(range(2, err.ndim)))  # [B, F]
    keep = jnp.ones(mse.shape, bool) if context_mask is None else ~context_mask
    keep = keep.astype(jnp.float32)
    if weighting is None:
        w = jnp.ones_like(mse)
    elif weighting == "min_snr":
        if schedule is None or objective is None:
            raise ValueError("weighting='min_snr' needs schedule= and objective=")
        w = min_snr_weight(objective, *schedule.alpha_sigma(t), gamma=min_snr_gamma)
    else:
        raise ValueError(f"unknown weighting {weighting!r}")
    # where (not *) so a NaN/inf prediction on a context frame cannot leak into the loss
    per_frame = jnp.where(keep > 0, mse, 0.0)
    loss = jnp.sum(jnp.where(keep > 0, w * mse, 0.0)) / jnp.maximum(jnp.sum(keep), 1.0)
    return loss, per_frame


def training_inputs(schedule, objective: str, rng, x0, context_mask=None, *, per_frame_t=False):
    """Draw ``(x_t, t, target, noise)`` for one training step.

    x0: [B, F, H, W, C]. ``t`` is [B, F]: one level per clip (``per_frame_t=False``) or an
    independent level per frame (diffusion forcing). Context frames stay clean with ``t = 0``.
    """
    b, f = x0.shape[:2]
    k_t, k_n = jax.random.split(rng)
    t = schedule.sample_train_t(k_t, (b, f) if per_frame_t else (b, 1))
    t = jnp.broadcast_to(t, (b, f))  # [B, F]
    if context_mask is not None:
        t = jnp.where(context_mask, 0.0, t)
    noise = jax.random.normal(k_n, x0.shape, x0.dtype)
    x_t = schedule.add_noise(x0, noise, t)
    if context_mask is not None:
        x_t = jnp.where(expand_to(context_mask, x0), x0, x_t)
    return x_t, t, target(objective, schedule, x0, noise, t), noise
