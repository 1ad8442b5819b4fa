"""LoRA adapters as a *parameterisation* of the trainable tree (Hu et al., 2021).

Stage 3 adapts the temporal blocks to views without forgetting time: the base weights stay
frozen and each targeted kernel ``W [.., in, out]`` gets ``W + scale * A @ B`` with ``A [in, r]``
(random) and ``B [r, out]`` (zeros, so training starts exactly at the stage-2 model).
Adapters live next to the model params in the train state (``{"model": ..., "lora": ...}``),
are merged inside the step before the forward pass, and are merged once for export. No module
surgery: any Dense kernel whose path matches ``lora.targets`` can be adapted.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from starcaster_jax.training.optim import path_str


def _set(tree: dict, keys: list[str], value) -> None:
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def _keys(path) -> list:
    out = []
    for k in path:
        out.append(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
    return out


def target_paths(model_params, targets: str) -> list[str]:
    """Paths of the 2-D ``kernel`` leaves whose path matches ``targets`` (re.search)."""
    rx = re.compile(targets)
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(model_params)[0]:
        p = path_str(path)
        if p.endswith("kernel") and np.ndim(leaf) == 2 and rx.search(p):
            out.append(p)
    return out


def init_lora(model_params, targets: str, rank: int, rng) -> dict:
    """Nested dict mirroring the targeted kernels' paths: ``{..: {"kernel": {"a", "b"}}}``."""
    flat = jax.tree_util.tree_flatten_with_path(model_params)[0]
    rx = re.compile(targets)
    lora: dict = {}
    n = 0
    for path, leaf in flat:
        p = path_str(path)
        if not (p.endswith("kernel") and len(leaf.shape) == 2 and rx.search(p)):
            continue
        d_in, d_out = leaf.shape
        k = jax.random.fold_in(rng, n)
        n += 1
        a = jax.random.normal(k, (d_in, rank), jnp.float32) / np.sqrt(d_in)
        _set(lora, _keys(path), {"a": a.astype(leaf.dtype), "b": jnp.zeros((rank, d_out), leaf.dtype)})
    if n == 0:
        raise ValueError(f"lora.targets {targets!r} matches no 2-D kernel of the model")
    return lora


def merge(model_params, lora: dict | None, scale: float = 1.0):
    """Effective params: targeted kernels ``W + scale * A @ B``, everything else unchanged."""
    if not lora:
        return model_params

    def visit(p, l):
        if isinstance(l, dict) and set(l) == {"a", "b"}:
            return (p + scale * (l["a"] @ l["b"]).astype(p.dtype)).astype(p.dtype)
        out = dict(p)
        by_str = {str(k): k for k in p}   # restored checkpoints spell list indices as "0"
        for k, sub in l.items():
            key = k if k in p else by_str[str(k)]
            out[key] = visit(p[key], sub)
        return out

    return visit(model_params, lora)


def num_params(lora: dict) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(lora)))
