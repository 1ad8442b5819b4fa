"""VAE: parity with diffusers.AutoencoderKL (random weights), importer paths and errors, video
helpers, and that the tiny demo VAE learns to reconstruct."""
import dataclasses
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import starcaster_jax  # noqa: F401  (disables eager sharding)
from starcaster_jax.models.vae import VAEConfig, abstract_vae, create_vae, vae_preset
from starcaster_jax.models.vae_training import estimate_scaling_factor, make_vae_optimizer, train_vae_step
from starcaster_jax.sharding import count_params, make_mesh
from starcaster_jax.weights.common import WeightImportError
from starcaster_jax.weights.vae import load_vae, vae_from_torch_state_dict

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# small but complete: 2 levels (one downsample), attention mid-blocks, shortcut convs.
CFG = VAEConfig(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                sample_size=32)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def ref():
    """(torch model with randomised weights incl. norm affines, its diffusers dir, input, outputs)."""
    torch.manual_seed(0)
    m = diffusers.AutoencoderKL(**CFG.to_diffusers()).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        post = m.encode(x).latent_dist
        z = torch.randn(2, 4, 16, 16)
        y = m.decode(z).sample
    out = dict(mean=post.mean.permute(0, 2, 3, 1).numpy(), logvar=post.logvar.permute(0, 2, 3, 1).numpy(),
               kl=post.kl().numpy(), z=z.permute(0, 2, 3, 1).numpy(), y=y.permute(0, 2, 3, 1).numpy())
    return m, jnp.asarray(x.permute(0, 2, 3, 1).numpy()), out


@pytest.fixture(scope="module")
def ref_dir(ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("vae")
    ref[0].save_pretrained(d)
    return str(d)


def _check_parity(vae, x, out, tag):
    post = vae.encode(x)
    y = vae.decode(jnp.asarray(out["z"]))
    e_mean, e_logvar = rel(post.mean, out["mean"]), rel(post.logvar, out["logvar"])
    e_kl, e_dec = rel(post.kl(), out["kl"]), rel(y, out["y"])
    print(f"[{tag}] rel err: mean {e_mean:.2e} logvar {e_logvar:.2e} kl {e_kl:.2e} decode {e_dec:.2e}")
    assert max(e_mean, e_logvar, e_kl, e_dec) <= 1e-4


def test_config_roundtrip_and_params(ref):
    m = ref[0]
    cfg = VAEConfig.from_diffusers(dict(m.config))
    assert cfg.block_out_channels == (32, 64) and cfg.norm_num_groups == 8 and cfg.scaling_factor == 0.18215
    n_torch = sum(p.numel() for p in m.parameters())
    assert count_params(nnx.state(abstract_vae(cfg), nnx.Param)) == n_torch
    # the full SD-1.5 VAE, counted without allocating it
    assert count_params(nnx.state(abstract_vae(vae_preset("sd15")), nnx.Param)) == 83_653_863
    with pytest.raises(ValueError, match="AttnDownEncoderBlock2D"):
        VAEConfig.from_diffusers({"down_block_types": ["AttnDownEncoderBlock2D"]})


def test_parity_safetensors_dir(ref, ref_dir):
    vae, cfg = load_vae(ref_dir)
    assert cfg == VAEConfig.from_diffusers(dict(ref[0].config))
    _check_parity(vae, ref[1], ref[2], "safetensors")
    names = nnx.state(vae, nnx.Param)["encoder"]["conv_in"]["kernel"].get_metadata()
    assert any(v for k, v in names.items() if k in ("sharding_names", "out_sharding", "sharding"))


def test_parity_bin_pipeline_root(ref, tmp_path):
    ref[0].save_pretrained(tmp_path / "vae", safe_serialization=False)
    (tmp_path / "model_index.json").write_text("{}")
    assert os.path.exists(tmp_path / "vae" / "diffusion_pytorch_model.bin")
    vae, _ = load_vae(str(tmp_path))
    _check_parity(vae, ref[1], ref[2], "bin, pipeline root")


def test_old_attention_names(ref):
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {}
    for k, v in ref[0].state_dict().items():
        for new, o in old.items():
            k = k.replace(f".{new}.", f".{o}.")
        sd[k] = v
    assert any(".proj_attn." in k for k in sd)
    vae = vae_from_torch_state_dict(abstract_vae(CFG), sd)
    _check_parity(vae, ref[1], ref[2], "old attention names")


def _to_ldm(sd, n):
    """diffusers -> LDM key names, 4-d 1x1-conv attention weights (checked against diffusers'
    own converter below, so this inverse is not trusted blindly)."""
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for k, v in sd.items():
        k2 = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        k2 = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", k2)
        k2 = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", k2)
        k2 = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{n - 1 - int(m[1])}.block.", k2)
        k2 = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{n - 1 - int(m[1])}.upsample.", k2)
        k2 = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k2)
        m = re.match(r"(.*)mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", k2)
        if m:
            k2 = f"{m[1]}mid.attn_1.{attn[m[2]]}.{m[3]}"
            if v.ndim == 2:
                v = v[:, :, None, None]
        out["first_stage_model." + k2] = v
    return out


