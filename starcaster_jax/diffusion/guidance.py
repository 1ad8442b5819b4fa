"""Classifier-free guidance with separate identity and audio scales, nested conditions.

Conditional denoiser contract (what the STARCaster model exposes to the samplers)::

    cond_model_fn(x [B, F, H, W, C], t [B, F], cond: Conditioning) -> raw prediction [B, F, H, W, C]

``cond`` is a :class:`~starcaster_jax.models.conditioning.Conditioning` (identity embedding,
audio windows, view, context mask and the ``drop_*`` flags). Guidance only sets
``drop_id`` / ``drop_audio`` ([B] bool: True -> the model uses its null identity / audio).

The same ``drop_*`` flags implement CFG dropout during training (``p_id``, ``p_audio``), so the
null conditions seen at sampling are exactly the trained ones. Every array leaf of ``cond`` has
the batch as its leading axis (it is tiled along it). ``view`` is never dropped by guidance:
the camera is an instruction, not something to amplify.

Nested guidance (identity first, audio on top of identity, as in Hallo/EMO-style multi-CFG)::

    pred = u + s_id * (c_id - u) + s_audio * (c_id_audio - c_id)
         = (1 - s_id) u + (s_id - s_audio) c_id + s_audio c_id_audio

Branches whose weight is a python 0 are not evaluated, and the remaining ones go through ONE
model call (concatenated along batch). Hence:

* ``s_id=1, s_audio=1`` -> plain conditional sampling: one call, batch B, no extra work;
* ``s_id=0, s_audio=0`` -> unconditional: one call, batch B;
* ``s_id=1, s_audio=3`` -> identity + full branches: one call, batch 2B.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from starcaster_jax.models.conditioning import Conditioning

__all__ = [
    "guidance_weights",
    "with_drop_flags",
    "nested_conditions",
    "concat_conditions",
    "guided_model_fn",
]

# (drop_id, drop_audio) of the three nested branches: unconditional, identity, identity+audio
_BRANCHES = ((True, True), (False, True), (False, False))


def guidance_weights(s_id, s_audio):
    """Mixing weights of (uncond, id, id+audio); they sum to 1 for any scales."""
    return (1.0 - s_id, s_id - s_audio, s_audio)


def with_drop_flags(cond: Conditioning, batch: int, drop_id=False, drop_audio=False) -> Conditioning:
    """Copy of ``cond`` with ``drop_id``/``drop_audio`` [B] set to (existing flags OR given)."""
    def merged(old, val):
        new = jnp.broadcast_to(jnp.asarray(val, bool), (batch,))
        return new if old is None else jnp.logical_or(jnp.asarray(old, bool), new)

    return cond.replace(drop_id=merged(cond.drop_id, drop_id),
                        drop_audio=merged(cond.drop_audio, drop_audio))


def nested_conditions(cond: Conditioning, batch: int):
    """The three condition sets ``[uncond, id, id+audio]`` (same tensors, different flags)."""
    return [with_drop_flags(cond, batch, di, da) for di, da in _BRANCHES]


def concat_conditions(conds):
    """Concatenate conditionings along batch; ``None`` fields stay ``None``."""
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *conds)


def _is_zero(w) -> bool:
    return isinstance(w, (int, float)) and w == 0


def guided_model_fn(cond_model_fn: Callable, cond: Conditioning, *, s_id=1.0, s_audio=1.0):
    """Wrap ``cond_model_fn(x, t, cond)`` into the sampler's ``model_fn(x, t)`` with nested CFG.

    ``s_id``/``s_audio`` may be python floats (zero-weight branches are pruned at trace time)
    or traced scalars (all three branches are evaluated).
    """
    weights = guidance_weights(s_id, s_audio)
    active = [k for k, w in enumerate(weights) if not _is_zero(w)]

    def model_fn(x, t):  # x: [B, F, H, W, C], t: [B, F]
        b = x.shape[0]
        conds = nested_conditions(cond, b)
        if len(active) == 1:  # plain conditional / unconditional: no batch growth
            return cond_model_fn(x, t, conds[active[0]])
        n = len(active)
        xs = jnp.concatenate([x] * n, axis=0)  # [nB, F, H, W, C]
        ts = jnp.concatenate([t] * n, axis=0)  # [nB, F]
        preds = cond_model_fn(xs, ts, concat_conditions([conds[k] for k in active]))
        preds = jnp.split(preds, n, axis=0)
        out = 0.0
        for k, p in zip(active, preds):
            out = out + weights[k] * p.astype(jnp.float32)
        return out.astype(preds[0].dtype)

    return model_fn
