"""Parity of the denoiser with the diffusers reference classes (random weights, f32, CPU).

(i) ``UNet2DConditionModel`` vs ours at F=1 with STARCaster conditioning absent;
(ii) ``UNetMotionModel`` vs ours with temporal blocks. Relative error <= 1e-4 each.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from starcaster_jax.models.rngs import InitRngs  # noqa: E402
from starcaster_jax.models.unet import UNet, UNetConfig  # noqa: E402
from starcaster_jax.weights.common import WeightImportError  # noqa: E402
from starcaster_jax.weights.unet import load_unet, load_unet_weights  # noqa: E402

SMALL = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
             cross_attention_dim=24, in_channels=4, out_channels=4)


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.ndim > 1 else 0.1)
                    + (1.0 if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight") else 0.0))


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_unet2d_condition_parity(tmp_path):
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(
        sample_size=16, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4, **SMALL).eval()
    _randomize(ref)
    ref.save_pretrained(tmp_path)
    model, cfg = load_unet(str(tmp_path), audio_dim=16, view_dim=16)
    assert cfg.num_attention_heads == 4 and cfg.use_temporal

    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([10.0, 700.0])
    ctx = torch.randn(2, 5, 24)
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=ctx).sample.numpy()
    got = model(jnp.asarray(x.numpy().transpose(0, 2, 3, 1))[:, None], jnp.asarray(t.numpy())[:, None],
                id_tokens=jnp.asarray(ctx.numpy()))
    err = rel(np.asarray(got)[:, 0].transpose(0, 3, 1, 2), want)
    print(f"\nUNet2DConditionModel parity: rel. error {err:.2e}")
    assert err <= 1e-4


def test_unet2d_condition_parity_odd_latent(tmp_path):
    """A 13x21 latent (not a multiple of the 4x downsampling): diffusers forwards each skip's size
    to its upsampler (``forward_upsample_size``); ours upsamples to the skip's size too."""
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(
        sample_size=16, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4,
        **{**SMALL, "block_out_channels": (16, 32, 32)}).eval()
    _randomize(ref, seed=4)
    ref.save_pretrained(tmp_path)
    model, _ = load_unet(str(tmp_path), audio_dim=16, view_dim=16)
    x = torch.randn(1, 4, 13, 21)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 5, 24)
    with torch.no_grad():
        want = ref(x, t, encoder_hidden_states=ctx).sample.numpy()
    got = model(jnp.asarray(x.numpy().transpose(0, 2, 3, 1))[:, None], jnp.asarray(t.numpy())[:, None],
                id_tokens=jnp.asarray(ctx.numpy()))
    err = rel(np.asarray(got)[:, 0].transpose(0, 3, 1, 2), want)
    print(f"\nUNet2DConditionModel parity at 13x21: rel. error {err:.2e}")
    assert err <= 1e-4


def _motion_ref():
    torch.manual_seed(1)
    return diffusers.UNetMotionModel(
        down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
        num_attention_heads=4, motion_num_attention_heads=4, motion_max_seq_length=16,
        use_motion_mid_block=True, **SMALL).eval()


def test_unet_motion_parity(tmp_path):
    ref = _motion_ref()
    _randomize(ref, seed=1)
    ref.save_pretrained(tmp_path)
    model, cfg = load_unet(str(tmp_path), audio_dim=16, view_dim=16)
    assert cfg.motion_max_seq_length == 16

    B, F = 1, 6
    x = torch.randn(B, 4, F, 16, 16)
    t = torch.tensor([321.0])
    ctx = torch.randn(B, 5, 24)
    with torch.no_grad():
        # diffusers 0.42 UNetMotionModel wants encoder_hidden_states with batch B*F
        want = ref(x, t, encoder_hidden_states=ctx.repeat_interleave(F, 0)).sample.numpy()
    got = model(jnp.asarray(x.numpy().transpose(0, 2, 3, 4, 1)), jnp.full((B, F), 321.0),
                id_tokens=jnp.asarray(ctx.numpy()))
    err = rel(np.asarray(got).transpose(0, 4, 1, 2, 3), want)
    print(f"\nUNetMotionModel parity: rel. error {err:.2e}")
    assert err <= 1e-4


def _our_params(model):
    """Dotted path -> numpy value of every ``nnx.Param``."""
    return {".".join(str(k) for k in p): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _diffusers_to_ours(key: str, ours: dict) -> str:
    """diffusers motion-module parameter name -> our path (Linear weight -> kernel, norm weight -> scale)."""
    k = key.replace(".to_out.0.", ".to_out.").replace(".ff.net.0.proj.", ".ff.geglu.proj.")
    k = k.replace(".ff.net.2.", ".ff.out.")
    if k.endswith(".weight"):
        stem = k[:-len(".weight")]
        return f"{stem}.scale" if f"{stem}.scale" in ours else f"{stem}.kernel"
    return k


def test_motion_adapter_import_into_spatial_model(tmp_path):
    """A MotionAdapter checkpoint fills exactly the temporal blocks of an existing model: every
    adapter tensor lands on its parameter (Linear weights transposed), every motion-module
    parameter of ours (except STARCaster's own view layers) is covered, nothing else changes."""
    ref = _motion_ref()
    _randomize(ref, seed=2)
    adapter = diffusers.MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1,
                                      motion_num_attention_heads=4, motion_norm_num_groups=8,
                                      motion_max_seq_length=16, use_motion_mid_block=True)
    _randomize(adapter, seed=3)
    adapter.save_pretrained(tmp_path)
    model = UNet(_cfg_small(), rngs=InitRngs(0))
    before = _our_params(model)
    load_unet_weights(model, str(tmp_path), part="temporal")
    after = _our_params(model)
    covered = set()
    for key, value in adapter.state_dict().items():
        if key.endswith(".pe") or "pos_embed" in key:
            continue                                   # fixed sinusoidal buffers, recomputed
        ours = _diffusers_to_ours(key, after)
        want = value.detach().numpy()
        want = want.T if want.ndim == 2 else want
        np.testing.assert_allclose(after[ours], want, rtol=0, atol=0, err_msg=key)
        covered.add(ours)
    temporal = {k for k in after if ".motion_modules." in k and ".view_proj." not in k}
    assert covered == temporal, sorted(temporal ^ covered)[:5]
    assert len(covered) > 20
    for k in after:
        if k not in covered:                           # spatial and view layers: untouched
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)


def _cfg_small():
    return UNetConfig(block_out_channels=(32, 64), cross_attn_blocks=(True, False), layers_per_block=1,
                      num_attention_heads=4, cross_attention_dim=24, norm_num_groups=8,
                      motion_num_attention_heads=4, motion_max_seq_length=16, audio_dim=16, view_dim=16)


def test_import_names_first_mismatch(tmp_path):
    ref = diffusers.UNet2DConditionModel(
        sample_size=16, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4, **SMALL)
    ref.save_pretrained(tmp_path)
    wrong = UNet(_cfg_small().__class__(**{**_cfg_small().__dict__, "cross_attention_dim": 32}),
                 rngs=InitRngs(0))
    with pytest.raises(WeightImportError, match=r"attn2\.to_k"):
        load_unet_weights(wrong, str(tmp_path))
