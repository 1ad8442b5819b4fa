"""Lip reader: shapes, static-shape crops (content, gradients), the lip loss, jit, and a toy task."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import starcaster_jax  # noqa: F401  (turns off eager sharding)
from starcaster_jax.models.lipreading import (
    LipReader,
    LipReaderConfig,
    accuracy,
    crop_mouths,
    lip_features,
    lip_loss,
    train_step,
)
from starcaster_jax.models.rngs import InitRngs

TINY = LipReaderConfig.tiny(crop_size=24, widths=(8, 16, 32), frontend_width=8, feature_dim=32,
                            temporal_layers=1, num_visemes=4)
# The library functions are traced inside the caller's jit; eager NNX dispatch is slow on CPU, so the
# tests jit them too (test_jit checks jit == eager once on a cheap case).
features_j = nnx.jit(lip_features)
loss_j = nnx.jit(lip_loss)


@pytest.fixture(scope="module")
def model():
    """Built once, abstractly, then filled from numpy with torch-default-like init.

    Eager ``LipReader(TINY, rngs=...)`` compiles one RNG kernel per parameter shape, ~15 s on two busy
    cores; the tests don't depend on the exact init, so skip those compiles.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LipReader(TINY, rngs=InitRngs(0))))
    rng = np.random.default_rng(0)

    def fill(path, x):
        name = [k.key for k in path if hasattr(k, "key")][-1]
        if name == "kernel":  # uniform(+-1/sqrt(fan_in)), torch's Linear/Conv default
            bound = 1.0 / np.sqrt(np.prod(x.shape[:-1]))
            return jnp.asarray(rng.uniform(-bound, bound, x.shape), x.dtype)
        return (jnp.ones if name == "scale" else jnp.zeros)(x.shape, x.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def _square_scene(B=1, F=2, H=40, W=48):
    """Dark frames (-1) with a bright (+1) square at rows 10..20, cols 16..26; box = that square."""
    frames = -np.ones((B, F, H, W, 3), np.float32)
    frames[:, :, 10:20, 16:26] = 1.0
    boxes = np.tile(np.array([10 / H, 16 / W, 20 / H, 26 / W], np.float32), (B, F, 1))
    return jnp.asarray(frames), jnp.asarray(boxes)


def test_shapes_and_dtypes(model):
    frames = jnp.zeros((2, 3, 40, 48, 3), jnp.uint8)
    boxes = jnp.tile(jnp.array([0.4, 0.3, 0.7, 0.7]), (2, 3, 1))
    crops = crop_mouths(frames, boxes, 24)
    assert crops.shape == (2, 3, 24, 24, 1) and crops.dtype == jnp.float32
    np.testing.assert_allclose(crops, -1.0, atol=1e-6)  # uint8 0 -> -1
    feats = features_j(model, frames, boxes)
    assert feats.shape == (2, 3, TINY.feature_dim) and feats.dtype == jnp.float32
    assert model.logits(feats).shape == (2, 3, TINY.num_visemes)
    assert LipReaderConfig().num_visemes == 16 and LipReaderConfig.real().crop_size == 88
    # the real-size model builds (abstractly: no allocation) and keeps its per-frame layout
    real = nnx.eval_shape(lambda: LipReader(LipReaderConfig.real(), rngs=InitRngs(0)))
    out = jax.eval_shape(lambda st, x: nnx.merge(nnx.graphdef(real), st)(x), nnx.state(real),
                         jax.ShapeDtypeStruct((1, 5, 88, 88, 1), jnp.float32))
    assert out.shape == (1, 5, 512)
    assert nnx.merge(nnx.graphdef(real), nnx.state(real)).frontend.kernel.shape == (5, 7, 7, 1, 64)


def test_crop_content_inside_and_outside():
    frames, boxes = _square_scene()
    # 10 samples over the 10-px box land exactly on pixel centres -> all bright
    np.testing.assert_allclose(crop_mouths(frames, boxes, 10, margin=0.0), 1.0, atol=1e-5)
    # finer grid: interior bright, only the outermost ring blends with the dark border (bilinear)
    inside = np.asarray(crop_mouths(frames, boxes, 16, margin=0.0))[0, 0, ..., 0]
    np.testing.assert_allclose(inside[1:-1, 1:-1], 1.0, atol=1e-5)
    assert inside.min() > 0.0
    # a box of the same size in the dark corner gives a dark crop
    dark = crop_mouths(frames, jnp.full_like(boxes, 0.0).at[..., 2:].set(0.2), 16, margin=0.0)
    np.testing.assert_allclose(dark, -1.0, atol=1e-5)
    # with a margin the crop shows the bright centre surrounded by dark border
    wide = np.asarray(crop_mouths(frames, boxes, 16, margin=1.0))[0, 0, ..., 0]
    assert wide[8, 8] > 0.99 and wide[0, 0] < -0.99 and wide[-1, -1] < -0.99


def test_crop_gradient_localised():
    frames, boxes = _square_scene()
    g = jax.grad(lambda f: crop_mouths(f, boxes, 16, margin=0.0).sum())(frames)
    mag = np.abs(np.asarray(g)).sum(-1)[0, 0]                   # [H,W]
    assert mag[10:20, 16:26].min() > 0                           # every box pixel contributes
    outside = mag.copy()
    outside[9:21, 15:27] = 0                                     # box +- 1 px (bilinear support)
    assert outside.max() == 0
    # luminance weights: d grey / d rgb
    np.testing.assert_allclose(np.asarray(g)[0, 0, 15, 20] / np.asarray(g)[0, 0, 15, 20].sum(),
                               [0.299, 0.587, 0.114], rtol=1e-5)


def test_lip_loss_zero_positive_and_frozen(model):
    rng = np.random.default_rng(0)
    gt = jnp.asarray(rng.uniform(-1, 1, (2, 3, 40, 48, 3)), jnp.float32)
    gen = gt + 0.5 * jnp.asarray(rng.normal(size=gt.shape), jnp.float32)
    boxes = jnp.tile(jnp.array([0.3, 0.3, 0.7, 0.7]), (2, 3, 1))
    w = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])

    @nnx.jit  # one compile for everything (CPU compile time dominates this test)
    def probe(m, gen, gt):
        same = lip_loss(m, gt, gt, boxes)
        fg, ft = lip_features(m, gen, boxes)[0, 0], lip_features(m, gt, boxes)[0, 0]
        frame0 = 1 - jnp.dot(fg, ft) / (jnp.linalg.norm(fg) * jnp.linalg.norm(ft))
        weighted = lip_loss(m, gen, gt, boxes, w)
        loss, grads = nnx.value_and_grad(lambda m, a, b: lip_loss(m, a, b, boxes),
                                         argnums=(0, 1, 2))(m, gen, gt)
        return same, frame0, weighted, loss, grads

    same, frame0, weighted, loss, (g_model, g_gen, g_gt) = probe(model, gen, gt)
    assert abs(float(same)) < 1e-5 and float(loss) > 1e-3
    np.testing.assert_allclose(weighted, frame0, rtol=1e-4)     # weights select frame (0, 0)
    # gradient reaches gen_frames, not gt_frames, not the (frozen) model
    assert float(jnp.abs(g_gen).max()) > 0 and float(jnp.abs(g_gt).max()) == 0
    leaves = jax.tree.leaves(g_model)
    assert leaves and all(float(jnp.abs(x).max()) == 0 for x in leaves)


