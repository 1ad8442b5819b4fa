"""The one attention function: every implementation computes the same thing, and the backend
is a field of the config-built module (no process-wide setting)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import stage1_motion
from starcaster_jax.models import attention as attention_lib
from starcaster_jax.models.attention import (
    Attention,
    dot_product_attention,
    resolve_implementation,
    splash_attention,
    temporal_implementation,
)
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.starcaster import STARCaster
from starcaster_jax.models.temporal import FrameAttention
from starcaster_jax.models.unet import UNetConfig


@pytest.mark.parametrize("with_mask", [False, True])
def test_einsum_equals_xla(with_mask):
    k = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(k[0], (2, 7, 3, 8))
    kk = jax.random.normal(k[1], (2, 5, 3, 8))
    v = jax.random.normal(k[2], (2, 5, 3, 8))
    mask = jax.random.bernoulli(k[3], 0.7, (2, 1, 7, 5)).at[..., 0].set(True) if with_mask else None
    a = dot_product_attention(q, kk, v, mask=mask, implementation="einsum")
    b = dot_product_attention(q, kk, v, mask=mask, implementation="xla")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_bad_implementation_is_a_clear_error():
    with pytest.raises(ValueError, match="model.unet.attention_impl"):
        UNetConfig(attention_impl="flash9000")


def test_backend_is_the_modules_own_field(monkeypatch):
    """``model.unet.attention_impl`` is recorded on every attention module the config builds
    (spatial and temporal), so what a graph runs does not depend on what else the process built."""
    def modules(impl):
        c = stage1_motion.get_config("micro")
        c.model.unet.attention_impl = impl
        model = nnx.eval_shape(lambda: STARCaster(c.model, rngs=InitRngs(0)))
        return [m for _, m in model.iter_modules() if isinstance(m, (Attention, FrameAttention))]

    xla, einsum = modules("xla"), modules("einsum")          # built in this order, in one process
    assert xla and {m.implementation for m in xla} == {"xla"}
    assert {m.implementation for m in einsum} == {"einsum"}
    calls = []
    real = attention_lib._einsum_attention
    monkeypatch.setattr(attention_lib, "_einsum_attention", lambda *a: calls.append(1) or real(*a))
    x = jnp.ones((1, 5, 16))
    attn = lambda impl: Attention(16, heads=2, rngs=InitRngs(0), implementation=impl)  # noqa: E731
    np.testing.assert_allclose(np.asarray(attn("xla")(x)), np.asarray(attn("einsum")(x)), rtol=1e-5, atol=1e-6)
    assert len(calls) == 1                                      # only the einsum module ran einsum


# -- splash attention (TPU kernel) in Pallas' TPU interpret mode, against the reference --------
# ``interpret=True`` (Pallas' generic interpreter): ``pltpu.InterpretParams()`` (the TPU
# interpreter) fails under the kernel's vmap here (jax 0.10.2: grid/semantics length mismatch).
INTERPRET = True


def _splash_case(dtype, lq, lk):
    k = jax.random.split(jax.random.key(1), 4)
    shape = lambda n: (2, n, 2, 40)  # noqa: E731  [B, L, H, D]; D = 40 as at paper's 320 channels
    q, kk, v = (jax.random.normal(key, shape(n), jnp.float32).astype(dtype)
                for key, n in ((k[0], lq), (k[1], lk), (k[2], lk)))
    ct = jax.random.normal(k[3], shape(lq), jnp.float32)  # cotangent of a weighted-sum loss

    def loss(fn):
        return lambda q, kk, v: jnp.sum(fn(q, kk, v).astype(jnp.float32) * ct)

    ref = lambda q, kk, v: dot_product_attention(q, kk, v, implementation="xla")  # noqa: E731
    spl = lambda q, kk, v: splash_attention(q, kk, v, interpret=INTERPRET)  # noqa: E731
    up = lambda x: x.astype(jnp.float32)  # noqa: E731  the reference runs in f32 either way
    out_ref = ref(up(q), up(kk), up(v))
    g_ref = jax.grad(loss(ref), argnums=(0, 1, 2))(up(q), up(kk), up(v))
    out = jax.jit(spl)(q, kk, v)
    g = jax.jit(jax.grad(loss(spl), argnums=(0, 1, 2)))(q, kk, v)
    return out, out_ref, g, g_ref


def _rel(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("lq,lk", [(256, 256), (256, 77)], ids=["self", "cross_padded"])
def test_splash_interpret_matches_reference(dtype, tol, lq, lk, capsys):
    """Forward and the three gradients of splash (TPU interpret mode on CPU) vs XLA attention.

    ``lk=77`` exercises the padding: keys padded to a 128 block and masked, so an unmasked pad
    would shift every softmax. Errors are max |diff| / max |ref| per tensor."""
    out, out_ref, g, g_ref = _splash_case(dtype, lq, lk)
    errs = {"out": _rel(out, out_ref), "dq": _rel(g[0], g_ref[0]), "dk": _rel(g[1], g_ref[1]),
            "dv": _rel(g[2], g_ref[2])}
    with capsys.disabled():
        print(f"\nsplash interpret {jnp.dtype(dtype).name} lq={lq} lk={lk}: "
              + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    assert out.dtype == dtype and out.shape == out_ref.shape
    assert max(errs.values()) <= tol, errs


def test_backend_per_platform_in_one_place():
    assert resolve_implementation("", "cpu") == "einsum"
    assert resolve_implementation("", "gpu") == "cudnn"
    assert resolve_implementation("", "tpu") == "splash"
    assert resolve_implementation("xla", "tpu") == "xla"           # an explicit choice wins
    assert temporal_implementation("", "tpu") == "xla"            # frame attention stays XLA
    assert temporal_implementation("splash", "tpu") == "xla"
