"""Training checkpoints written by the trainer's ``Checkpointer`` read back silently: the resume
path (``Checkpointer.restore``) and the partial host-array path (``restore_params``, used by
``init_from`` and inference) both find Orbax's step metadata where it was written."""
from __future__ import annotations

import logging

import grain
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from starcaster_jax.sharding import make_mesh
from starcaster_jax.training.checkpoint import Checkpointer, load_for_inference, restore_params
from starcaster_jax.training.state import ModelDef, TrainState
from tests.eval_fixtures import micro_config


def _state(config):
    mdef = ModelDef(config, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    params = mdef.init_params()
    ema = jax.tree.map(lambda x: x + 1.0, params)
    return TrainState(step=jnp.int32(3), params={"model": params}, opt_state={"mu": jnp.ones((2,))},
                      ema={"model": ema}, rng=jnp.arange(2, dtype=jnp.uint32), skipped=jnp.int32(0))


def test_save_and_restore_emit_no_metadata_warning(tmp_path, caplog):
    config = micro_config(str(tmp_path / "data"), "")
    state = _state(config)
    it = iter(grain.MapDataset.range(10).to_iter_dataset())
    next(it), next(it)
    wd = str(tmp_path / "wd")
    ck = Checkpointer(wd, mlc.ConfigDict(dict(keep=2, async_save=False)))
    assert ck.save(3, state, config, data_iter=it, force=True)
    ck.close()
    bare = str(tmp_path / "bare")        # no data item (as eval fixtures and exports write them)
    ck = Checkpointer(bare, mlc.ConfigDict(dict(keep=1, async_save=False)), enable_data=False)
    assert ck.save(3, state, config, force=True)
    ck.close()
    with caplog.at_level(logging.WARNING):
        restore_params(bare)
        ck = Checkpointer(wd, mlc.ConfigDict(dict(keep=2, async_save=False)))
        it2 = iter(grain.MapDataset.range(10).to_iter_dataset())
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        resumed = ck.restore(abstract, data_iter=it2)
        ck.close()
        params, cfg, step = restore_params(wd, use_ema=True)
        raw, _, _ = restore_params(wd, use_ema=False)
        load_for_inference(wd)
    # e.g. "Metadata file does not exist: .../state/_CHECKPOINT_METADATA", or an item Orbax
    # "found in the checkpoint, but could not" restore: the load must be silent
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, noisy
    assert int(resumed.step) == 3 and next(it2) == 2            # the data position came back
    for a, b in zip(jax.tree.leaves(resumed.as_dict()), jax.tree.leaves(state.as_dict())):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert step == 3 and cfg.variant == "micro"
    for got, want in ((params, state.ema["model"]), (raw, state.params["model"])):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
