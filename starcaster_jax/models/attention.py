"""The one attention function every block uses, and the multi-head attention module.

``dot_product_attention`` wraps ``jax.nn.dot_product_attention`` so that the backend
(``None``/"xla" everywhere, "cudnn" flash attention on GPUs) is a config choice made once.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from starcaster_jax.models.layers import Dense

# Set once from config (``model.attention_impl``). None = "einsum" on CPU, JAX's choice elsewhere.
IMPLEMENTATIONS = (None, "xla", "cudnn", "einsum")
_IMPLEMENTATION: list[str | None] = [None]


def set_attention_implementation(impl: str | None) -> None:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention_impl: expected one of {IMPLEMENTATIONS}, got {impl!r}")
    _IMPLEMENTATION[0] = impl


def _einsum_attention(q, k, v, mask=None):
    """Heads-major einsum attention. On XLA:CPU this is ~1.75x faster than
    ``jax.nn.dot_product_attention`` at 1024 tokens with small heads (measured: 218 vs 381 ms
    for [8, 1024, 8, 8]); same maths, so parity is unaffected."""
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))                 # [B, H, L, D]
    s = jnp.einsum("bhqd,bhkd->bhqk", qt, kt) * (q.shape[-1] ** -0.5)       # [B, H, Lq, Lk]
    if mask is not None:
        s = jnp.where(mask, s, jnp.finfo(s.dtype).min)
    p = jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", p, vt), 1, 2)         # [B, Lq, H, D]


def dot_product_attention(q, k, v, *, mask=None, implementation: str | None = None):
    """``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]``, ``mask``: broadcastable to ``[B, H, Lq, Lk]`` (True = keep)."""
    impl = implementation if implementation is not None else _IMPLEMENTATION[0]
    if impl == "einsum" or (impl is None and jax.default_backend() == "cpu"):
        return _einsum_attention(q, k, v, mask)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


class Attention(nnx.Module):
    """diffusers ``Attention`` layout: to_q/to_k/to_v (no bias), to_out (bias).

    ``zero_out=True`` zero-initialises the output projection, so a newly added block starts as
    the identity of its residual branch (needed for exact parity with an imported base model).
    """

    def __init__(self, query_dim: int, *, context_dim: int | None = None, heads: int = 8,
                 head_dim: int | None = None, qkv_bias: bool = False, out_bias: bool = True,
                 zero_out: bool = False, rngs: nnx.Rngs, dtype=None):
        context_dim = context_dim or query_dim
        head_dim = head_dim or query_dim // heads
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = Dense(query_dim, inner, use_bias=qkv_bias, names=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.to_k = Dense(context_dim, inner, use_bias=qkv_bias, names=("cond", "heads"), rngs=rngs, dtype=dtype)
        self.to_v = Dense(context_dim, inner, use_bias=qkv_bias, names=("cond", "heads"), rngs=rngs, dtype=dtype)
        self.to_out = Dense(inner, query_dim, use_bias=out_bias, names=("heads", "embed"),
                            zero=zero_out, rngs=rngs, dtype=dtype)

    def __call__(self, x, context=None, *, mask=None):
        """``x: [B, L, C]``, ``context: [B, M, Cc]`` -> ``[B, L, C]``."""
        context = x if context is None else context
        b, l, _ = x.shape
        m = context.shape[1]
        q = self.to_q(x).reshape(b, l, self.heads, self.head_dim)
        k = self.to_k(context).reshape(b, m, self.heads, self.head_dim)
        v = self.to_v(context).reshape(b, m, self.heads, self.head_dim)
        o = dot_product_attention(q, k, v, mask=mask)
        return self.to_out(o.reshape(b, l, self.heads * self.head_dim))
