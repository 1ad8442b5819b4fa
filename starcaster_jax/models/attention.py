"""The one attention function every block uses, the per-platform backend choice, the
sequence-parallel frame attention and the multi-head attention module.

``dot_product_attention`` dispatches to one backend, chosen in ONE place (``PLATFORM_DEFAULT``,
overridable by ``model.unet.attention_impl``): einsum/XLA on CPU, cuDNN flash attention on GPU,
Pallas splash attention on TPU. The choice is a field of the UNet's config, stored on each
attention module (a static attribute of the model graph), so training, inference and export
build the same module and run the same kernels; no process-wide setting.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from starcaster_jax import sharding as shd
from starcaster_jax.models.layers import Dense

# "" = the platform's default (PLATFORM_DEFAULT below).
IMPLEMENTATIONS = ("", "xla", "cudnn", "einsum", "splash")
# The one table of backends per platform. CPU: einsum (same maths as XLA's, faster on XLA:CPU);
# GPU: cuDNN flash attention (half precision only; f32 inputs run XLA's); TPU: splash.
PLATFORM_DEFAULT = {"cpu": "einsum", "gpu": "cudnn", "tpu": "splash"}


def check_implementation(impl: str | None) -> str:
    """``model.unet.attention_impl`` validated (None -> "")."""
    impl = impl or ""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"model.unet.attention_impl: expected one of {IMPLEMENTATIONS}, got {impl!r}")
    return impl


def resolve_implementation(impl: str | None, platform: str | None = None) -> str:
    """``model.unet.attention_impl`` -> a concrete backend for ``platform`` (default: JAX's
    default backend; pass the target's platform when compiling ahead of time for another machine)."""
    return check_implementation(impl) or PLATFORM_DEFAULT.get(platform or jax.default_backend(), "xla")


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
    """Heads-major einsum attention: XLA:CPU runs it faster than ``jax.nn.dot_product_attention``
    at long sequences with small heads; same maths, so parity is unaffected."""
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

    Under a mesh (``jax.set_mesh``) the kernel runs inside ``jax.shard_map``, batch and heads
    split as the rules table says (``data x fsdp``, ``tensor``) where they divide: XLA cannot
    partition a custom kernel and would otherwise gather the activations onto every chip.
    ``interpret`` runs the kernel on CPU (numerics tests; ``True`` or a ``pltpu.InterpretParams``).
    """
    _, lq, _, d = q.shape
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

    mesh = shd.active_mesh()
    if mesh is None:
        o = local(qt, kt, vt)
    else:  # batch and heads split as the rules table says, where they divide
        spec = shd.logical_to_spec(("batch", "heads", None, None), qt.shape, mesh)
        o = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                          check_vma=False)(qt, kt, vt)
    return jnp.swapaxes(o[:, :, :lq], 1, 2)           # [B, Lq, H, D]


def frame_attention(q, k, v, *, implementation: str = "", sequence_axis: str = ""):
    """Self-attention along the frame axis, ``q, k, v: [N, F, H, D]`` (N = batch x positions)
    -> ``[N, F, H, D]``; sequence-parallel over ``sequence_axis`` when it is set and a mesh is."""
    if sequence_axis:
        return sequence_parallel_attention(q, k, v, axis=sequence_axis, implementation=implementation)
    return dot_product_attention(q, k, v, implementation=temporal_implementation(implementation))


def sequence_parallel_attention(q, k, v, *, axis: str, implementation: str = "",
                                rules=shd.LOGICAL_AXIS_RULES):
    """Attention over the frame axis with frames sharded over mesh axis ``axis`` (explicit
    collectives), ``q, k, v: [N, F, H, D]``.

    Inside ``jax.shard_map`` each device holds ``F / n`` query frames; K and V are all-gathered
    along the frame axis so every query sees every frame. Memory for activations outside the
    attention scales as ``F / n``, which is what lets long clips fit. The mesh is the one
    ``jax.set_mesh`` set (the abstract mesh of the trace), and the rules table says how the rest
    is split; with no mesh (or ``axis`` of size 1) this is the plain attention, so the module
    built from one config runs on one device and on a pod alike.
    """
    impl = temporal_implementation(implementation)
    mesh = shd.active_mesh()
    if mesh is None or mesh.shape.get(axis, 1) == 1:
        return dot_product_attention(q, k, v, implementation=impl)
    if q.shape[1] % mesh.shape[axis]:
        raise ValueError(f"sequence parallelism: {q.shape[1]} frames not divisible by mesh axis "
                         f"{axis!r} of size {mesh.shape[axis]}")
    spec = shd.logical_to_spec(("batch", "frames", None, None), q.shape, mesh,
                               shd.sequence_parallel_rules(axis, rules))

    def local(q, k, v):                                   # q: [N/b, F/n, H, D]
        k = jax.lax.all_gather(k, axis, axis=1, tiled=True)   # [N/b, F, H, D]
        v = jax.lax.all_gather(v, axis, axis=1, tiled=True)
        return dot_product_attention(q, k, v, implementation=impl)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)(q, k, v)


class Attention(nnx.Module):
    """diffusers ``Attention`` layout: to_q/to_k/to_v (no bias), to_out (bias).

    ``implementation``: ``model.unet.attention_impl`` ("" = the platform default, resolved when
    traced). ``zero_out=True`` zero-initialises the output projection, so a newly added block
    starts as the identity of its residual branch (needed for exact parity with an imported base
    model). Self-attention (no ``context_dim``) reads K/V from the tokens themselves, so their
    kernels are labelled like Q's (``embed``); cross-attention's read the condition (``cond``).
    """

    def __init__(self, query_dim: int, *, context_dim: int | None = None, heads: int = 8,
                 head_dim: int | None = None, qkv_bias: bool = False, out_bias: bool = True,
                 zero_out: bool = False, rngs: nnx.Rngs, dtype=None, implementation: str = ""):
        kv_in = "embed" if context_dim is None else "cond"
        context_dim = context_dim or query_dim
        head_dim = head_dim or query_dim // heads
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.implementation = check_implementation(implementation)  # static: part of the model graph
        self.to_q = Dense(query_dim, inner, use_bias=qkv_bias, names=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.to_k = Dense(context_dim, inner, use_bias=qkv_bias, names=(kv_in, "heads"), rngs=rngs, dtype=dtype)
        self.to_v = Dense(context_dim, inner, use_bias=qkv_bias, names=(kv_in, "heads"), rngs=rngs, dtype=dtype)
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
