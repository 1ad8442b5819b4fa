"""Samplers: DDIM (eta >= 0), Euler (rectified flow), DPM-Solver++(2M); context-frame aware.

The model contract is ``model_fn(x [B, F, H, W, C], t [B, F]) -> raw prediction`` (wrap a
conditional model with :mod:`starcaster_jax.diffusion.guidance`). At every evaluation the
context frames (``context_mask [B, F]`` True) are reset to the clean ``context`` and get
``t = 0``, and no update ever touches them, so autoregressive chunks and self-forcing see
exactly the context they were given.

All three samplers are written as "convert the prediction to ``(x0_hat, eps_hat)``, then take a
step whose coefficients depend only on the static grid": the coefficients are numpy constants
computed once per ``steps``, the loop is a ``lax.fori_loop`` (a ``scan`` when the bounds are
python ints, hence reverse-differentiable), and everything runs under ``jax.jit``.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from starcaster_jax.diffusion.objectives import to_x0_eps
from starcaster_jax.diffusion.schedules import SamplingGrid, expand_to

__all__ = ["SAMPLERS", "sample", "denoise_steps", "ddim_step", "dpmpp_2m_coefficients"]

SAMPLERS = ("ddim", "euler", "dpmpp_2m")
_ALPHA_MIN = 2.0**-12  # same clamp as diffusers' alphas_cumprod[-1] = 2**-24 for zero-SNR


def ddim_step(x0, eps, alpha_next, sigma_next, *, noise=None, std=0.0):
    """DDIM (Song et al. 2021) update: re-noise the current x0/eps estimate to the next level.
    ``std > 0`` (from ``eta``) swaps part of the deterministic eps direction for fresh noise."""
    x = alpha_next * x0 + jnp.sqrt(jnp.maximum(sigma_next**2 - std**2, 0.0)) * eps
    if noise is not None:
        x = x + std * noise
    return x


def _ddim_std(grid: SamplingGrid, eta: float) -> np.ndarray:  # [N]
    """eta * std of q(x_next | x_t, x0), general (alpha, sigma) form of DDIM's sigma_t(eta)."""
    a, s = grid.alpha, grid.sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (a[:-1] * s[1:]) ** 2 / (a[1:] * s[:-1]) ** 2
    var = s[1:] ** 2 * np.clip(1.0 - np.nan_to_num(ratio, nan=1.0), 0.0, None)
    return eta * np.sqrt(var)


def dpmpp_2m_coefficients(grid: SamplingGrid):
    """Per-step numpy coefficients for DPM-Solver++(2M) (Lu et al. 2022, "midpoint" variant
    as in diffusers ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)``):

    * first order : ``x' = A x + B1 D0``
    * second order: ``x' = A x + B2 D0 + C2 D_prev``

    with ``A = sigma'/sigma``, ``E = alpha' (1 - e^{-h})``, ``h = lambda' - lambda``,
    ``r = h_prev / h``, ``B2 = E (1 + 1/(2r))``, ``C2 = -E/(2r)``, ``lambda = log(alpha/sigma)``.
    The final step (sigma' = 0, lambda' = inf) reduces to ``x' = D0``.
    """
    a = np.maximum(grid.alpha, _ALPHA_MIN)
    s = grid.sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.log(a) - np.log(s)  # [N+1], +inf at the clean end point
        h = lam[1:] - lam[:-1]  # [N]
        big_a = s[1:] / s[:-1]
        e = grid.alpha[1:] * (1.0 - np.exp(-h))
        h_prev = np.concatenate([[np.nan], h[:-1]])
        r = h_prev / h
        b2 = e * (1.0 + 0.5 / r)
        c2 = -e * 0.5 / r
    ok = np.isfinite(b2) & np.isfinite(c2)  # first step / last step use first order anyway
    return big_a, e, np.where(ok, b2, e), np.where(ok, c2, 0.0)


