"""One guided sampling run of a chunk: the single function both the ``Generator`` (inference)
and the self-forcing rollout (training) call, so the context self-forcing trains on is made by
exactly the sampler, grid and guidance inference uses ("train what you infer", DESIGN §4).

The denoiser contract is STARCaster's ``model(x, t, **Conditioning(...).kwargs())``; guidance mixes the nested branches
(:func:`~starcaster_jax.diffusion.guidance.guided_model_fn`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from starcaster_jax.diffusion.guidance import guided_model_fn
from starcaster_jax.diffusion.samplers import sample
from starcaster_jax.models.conditioning import Conditioning


def chunk_noise(rng, shape, dtype=jnp.float32):
    """A chunk's starting noise ``[B, T, h, w, c]`` and the key of its sampler's own randomness
    (eta), from the chunk's key ``fold_in(seed_key, chunk_index)``. One rule for ``Generator``
    and the self-forcing rollout, so the same seed and inputs give the same chunk in both."""
    k_noise, k_eta = jax.random.split(rng)
    return jax.random.normal(k_noise, shape, dtype), k_eta


def sample_chunk(model, noise, *, context, context_mask, id_emb, audio_windows, view, drop_view,
                 schedule, objective: str, sampler: str, steps: int, spacing=None,
                 s_id: float = 1.0, s_audio: float = 1.0, drop_id=None, drop_audio=None,
                 eta: float = 0.0, rng=None):
    """``noise [B, T, h, w, c]`` -> clean chunk latents ``[B, T, h, w, c]``.

    ``context`` / ``context_mask [B, T]`` pin the clean slots; ``id_emb [B, 512] | None``,
    ``audio_windows [B, T, 2w+1, L, D] | None``, ``view [B, T, 6] | None``, ``drop_view [B]``
    bool. ``drop_id`` / ``drop_audio [B]`` (optional) drop a condition in every guidance branch
    (a sample trained without it is rolled out without it).
    """
    cond = Conditioning(id_emb=id_emb, audio_windows=audio_windows, view=view, drop_view=drop_view,
                        context_mask=context_mask, drop_id=drop_id, drop_audio=drop_audio)

    def cond_model_fn(x, t, c: Conditioning):
        return model(x, t, **c.kwargs())

    fn = guided_model_fn(cond_model_fn, cond, s_id=s_id, s_audio=s_audio)
    return sample(fn, noise, schedule=schedule, objective=objective, sampler=sampler, steps=int(steps),
                  context=context, context_mask=context_mask, eta=float(eta),
                  rng=rng if eta > 0 else None, spacing=spacing or None)


__all__ = ["chunk_noise", "sample_chunk"]
