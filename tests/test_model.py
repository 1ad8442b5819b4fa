"""The trainable STARCaster module end to end at `tiny`: every conditioning path reaches the
output; the UNet's odd latent sizes and its remat policy."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import stage2_audio
from starcaster_jax.models.blocks import _nearest_index
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.starcaster import STARCaster, audio_feature_shape
from starcaster_jax.models.unet import UNet, UNetConfig

ODD_CFG = UNetConfig(block_out_channels=(8, 16, 16), cross_attn_blocks=(True, False, False),
                     layers_per_block=1, num_attention_heads=2, cross_attention_dim=8, norm_num_groups=4,
                     motion_num_attention_heads=2, motion_max_seq_length=8, audio_dim=8, view_dim=8)


def test_tiny_forward_all_conditions():
    cfg = stage2_audio.get_config("tiny").model
    model = STARCaster(cfg, rngs=InitRngs(0))
    # give the zero-initialised STARCaster layers values so their paths are visible
    for mod in (model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn_audio.to_out,
                model.unet.down_blocks[0].motion_modules[0].view_proj,
                model.unet.down_blocks[0].motion_modules[0].proj_out):
        mod.kernel.set_value(0.05 * jax.random.normal(jax.random.key(1), mod.kernel.get_value().shape))
    L, D = audio_feature_shape(cfg.audio)
    B, F = 2, 4
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (B, F, 8, 8, 4))
    t = jnp.full((B, F), 400.0)
    kw = dict(id_emb=jax.random.normal(k[1], (B, 512)),
              audio_windows=jax.random.normal(k[2], (B, F, 2 * cfg.audio.window + 1, L, D)),
              view=0.2 * jax.random.normal(k[3], (B, F, 6)))
    full = nnx.jit(lambda m, x, t, kw: m(x, t, **kw))(model, x, t, kw)
    assert full.shape == x.shape and full.dtype == jnp.float32
    flag = {"id_emb": "drop_id", "audio_windows": "drop_audio", "view": "drop_view"}
    yes = jnp.ones((B,), bool)
    for drop in ("id_emb", "audio_windows", "view"):
        other = nnx.jit(lambda m, x, t, kw: m(x, t, **kw))(model, x, t, {**kw, drop: None})
        rel = float(jnp.abs(other - full).mean() / jnp.abs(full).mean())
        assert rel > 1e-3, f"{drop} has (almost) no effect: {rel:.2e}"
        # the per-sample drop flag is exactly the condition's absence (CFG dropout == None)
        gated = nnx.jit(lambda m, x, t, kw: m(x, t, **kw))(model, x, t, {**kw, flag[drop]: yes})
        np.testing.assert_allclose(np.asarray(gated), np.asarray(other), rtol=1e-5, atol=1e-5)
    assert np.isfinite(np.asarray(full)).all()


def test_unet_latent_not_a_multiple_of_the_downsampling_factor():
    """13x21 goes down to 7x11 and 4x6 and comes back up to each skip's size (as diffusers'
    ``upsample_size``), not to 8x12 / 14x22 (the concatenation with the skip would fail)."""
    model = UNet(ODD_CFG, rngs=InitRngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 2, 13, 21, 4))
    y = model(x, jnp.array([500.0]), id_tokens=jnp.ones((1, 3, 8)))
    assert y.shape == x.shape and np.isfinite(np.asarray(y)).all()
    # the general nearest rule is the plain x2 repeat when the size is exactly doubled
    np.testing.assert_array_equal(_nearest_index(4, 8), np.repeat(np.arange(4), 2))
    np.testing.assert_array_equal(_nearest_index(4, 7), [0, 0, 1, 1, 2, 2, 3])


def test_every_block_mid_included_runs_under_the_remat_policy():
    """``model.unet.remat_policy``: each down/up layer and the mid block is one checkpointed
    region of the forward (3 stages x 1 down layer, the mid block, 3 x 2 up layers = 10)."""
    x = jnp.ones((1, 2, 8, 8, 4))

    def regions(policy):
        model = UNet(dataclasses.replace(ODD_CFG, remat_policy=policy), rngs=InitRngs(0))
        graphdef, state = nnx.split(model)
        jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(x, jnp.array([500.0])))(state)
        return [e for e in jaxpr.jaxpr.eqns if e.primitive.name.startswith(("checkpoint", "remat"))]

    assert regions("none") == []
    assert len(regions("full")) == len(regions("dots")) == 3 + 1 + 6   # 9 if the mid block ran bare
