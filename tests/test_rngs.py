"""InitRngs: the keys of nnx.Rngs without a traced draw counter (models/rngs.py)."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from starcaster_jax.models.layers import Conv, Dense, GroupNorm
from starcaster_jax.models.rngs import InitRngs


class _Stack(nnx.Module):
    def __init__(self, n: int, *, rngs):
        self.convs = nnx.List([Conv(4, 4, 3, rngs=rngs) for _ in range(n)])
        self.norms = nnx.List([GroupNorm(4, 2, rngs=rngs) for _ in range(n)])
        self.dense = nnx.List([Dense(4, 8, rngs=rngs) for _ in range(n)])


def _params(module):
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(module, nnx.Param)))


def test_same_parameters_as_nnx_rngs_eager_and_jitted():
    for key in (lambda: 3, lambda: jax.random.key(3, impl="rbg")):
        ref = _params(_Stack(5, rngs=nnx.Rngs(key())))
        eager = _params(_Stack(5, rngs=InitRngs(key())))
        jitted = jax.jit(lambda: _params(_Stack(5, rngs=InitRngs(key()))))()
        assert len(ref) == len(eager) == 30
        for a, b, c in zip(ref, eager, jitted):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_no_traced_counter_per_draw():
    """nnx.Rngs stages one counter add per draw (and each one's update walks the jaxpr for an
    error message: quadratic); InitRngs stages only the fold_ins."""
    def n_adds(make):
        jaxpr = jax.make_jaxpr(lambda: _params(_Stack(20, rngs=make())))()
        return sum(e.primitive.name == "add" and "uint32" in str(e.outvars[0].aval)
                   for e in jaxpr.eqns)
    assert n_adds(lambda: nnx.Rngs(0)) >= 20 * 4       # one per parameter drawn
    assert n_adds(lambda: InitRngs(0)) == 0
