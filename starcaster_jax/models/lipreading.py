"""Visual-speech (lip-reading) encoder, static-shape mouth cropping and the lip-reading loss.

Stage 2 of STARCaster adds a lip-reading loss: a *frozen* visual-speech encoder embeds mouth crops of
the generated and of the ground-truth video, and the loss is ``1 - cos`` between the per-frame
features. The encoder follows the standard VSR layout (Ma et al., "Auto-AVSR" / "LRS3 VSR"):

    grey crops [B,F,S,S,1]
      -> 3-D conv front-end (kernel (5,7,7), stride (1,2,2)) + 3x3 max-pool
      -> per-frame 2-D ResNet trunk (BasicBlocks)          [B*F, h, w, C]
      -> global average pool                               [B, F, C]
      -> temporal stack (residual 1-D convs over frames)   [B, F, D]

so a real pretrained VSR model can be ported later by choosing the ``real`` preset. Differences from
the reference: **GroupNorm instead of BatchNorm** everywhere, so the module is stateless (no running
statistics to carry through ``jit``/``grad``, identical train/eval behaviour, and a frozen copy used
inside a loss has no mutable state); a ported checkpoint needs its BatchNorms folded into the
preceding convs (or fine-tuned). Normalisation is always per frame (frames are folded into the batch
before every GroupNorm), so a frame's features never depend on other frames' statistics except
through the explicit temporal stack.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from starcaster_jax.models.layers import Conv, Dense, GroupNorm, LayerNorm

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luminance, what VSR models are trained on


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LipReaderConfig:
    crop_size: int = 32                         # S: side of the square grey mouth crop
    margin: float = 0.25                        # box side is enlarged by this fraction before cropping
    frontend_width: int = 16                    # channels of the 3-D conv front-end
    frontend_kernel: tuple[int, int, int] = (5, 7, 7)  # (time, h, w)
    frontend_pool: bool = True                  # 3x3/2 max-pool after the front-end (as in ResNet)
    widths: tuple[int, ...] = (16, 32, 64)      # ResNet stage widths; stage i>0 downsamples by 2
    blocks_per_stage: int = 1                   # BasicBlocks per stage ("trunk depth")
    norm_groups: int = 8                        # GroupNorm groups (clipped to divide the width)
    feature_dim: int = 64                       # D: per-frame output feature size
    temporal_layers: int = 2                    # residual temporal conv blocks
    temporal_kernel: int = 5                    # frames seen by one temporal conv
    num_visemes: int = 16                       # classes of the viseme head

    @classmethod
    def tiny(cls, **kw) -> LipReaderConfig:
        """Built-in lip reader; trains in minutes on CPU."""
        return cls(**{**dict(crop_size=32, frontend_kernel=(3, 5, 5)), **kw})

    @classmethod
    def real(cls, **kw) -> LipReaderConfig:
        """Size of the public VSR ResNet-18 encoders (88x88 crops, 512-d features)."""
        return cls(**{**dict(crop_size=88, frontend_width=64, frontend_kernel=(5, 7, 7),
                             widths=(64, 128, 256, 512), blocks_per_stage=2, norm_groups=32,
                             feature_dim=512, temporal_layers=4, temporal_kernel=5), **kw})


def _groups(c: int, g: int) -> int:
    g = min(g, c)
    while c % g:
        g -= 1
    return g


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------
class BasicBlock(nnx.Module):
    """ResNet BasicBlock (two 3x3 convs + shortcut) with GroupNorm. ``[N,H,W,Cin] -> [N,H/s,W/s,Cout]``."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv(cin, cout, 3, stride=stride, use_bias=False, rngs=rngs)
        self.norm1 = GroupNorm(cout, _groups(cout, groups), rngs=rngs)
        self.conv2 = Conv(cout, cout, 3, use_bias=False, rngs=rngs)
        self.norm2 = GroupNorm(cout, _groups(cout, groups), rngs=rngs)
        if stride != 1 or cin != cout:
            self.down = Conv(cin, cout, 1, stride=stride, padding=0, use_bias=False, rngs=rngs)
            self.down_norm = GroupNorm(cout, _groups(cout, groups), rngs=rngs)
        else:
            self.down = None
            self.down_norm = None

    def __call__(self, x):
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        skip = x if self.down is None else self.down_norm(self.down(x))
        return jax.nn.relu(h + skip)


