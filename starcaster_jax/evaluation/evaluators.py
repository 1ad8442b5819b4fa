"""The scoring networks of the evaluation, frozen, and the identity verifier's calibration.

``lip`` (``lip_eval``), ``identity`` (``identity_eval``) and ``pose`` (``pose_eval``) never
conditioned or supervised the model (``launch/train_encoders.py``). ``threshold`` is the
identity verifier's cosine threshold at ``far`` false accepts, set by ``calibrate`` from
impostor pairs of held-out identities' true frames: a frame is "the same person" as the
reference when their cosine exceeds it, so strangers score about ``far`` by construction.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.evaluation import metrics as M
from starcaster_jax.evaluation.data import resize_frames
from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.lipreading import accuracy


def _to_float(frames) -> jax.Array:
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


def _bucket(n: int) -> int:
    """Batch sizes are padded to powers of two (>= 8): a handful of compiled shapes whatever
    the clip lengths."""
    return max(8, 1 << max(0, int(n) - 1).bit_length())


def _pad(x: np.ndarray, n: int, fill=None) -> np.ndarray:
    """``x [N, ...]`` -> ``[n, ...]``, the extra rows ``fill`` (default: copies of the last row)."""
    x = np.asarray(x)
    extra = n - len(x)
    if extra <= 0:
        return x
    tail = np.repeat(x[-1:], extra, 0) if fill is None else np.full((extra,) + x.shape[1:], fill, x.dtype)
    return np.concatenate([x, tail])


@dataclasses.dataclass
class Evaluators:
    """Frozen scoring networks; ``pose`` is optional (encoder directories written before
    ``pose_eval`` existed): motion diversity is then not scored."""
    lip: object
    identity: object
    pose: object | None = None
    threshold: float | None = None     # identity cosine at FAR = far (calibrate())
    far: float = 0.01
    calibration: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, encoders_dir: str) -> Evaluators:
        pose = (be.load(encoders_dir, "pose_eval")
                if os.path.isdir(os.path.join(encoders_dir, "pose_eval")) else None)
        return cls(lip=be.load(encoders_dir, "lip_eval"), identity=be.load(encoders_dir, "identity_eval"),
                   pose=pose)

    def __post_init__(self):

        self._embed = nnx.jit(be.identity_embedding)
        self._acc = nnx.jit(accuracy)
        self._pose = nnx.jit(lambda m, x: m(x))

    def embed(self, frames: np.ndarray) -> np.ndarray:       # uint8 [N, H, W, 3] -> [N, 512]
        n = len(frames)
        return np.asarray(self._embed(self.identity, _to_float(_pad(frames, _bucket(n)))))[:n]

    def lip_accuracy(self, frames: np.ndarray, boxes: np.ndarray, visemes: np.ndarray) -> float:
        """Per-frame viseme accuracy over one clip; the clip is padded (last frame repeated,
        label -1: not counted) to a bucketed length."""
        t = _bucket(len(frames))
        batch = (_to_float(_pad(frames, t))[None], jnp.asarray(_pad(boxes, t), jnp.float32)[None])
        vis = _pad(np.asarray(visemes, np.int32), t, fill=-1)
        return float(self._acc(self.lip, batch, jnp.asarray(vis)[None]))

    def head_pose(self, frames: np.ndarray) -> np.ndarray:   # uint8 [N, H, W, 3] -> [N, 3] radians
        if self.pose is None:
            raise ValueError("no pose_eval evaluator loaded (train it: python -m launch.train_encoders "
                             "--encoders pose_eval ...)")
        out = []
        for i in range(0, len(frames), 64):
            f = frames[i:i + 64]
            out.append(np.asarray(self._pose(self.pose, _to_float(_pad(f, _bucket(len(f))))))[:len(f)])
        return np.concatenate(out)

    # -- identity verification
    def calibrate(self, records: Sequence[dict], *, frames_per_clip: int = 16, far: float = 0.01,
                  resolution: int | None = None) -> float:
        """Set ``threshold`` at ``far`` from impostor pairs (frames of different identities)
        of ``records`` (held-out clips, several identities), at the generator's ``resolution``
        (frames are scored at the size the model makes them). Returns the threshold."""
        imgs, labels = [], []
        for r in records:
            idx = np.linspace(0, len(r["frames"]) - 1, min(frames_per_clip, len(r["frames"]))).astype(int)
            f = np.asarray(r["frames"])[idx]
            imgs.append(resize_frames(f, resolution) if resolution else f)
            labels += [int(r["id_label"])] * len(idx)
        if len(set(labels)) < 2:
            raise ValueError(f"identity calibration: {len(set(labels))} held-out identity in "
                             f"{len(records)} clips; impostor pairs need at least 2")
        emb = self.embed(np.concatenate(imgs))
        imp = M.impostor_scores(emb, np.asarray(labels))
        self.threshold, self.far = M.far_threshold(imp, far), far
        self.calibration = {"far": far, "threshold": self.threshold, "impostor_pairs": int(len(imp)),
                            "identities": len(set(labels)), "frames": int(len(labels))}
        return self.threshold

    def identity_scores(self, frames: np.ndarray, reference: np.ndarray) -> dict:
        """``id_cos``: mean cosine of the frames to the reference frame; ``id_ver``: the fraction
        of frames verified as the reference's person at the calibrated threshold."""
        if self.threshold is None:
            raise ValueError("Evaluators.calibrate() first: identity verification has no threshold")
        ref = self.embed(np.asarray(reference)[None])[0]
        cos = self.embed(frames) @ ref                                   # [N]
        return {"id_cos": float(np.mean(cos)), "id_ver": float(np.mean(cos > self.threshold))}
