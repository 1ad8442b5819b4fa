"""Sharded == unsharded: FSDP/tensor-sharded parameters over 8 fake CPU devices, and
sequence-parallel temporal attention (frames sharded, K/V all-gathered in shard_map)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from starcaster_jax import sharding
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.unet import UNet, UNetConfig

CFG = UNetConfig(block_out_channels=(32, 64), cross_attn_blocks=(True, False), layers_per_block=1,
                 num_attention_heads=4, cross_attention_dim=32, norm_num_groups=8,
                 motion_num_attention_heads=4, audio_dim=16, view_dim=16)


def _inputs(b=2, f=4):
    k = jax.random.split(jax.random.key(0), 5)
    return dict(x=jax.random.normal(k[0], (b, f, 8, 8, 4)),
                t=jax.random.uniform(k[1], (b, f), maxval=999.0),
                id_tokens=jax.random.normal(k[2], (b, 3, 32)),
                audio_tokens=jax.random.normal(k[3], (b, f, 2, 16)),
                view=0.3 * jax.random.normal(k[4], (b, f, 6)))


def _randomize_zero_layers(model):
    """Zero-initialised output layers would hide sharding bugs: give them values."""
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [l + 0.02 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(tree, leaves))


def _forward(model, inp):
    @nnx.jit
    def f(m, inp):
        return m(inp["x"], inp["t"], id_tokens=inp["id_tokens"], audio_tokens=inp["audio_tokens"],
                 view=inp["view"])
    return f(model, inp)


def test_logical_rules_drop_non_dividing_axes():
    mesh = sharding.make_mesh((1, 8, 1))
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 32), mesh) == P("fsdp", None)
    assert sharding.logical_to_spec(("embed", "mlp"), (6, 32), mesh) == P(None, None)
    mesh = sharding.make_mesh((2, 2, 2))
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 32), mesh) == P("fsdp", "tensor")
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh((2, 8, 1))


@pytest.mark.parametrize("shape", [(2, 2, 2), pytest.param((1, 8, 1), marks=pytest.mark.slow)])
def test_fsdp_sharded_forward_equals_single_device(shape):
    assert jax.device_count() >= 8
    ref = UNet(CFG, rngs=InitRngs(0))
    _randomize_zero_layers(ref)
    inp = _inputs(b=8, f=2)
    want = _forward(ref, inp)

    mesh = sharding.make_mesh(shape)
    model = sharding.create_sharded(lambda: UNet(CFG, rngs=InitRngs(0)), mesh)
    nnx.update(model, jax.device_put(nnx.state(ref), sharding.state_shardings(nnx.state(model), mesh)))
    kernel = model.down_blocks[1].resnets[0].conv1.kernel.get_value()
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    with jax.set_mesh(mesh):
        inp_s = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in inp.items()}
        got = _forward(model, inp_s)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_sequence_parallel_temporal_attention_equals_unsharded():
    ref = UNet(CFG, rngs=InitRngs(0))
    _randomize_zero_layers(ref)
    inp = _inputs(b=2, f=8)
    want = _forward(ref, inp)
    mesh = sharding.make_mesh((2, 1, 4))
    ref.temporal_attention_fn = sharding.sequence_parallel_attention(mesh, "tensor")
    with jax.set_mesh(mesh):
        got = _forward(ref, inp)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got - want).max()) < 1e-4


def test_per_sample_drop_equals_absent_condition():
    """drop_id/drop_audio on a sample == calling the model without that condition (CFG contract)."""
    model = UNet(CFG, rngs=InitRngs(0))
    _randomize_zero_layers(model)
    inp = _inputs(b=2, f=2)
    both = model(inp["x"], inp["t"], id_tokens=inp["id_tokens"], audio_tokens=inp["audio_tokens"],
                 drop_id=jnp.array([False, True]), drop_audio=jnp.array([True, False]))
    s0 = model(inp["x"][:1], inp["t"][:1], id_tokens=inp["id_tokens"][:1])
    s1 = model(inp["x"][1:], inp["t"][1:], audio_tokens=inp["audio_tokens"][1:])
    np.testing.assert_allclose(np.asarray(both), np.concatenate([s0, s1]), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(s0 - model(inp["x"][:1], inp["t"][:1])).max()) > 1e-4
