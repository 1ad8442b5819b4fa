"""Noise schedules: SD scaled-linear DDPM (optionally zero-terminal-SNR) and rectified flow.

Every schedule speaks the same small language so that objectives, losses and samplers never
branch on the schedule type:

* **model time** ``t``: the float fed to the denoiser's sinusoidal embedding, in ``[0, 1000)``
  for DDPM (the discrete training index, SD convention) and ``1000 * sigma`` for flow. It is
  per frame, ``t: [B, F]``; clean context frames carry ``t = 0``.
* ``alpha_sigma(t) -> (alpha_t, sigma_t)`` with ``x_t = alpha_t * x0 + sigma_t * noise``.
  DDPM: ``alpha = sqrt(alphas_cumprod[t])``, ``sigma = sqrt(1 - alphas_cumprod[t])``;
  flow: ``alpha = 1 - sigma``.
* ``sample_train_t(rng, shape)``: training model times.
* ``sampling_grid(steps)``: the inference time grid as a :class:`SamplingGrid` of ``steps``
  model times plus ``steps + 1`` noise levels whose last entry is the clean end point
  ``(alpha, sigma) = (1, 0)`` (diffusers' ``set_alpha_to_one=True`` / ``final_sigmas_type="zero"``).

Schedules are frozen dataclasses of python scalars, so they are hashable (usable as static
arguments to ``jax.jit``) and cheap to rebuild from a config; arrays derived from them are
numpy constants computed once.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "SamplingGrid",
    "DDPMSchedule",
    "FlowSchedule",
    "make_schedule",
    "schedule_from_config",
    "expand_to",
    "shift_sigma",
]


class SamplingGrid(NamedTuple):
    """Inference time grid (numpy, static): step ``i`` evaluates the model at ``t[i]`` with
    noise level ``(alpha[i], sigma[i])`` and moves to ``(alpha[i+1], sigma[i+1])``."""

    t: np.ndarray  # [N]    model times fed to the denoiser
    alpha: np.ndarray  # [N+1]  alpha[N] = 1 (clean)
    sigma: np.ndarray  # [N+1]  sigma[N] = 0 (clean)

    @property
    def steps(self) -> int:
        return int(self.t.shape[0])


def expand_to(a: jax.Array, x: jax.Array) -> jax.Array:
    """Broadcast a per-frame quantity ``[B, F]`` (or scalar) against ``x: [B, F, ...]``."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def shift_sigma(sigma, shift: float):
    """SD3 time shift ``sigma' = shift*s / (1 + (shift-1)*s)``: spends more steps at high noise
    (needed at high resolution, where more pixels make a given sigma 'less noisy')."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Alg. 1 (= diffusers ``rescale_zero_terminal_snr``): shift/scale
    sqrt(alphas_cumprod) so the last step is pure noise while the first is unchanged."""
    alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas))
    a0, at = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - at) * a0 / (a0 - at)
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1.0 - alphas


