"""The one place where logical axis names meet the device mesh.

Every parameter in the project carries logical axis names (``nnx.with_partitioning``); this
module owns the single table that maps them to the mesh axes ``('data', 'fsdp', 'tensor')``,
builds the mesh from a config, and derives ``NamedSharding``s from an abstract (``eval_shape``)
state. A mesh axis that does not divide a dimension is dropped for that dimension (replicated)
rather than failing, so tiny test models still shard over 8 devices.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("frames", None),
    ("frames_sp", "tensor"),  # sequence-parallel temporal attention shards frames here
    ("length", None),
    ("height", None),
    ("width", None),
    ("act_embed", None),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("kernel", None),
    ("norm", None),
    ("vocab", None),
    # conditioning input dims (K/V and projector inputs): over fsdp, else ("cond", "heads")
    # kernels stay whole on every chip when tensor=1 (paper: 30 % of the params per chip, not 25 %)
    ("cond", "fsdp"),
)


def rules_dict(rules=LOGICAL_AXIS_RULES) -> dict[str, Any]:
    return dict(rules)


def make_mesh(shape: Sequence[int] | dict | None = None, devices=None) -> Mesh:
    """Mesh with axes ``('data', 'fsdp', 'tensor')``.

    ``shape`` is ``(data, fsdp, tensor)`` or a dict with those keys; ``-1`` in one slot takes
    the remaining devices. ``None`` puts every device on ``fsdp``.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if shape is None:
        shape = (1, -1, 1)
    if isinstance(shape, dict) or hasattr(shape, "keys"):
        shape = tuple(int(shape.get(a, 1)) for a in MESH_AXES)
    shape = list(int(s) for s in shape)
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if n % known:
            raise ValueError(f"mesh shape {shape}: {n} devices not divisible by {known}")
        shape[shape.index(-1)] = n // known
    if int(np.prod(shape)) != n:
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, have {n}")
    dev = np.asarray(devices).reshape(shape)
    return Mesh(dev, MESH_AXES)


def _mesh_axes_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_AXIS_RULES) -> P:
    """PartitionSpec for one array: logical names -> mesh axes, dropping what does not divide."""
    if names is None:
        return P()
    table = rules_dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(names, shape):
        axes = table.get(name) if name is not None else None
        if axes is not None:
            axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
            axes_t = tuple(a for a in axes_t if a in mesh.shape and a not in used)
            # keep the longest prefix of mesh axes that divides this dimension
            while axes_t and dim % _mesh_axes_size(mesh, axes_t):
                axes_t = axes_t[:-1]
            axes_t = tuple(a for a in axes_t if mesh.shape[a] > 1) or None
            if axes_t:
                used.update(axes_t)
                axes = axes_t[0] if len(axes_t) == 1 else axes_t
            else:
                axes = None
        out.append(axes)
    return P(*out)


def _names_of(var) -> tuple | None:
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if names is not None:
            return tuple(names)
    return None


def state_shardings(abstract_state, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for an (abstract) nnx.State, from the parameters' logical axis names."""

    def one(var):
        value = var.get_value() if hasattr(var, "get_value") else var.value
        names = _names_of(var)
        spec = logical_to_spec(names, value.shape, mesh, rules) if names else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """Leading axis over ``data x fsdp``, the rest replicated."""
    axes = tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1) or None
    if axes is not None and len(axes) == 1:
        axes = axes[0]
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def count_params(state) -> int:
    leaves = jax.tree.leaves(state)
    return int(sum(np.prod(x.shape) for x in leaves if hasattr(x, "shape")))


def create_sharded(ctor, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Build ``ctor()`` (an nnx.Module factory) directly into its shardings: abstract first
    (``nnx.eval_shape``), shardings from the logical names, then a jitted init whose outputs land
    sharded, so a model bigger than one device never exists unsharded."""
    abstract = nnx.eval_shape(ctor)
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(abs_state, mesh, rules)

    @jax.jit
    def init():
        return nnx.state(ctor())

    with jax.set_mesh(mesh):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def sequence_parallel_attention(mesh: Mesh, axis: str = "tensor"):
    """Attention over the frame axis with frames sharded over ``axis`` (explicit collectives).

    Inside ``jax.shard_map`` each device holds ``F / n`` query frames; K and V are all-gathered
    along the frame axis so every query sees every frame. Memory for activations outside the
    attention scales as ``F / n``, which is what lets long clips fit. ``q, k, v: [N, F, H, D]``.
    """
    batch_axes = tuple(a for a in ("data", "fsdp") if mesh.shape.get(a, 1) > 1 and a != axis)

    def attention(q, k, v):
        n_batch = _mesh_axes_size(mesh, batch_axes) if batch_axes else 1
        lead = batch_axes if batch_axes and q.shape[0] % n_batch == 0 else None
        if lead is not None and len(lead) == 1:
            lead = lead[0]
        if q.shape[1] % mesh.shape[axis]:
            raise ValueError(f"sequence parallelism: {q.shape[1]} frames not divisible by mesh axis "
                             f"{axis!r} of size {mesh.shape[axis]}")
        spec = P(lead, axis, None, None)

        def local(q, k, v):
            k = jax.lax.all_gather(k, axis, axis=1, tiled=True)
            v = jax.lax.all_gather(v, axis, axis=1, tiled=True)
            from starcaster_jax.models.attention import dot_product_attention, temporal_implementation
            return dot_product_attention(q, k, v, implementation=temporal_implementation(None))

        return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)(q, k, v)

    return attention