def test_ldm_single_file(ref, tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # noqa: PLC0415 (the torch extra, parity oracle only)
    from safetensors.torch import save_file  # noqa: PLC0415 (the torch extra, parity oracle only)
    sd = ref[0].state_dict()
    ldm = _to_ldm(sd, len(CFG.block_out_channels))
    ldm["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(3)  # rest of an SD checkpoint
    back = convert_ldm_vae_checkpoint(ldm, dict(ref[0].config))
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    f = tmp_path / "sd.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(f))
    vae, _ = load_vae(str(f), config=CFG)
    _check_parity(vae, ref[1], ref[2], "LDM single file")


def test_bad_checkpoints(ref, tmp_path):
    sd = dict(ref[0].state_dict())
    missing = dict(sd)
    del missing["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"]
    with pytest.raises(WeightImportError, match=r"decoder\.up_blocks\.1\.resnets\.0\.conv_shortcut\.kernel"):
        vae_from_torch_state_dict(abstract_vae(CFG), missing)
    wrong = dict(sd)
    wrong["encoder.conv_out.weight"] = torch.zeros(8, 64, 1, 1)
    with pytest.raises(WeightImportError, match=r"encoder\.conv_out\.weight.*\(8, 64, 1, 1\)"):
        vae_from_torch_state_dict(abstract_vae(CFG), wrong)
    extra = dict(sd)
    extra["encoder.mid_block.attentions.1.to_q.weight"] = torch.zeros(64, 64)
    with pytest.raises(WeightImportError, match=r"attentions\.1\.to_q\.weight"):
        vae_from_torch_state_dict(abstract_vae(CFG), extra)
    # a config that does not match the weights (wider channels) names the first mismatching key
    with pytest.raises(WeightImportError, match="expects"):
        vae_from_torch_state_dict(abstract_vae(VAEConfig(block_out_channels=(32, 128), layers_per_block=1,
                                                         norm_num_groups=8)), sd)
    with pytest.raises(WeightImportError, match="config.json"):
        load_vae(str(tmp_path))


def test_load_with_mesh(ref_dir):
    mesh = make_mesh((1, 4, 2), devices=jax.devices()[:8])
    vae, _ = load_vae(ref_dir, mesh=mesh)
    k = nnx.state(vae, nnx.Param)["encoder"]["mid_block"]["resnets"][0]["conv1"]["kernel"].get_value()
    assert k.sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp", "tensor")


def test_video_helpers_match_per_frame(ref):
    # the parity weights (no random init to compile); B*F=4 frames, per-frame batches of 2
    # reuse the parity tests' compiled ops.
    cfg = dataclasses.replace(CFG, scaling_factor=0.5, shift_factor=0.1, encode_chunk=3, decode_chunk=3)
    vae = vae_from_torch_state_dict(abstract_vae(cfg), ref[0].state_dict())
    b, f = 2, 2
    x = jnp.stack([ref[1], ref[1][::-1]], 1)                 # [2, 2, 32, 32, 3]
    z = vae.encode_video(x)                                   # chunks of 3 over 4: padded tail
    assert z.shape == (b, f, 16, 16, 4)
    per = jnp.stack([(vae.encode(x[:, i]).mean - 0.1) * 0.5 for i in range(f)], 1)
    np.testing.assert_allclose(z, per, rtol=1e-5, atol=1e-5)
    zs = vae.encode_video(x, jax.random.key(3))               # a sample, not the mode
    assert zs.shape == z.shape and float(jnp.abs(zs - z).max()) > 1e-3
    y = nnx.jit(lambda m, z: m.decode_video(z))(vae, z)       # as the sampler calls it
    assert y.shape == x.shape
    per = jnp.stack([vae.decode(z[:, i] / 0.5 + 0.1) for i in range(f)], 1)
    np.testing.assert_allclose(y, per, rtol=1e-5, atol=1e-5)


def _toy_images(n, hw, seed=0):
    """Smooth coloured blobs on gradients: the kind of content the demo's synthetic heads have."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:hw, 0:hw] / hw
    imgs = []
    for _ in range(n):
        bg = rng.uniform(-1, 1, 3) * (0.5 + 0.5 * xx[..., None]) + rng.uniform(-0.3, 0.3, 3) * yy[..., None]
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
        imgs.append(np.where(mask, rng.uniform(-1, 1, 3), bg))
    return jnp.asarray(np.clip(np.stack(imgs), -1, 1), jnp.float32)


def test_tiny_vae_learns_reconstruction():
    vae = create_vae(vae_preset("tiny"), seed=0)
    opt = make_vae_optimizer(vae)
    x = _toy_images(8, 32)
    colour_l1 = float(jnp.mean(jnp.abs(x - x.mean((1, 2), keepdims=True))))  # flat per-image colour
    t0 = time.perf_counter()
    hist = []
    for step in range(50):
        m = train_vae_step(vae, opt, x, jax.random.key(step), kl_weight=1e-6)
        hist.append((float(m["loss"]), float(m["psnr"])))
    dt = time.perf_counter() - t0
    (l0, p0), (l1, p1) = hist[0], hist[-1]
    print(f"tiny VAE, 50 Adam steps ({dt:.1f}s incl. compile): L1 {l0:.3f} -> {l1:.3f} "
          f"(flat-colour image: {colour_l1:.3f}), PSNR {p0:.1f} -> {p1:.1f} dB")
    assert l1 < 0.5 * l0 and p1 > p0 + 4.0
    s = estimate_scaling_factor(vae, x)
    assert np.isfinite(s) and s > 0