class TemporalBlock(nnx.Module):
    """Pre-norm residual 1-D conv over frames (lip motion spans a few frames). ``[B,F,D] -> [B,F,D]``."""

    def __init__(self, dim: int, kernel: int, *, rngs: nnx.Rngs):
        self.norm = LayerNorm(dim, rngs=rngs)
        self.conv = Conv(dim, dim, (kernel,), rngs=rngs)
        self.proj = Dense(dim, dim, names=("embed", "embed"), rngs=rngs)

    def __call__(self, x):
        return x + self.proj(jax.nn.gelu(self.conv(self.norm(x))))


class LipReader(nnx.Module):
    """Visual-speech encoder: grey mouth crops ``[B,F,S,S,1]`` (in [-1,1]) -> features ``[B,F,D]``."""

    def __init__(self, config: LipReaderConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.frontend = Conv(1, c.frontend_width, c.frontend_kernel, stride=(1, 2, 2),
                             use_bias=False, rngs=rngs)
        self.frontend_norm = GroupNorm(c.frontend_width, _groups(c.frontend_width, c.norm_groups),
                                       rngs=rngs)
        blocks, cin = [], c.frontend_width
        for i, w in enumerate(c.widths):
            for j in range(c.blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, w, stride, c.norm_groups, rngs=rngs))
                cin = w
        self.trunk = nnx.List(blocks)
        self.proj = Dense(cin, c.feature_dim, names=("conv_out", "embed"), rngs=rngs)
        self.temporal = nnx.List([TemporalBlock(c.feature_dim, c.temporal_kernel, rngs=rngs)
                                  for _ in range(c.temporal_layers)])
        self.out_norm = LayerNorm(c.feature_dim, rngs=rngs)
        self.head = Dense(c.feature_dim, c.num_visemes, names=("embed", None), rngs=rngs)

    def __call__(self, crops: jax.Array) -> jax.Array:
        B, F = crops.shape[:2]
        x = self.frontend(crops.astype(jnp.float32))             # [B,F,S/2,S/2,C0]
        x = x.reshape(B * F, *x.shape[2:])                       # per-frame from here on
        x = jax.nn.relu(self.frontend_norm(x))
        if self.config.frontend_pool:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # [B*F,S/4,S/4,C0]
        for blk in self.trunk:
            x = blk(x)                                           # [B*F,h,w,C]
        x = x.mean(axis=(1, 2)).reshape(B, F, -1)                # [B,F,C]
        x = self.proj(x)                                         # [B,F,D]
        for blk in self.temporal:
            x = blk(x)
        return self.out_norm(x)                                  # [B,F,D]

    def logits(self, features: jax.Array) -> jax.Array:
        """Viseme head: ``[B,F,D] -> [B,F,num_visemes]``."""
        return self.head(features)


# ----------------------------------------------------------------------------------------------
# Static-shape mouth cropping
# ----------------------------------------------------------------------------------------------
def _interp_matrix(start, step, size: int, n: int):
    """Bilinear weights ``[size, n]`` sampling pixel-index coords ``start + (i+0.5)*step - 0.5``.

    Coordinates outside the image are clamped (edge replicate). Written as a dense matrix so the crop
    is two small matmuls: static shapes, exact bilinear, and its gradient w.r.t. the image is
    nonzero only on the pixels the grid touches.
    """
    coords = start + (jnp.arange(size, dtype=jnp.float32) + 0.5) * step - 0.5   # [size]
    coords = jnp.clip(coords, 0.0, n - 1.0)
    return jnp.maximum(0.0, 1.0 - jnp.abs(coords[:, None] - jnp.arange(n, dtype=jnp.float32)))


