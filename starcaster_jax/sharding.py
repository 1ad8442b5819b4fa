"""The one place where logical axis names meet the device mesh.

Every parameter in the project carries logical axis names (``nnx.with_partitioning``) and the
UNet names its activations at block boundaries (:func:`constrain`); this module owns the single
table that maps both to the mesh axes ``('data', 'fsdp', 'tensor')``, builds the mesh from a
config, and derives ``NamedSharding``s from an abstract (``eval_shape``) state. A mesh axis that
does not divide a dimension is dropped for that dimension (replicated) rather than failing, so
tiny test models still shard over 8 devices. The sharded parameters themselves are built in one
place, ``training/state.py`` ``ModelDef.init_params``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # activations: the UNet's [B, F, H, W, C] between blocks (constrain), the batch the
    # pipeline feeds (batch_sharding), splash's and the sequence-parallel attention's shard_maps
    ("batch", ("data", "fsdp")),
    ("frames", None),   # model.unet.sequence_parallel_axis maps it (sequence_parallel_rules)
    ("height", None),
    ("width", None),
    ("act_embed", None),
    # parameters (and the heads axis of splash's shard_map)
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("kernel", None),
    ("norm", None),
    ("vocab", None),
    # conditioning input dims (cross-attention K/V and projector inputs): over fsdp, else
    # ("cond", "heads") kernels stay whole on every chip when tensor=1 (paper: 30 % of the
    # params per chip, not 25 %)
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


def _mesh_axes_size(mesh: Mesh | AbstractMesh, axes) -> int:
    if axes is None:
        return 1
    if isinstance(axes, str):
        axes = (axes,)
    return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh | AbstractMesh,
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


def logical_names(var) -> tuple | None:
    """A parameter's logical axis names (its partitioning metadata), or None."""
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
        names = logical_names(var)
        spec = logical_to_spec(names, value.shape, mesh, rules) if names else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def mesh_axes(name: str, mesh: Mesh | AbstractMesh, rules=LOGICAL_AXIS_RULES) -> tuple[str, ...]:
    """The axes of ``mesh`` (of size > 1) that logical ``name`` maps to; () = replicated."""
    axes = rules_dict(rules).get(name)
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return tuple(a for a in axes if mesh.shape.get(a, 1) > 1)


def batch_sharding(mesh: Mesh, ndim: int, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """Leading axis as the ``batch`` rule says (``data x fsdp``), the rest replicated."""
    axes = mesh_axes("batch", mesh, rules) or None
    if axes is not None and len(axes) == 1:
        axes = axes[0]
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def sequence_parallel_rules(axis: str, rules=LOGICAL_AXIS_RULES):
    """The table with ``frames`` on mesh axis ``axis`` (``model.unet.sequence_parallel_axis``)
    and ``axis`` taken out of ``batch``: one mesh axis cannot split two dimensions. ``""`` =
    the table as it is (frames whole on every chip)."""
    if not axis:
        return rules
    out = []
    for name, axes in rules:
        if name == "frames":
            axes = axis
        elif name == "batch" and axes is not None:
            axes = tuple(a for a in ((axes,) if isinstance(axes, str) else axes) if a != axis) or None
        out.append((name, axes))
    return tuple(out)


def active_mesh() -> AbstractMesh | None:
    """The mesh set by ``jax.set_mesh`` (what jitted code is sharded over), or None when there
    is none or it has one device: then there is nothing to constrain."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or mesh.size == 1 else mesh


def constrain(x: jax.Array, names: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> jax.Array:
    """``with_sharding_constraint`` by logical names (one per dimension of ``x``); the identity
    outside a mesh.

    Parameters alone leave XLA to guess how activations are laid out between blocks; pinning
    the batch over ``data x fsdp`` (and frames over the sequence-parallel axis) at block
    boundaries is what keeps a pod's activations split the way the rules table says (as
    MaxDiffusion does)."""
    mesh = active_mesh()
    if mesh is None or mesh.manual_axes:   # no mesh, or inside a shard_map body
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)))


def count_params(state) -> int:
    leaves = jax.tree.leaves(state)
    return int(sum(np.prod(x.shape) for x in leaves if hasattr(x, "shape")))
