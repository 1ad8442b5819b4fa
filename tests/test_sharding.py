"""Sharded == unsharded over 8 fake CPU devices: FSDP/tensor-sharded parameters, activations
pinned by logical name at the UNet's block boundaries, and sequence-parallel temporal attention
(frames sharded, K/V all-gathered in shard_map), each read from the one rules table."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from starcaster_jax import sharding
from starcaster_jax.models.attention import Attention
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.unet import UNet, UNetConfig

CFG = UNetConfig(block_out_channels=(32, 64), cross_attn_blocks=(True, False), layers_per_block=1,
                 num_attention_heads=4, cross_attention_dim=32, norm_num_groups=8,
                 motion_num_attention_heads=4, audio_dim=16, view_dim=16)
# conv_in, down (1 layer + downsample, 1 layer), mid, up (2 layers + upsample, 2 layers)
BLOCK_BOUNDARIES = 10


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


def _forward_fn(model):
    """(jitted forward of the pure state, that state): lowerable, so tests can read its HLO."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, inp):
        m = nnx.merge(graphdef, state)
        return m(inp["x"], inp["t"], id_tokens=inp["id_tokens"], audio_tokens=inp["audio_tokens"],
                 view=inp["view"])
    return f, state


def _forward(model, inp):
    f, state = _forward_fn(model)
    return f(state, inp)


def test_logical_rules_drop_non_dividing_axes():
    mesh = sharding.make_mesh((1, 8, 1))
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 32), mesh) == P("fsdp", None)
    assert sharding.logical_to_spec(("embed", "mlp"), (6, 32), mesh) == P(None, None)
    mesh = sharding.make_mesh((2, 2, 2))
    assert sharding.logical_to_spec(("embed", "mlp"), (64, 32), mesh) == P("fsdp", "tensor")
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh((2, 8, 1))


def test_batch_sharding_and_sequence_parallel_axes_come_from_the_rules_table():
    mesh = sharding.make_mesh((2, 2, 2))
    assert sharding.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
    only_data = tuple((n, "data" if n == "batch" else a) for n, a in sharding.LOGICAL_AXIS_RULES)
    assert sharding.batch_sharding(mesh, 2, only_data).spec == P("data", None)
    # sequence parallelism: frames on the chosen axis, which the batch then leaves alone
    rules = sharding.sequence_parallel_rules("fsdp")
    assert sharding.logical_to_spec(("batch", "frames"), (4, 8), mesh, rules) == P("data", "fsdp")
    assert sharding.sequence_parallel_rules("") == sharding.LOGICAL_AXIS_RULES


def test_self_attention_kv_kernels_are_labelled_like_q():
    """K/V of self-attention read the tokens (``embed``), so FSDP splits them as it splits Q;
    cross-attention's read the condition (``cond``), even when the widths happen to agree."""
    def names(attn):
        return {p: sharding.logical_names(getattr(attn, p).kernel) for p in ("to_q", "to_k", "to_v")}
    self_attn = nnx.eval_shape(lambda: Attention(64, heads=4, rngs=InitRngs(0)))
    cross = nnx.eval_shape(lambda: Attention(64, context_dim=64, heads=4, rngs=InitRngs(0)))
    assert names(self_attn) == {p: ("embed", "heads") for p in ("to_q", "to_k", "to_v")}
    assert names(cross)["to_k"] == names(cross)["to_v"] == ("cond", "heads")
    # with a table that keeps conditioning dims whole, self-attention K/V still shard like Q
    mesh = sharding.make_mesh((1, 8, 1))
    whole_cond = tuple((n, None if n == "cond" else a) for n, a in sharding.LOGICAL_AXIS_RULES)
    sh = sharding.state_shardings(nnx.state(self_attn), mesh, whole_cond)
    assert sh["to_k"]["kernel"].spec == sh["to_q"]["kernel"].spec == P("fsdp", None)
    assert sharding.state_shardings(nnx.state(cross), mesh, whole_cond)["to_k"]["kernel"].spec == P(None, None)