def crop_mouths(frames: jax.Array, boxes: jax.Array, size: int, margin: float = 0.25) -> jax.Array:
    """Grey square mouth crops with static shapes.

    frames: ``[B,F,H,W,3]`` float in [-1,1] or uint8 in [0,255]. boxes: ``[B,F,4]`` as
    ``(y0, x0, y1, x1)`` normalised to [0,1]. Each box is made square (in pixels) around its centre,
    side = ``max(h, w) * (1 + margin)``, then sampled bilinearly on a ``size x size`` grid.
    Returns ``[B,F,size,size,1]`` float32 in [-1,1]; differentiable w.r.t. float ``frames``.
    """
    H, W = frames.shape[2], frames.shape[3]
    if frames.dtype == jnp.uint8:
        frames = frames.astype(jnp.float32) / 127.5 - 1.0
    grey = jnp.tensordot(frames.astype(jnp.float32), jnp.asarray(LUMA, jnp.float32), axes=1)  # [B,F,H,W]
    boxes = boxes.astype(jnp.float32)
    cy = (boxes[..., 0] + boxes[..., 2]) * 0.5 * H                        # [B,F] in pixels
    cx = (boxes[..., 1] + boxes[..., 3]) * 0.5 * W
    side = jnp.maximum(jnp.abs(boxes[..., 2] - boxes[..., 0]) * H,
                       jnp.abs(boxes[..., 3] - boxes[..., 1]) * W) * (1.0 + margin)
    side = jnp.maximum(side, 1.0)
    step = side / size
    interp = jax.vmap(jax.vmap(_interp_matrix, (0, 0, None, None)), (0, 0, None, None))
    wy = interp(cy - side / 2, step, size, H)                             # [B,F,size,H]
    wx = interp(cx - side / 2, step, size, W)                             # [B,F,size,W]
    crop = jnp.einsum("bfih,bfhw,bfjw->bfij", wy, grey, wx)               # [B,F,size,size]
    return crop[..., None]


# ----------------------------------------------------------------------------------------------
# Mouth windows of latents (decode only the mouth for the lip loss)
# ----------------------------------------------------------------------------------------------
def mouth_window(boxes: jax.Array, latent_hw: tuple[int, int], size: int) -> jax.Array:
    """Top-left corner ``[B,F,2]`` int32 ``(y, x)``, in latent pixels, of the ``size x size``
    latent window centred on each mouth box and shifted to lie inside the ``latent_hw`` frame.

    Why a fixed ``size``: the lip loss decodes only this window of x̂0, and a static shape is
    what lets the decode jit (one compiled program whatever the boxes). ``boxes [B,F,4]`` are
    ``(y0, x0, y1, x1)`` in [0, 1] of the frame, as ``crop_mouths`` takes them.
    """
    h, w = latent_hw
    boxes = boxes.astype(jnp.float32)
    cy = (boxes[..., 0] + boxes[..., 2]) * 0.5 * h                     # [B,F] latent pixels
    cx = (boxes[..., 1] + boxes[..., 3]) * 0.5 * w
    y0 = jnp.clip(jnp.round(cy - size / 2), 0, h - size)
    x0 = jnp.clip(jnp.round(cx - size / 2), 0, w - size)
    return jnp.stack([y0, x0], axis=-1).astype(jnp.int32)


def crop_windows(x: jax.Array, corner: jax.Array, size: int, scale: int = 1) -> jax.Array:
    """``x [B,F,H,W,C]`` -> ``[B,F,size*scale,size*scale,C]``: per frame, the square starting
    at ``corner * scale`` (``corner [B,F,2]`` in units of ``scale`` pixels of ``x``: latent
    pixels with ``scale`` = the VAE factor when ``x`` are frames). A ``dynamic_slice``, so the
    gradient reaches only the window."""
    side = size * scale

    def one(img, c):  # [H,W,C], [2] -> [side,side,C]
        return jax.lax.dynamic_slice(img, (c[0] * scale, c[1] * scale, 0), (side, side, img.shape[-1]))

    return jax.vmap(jax.vmap(one))(x, corner)


def boxes_in_window(boxes: jax.Array, corner: jax.Array, size: int, frame_hw: tuple[int, int],
                    factor: int) -> jax.Array:
    """Mouth boxes ``[B,F,4]`` (normalised to the full frame) -> the same pixels in the
    normalised coordinates of the pixel window ``crop_windows(frames, corner, size, factor)``
    cuts, so ``crop_mouths`` samples the same mouth from the window as from the frame."""
    H, W = frame_hw
    side = float(size * factor)
    oy = corner[..., 0].astype(jnp.float32) * factor                   # [B,F] pixels
    ox = corner[..., 1].astype(jnp.float32) * factor
    b = boxes.astype(jnp.float32)
    return jnp.stack([(b[..., 0] * H - oy) / side, (b[..., 1] * W - ox) / side,
                      (b[..., 2] * H - oy) / side, (b[..., 3] * W - ox) / side], axis=-1)


