"""A head-pose regressor: frames -> (yaw, pitch, roll). Only an EVALUATOR (``pose_eval``).

Why: the motion-diversity test (``starcaster_jax/evaluation``) measures how much the head of a
generated video moves, the abstract's "static animation" claim. Generated frames carry no pose
label, so a network trained on the built-in corpus's true poses reads it from the pixels. It
never conditions or supervises the denoiser (``launch/train_encoders.py`` trains it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from starcaster_jax.models.identity.builtin import ResBlock, _groups
from starcaster_jax.models.layers import Conv, Dense, GroupNorm


@dataclasses.dataclass(frozen=True)
class PoseRegressorConfig:
    image_size: int = 32                      # inputs resized to S x S
    widths: tuple[int, ...] = (16, 32, 64)    # stage widths; stage i>0 downsamples by 2
    norm_groups: int = 8
    hidden: int = 128                         # width of the MLP head
    outputs: int = 3                          # yaw, pitch, roll (radians, schema convention)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PoseRegressorConfig:
        d = dict(d or {})
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @property
    def feature_size(self) -> int:
        s = self.image_size
        for _ in self.widths[1:]:
            s = -(-s // 2)
        return s


class PoseRegressor(nnx.Module):
    """``[B, H, W, 3]`` (uint8 or float in [-1, 1]) -> ``[B, 3]`` head rotation in radians."""

    def __init__(self, config: PoseRegressorConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        w0 = c.widths[0]
        self.stem = Conv(3, w0, 3, use_bias=False, rngs=rngs)
        self.stem_norm = GroupNorm(w0, _groups(w0, c.norm_groups), rngs=rngs)
        blocks, cin = [], w0
        for i, w in enumerate(c.widths):
            blocks.append(ResBlock(cin, w, 2 if i > 0 else 1, c.norm_groups, rngs=rngs))
            cin = w
        self.blocks = nnx.List(blocks)
        self.fc1 = Dense(cin * c.feature_size ** 2, c.hidden, names=("conv_out", "embed"), rngs=rngs)
        self.fc2 = Dense(c.hidden, c.outputs, names=("embed", None), rngs=rngs)

    def __call__(self, images):
        x = jnp.asarray(images)
        x = x.astype(jnp.float32) / 127.5 - 1.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
        s = self.config.image_size
        if x.shape[1:3] != (s, s):
            x = jax.image.resize(x, (x.shape[0], s, s, 3), "linear", antialias=True)
        x = jax.nn.relu(self.stem_norm(self.stem(x)))                   # [B, S, S, C0]
        for blk in self.blocks:
            x = blk(x)                                                  # [B, h, w, C]
        return self.fc2(jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1))))   # [B, 3]


def pose_loss(model: PoseRegressor, images, ypr):
    """Mean squared error in degrees^2 / 100 (O(1) at the corpus's +-30 degree spread);
    aux: mean absolute error in degrees."""
    pred = model(images)                                               # [B, 3]
    err = (pred - ypr) * (180.0 / jnp.pi)
    loss = jnp.mean(err ** 2) / 100.0
    return loss, {"loss": loss, "mae_deg": jnp.mean(jnp.abs(err))}
