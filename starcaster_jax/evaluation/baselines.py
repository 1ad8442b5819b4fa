"""The untrained-model baseline: the checkpoint's config freshly initialised, with the seed the
training run started from (``config.seed``), sampled exactly as the checkpoint is.

It shares the checkpoint generator's frozen parts (VAE, audio and identity encoders) and its
compiled sampling programs: only the denoiser's parameters differ, and those are an argument of
the compiled chunk function, so nothing is traced or compiled twice.
"""
from __future__ import annotations

import copy

import jax
import numpy as np
from flax import nnx

from starcaster_jax.sharding import make_mesh
from starcaster_jax.training.state import ModelDef


def fresh_model_state(config):
    """The STARCaster parameters training step 0 starts from (``training.state.ModelDef``)."""
    mdef = ModelDef(config, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    return nnx.state(nnx.merge(mdef.graphdef, mdef.init_params()))


def with_model_state(generator, state):
    """A shallow copy of ``generator`` (an ``inference.generate.Generator``) whose denoiser
    parameters are ``state`` (same tree as its own). Reaches into ``Generator._graph``: the
    generator holds its modules as (graphdef, state) pairs and passes the states to its jitted
    functions, which the copy shares."""
    graphdef, own = generator._graph["model"]
    if jax.tree.structure(own) != jax.tree.structure(state):
        raise ValueError("untrained baseline: the fresh model's parameter tree differs from the checkpoint's")
    # the same kind of leaves as the checkpoint's (host arrays when it was restored as such):
    # a committed device array would be another cache key of the jitted chunk function
    state = jax.tree.map(lambda o, n: np.asarray(n) if isinstance(o, np.ndarray) else n, own, state)
    out = copy.copy(generator)
    out._graph = dict(generator._graph, model=(graphdef, state))
    return out


def untrained_generator(generator):
    """The untrained baseline of ``generator`` (module docstring)."""
    return with_model_state(generator, fresh_model_state(generator.config))