def test_jit(model):
    frames, boxes = _square_scene(B=2, F=3)
    crop_j = jax.jit(crop_mouths, static_argnums=(2, 3))
    np.testing.assert_allclose(crop_j(frames, boxes, 16, 0.5), crop_mouths(frames, boxes, 16, 0.5),
                               atol=1e-6)
    # pure-JAX callers: split the module and jit a function of its state
    graphdef, state = nnx.split(model)
    loss = jax.jit(lambda st, a, b: lip_loss(nnx.merge(graphdef, st), a, b, boxes))(
        state, frames, frames * 0.5)
    assert loss.shape == () and np.isfinite(float(loss))


# ---------------------------------------------------------------------------------------------
# Toy task: "mouths" are dark ellipses on a skin-grey face whose vertical opening encodes the class.
# ---------------------------------------------------------------------------------------------
OPEN = (0.08, 0.3, 0.55, 0.85)  # ellipse half-height / half-width per viseme class


def _toy_batch(rng, B, F, H=48, W=48):
    frames = np.empty((B, F, H, W, 3), np.float32)
    boxes = np.empty((B, F, 4), np.float32)
    labels = rng.integers(0, len(OPEN), (B, F)).astype(np.int32)
    yy, xx = np.mgrid[:H, :W].astype(np.float32) + 0.5
    for b in range(B):
        for f in range(F):
            rx = rng.uniform(6, 10)
            ry = max(OPEN[labels[b, f]] * rx, 1.0)
            cy, cx = rng.uniform(12, H - 12), rng.uniform(12, W - 12)
            skin = rng.uniform(0.2, 0.6)
            img = np.full((H, W), skin, np.float32) + rng.normal(0, 0.05, (H, W))
            img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0] = -0.8
            frames[b, f] = img[..., None] * np.array([1.0, 0.95, 0.9], np.float32)
            boxes[b, f] = [(cy - rx) / H, (cx - rx) / W, (cy + rx) / H, (cx + rx) / W]
    labels[0, 0] = -1  # exercise the ignore label
    return (jnp.asarray(frames), jnp.asarray(boxes)), jnp.asarray(labels)


def test_tiny_lipreader_learns_toy_visemes(model):
    rng = np.random.default_rng(0)
    model = nnx.clone(model)  # don't train the shared fixture
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    losses = []
    for _ in range(30):
        batch, labels = _toy_batch(rng, 8, 4)
        losses.append(float(train_step(model, opt, batch, labels)))
    test_batch, test_labels = _toy_batch(np.random.default_rng(123), 32, 4)
    acc = float(accuracy(model, test_batch, test_labels))
    print(f"toy visemes: loss {np.mean(losses[:3]):.3f} -> {np.mean(losses[-3:]):.3f}, "
          f"held-out acc {acc:.3f} (chance 0.25)")
    # measured (3 runs, 2 batch sizes): loss 1.39-1.48 -> 0.06-0.12, held-out accuracy 1.00
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert acc > 0.8
