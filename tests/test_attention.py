"""The one attention function: every implementation computes the same thing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from starcaster_jax.models.attention import dot_product_attention, set_attention_implementation


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
    with pytest.raises(ValueError, match="attention_impl"):
        set_attention_implementation("flash9000")
