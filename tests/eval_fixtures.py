"""Builders for the evaluation tests: a tiny corpus, a directory of (random) built-in encoders,
and a micro stage-2 training workdir written straight through the trainer's Checkpointer (no
training step is compiled), so ``launch.evaluate`` runs end to end in seconds."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from configs import stage2_audio
from data_pipelines.synthetic import build
from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.sharding import make_mesh
from starcaster_jax.training.checkpoint import Checkpointer
from starcaster_jax.training.encoders import module_configs
from starcaster_jax.training.state import ModelDef, TrainState


def micro_config(data_root: str, encoders_dir: str):
    c = stage2_audio.get_config("micro")
    c.data.root = data_root
    c.model.encoders_dir = encoders_dir
    c.diffusion.sample_steps = 1
    c.mesh.update(data=1, fsdp=1, tensor=1)
    c.eval.update(num_clips=2, num_multiview=1, num_novel_view=2, long_clips=1, long_seconds=2.0,
                  segment_seconds=1.0)
    return c


def write_encoders(config, out_dir: str, seed: int = 0) -> str:
    """Every built-in encoder at ``config``'s sizes, randomly initialised, saved as
    ``launch.train_encoders`` saves them."""
    kinds = {"vae": "vae", "audio": "builtin_audio", "identity_cond": "builtin_identity",
             "identity_eval": "builtin_identity", "lip_loss": "lip_reader", "lip_eval": "lip_reader",
             "pose_eval": "pose_regressor"}
    for i, (name, mc) in enumerate(module_configs(config).items()):
        be.save(out_dir, name, be.init_params(be.abstract_module(kinds[name], mc), seed + i), {}, {})
    return out_dir


def write_checkpoint(config, workdir: str, *, noise: float = 0.05, seed: int = 1) -> str:
    """A workdir whose step-1 checkpoint holds the fresh init (``config.seed``) plus Gaussian
    noise of std ``noise`` (0: exactly the untrained model) as both params and EMA."""
    mdef = ModelDef(config, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    init = mdef.init_params()
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + noise * rng.normal(size=x.shape), x.dtype)
                          if noise else x, init)
    state = TrainState(step=jnp.int32(1), params={"model": params}, opt_state={"none": jnp.zeros(())},
                       ema={"model": params}, rng=jnp.zeros((2,), jnp.uint32), skipped=jnp.int32(0))
    ck = Checkpointer(workdir, config.ckpt, enable_data=False)
    ck.save(1, state, config, force=True)
    ck.close()
    return workdir


def build_corpus(out: str) -> str:
    assert build.main(["--out", out, "--preset", "tiny", "--workers", "1"]) == 0
    return out


def make_all(root: str, noise: float = 0.05) -> dict:
    corpus = build_corpus(os.path.join(root, "corpus"))
    enc = os.path.join(root, "encoders")
    cfg = micro_config(corpus, enc)
    write_encoders(cfg, enc)
    wd = write_checkpoint(cfg, os.path.join(root, "wd"), noise=noise)
    return {"corpus": corpus, "encoders": enc, "workdir": wd, "config": cfg}
