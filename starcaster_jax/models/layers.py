"""Parameter-carrying building blocks with logical axis names and PyTorch-compatible numerics.

Everything in ``starcaster_jax.models`` builds on these so that (a) every parameter has logical
axis names for ``starcaster_jax.sharding`` and (b) the layer maths matches the diffusers /
transformers reference layers bit-for-bit in layout (GroupNorm without the fast-variance trick,
torch's epsilons), which is what the weight-import parity tests rely on.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's default Linear/Conv init (kaiming-uniform a=sqrt(5)) is variance_scaling(1/3, fan_in, uniform).
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _part(init, names):
    return nnx.with_partitioning(init, tuple(names))


def zero_init(shape_names):
    return _part(nnx.initializers.zeros_init(), shape_names)


class Dense(nnx.Linear):
    """``nnx.Linear`` with logical axis names on kernel ``(in, out)`` and bias ``(out,)``."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
                 names: Sequence[str | None] = ("embed", "mlp"), use_bias: bool = True,
                 zero: bool = False, dtype=None, param_dtype=jnp.float32):
        kinit = nnx.initializers.zeros_init() if zero else torch_default_init
        super().__init__(
            in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
            kernel_init=_part(kinit, names),
            bias_init=_part(nnx.initializers.zeros_init(), (names[-1],)),
            rngs=rngs,
        )


class Conv(nnx.Conv):
    """Channels-last ``nnx.Conv`` with logical names ``(*kernel, conv_in, conv_out)``.

    ``padding`` is an int (symmetric, like torch) or a flax padding spec.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int] = 3,
                 *, rngs: nnx.Rngs, stride: int | Sequence[int] = 1, padding="torch",
                 zero: bool = False, use_bias: bool = True, feature_group_count: int = 1,
                 dtype=None, param_dtype=jnp.float32):
        ks = (kernel_size,) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
        if padding == "torch":  # torch's `padding=k//2`
            padding = tuple((k // 2, k // 2) for k in ks)
        elif isinstance(padding, int):
            padding = tuple((padding, padding) for _ in ks)
        names = (None,) * len(ks) + ("conv_in", "conv_out")
        kinit = nnx.initializers.zeros_init() if zero else torch_default_init
        super().__init__(
            in_features, out_features, ks, strides=stride, padding=padding, use_bias=use_bias,
            feature_group_count=feature_group_count, dtype=dtype, param_dtype=param_dtype,
            kernel_init=_part(kinit, names),
            bias_init=_part(nnx.initializers.zeros_init(), ("conv_out",)),
            rngs=rngs,
        )


class GroupNorm(nnx.GroupNorm):
    """torch.nn.GroupNorm numerics (two-pass variance), channels last."""

    def __init__(self, num_features: int, num_groups: int = 32, *, eps: float = 1e-5,
                 rngs: nnx.Rngs, dtype=None, param_dtype=jnp.float32):
        super().__init__(
            num_features, num_groups=num_groups, epsilon=eps, use_fast_variance=False,
            dtype=dtype, param_dtype=param_dtype,
            scale_init=_part(nnx.initializers.ones_init(), ("norm",)),
            bias_init=_part(nnx.initializers.zeros_init(), ("norm",)),
            rngs=rngs,
        )


class LayerNorm(nnx.LayerNorm):
    """torch.nn.LayerNorm numerics (two-pass variance)."""

    def __init__(self, num_features: int, *, eps: float = 1e-5, rngs: nnx.Rngs,
                 use_bias: bool = True, use_scale: bool = True, dtype=None,
                 param_dtype=jnp.float32):
        super().__init__(
            num_features, epsilon=eps, use_fast_variance=False, use_bias=use_bias,
            use_scale=use_scale, dtype=dtype, param_dtype=param_dtype,
            scale_init=_part(nnx.initializers.ones_init(), ("norm",)),
            bias_init=_part(nnx.initializers.zeros_init(), ("norm",)),
            rngs=rngs,
        )


def timestep_embedding(t: jax.Array, dim: int, *, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0.0, max_period: float = 10000.0,
                       scale: float = 1.0) -> jax.Array:
    """Sinusoidal embedding matching diffusers ``get_timestep_embedding``. ``t: [...]`` -> ``[..., dim]``."""
    half = dim // 2
    exponent = -jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    exponent = exponent / (half - downscale_freq_shift)
    freqs = jnp.exp(exponent)
    args = t.astype(jnp.float32)[..., None] * freqs * scale
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[..., half:], emb[..., :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, [(0, 0)] * (emb.ndim - 1) + [(0, 1)])
    return emb


def gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)
