"""The one attention function every block uses, the per-platform backend choice, and the
multi-head attention module.

``dot_product_attention`` dispatches to one backend, chosen in ONE place (``PLATFORM_DEFAULT``,
overridable by ``model.attention_impl``): einsum/XLA on CPU, cuDNN flash attention on GPU, Pallas
splash attention on TPU. The choice is stored on each ``Attention`` module (a static attribute
of the model graph), so training, inference and export run the same kernels.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from starcaster_jax.models.layers import Dense

# "" = the platform's default (PLATFORM_DEFAULT below).
IMPLEMENTATIONS = ("", "xla", "cudnn", "einsum", "splash")
# The one table of backends per platform. CPU: einsum (same maths as XLA's, faster on XLA:CPU);
# GPU: cuDNN flash attention (half precision only; f32 inputs run XLA's); TPU: splash.
PLATFORM_DEFAULT = {"cpu": "einsum", "gpu": "cudnn", "tpu": "splash"}
# Process-wide fallback for modules built with implementation="" (set by the Trainer from config).
_IMPLEMENTATION: list[str] = [""]


def _check(impl: str | None) -> str:
    impl = impl or ""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention_impl: expected one of {IMPLEMENTATIONS}, got {impl!r}")
    return impl


def set_attention_implementation(impl: str | None) -> None:
    _IMPLEMENTATION[0] = _check(impl)


def resolve_implementation(impl: str | None, platform: str | None = None) -> str:
    """``model.attention_impl`` -> a concrete backend for ``platform`` (default: JAX's default
    backend; pass the target's platform when compiling ahead of time for another machine)."""
    impl = _check(impl) or _IMPLEMENTATION[0]
    if impl:
        return impl
    return PLATFORM_DEFAULT.get(platform or jax.default_backend(), "xla")


def temporal_implementation(impl: str | None, platform: str | None = None) -> str:
    """The backend for attention along the frame axis: never splash.

    Temporal attention attends over F = 16-24 frames at each of B*H*W positions. Splash tiles
    the sequence in blocks of >= 128 tokens, so F would be padded ~6x and the kernel would run
    ~10^5 tiny grids; as one batched XLA matmul the [F, F] logits are a few KiB per position and
    never the memory problem long spatial sequences are.
    """
    impl = resolve_implementation(impl, platform)
    return "xla" if impl == "splash" else impl


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
    """``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]``, ``mask``: broadcastable to ``[B, H, Lq, Lk]``
    (True = keep) -> ``[B, Lq, H, D]``. Softmax in f32 whatever the input dtype."""
    impl = resolve_implementation(implementation)
    if impl == "einsum":
        return _einsum_attention(q, k, v, mask)
    if impl == "splash":
        if mask is None:
            return splash_attention(q, k, v)
        impl = "xla"  # splash takes static masks only; no spatial block passes a dynamic one
    if impl == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        impl = "xla"  # cuDNN flash attention is half precision only
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


# -- splash attention (TPU) ----------------------------------------------------------------------
# Sequence lengths here: 4,096 / 1,024 / 256 / 64 query tokens (64^2 ... 8^2 latents at 512 px)
# and 4-256 key tokens for cross-attention (identity, audio, text). Splash tiles by >= 128 tokens:
# lengths are padded to a multiple of the block (padded keys masked out statically, padded
# queries dropped), and blocks of 512 keep the [bq, bkv] f32 tile (1 MiB) well inside VMEM
# while long enough to amortise the per-block softmax bookkeeping.
SPLASH_MAX_BLOCK = 512


def splash_block(length: int) -> int:
    """Block size for a sequence of ``length`` tokens: a multiple of 128, at most 512."""
    padded = -(-length // 128) * 128
    return min(SPLASH_MAX_BLOCK, padded)


def _pad_to(length: int, block: int) -> int:
    return -(-length // block) * block


def _splash_kernel(heads: int, lq: int, lk: int, lk_valid: int, bq: int, bkv: int, interpret):
    """Built inside each trace (its mask tables become that program's constants)."""
    if lk_valid == lk:
        head_mask = splash_mask.FullMask((lq, lk))
    else:  # padded keys never attended
        keep = np.zeros((lq, lk), np.bool_)
        keep[:, :lk_valid] = True
        head_mask = splash_mask.NumpyMask(keep)
    sizes = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                              block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                              block_q_dq=bq, block_kv_dq=bkv)
    return splash.make_splash_mha(splash_mask.MultiHeadMask([head_mask] * heads), block_sizes=sizes,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, *, interpret=False):
    """Pallas splash attention with our layout: ``q: [B, Lq, H, D]``, ``k, v: [B, Lk, H, D]``.

    Under a mesh (``jax.set_mesh``) the kernel runs inside ``jax.shard_map``, batch over
    ``data x fsdp`` and heads over ``tensor`` where they divide: XLA cannot partition a custom
    kernel and would otherwise gather the activations onto every chip. ``interpret`` runs the
    kernel on CPU (numerics tests; ``True`` or a ``pltpu.InterpretParams``).
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bq, bkv = splash_block(lq), splash_block(lk)
    lq_p, lk_p = _pad_to(lq, bq), _pad_to(lk, bkv)
    q = q * jnp.asarray(d ** -0.5, q.dtype)           # splash does not scale the logits

    def heads_major(x, length):                        # [B, L, H, D] -> [B, H, Lpad, D]
        x = jnp.swapaxes(x, 1, 2)
        return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))

    qt, kt, vt = heads_major(q, lq_p), heads_major(k, lk_p), heads_major(v, lk_p)

    def local(qt, kt, vt):
        kernel = _splash_kernel(qt.shape[1], lq_p, lk_p, lk, bq, bkv, interpret)
        return jax.vmap(kernel)(qt, kt, vt)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        o = local(qt, kt, vt)
    else:
        names = dict(zip(mesh.axis_names, mesh.axis_sizes))
        batch = tuple(a for a in ("data", "fsdp") if names.get(a, 1) > 1)
        while batch and b % int(np.prod([names[a] for a in batch])):
            batch = batch[:-1]
        head_axis = "tensor" if names.get("tensor", 1) > 1 and h % names["tensor"] == 0 else None
        spec = P(batch or None, head_axis, None, None)
        o = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                          check_vma=False)(qt, kt, vt)
    return jnp.swapaxes(o[:, :, :lq], 1, 2)           # [B, Lq, H, D]


class Attention(nnx.Module):
    """diffusers ``Attention`` layout: to_q/to_k/to_v (no bias), to_out (bias).

    ``implementation``: ``model.attention_impl`` ("" = the platform default, resolved when traced).
    ``zero_out=True`` zero-initialises the output projection, so a newly added block starts as
    the identity of its residual branch (needed for exact parity with an imported base model).
    """

    def __init__(self, query_dim: int, *, context_dim: int | None = None, heads: int = 8,
                 head_dim: int | None = None, qkv_bias: bool = False, out_bias: bool = True,
                 zero_out: bool = False, rngs: nnx.Rngs, dtype=None, implementation: str = ""):
        context_dim = context_dim or query_dim
        head_dim = head_dim or query_dim // heads
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.implementation = _check(implementation)  # static: part of the model graph
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
        o = dot_product_attention(q, k, v, mask=mask, implementation=self.implementation)
        return self.to_out(o.reshape(b, l, self.heads * self.head_dim))