@pytest.mark.parametrize("shape", [(2, 2, 2), pytest.param((1, 8, 1), marks=pytest.mark.slow)])
def test_fsdp_sharded_forward_equals_single_device(shape):
    assert jax.device_count() >= 8
    ref = UNet(CFG, rngs=InitRngs(0))
    _randomize_zero_layers(ref)
    inp = _inputs(b=8, f=2)
    want = _forward(ref, inp)

    mesh = sharding.make_mesh(shape)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: UNet(CFG, rngs=InitRngs(0))))
    model = nnx.merge(graphdef, jax.device_put(nnx.state(ref), sharding.state_shardings(abstract, mesh)))
    kernel = model.down_blocks[1].resnets[0].conv1.kernel.get_value()
    assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
    with jax.set_mesh(mesh):
        inp_s = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in inp.items()}
        got = _forward(model, inp_s)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_block_boundaries_are_constrained_by_logical_name(monkeypatch):
    """Under a mesh every UNet block boundary carries ``with_sharding_constraint`` from the
    rules table (batch over data x fsdp): the program says so, XLA lays the activations out
    that way, and the numbers are those of the unconstrained forward (no mesh: no constraint)."""
    ref = UNet(CFG, rngs=InitRngs(0))
    _randomize_zero_layers(ref)
    inp = _inputs(b=8, f=2)
    f, state = _forward_fn(ref)
    want = f(state, inp)
    assert "sharding_constraint" not in f.lower(state, inp).as_text()      # off a mesh: identity

    seen = []
    constrain = sharding.constrain

    def spy(x, names, rules=sharding.LOGICAL_AXIS_RULES):
        y = constrain(x, names, rules)
        jax.debug.inspect_array_sharding(y, callback=seen.append)          # the layout XLA chose
        return y

    monkeypatch.setattr(sharding, "constrain", spy)
    mesh = sharding.make_mesh((1, 8, 1))
    with jax.set_mesh(mesh):
        lowered = f.lower(state, inp)
        got = lowered.compile()(state, inp)
    text = lowered.as_text()
    pins = [ln for ln in text.splitlines() if "sharding_constraint" in ln]
    assert len(pins) == BLOCK_BOUNDARIES, pins
    assert all('[{"fsdp"}, {}, {}, {}, {}]' in ln for ln in pins), pins[0]   # [B, F, H, W, C]
    assert len(seen) == BLOCK_BOUNDARIES
    for s in seen:
        assert s.shard_shape((8, 2, 8, 8, 32))[0] == 1                      # one sample per device
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_sequence_parallel_temporal_attention_equals_unsharded():
    """``model.unet.sequence_parallel_axis``: the same config-built module attends over frames
    sharded on ``tensor`` (K/V all-gathered) under the mesh, and plainly without one."""
    ref = UNet(CFG, rngs=InitRngs(0))
    _randomize_zero_layers(ref)
    inp = _inputs(b=2, f=8)
    want = _forward(ref, inp)
    sp = UNet(dataclasses.replace(CFG, sequence_parallel_axis="tensor"), rngs=InitRngs(0))
    nnx.update(sp, nnx.state(ref))
    np.testing.assert_allclose(np.asarray(_forward(sp, inp)), np.asarray(want), rtol=1e-5, atol=1e-5)
    mesh = sharding.make_mesh((2, 1, 4))
    f, state = _forward_fn(sp)
    with jax.set_mesh(mesh):
        lowered = f.lower(state, inp)
        compiled = lowered.compile()
        got = compiled(state, inp)
    assert "all-gather" in compiled.as_text()
    # frames over tensor at the block boundaries too; the batch keeps data
    assert '[{"data"}, {"tensor"}, {}, {}, {}]' in lowered.as_text()
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got - want).max()) < 1e-4
    with pytest.raises(ValueError, match="sequence_parallel_axis"):
        dataclasses.replace(CFG, sequence_parallel_axis="tensr")


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