# ----------------------------------------------------------------------------------------------
# Features and loss
# ----------------------------------------------------------------------------------------------
def lip_features(model: LipReader, frames: jax.Array, mouth_boxes: jax.Array) -> jax.Array:
    """``frames [B,F,H,W,3]``, ``mouth_boxes [B,F,4]`` -> per-frame lip features ``[B,F,D]``."""
    crops = crop_mouths(frames, mouth_boxes, model.config.crop_size, model.config.margin)
    return model(crops)


def _frozen(model: LipReader) -> LipReader:
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def lip_loss(model: LipReader, gen_frames: jax.Array, gt_frames: jax.Array, boxes: jax.Array,
             weights: jax.Array | None = None, eps: float = 1e-6, normalizer=None) -> jax.Array:
    """Lip-reading loss: ``sum(w * (1 - cos(feat(gen), feat(gt)))) / normalizer``.

    ``normalizer`` (e.g. the number of supervised frames) defaults to ``sum(w)``. Pass the
    frame count when ``w`` carries a noise weighting: dividing by ``sum(w)`` would undo it
    whenever a batch's frames share one noise level.

    ``model`` is the frozen lip reader: its parameters are wrapped in ``stop_gradient`` here, so even
    when a caller differentiates w.r.t. a state that includes it, no gradient reaches it. The
    ground-truth features are constants too; the gradient flows only into ``gen_frames``.
    ``weights [B,F]`` (e.g. larger for low-noise timesteps) default to uniform. Returns a scalar.
    """
    model = _frozen(model)
    f_gen = lip_features(model, gen_frames, boxes)                                   # [B,F,D]
    f_gt = jax.lax.stop_gradient(lip_features(model, gt_frames, boxes))              # [B,F,D]
    num = jnp.sum(f_gen * f_gt, axis=-1)
    den = jnp.sqrt(jnp.sum(f_gen ** 2, -1) * jnp.sum(f_gt ** 2, -1) + eps)
    per_frame = 1.0 - num / den                                                      # [B,F]
    if weights is None:
        return per_frame.mean()
    weights = weights.astype(per_frame.dtype)
    norm = jnp.sum(weights) if normalizer is None else jnp.asarray(normalizer, per_frame.dtype)
    return jnp.sum(weights * per_frame) / jnp.maximum(norm, eps)


# ----------------------------------------------------------------------------------------------
# Training the built-in lip reader (per-frame viseme classification)
# ----------------------------------------------------------------------------------------------
def _crops(model: LipReader, batch) -> jax.Array:
    """``batch`` is crops ``[B,F,S,S,1]`` or a ``(frames [B,F,H,W,3], boxes [B,F,4])`` pair."""
    if isinstance(batch, (tuple, list)):
        frames, boxes = batch
        return crop_mouths(frames, boxes, model.config.crop_size, model.config.margin)
    return batch


def viseme_loss(model: LipReader, batch, visemes: jax.Array) -> jax.Array:
    """Masked per-frame cross-entropy; ``visemes [B,F]`` int32 with -1 = ignore."""
    logits = model.logits(model(_crops(model, batch)))                               # [B,F,V]
    valid = visemes >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(visemes, 0))
    return jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(valid.sum(), 1)


@nnx.jit
def train_step(model: LipReader, optimizer: nnx.Optimizer, batch, visemes: jax.Array) -> jax.Array:
    """One optimiser step on the viseme task. ``optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)``."""
    loss, grads = nnx.value_and_grad(viseme_loss)(model, batch, visemes)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model: LipReader, batch, visemes: jax.Array) -> jax.Array:
    """Fraction of valid frames (``visemes >= 0``) whose argmax viseme is right."""
    pred = jnp.argmax(model.logits(model(_crops(model, batch))), axis=-1)
    valid = visemes >= 0
    return jnp.sum((pred == visemes) & valid) / jnp.maximum(valid.sum(), 1)
