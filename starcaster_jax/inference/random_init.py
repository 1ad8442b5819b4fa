"""Randomly initialised networks of real shapes, without a checkpoint and without an init compile.

Production code, not a test fixture, because the benchmarks need it: ``benchmarks/generate_memory.py``
measures generation's peak memory on a config's parts without a checkpoint (``random_parts``)
and ``benchmarks/lip_loss_crop.py`` measures the lip loss's cost on a random VAE and lip reader
(``random_module``): cost and memory do not depend on the weights' values. The tests use it for
the same reason. The evaluation's "untrained model" baseline is something else: the
parameters training step 0 starts from (``evaluation/baselines.py``, through ``ModelDef``).
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.inference.loading import Parts
from starcaster_jax.models.audio.encoder import build_audio_encoder
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.starcaster import STARCaster
from starcaster_jax.models.vae import AutoencoderKL, VAEConfig


def random_module(ctor: Callable[[], nnx.Module], seed: int = 0) -> nnx.Module:
    """``ctor()`` with random parameters and no init compile: built abstractly
    (``nnx.eval_shape``), then every parameter filled with numpy noise (kernels with
    1/sqrt(fan_in) std, biases 0.02, norm scales 1). Every conditioning path is live (the
    real init zeroes some output projections), which is what tests and memory benchmarks want."""
    graphdef, state = nnx.split(nnx.eval_shape(ctor))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return jnp.ones(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else leaf.shape[0]
        std = 0.02 if "bias" in name else 1.0 / np.sqrt(max(fan_in, 1))
        return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def random_parts(config, seed: int = 0) -> Parts:
    """Untrained parts of the right shapes for ``config`` (benchmarks, tests, smoke runs)."""
    mc = config.model
    model = random_module(lambda: STARCaster(mc, rngs=InitRngs(0)), seed)
    vc = dict(mc.vae.to_dict(), block_out_channels=tuple(mc.vae.block_out_channels))
    vae = random_module(lambda: AutoencoderKL(VAEConfig(**vc), rngs=InitRngs(0)), seed + 1)
    audio = None
    if mc.unet.audio_dim:
        audio = random_module(lambda: build_audio_encoder(mc.audio, rngs=InitRngs(0)), seed + 2)
    proj = np.random.default_rng(seed + 3).normal(size=(3, int(mc.identity.embed_dim))).astype(np.float32)

    def identity_fn(frames):  # [B, H, W, 3] -> [B, E]: a fixed random projection of the mean colour
        return jnp.mean(frames, axis=(1, 2)) @ proj

    return Parts(model, vae, audio, config, identity_fn)


__all__ = ["random_module", "random_parts"]
