"""The train state and how it is built: abstractly first, sharded from the logical-axis rules,
then initialised (or restored, or loaded from the previous stage) straight into place.

``TrainState.params`` is the *trainable tree* ``{"model": <STARCaster params>}`` plus
``"lora"`` when stage-3 adapters are on; plain nested dicts of arrays (``nnx.to_pure_dict``),
so optax, Orbax and the sharding rules all see one simple pytree. The NNX graph definition is
static and lives in :class:`ModelDef`.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from starcaster_jax import sharding as shd
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.starcaster import STARCaster
from starcaster_jax.training import lora as lora_lib
from starcaster_jax.training.optim import path_str, tree_paths
from starcaster_jax.weights.unet import load_unet_weights

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 []
    params: Any              # {"model": ..., ["lora": ...]}
    opt_state: Any
    ema: Any                 # same tree as params
    rng: jax.Array           # uint32 [2] raw key data (checkpoint-friendly)
    skipped: jax.Array       # int32 []: non-finite updates skipped so far

    def as_dict(self) -> dict:
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state,
                "ema": self.ema, "rng": self.rng, "skipped": self.skipped}

    @classmethod
    def from_dict(cls, d) -> TrainState:
        return cls(**{k: d[k] for k in ("step", "params", "opt_state", "ema", "rng", "skipped")})


class ModelDef:
    """The STARCaster graph (static) + its abstract params and their shardings, and the one way
    sharded parameters are built (``init_params``)."""

    def __init__(self, config, mesh):
        self.config = config
        self.mesh = mesh
        # rbg keys: same distributions, and XLA:CPU compiles the init faster than with threefry;
        # InitRngs: no traced counter per draw (models/rngs.py), so eval_shape traces quickly
        ctor = lambda: STARCaster(config.model, rngs=InitRngs(  # noqa: E731
            jax.random.key(config.seed, impl="rbg")))
        self._ctor = ctor
        abstract = nnx.eval_shape(ctor)
        self.graphdef, abs_params, rest = nnx.split(abstract, nnx.Param, ...)
        if jax.tree.leaves(rest):
            raise ValueError("STARCaster holds non-Param state; the trainer expects only nnx.Param")
        self.abstract_params = nnx.to_pure_dict(abs_params)
        self.param_shardings = nnx.to_pure_dict(shd.state_shardings(abs_params, mesh))

    def init_params(self):
        """Random init, landing in the param shardings.

        On a one-device mesh the model is built eagerly: the same values as the jitted init,
        and XLA:CPU takes longer to compile that init (~800 small kernels) than eager dispatch
        takes to run it. On a real mesh the init is jitted with ``out_shardings``, so no device
        ever holds more than its shards (a model bigger than one device never exists whole)."""
        def init():
            return nnx.to_pure_dict(nnx.state(self._ctor(), nnx.Param))
        if self.mesh.size == 1:
            with jax.default_device(self.mesh.devices.flat[0]):
                return jax.device_put(init(), self.param_shardings)
        with jax.set_mesh(self.mesh):
            return jax.jit(init, out_shardings=self.param_shardings)()

    def module(self, params) -> STARCaster:
        return nnx.merge(self.graphdef, params)


def lora_config(config) -> dict | None:
    return dict(config.lora) if config.lora.enabled else None


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def load_pretrained(mdef: ModelDef, params):
    """Import SD-1.5 / Arc2Face (spatial) and AnimateDiff (temporal) weights when configured."""
    pre = mdef.config.model.pretrained
    if not (pre.sd_unet or pre.motion_adapter):
        return params
    model = mdef.module(jax.device_get(params))
    if pre.sd_unet:
        left = load_unet_weights(model.unet, pre["sd_unet"], part="spatial")
        log.info("imported spatial weights from %s (%d params left at init)", pre["sd_unet"], len(left))
    if pre.motion_adapter:
        load_unet_weights(model.unet, pre["motion_adapter"], part="temporal")
        log.info("imported temporal weights from %s", pre["motion_adapter"])
    new = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return jax.device_put(new, mdef.param_shardings)


def check_same_tree(expected, got, what: str) -> None:
    """One-line error naming the first key/shape mismatch between two param trees."""
    e = {shd_path(p): np.shape(v) for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    g = {shd_path(p): np.shape(v) for p, v in jax.tree_util.tree_flatten_with_path(got)[0]}
    for k in sorted(e):
        if k not in g:
            raise ValueError(f"{what}: parameter {k!r} missing (config and checkpoint disagree)")
        if tuple(e[k]) != tuple(g[k]):
            raise ValueError(f"{what}: parameter {k!r} has shape {tuple(g[k])}, the config "
                             f"expects {tuple(e[k])}")
    extra = sorted(set(g) - set(e))
    if extra:
        raise ValueError(f"{what}: unexpected parameter {extra[0]!r} ({len(extra)} in all)")


def shd_path(path) -> str:
    return path_str(path)


def merged_model_params(params: dict, config) -> dict:
    """Trainable tree -> plain model params (LoRA merged): for the next stage, export, inference."""
    lc = lora_config(config)
    scale = (float(lc["alpha"]) / float(lc["rank"])) if lc else 1.0
    return lora_lib.merge(params["model"], params.get("lora"), scale)


def normalize_keys(tree, like):
    """Orbax returns string keys for list indices when restoring without a target: map back."""
    if isinstance(like, dict):
        out = {}
        for k, v in like.items():
            src = tree[k] if k in tree else tree[str(k)]
            out[k] = normalize_keys(src, v)
        return out
    return tree


def param_filter(params, regex: str) -> list[str]:
    rx = re.compile(regex)
    return [p for p in tree_paths(params) if rx.search(p)]


def make_rng(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)