@dataclasses.dataclass(frozen=True)
class DDPMSchedule:
    """SD-1.5 scaled-linear DDPM schedule (``beta = linspace(sqrt(b0), sqrt(b1), T)**2``).

    ``spacing`` picks the inference grid like diffusers' ``DDIMScheduler.timestep_spacing``
    ("leading", "trailing", "linspace"); ``None`` means "trailing" with zero-terminal-SNR
    (so the first step really starts from pure noise, Lin et al. 2023) and "leading" otherwise
    (SD-1.5's setting)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    zero_terminal_snr: bool = False
    spacing: str | None = None
    steps_offset: int = 0
    kind: str = dataclasses.field(default="ddpm", init=False)

    @functools.cached_property
    def alphas_cumprod(self) -> np.ndarray:  # [T] float64
        n = self.num_train_timesteps
        betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        if self.zero_terminal_snr:
            betas = _rescale_zero_terminal_snr(betas)
        return np.cumprod(1.0 - betas)

    # -- per-frame noise levels -------------------------------------------------------------
    def alpha_sigma(self, t):
        """``t`` (any shape, float model time) -> ``(alpha_t, sigma_t)`` of the same shape.
        Non-integer ``t`` interpolates ``alphas_cumprod`` linearly (exact at integers)."""
        t = jnp.asarray(t, jnp.float32)
        ac = jnp.asarray(self.alphas_cumprod, jnp.float32)
        grid = jnp.arange(self.num_train_timesteps, dtype=jnp.float32)
        a_bar = jnp.interp(jnp.clip(t, 0.0, self.num_train_timesteps - 1.0), grid, ac)
        return jnp.sqrt(a_bar), jnp.sqrt(1.0 - a_bar)

    def add_noise(self, x0, noise, t):
        """``x_t = alpha_t x0 + sigma_t noise`` with per-frame ``t: [B, F]``; x0: [B, F, H, W, C]."""
        alpha, sigma = self.alpha_sigma(t)
        return expand_to(alpha, x0) * x0 + expand_to(sigma, x0) * noise

    def sample_train_t(self, rng, shape):
        """Uniform discrete timesteps ``{0, ..., T-1}`` as float32 (DDPM training)."""
        return jax.random.randint(rng, shape, 0, self.num_train_timesteps).astype(jnp.float32)

    # -- inference grid -----------------------------------------------------------------------
    def timesteps(self, steps: int, spacing: str | None = None) -> np.ndarray:
        """Integer timesteps (descending) exactly as diffusers ``DDIMScheduler.set_timesteps``."""
        n = self.num_train_timesteps
        spacing = spacing or self.spacing or ("trailing" if self.zero_terminal_snr else "leading")
        if spacing == "leading":
            ts = (np.arange(0, steps) * (n // steps)).round()[::-1] + self.steps_offset
        elif spacing == "trailing":
            ts = np.round(np.arange(n, 0, -n / steps)) - 1
        elif spacing == "linspace":
            ts = np.linspace(0, n - 1, steps).round()[::-1]
        else:
            raise ValueError(f"unknown timestep spacing {spacing!r}")
        return ts.astype(np.int64)

    def sampling_grid(self, steps: int, spacing: str | None = None) -> SamplingGrid:
        ts = self.timesteps(steps, spacing)
        a_bar = self.alphas_cumprod[ts]
        alpha = np.concatenate([np.sqrt(a_bar), [1.0]])
        sigma = np.concatenate([np.sqrt(1.0 - a_bar), [0.0]])
        return SamplingGrid(ts.astype(np.float32), alpha, sigma)


@dataclasses.dataclass(frozen=True)
class FlowSchedule:
    """Rectified flow ``x_t = (1 - sigma) x0 + sigma noise``, model time ``t = 1000 sigma``.

    ``shift`` is the SD3 time shift applied to both training and inference sigmas.
    Training sigmas are ``sigmoid(N(logit_mean, logit_std))`` ("logit_normal", SD3's default,
    concentrates on the hard middle of the path) or ``U(0, 1)`` ("uniform")."""

    shift: float = 1.0
    train_t_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    kind: str = dataclasses.field(default="flow", init=False)

    num_train_timesteps = 1000  # model-time scale (class constant, not a field)

    def alpha_sigma(self, t):
        sigma = jnp.asarray(t, jnp.float32) / self.num_train_timesteps
        return 1.0 - sigma, sigma

    def add_noise(self, x0, noise, t):
        alpha, sigma = self.alpha_sigma(t)
        return expand_to(alpha, x0) * x0 + expand_to(sigma, x0) * noise

    def sample_train_t(self, rng, shape):
        if self.train_t_sampling == "logit_normal":
            s = jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(rng, shape))
        elif self.train_t_sampling == "uniform":
            s = jax.random.uniform(rng, shape)
        else:
            raise ValueError(f"unknown train_t_sampling {self.train_t_sampling!r}")
        return (self.num_train_timesteps * shift_sigma(s, self.shift)).astype(jnp.float32)

    def sampling_grid(self, steps: int, spacing: str | None = None) -> SamplingGrid:
        """Shifted ``linspace(1, 0, steps + 1)`` sigmas; the last is 0 (clean)."""
        del spacing  # flow grids are always uniform in (unshifted) sigma
        sigma = shift_sigma(np.linspace(1.0, 0.0, steps + 1, dtype=np.float64), self.shift)
        t = (self.num_train_timesteps * sigma[:-1]).astype(np.float32)
        return SamplingGrid(t, 1.0 - sigma, sigma)


def make_schedule(cfg) -> DDPMSchedule | FlowSchedule:
    """Build a schedule from a dict / ``ConfigDict`` with ``type`` in {"ddpm", "flow"}; the
    other keys are the dataclass fields (unknown keys are an error, so typos surface)."""
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    kind = cfg.pop("type", "ddpm")
    cls = {"ddpm": DDPMSchedule, "flow": FlowSchedule}[kind]
    return cls(**cfg)


def schedule_from_config(diffusion_cfg) -> DDPMSchedule | FlowSchedule:
    """The schedule a config's ``diffusion`` section names: the one rule training
    (``LossConfig``) and sampling (``Generator``) both build from, so they cannot disagree.
    A bad field raises ``ValueError`` with a one-line message naming it."""
    d = diffusion_cfg
    if d.schedule == "flow":
        shift = float(d.flow_shift)
        if not shift > 0:
            raise ValueError(f"config diffusion.flow_shift: expected a positive number, got {d.flow_shift!r}")
        return FlowSchedule(shift=shift)
    if d.schedule == "ddpm":
        return DDPMSchedule(zero_terminal_snr=bool(d.zero_terminal_snr))
    raise ValueError(f"config diffusion.schedule: expected 'ddpm' or 'flow', got {d.schedule!r}")