def denoise_steps(
    model_fn: Callable,
    x,
    *,
    schedule,
    objective: str,
    sampler: str = "ddim",
    steps: int = 50,
    start=0,
    stop=None,
    context=None,
    context_mask=None,
    eta: float = 0.0,
    rng=None,
    spacing: str | None = None,
):
    """Run steps ``start .. stop-1`` of an ``steps``-step grid starting from ``x`` (which must be
    at the noise level of step ``start``; for ``start=0`` that is plain unit noise).

    Returns ``(x_stop, x0_hat)``: the state at the noise level of step ``stop`` (``x0`` itself
    when ``stop == steps``) and the model's clean estimate from the last evaluated step.
    ``start``/``stop`` may be traced ints (self-forcing's random exit step); the loop then
    becomes a ``while_loop``, which is not reverse-differentiable: stop gradients there and take
    the step you train through with one explicit ``model_fn`` call (the self-forcing recipe).
    DPM-Solver++(2M) takes a first-order step at ``start`` (it has no history yet).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "euler" and getattr(schedule, "kind", None) != "flow":
        raise ValueError("the euler sampler integrates the rectified-flow ODE: use a FlowSchedule")
    if eta > 0 and (sampler != "ddim" or rng is None):
        raise ValueError("eta > 0 is DDIM-only and needs rng=")
    grid = schedule.sampling_grid(steps, spacing)
    stop = grid.steps if stop is None else stop
    f32 = lambda v: jnp.asarray(np.asarray(v, np.float64), jnp.float32)  # noqa: E731
    t_grid, alpha, sigma = f32(grid.t), f32(grid.alpha), f32(grid.sigma)
    std = f32(_ddim_std(grid, eta)) if eta > 0 else None
    if sampler == "dpmpp_2m":
        c_a, c_b1, c_b2, c_c2 = map(f32, dpmpp_2m_coefficients(grid))

    b, f = x.shape[:2]
    if context_mask is None:
        ctx = None
    else:
        ctx = expand_to(context_mask, x)  # [B, F, 1, 1, 1]
        context = jnp.broadcast_to(context, x.shape).astype(x.dtype)
        x = jnp.where(ctx, context, x)

    def clamp_context(v):
        return v if ctx is None else jnp.where(ctx, context, v)

    def body(i, carry):
        x, x0_prev, _ = carry
        t = jnp.full((b, f), t_grid[i], jnp.float32)  # [B, F]
        if context_mask is not None:
            t = jnp.where(context_mask, 0.0, t)
        pred = model_fn(x, t)  # [B, F, H, W, C]
        x0, eps = to_x0_eps(objective, pred.astype(jnp.float32), x.astype(jnp.float32),
                            alpha[i], sigma[i])
        if sampler == "ddim":
            z = None if std is None else jax.random.normal(
                jax.random.fold_in(rng, i), x.shape, jnp.float32)
            x_new = ddim_step(x0, eps, alpha[i + 1], sigma[i + 1], noise=z,
                              std=0.0 if std is None else std[i])
        elif sampler == "euler":
            x_new = x + (sigma[i + 1] - sigma[i]) * (eps - x0)  # velocity dx/dsigma = eps - x0
        else:
            first = (i == start) | (i == grid.steps - 1)
            x_new = c_a[i] * x + jnp.where(first, c_b1[i] * x0, c_b2[i] * x0 + c_c2[i] * x0_prev)
        x0 = x0.astype(x.dtype)
        return clamp_context(x_new.astype(x.dtype)), x0, x0

    x, _, x0_hat = jax.lax.fori_loop(start, stop, body, (x, jnp.zeros_like(x), jnp.zeros_like(x)))
    return x, clamp_context(x0_hat)


def sample(
    model_fn: Callable,
    noise,
    *,
    schedule,
    objective: str,
    sampler: str = "ddim",
    steps: int = 50,
    context=None,
    context_mask=None,
    eta: float = 0.0,
    rng=None,
    spacing: str | None = None,
):
    """Full sampling run from unit ``noise`` [B, F, H, W, C] to x0 [B, F, H, W, C].

    ``context`` ([B, F, H, W, C], only the masked frames are read) and ``context_mask``
    ([B, F] bool) pin clean frames; they come back unchanged. Call inside ``jax.jit`` (the
    model closure, schedule and ints are static), e.g.
    ``jax.jit(lambda n: sample(fn, n, schedule=s, objective="v", sampler="dpmpp_2m", steps=25))``.
    """
    x, _ = denoise_steps(model_fn, noise, schedule=schedule, objective=objective,
                         sampler=sampler, steps=steps, context=context,
                         context_mask=context_mask, eta=eta, rng=rng, spacing=spacing)
    return x
