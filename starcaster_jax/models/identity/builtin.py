"""Built-in identity encoder: a small ResNet trained with the ArcFace additive-angular-margin loss.

Why: no pretrained face-recognition network can be downloaded here, yet DESIGN §2/§5 needs
identity embeddings of the built-in corpus's heads, and the issue asks for **two** independent
encoders (one conditions the denoiser, the other only evaluates it: a metric must never be
computed by the network that conditioned the model). Hence two presets with different
architectures (``for_conditioning`` / ``for_evaluation``), trained with different seeds.

Network (insightface "iresnet" layout, shrunk; GroupNorm instead of BatchNorm so the module is
stateless and behaves the same in training and evaluation)::

    uint8/float [B,H,W,3] -> resize to S, [-1,1]   (preprocess)
    stem 3x3 conv (stride ``stem_stride``) + GN + ReLU
    stages of BasicBlocks (stage i>0 halves the resolution)          [B, S', S', C]
    GN -> flatten (keeps *where* features are: faces are aligned) or global average pool
    Dense -> LayerNorm -> L2-normalise                               [B, embed_dim]

Loss (Deng et al., ArcFace, CVPR 2019): logits ``s * cos(theta_j)`` for the other classes and
``s * cos(theta_y + m)`` for the true class, cross-entropy. Defaults ``s = 30`` (enough for a few
hundred classes: the ArcFace paper's 64 is for ~10^5 classes), ``m = 0.5`` (the paper's).
``cos(theta + m)`` is not monotonic past ``theta = pi - m``; as insightface we use
``cos(theta) - m sin(m)`` there, or, with ``easy_margin=True``, apply the margin only where
``cos(theta) > 0`` (gentler at the start of training from scratch).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from starcaster_jax.models.identity.faces import check_images
from starcaster_jax.models.layers import Conv, Dense, GroupNorm, LayerNorm


@dataclasses.dataclass(frozen=True)
class BuiltinIdentityConfig:
    image_size: int = 64                      # S: inputs are resized to S x S (face-centred frames)
    widths: tuple[int, ...] = (32, 64, 128)   # stage widths; stage i>0 downsamples by 2
    blocks_per_stage: int = 1
    stem_stride: int = 1
    norm_groups: int = 8
    pool: str = "flatten"                     # "flatten" (spatial layout kept) | "avg"
    embed_dim: int = 512
    # ArcFace head (training only)
    scale: float = 30.0
    margin: float = 0.5
    easy_margin: bool = False

    def __post_init__(self):
        if self.pool not in ("flatten", "avg"):
            raise ValueError(f"identity.builtin.pool: expected 'flatten' or 'avg', got {self.pool!r}")
        if not 0.0 <= self.margin < math.pi / 2:
            raise ValueError(f"identity.builtin.margin must be in [0, pi/2), got {self.margin}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> BuiltinIdentityConfig:
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"identity.builtin: unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @classmethod
    def for_conditioning(cls, **kw) -> BuiltinIdentityConfig:
        """The encoder whose embeddings condition the denoiser: 3 stages, 8x8 map flattened.
        Sized to train in ~20 s on 2 CPU cores at 32x32 (the demo's 64x64 frames are resized)."""
        return cls(**{**dict(image_size=32, widths=(16, 32, 64), blocks_per_stage=1,
                             pool="flatten"), **kw})

    @classmethod
    def for_evaluation(cls, **kw) -> BuiltinIdentityConfig:
        """The independent evaluator (a different architecture, trained with another seed):
        4 stages down to a 4x4 map, wider last stage."""
        return cls(**{**dict(image_size=32, widths=(16, 32, 64, 128), blocks_per_stage=1,
                             pool="flatten"), **kw})

    @property
    def feature_size(self) -> int:
        s = -(-self.image_size // self.stem_stride)
        for _ in self.widths[1:]:
            s = -(-s // 2)
        return s


def _groups(c: int, g: int) -> int:
    g = min(g, c)
    while c % g:
        g -= 1
    return g


class ResBlock(nnx.Module):
    """Two 3x3 convs + (projected) shortcut, GroupNorm. ``[N,H,W,Cin] -> [N,H/s,W/s,Cout]``."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv(cin, cout, 3, stride=stride, use_bias=False, rngs=rngs)
        self.norm1 = GroupNorm(cout, _groups(cout, groups), rngs=rngs)
        self.conv2 = Conv(cout, cout, 3, use_bias=False, rngs=rngs)
        self.norm2 = GroupNorm(cout, _groups(cout, groups), rngs=rngs)
        if stride != 1 or cin != cout:
            self.skip = Conv(cin, cout, 1, stride=stride, padding=0, use_bias=False, rngs=rngs)
            self.skip_norm = GroupNorm(cout, _groups(cout, groups), rngs=rngs)
        else:
            self.skip, self.skip_norm = None, None

    def __call__(self, x):
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        s = x if self.skip is None else self.skip_norm(self.skip(x))
        return jax.nn.relu(h + s)


class BuiltinIdentityEncoder(nnx.Module):
    """Face-centred RGB images -> L2-normalised identity embeddings ``[B, embed_dim]``.

    Implements the ``IdentityEncoder`` interface through ``embed`` (uint8 in, numpy out).
    """

    def __init__(self, config: BuiltinIdentityConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        self.embed_dim = c.embed_dim
        w0 = c.widths[0]
        self.stem = Conv(3, w0, 3, stride=c.stem_stride, use_bias=False, rngs=rngs)
        self.stem_norm = GroupNorm(w0, _groups(w0, c.norm_groups), rngs=rngs)
        blocks, cin = [], w0
        for i, w in enumerate(c.widths):
            for j in range(c.blocks_per_stage):
                blocks.append(ResBlock(cin, w, 2 if (i > 0 and j == 0) else 1, c.norm_groups, rngs=rngs))
                cin = w
        self.blocks = nnx.List(blocks)
        self.out_norm = GroupNorm(cin, _groups(cin, c.norm_groups), rngs=rngs)
        flat = cin * c.feature_size ** 2 if c.pool == "flatten" else cin
        self.fc = Dense(flat, c.embed_dim, names=("conv_out", "embed"), rngs=rngs)
        self.feat_norm = LayerNorm(c.embed_dim, rngs=rngs)

    def preprocess(self, images):
        """``uint8 [0,255]`` or float ``[-1,1]`` ``[B,H,W,3]`` -> float32 ``[-1,1]`` ``[B,S,S,3]``."""
        x = jnp.asarray(images)
        x = x.astype(jnp.float32) / 127.5 - 1.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
        s = self.config.image_size
        if x.shape[1:3] != (s, s):
            x = jax.image.resize(x, (x.shape[0], s, s, 3), "linear", antialias=True)
        return x

    def __call__(self, images):
        """``[B,H,W,3]`` (uint8 or float in [-1,1]) -> ``[B, embed_dim]`` on the unit sphere."""
        x = self.preprocess(images)
        x = jax.nn.relu(self.stem_norm(self.stem(x)))                  # [B,S/st,S/st,C0]
        for blk in self.blocks:
            x = blk(x)                                                 # [B,h,w,C]
        x = self.out_norm(x)
        x = x.reshape(x.shape[0], -1) if self.config.pool == "flatten" else x.mean(axis=(1, 2))
        e = self.feat_norm(self.fc(x))                                 # [B,E]
        return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)

    def embed(self, images, batch_size: int = 64) -> np.ndarray:
        """``IdentityEncoder.embed``: ``uint8 [B,H,W,3]`` -> ``float32 [B, embed_dim]`` (numpy)."""
        images = check_images(images)
        return np.concatenate([np.asarray(_embed_jit(self, images[i:i + batch_size]))
                               for i in range(0, len(images), batch_size)])


@nnx.jit
def _embed_jit(model: BuiltinIdentityEncoder, images):
    return model(images)


class ArcFaceHead(nnx.Module):
    """Class centres ``W [E, C]`` on the sphere; ``logits(emb, labels)`` applies the margin."""

    def __init__(self, embed_dim: int, num_classes: int, *, scale: float = 30.0, margin: float = 0.5,
                 easy_margin: bool = False, rngs: nnx.Rngs):
        init = nnx.with_partitioning(nnx.initializers.normal(0.01), ("embed", "vocab"))
        self.weight = nnx.Param(init(rngs.params(), (embed_dim, num_classes)))
        self.scale, self.margin, self.easy_margin = float(scale), float(margin), bool(easy_margin)

    def cosine(self, emb):
        """``emb [B, E]`` (unit) -> ``cos(theta) [B, C]``."""
        w = self.weight[...]
        w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
        return emb @ w

    def logits(self, emb, labels):
        """Margin-adjusted, scaled logits ``[B, C]`` (labels ``[B]`` int)."""
        cos = jnp.clip(self.cosine(emb), -1.0 + 1e-7, 1.0 - 1e-7)
        m = self.margin
        sin = jnp.sqrt(1.0 - cos ** 2)
        phi = cos * math.cos(m) - sin * math.sin(m)                     # cos(theta + m)
        if self.easy_margin:
            phi = jnp.where(cos > 0, phi, cos)
        else:
            phi = jnp.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)
        onehot = jax.nn.one_hot(labels, cos.shape[-1], dtype=cos.dtype)
        return self.scale * (onehot * phi + (1.0 - onehot) * cos)


class ArcFaceModel(nnx.Module):
    """Encoder + ArcFace head: what is optimised. Ship ``model.encoder`` alone after training."""

    def __init__(self, config: BuiltinIdentityConfig, num_classes: int, *, rngs: nnx.Rngs):
        self.encoder = BuiltinIdentityEncoder(config, rngs=rngs)
        self.head = ArcFaceHead(config.embed_dim, num_classes, scale=config.scale,
                                margin=config.margin, easy_margin=config.easy_margin, rngs=rngs)


def arcface_loss(model: ArcFaceModel, images, labels):
    """Mean ArcFace cross-entropy; aux = plain (margin-free) top-1 accuracy on the batch."""
    emb = model.encoder(images)                                        # [B, E]
    logits = model.head.logits(emb, labels)                            # [B, C]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    acc = jnp.mean(jnp.argmax(model.head.cosine(emb), -1) == labels)
    return loss, {"loss": loss, "accuracy": acc}


def make_optimizer(model: ArcFaceModel, *, learning_rate=2e-3, weight_decay: float = 5e-4,
                   clip_norm: float = 5.0) -> nnx.Optimizer:
    """AdamW with global-norm clipping; pass an optax schedule as ``learning_rate`` if wanted."""
    tx = optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(learning_rate, weight_decay=weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


@nnx.jit(donate_argnums=(0, 1))
def train_step(model: ArcFaceModel, optimizer: nnx.Optimizer, images, labels) -> dict[str, jax.Array]:
    """One optimiser step in place; ``images [B,H,W,3]`` uint8 or float [-1,1], ``labels [B]`` int.
    Returns ``{"loss", "accuracy"}``. Augmentation (jitter, flips) is the data pipeline's job."""
    (_, metrics), grads = nnx.value_and_grad(arcface_loss, has_aux=True)(model, images, labels)
    optimizer.update(model, grads)
    return metrics
