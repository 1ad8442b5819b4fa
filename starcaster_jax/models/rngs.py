"""Random keys for building modules under a trace (``jax.jit`` / ``nnx.eval_shape``).

``nnx.Rngs`` keeps its draw count in a Variable; every ``rngs.params()`` updates it, and under a
trace each update compares the new count tracer's ``sharding`` with the old value's. A tracer
has no sharding: the ``AttributeError`` it raises carries an error message that walks the whole
jaxpr traced so far (``DynamicJaxprTracer._origin_msg``), so building a model costs time
quadratic in its number of parameters. The ``demo`` STARCaster spent 12 of its 14 s of
``eval_shape`` there, and as long again inside every jitted init.

:class:`InitRngs` draws the same keys, ``fold_in(key, n)`` for ``n = 0, 1, 2, ...``, with the count
in Python: parameters are bit-identical to ``nnx.Rngs(key)`` and nothing is traced but the
``fold_in`` itself. It is for construction only (nothing in our modules keeps ``rngs``).
"""
from __future__ import annotations

import jax
from flax import nnx


class InitRngs(nnx.Rngs):
    """``nnx.Rngs(key)`` for module construction, with a Python draw count (see module doc).

    Every stream name (``params``, ``dropout``, ...) falls back to the one ``default`` stream, as
    ``nnx.Rngs(key)`` does, so the keys come out in the same order.
    """

    def __init__(self, key: int | jax.Array):
        super().__init__(jax.random.key(key) if isinstance(key, int) else key)
        object.__setattr__(self, "_draws", 0)

    def _next(self) -> jax.Array:
        n = self._draws
        object.__setattr__(self, "_draws", n + 1)
        return jax.random.fold_in(self.default.key[...], n)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._next

    def __call__(self) -> jax.Array:
        return self._next()

