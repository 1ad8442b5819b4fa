"""Checkpoints: one Orbax ``CheckpointManager`` per workdir (``<workdir>/checkpoints``).

Items of every step: ``state`` (params, optimiser, EMA, step, rng, skipped — StandardSave of a
plain pytree), ``config`` (the resolved config as JSON) and ``data`` (the Grain iterator state,
``grain.checkpoint.CheckpointSave``), so a pre-empted job resumes on exactly the next batch.
Saves are async (the loop keeps training while the arrays are written); the last ``keep`` are
kept. A step whose update was skipped as non-finite is never saved (the loop checks).
"""
from __future__ import annotations

import json
import logging
import os

import grain
import jax
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from starcaster_jax.sharding import make_mesh
from starcaster_jax.training.state import (
    ModelDef,
    TrainState,
    check_same_tree,
    lora_config,
    merged_model_params,
    normalize_keys,
)

log = logging.getLogger(__name__)


def is_url(path: str) -> bool:
    return "://" in str(path)


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints``; local paths made absolute, ``gs://...`` kept as URLs."""
    base = str(workdir) if is_url(workdir) else os.path.abspath(workdir)
    return base.rstrip("/") + "/checkpoints"


def _isdir(path: str) -> bool:
    return epath.Path(path).is_dir()


class Checkpointer:
    def __init__(self, workdir: str, ckpt_cfg, *, enable_data: bool = True):
        self.directory = checkpoint_dir(workdir)
        opts = ocp.CheckpointManagerOptions(
            max_to_keep=int(ckpt_cfg.keep),
            enable_async_checkpointing=bool(ckpt_cfg.async_save),
            create=True)
        self.enable_data = enable_data
        self.mngr = ocp.CheckpointManager(self.directory, options=opts)

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    def save(self, step: int, state: TrainState, config, data_iter=None, *, force=False) -> bool:
        items = dict(state=ocp.args.StandardSave(state.as_dict()),
                     config=ocp.args.JsonSave(json.loads(config.to_json())))
        if self.enable_data and data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.mngr.save(int(step), args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: TrainState, data_iter=None, step: int | None = None
                ) -> TrainState | None:
        """Latest (or ``step``) state into ``abstract_state``'s shardings; sets ``data_iter``'s
        position. None when the workdir holds no checkpoint."""
        step = self.mngr.latest_step() if step is None else step
        if step is None:
            return None
        items = dict(state=ocp.args.StandardRestore(abstract_state.as_dict()))
        if self.enable_data and data_iter is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
            out = self.mngr.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{self.directory}/{step}: checkpoint does not match the config "
                             f"({str(e).splitlines()[0][:300]})") from None
        return TrainState.from_dict(out["state"])

    def wait(self) -> None:
        self.mngr.wait_until_finished()

    def close(self) -> None:
        self.mngr.wait_until_finished()
        self.mngr.close()


def _reader(workdir: str) -> ocp.CheckpointManager:
    """A manager that reads a workdir's items without their save args.

    Every item's handler is named up front (``data`` too, though only the trainer restores it)
    so ``metadata(step).item_metadata`` knows the items and Orbax reads the step metadata where
    the manager wrote it (``<step>/_CHECKPOINT_METADATA``). A bare ``Checkpointer`` pointed at
    ``<step>/state`` looks for it inside the item directory and logs "Metadata file does not
    exist" at every load; an unnamed item logs "found in the checkpoint, but could not be
    restored"."""
    return ocp.CheckpointManager(checkpoint_dir(workdir), item_handlers=dict(
        state=ocp.PyTreeCheckpointHandler(), config=ocp.JsonCheckpointHandler(),
        data=grain.checkpoint.CheckpointHandler()))


def _step(mngr: ocp.CheckpointManager, workdir: str, step: int | None) -> int:
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint (expected {checkpoint_dir(workdir)}/<step>)")
    return step


def read_config(workdir: str, step: int | None = None) -> mlc.ConfigDict:
    """The resolved config a workdir was trained with."""
    mngr = _reader(workdir)
    try:
        cfg = mngr.restore(_step(mngr, workdir, step),
                           args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    finally:
        mngr.close()
    return mlc.ConfigDict(cfg)


def restore_params(workdir: str, config=None, *, use_ema: bool = True, step: int | None = None):
    """-> (merged model params (pure dict, LoRA folded in), config, step) of a training workdir,
    restored as host arrays without building an optimiser."""
    return _restore(workdir, config, use_ema=use_ema, step=step)[:3]


def _restore(workdir: str, config=None, *, use_ema: bool = True, step: int | None = None):
    if not _isdir(checkpoint_dir(workdir)):
        raise FileNotFoundError(f"{workdir}: not a training workdir (no checkpoints/ inside)")
    key = "ema" if use_ema else "params"
    mngr = _reader(workdir)
    try:
        step = _step(mngr, workdir, step)
        meta = mngr.metadata(step).item_metadata["state"]
        # Partial restore of one sub-tree as host arrays: no optimiser state is read.
        target = {key: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta[key])}
        out = mngr.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore(),
            state=ocp.args.PyTreeRestore(
                item=target, partial_restore=True,
                restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target))))
    finally:
        mngr.close()
    saved_cfg = mlc.ConfigDict(out["config"])
    config = saved_cfg if config is None else config
    trainable = out["state"][key]
    mdef = ModelDef(config, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    trainable = {"model": normalize_keys(trainable["model"], mdef.abstract_params),
                 **({"lora": trainable["lora"]} if "lora" in trainable else {})}
    params = merged_model_params(trainable, config if lora_config(config) else saved_cfg)
    check_same_tree(mdef.abstract_params, params, f"{workdir} (step {step})")
    return params, config, step, mdef.graphdef


def load_for_inference(path: str, *, use_ema: bool = True):
    """Training workdir -> (STARCaster with its EMA (or raw) weights, resolved config)."""
    params, config, _, graphdef = _restore(path, use_ema=use_ema)
    return nnx.merge(graphdef, params), config
