"""Mouth-only lip-loss decoding (issue 11, fix 11): with ``train.lip_latent_crop`` the lip loss
decodes a fixed-size latent window around the mouth box instead of whole frames.

What must hold, exactly (the decoder's GroupNorm and mid-block attention see only the window,
so its pixels are close to, not equal to, the full decode's; that closeness is measured by
``benchmarks/lip_loss_crop.py``, not asserted):
- the window lies inside the latent frame and contains the lip reader's mouth square;
- the generated pixels are the VAE decode of the latent window, the true pixels are the real
  frames under it, and the lip reader samples the same mouth from the window as from the frame;
- context frames enter the lip reader as the real frames;
- the gradient reaches x̂0 only inside the window (and not at all on context frames).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import stage2_audio
from starcaster_jax.models.lipreading import LipReader, LipReaderConfig, crop_mouths, mouth_window
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.vae import VAEConfig, create_vae
from starcaster_jax.training import losses as L

R, F, SIZE = 64, 4, 8          # demo-like: 64 px frames, f=4 VAE -> 16 x 16 latents, 8 x 8 window
B, T = 2, 3


@pytest.fixture(scope="module")
def parts():
    vae = create_vae(VAEConfig(block_out_channels=(8, 16, 16), layers_per_block=1,
                               latent_channels=4, norm_num_groups=4, scaling_factor=1.0), seed=0)
    reader = LipReader(LipReaderConfig.tiny(), rngs=InitRngs(1))
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.uniform(-1, 1, (B, T, R, R, 3)), jnp.float32)
    x0 = jnp.asarray(rng.normal(size=(B, T, R // F, R // F, 4)), jnp.float32)
    # corpus-like mouth boxes (<= 0.19 of the frame), one near each edge of the frame
    c = np.array([[[0.80, 0.55], [0.12, 0.10], [0.5, 0.92]], [[0.70, 0.40], [0.9, 0.9], [0.3, 0.6]]])
    half = np.array([[[0.09, 0.095], [0.05, 0.08], [0.04, 0.06]], [[0.07, 0.09], [0.09, 0.09], [0.05, 0.05]]])
    boxes = jnp.asarray(np.concatenate([c - half, c + half], -1), jnp.float32)
    ctx = jnp.asarray(np.arange(T)[None].repeat(B, 0) < 1)                 # frame 0 is context
    return dict(vae=vae, reader=reader, frames=frames, x0=x0, boxes=boxes, ctx=ctx)


def _lc(size):
    c = stage2_audio.get_config("micro")
    c.train.update(lip_weight=0.1, lip_latent_crop=size)
    return L.LossConfig.from_config(c)


def test_window_is_inside_the_frame_and_holds_the_lip_readers_mouth_square(parts):
    corner = np.asarray(mouth_window(parts["boxes"], (R // F, R // F), SIZE))       # [B, T, 2]
    assert corner.min() >= 0 and corner.max() <= R // F - SIZE
    b = np.asarray(parts["boxes"]) * R                                            # pixels
    margin = LipReaderConfig.tiny().margin
    side = np.maximum(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]) * (1 + margin)
    for axis, (lo, hi) in enumerate(((0, 2), (1, 3))):
        mid = (b[..., lo] + b[..., hi]) / 2
        sq0, sq1 = np.clip(mid - side / 2, 0, R), np.clip(mid + side / 2, 0, R)  # square in the frame
        w0 = corner[..., axis] * F
        assert np.all(sq0 >= w0) and np.all(sq1 <= w0 + SIZE * F), axis


def test_decoded_window_is_the_vae_decode_of_the_latent_window(parts):
    p = parts
    gen, gt, boxes = L.lip_inputs(p["vae"], p["x0"], p["frames"], p["boxes"], p["ctx"], SIZE)
    assert gen.shape == gt.shape == (B, T, SIZE * F, SIZE * F, 3)
    corner = np.asarray(mouth_window(p["boxes"], (R // F, R // F), SIZE))
    x0, frames = np.asarray(p["x0"]), np.asarray(p["frames"])
    win = np.stack([np.stack([x0[i, t, y:y + SIZE, x:x + SIZE] for t, (y, x) in enumerate(corner[i])])
                    for i in range(B)])
    want = np.asarray(p["vae"].decode_video(jnp.asarray(win)))
    pix = np.stack([np.stack([frames[i, t, y * F:(y + SIZE) * F, x * F:(x + SIZE) * F]
                              for t, (y, x) in enumerate(corner[i])]) for i in range(B)])
    np.testing.assert_array_equal(np.asarray(gt), pix)
    ctx = np.asarray(p["ctx"])
    np.testing.assert_allclose(np.asarray(gen)[~ctx], want[~ctx], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(gen)[ctx], pix[ctx])          # context = real frames
    # the lip reader's mouth crop of the window is its mouth crop of the full frame
    cfg = LipReaderConfig.tiny()
    np.testing.assert_allclose(np.asarray(crop_mouths(gt, boxes, cfg.crop_size, cfg.margin)),
                               np.asarray(crop_mouths(p["frames"], p["boxes"], cfg.crop_size, cfg.margin)),
                               atol=1e-5)


def test_lip_loss_gradient_reaches_x0_only_inside_the_mouth_window(parts):
    p = parts
    nets = {"vae": p["vae"], "lip": p["reader"]}
    t = jnp.where(p["ctx"], 0.0, 300.0)
    lc = _lc(SIZE)

    def loss(x0):
        return L.noise_weighted_lip_loss(nets, x0, t, p["frames"], p["boxes"], p["ctx"], lc)

    g = np.abs(np.asarray(jax.grad(loss)(p["x0"]))).sum(-1)                      # [B, T, h, w]
    corner = np.asarray(mouth_window(p["boxes"], (R // F, R // F), SIZE))
    inside = np.zeros(g.shape, bool)
    for i in range(B):
        for k in range(T):
            y, x = corner[i, k]
            inside[i, k, y:y + SIZE, x:x + SIZE] = True
    ctx = np.asarray(p["ctx"])
    assert np.all(g[~inside] == 0.0)                      # nothing outside the window
    assert np.all(g[ctx] == 0.0)                          # nor on context frames
    sup = inside & ~ctx[:, :, None, None]
    assert np.mean(g[sup] > 0) > 0.9                      # the window's latents get the gradient
