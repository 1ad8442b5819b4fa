"""View trajectories: the per-frame 6-d view signal ``(yaw, pitch, roll, tx, ty, scale)``.

Units and convention are the data's (``data_pipelines/schema.py``): angles in **radians**
(yaw > 0 turns the face towards image right, pitch > 0 tilts it up, roll > 0 counter-clockwise),
``(tx, ty)`` in units of the image half-size (x right, y down), ``scale`` a ratio; the identity
pose is ``(0, 0, 0, 0, 0, 1)``. User-facing inputs (CLI flags, JSON files) use **degrees**.

A trajectory here is an ``[N, 6]`` array of poses in the frame of the *first frame the model
sees*: the reference image in animate mode (so ``static(N, pose)`` shows the reference from a
fixed other view), the first generated frame in synthesize mode. What the model receives per
chunk is the same pose made relative to a chunk frame, exactly like the training transform
``RelativePose`` (``data_pipelines/transforms.py``), via :func:`relative_to`.

JSON trajectory files (``--views FILE.json``), angles in degrees unless ``"units": "radians"``:

* a list of per-frame poses, each ``[yaw, pitch, roll, tx, ty, scale]`` (a shorter list of
  ``[yaw, pitch]`` or ``[yaw, pitch, roll]`` is padded with the identity)::

      [[0, 0, 0, 0, 0, 1], [1.5, 0, 0, 0, 0, 1], [3.0, 0.5, 0, 0, 0, 1]]

* or an object with ``"poses"`` (the same list) or ``"keyframes"``: a list of
  ``{"frame": int | "time": seconds, "yaw": .., "pitch": .., "roll": .., "tx": .., "ty": ..,
  "scale": ..}`` (missing fields = identity), linearly interpolated between keyframes::

      {"units": "degrees", "keyframes": [{"frame": 0}, {"time": 2.0, "yaw": 30},
                                         {"time": 4.0, "yaw": -30, "pitch": 10}]}

Frames past the end of a trajectory hold its last pose; frames before the first keyframe hold
the first keyframe's pose.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from data_pipelines import schema

__all__ = ["IDENTITY_POSE", "FIELDS", "orbit", "static", "from_json", "spread", "relative_to",
           "fit_length", "degrees_to_pose"]

IDENTITY_POSE = np.array([0, 0, 0, 0, 0, 1], np.float32)
FIELDS = ("yaw", "pitch", "roll", "tx", "ty", "scale")
_DEG = np.pi / 180.0


def degrees_to_pose(values: Sequence[float]) -> np.ndarray:
    """``[yaw, pitch, roll(, tx, ty, scale)]`` with angles in degrees -> model pose ``[6]``."""
    v = list(map(float, values))
    if not 1 <= len(v) <= 6:
        raise ValueError(f"pose: expected 1 to 6 numbers (yaw, pitch, roll, tx, ty, scale), got {len(v)}")
    out = IDENTITY_POSE.copy()
    out[:len(v)] = v
    out[:3] *= _DEG
    return out


def orbit(num_frames: int, yaw_amplitude: float = 20 * _DEG, period_frames: float = 100.0,
          pitch_amplitude: float = 0.0) -> np.ndarray:
    """Camera swinging around the head: ``yaw = A sin(phi)``, ``pitch = A_p sin(2 phi)`` (a
    figure-of-eight through the start view, which is the identity), ``phi = 2 pi f / period``.
    Amplitudes in radians. -> ``[N, 6]``."""
    if num_frames <= 0:
        raise ValueError(f"orbit: num_frames must be positive, got {num_frames}")
    if period_frames <= 0:
        raise ValueError(f"orbit: period_frames must be positive, got {period_frames}")
    phi = 2.0 * np.pi * np.arange(num_frames) / float(period_frames)
    out = np.tile(IDENTITY_POSE, (num_frames, 1))
    out[:, 0] = yaw_amplitude * np.sin(phi)
    out[:, 1] = pitch_amplitude * np.sin(2.0 * phi)
    return out.astype(np.float32)


def static(num_frames: int, pose: Sequence[float] | None = None) -> np.ndarray:
    """The same pose (model units, default the identity) for every frame. -> ``[N, 6]``."""
    p = IDENTITY_POSE if pose is None else np.asarray(pose, np.float32).reshape(-1)
    if p.shape != (6,):
        raise ValueError(f"static: pose must have 6 numbers (yaw, pitch, roll, tx, ty, scale), got {p.shape}")
    return np.tile(p, (num_frames, 1)).astype(np.float32)


def spread(num_views: int, yaw_amplitude: float = 30 * _DEG, pitch: float = 0.0) -> np.ndarray:
    """``num_views`` cameras evenly spaced in yaw over ``[-A, A]`` (multi-view stills). -> ``[N, 6]``."""
    if num_views <= 0:
        raise ValueError(f"spread: num_views must be positive, got {num_views}")
    out = np.tile(IDENTITY_POSE, (num_views, 1))
    out[:, 0] = np.linspace(-yaw_amplitude, yaw_amplitude, num_views) if num_views > 1 else 0.0
    out[:, 1] = pitch
    return out.astype(np.float32)


def fit_length(poses: np.ndarray, num_frames: int) -> np.ndarray:
    """First ``num_frames`` poses; a shorter trajectory holds its last pose."""
    poses = np.asarray(poses, np.float32)
    if poses.shape[0] >= num_frames:
        return poses[:num_frames]
    return np.concatenate([poses, np.tile(poses[-1:], (num_frames - poses.shape[0], 1))], 0)


def relative_to(poses: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Poses ``[N, 6]`` relative to the pose ``ref [6]`` (rotation composed, translation
    difference, scale ratio: ``schema.relative_pose``, the training transform's default)."""
    both = np.concatenate([np.asarray(ref, np.float32).reshape(1, 6), np.asarray(poses, np.float32)], 0)
    return schema.relative_pose(both, 0)[1:]


def _pad_pose(row, where: str) -> np.ndarray:
    row = np.asarray(row, np.float64).reshape(-1)
    if not 1 <= row.size <= 6:
        raise ValueError(f"{where}: a pose has 1 to 6 numbers (yaw, pitch, roll, tx, ty, scale), got {row.size}")
    out = IDENTITY_POSE.astype(np.float64).copy()
    out[:row.size] = row
    return out


def from_json(path: str, num_frames: int, *, fps: float = 25.0) -> np.ndarray:
    """Read a trajectory file (format in the module docstring) -> ``[num_frames, 6]`` radians."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such view trajectory file")
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a JSON view trajectory ({e})") from None
    units = "degrees"
    if isinstance(spec, dict):
        units = spec.get("units", "degrees")
        if units not in ("degrees", "radians"):
            raise ValueError(f"{path}: units must be 'degrees' or 'radians', got {units!r}")
        if "poses" in spec:
            spec = spec["poses"]
        elif "keyframes" in spec:
            return _keyframes(spec["keyframes"], num_frames, fps, units, path)
        else:
            raise ValueError(f"{path}: expected a list of poses or an object with 'poses' or 'keyframes'")
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"{path}: expected a non-empty list of per-frame poses")
    try:
        poses = np.stack([_pad_pose(p, path) for p in spec])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: bad pose list ({e})") from None
    if units == "degrees":
        poses[:, :3] *= _DEG
    return _finish(poses, num_frames, path)


def _keyframes(keys, num_frames, fps, units, path) -> np.ndarray:
    if not isinstance(keys, list) or not keys:
        raise ValueError(f"{path}: 'keyframes' must be a non-empty list")
    frames, poses = [], []
    for k in keys:
        if not isinstance(k, dict):
            raise ValueError(f"{path}: each keyframe is an object like {{\"frame\": 0, \"yaw\": 10}}")
        unknown = set(k) - set(FIELDS) - {"frame", "time"}
        if unknown:
            raise ValueError(f"{path}: unknown keyframe field(s) {sorted(unknown)}; "
                             f"known: frame, time, {', '.join(FIELDS)}")
        if "frame" in k:
            frames.append(float(k["frame"]))
        elif "time" in k:
            frames.append(float(k["time"]) * fps)
        else:
            raise ValueError(f"{path}: a keyframe needs 'frame' or 'time'")
        poses.append([float(k.get(name, IDENTITY_POSE[i])) for i, name in enumerate(FIELDS)])
    order = np.argsort(frames, kind="stable")
    frames, poses = np.asarray(frames)[order], np.asarray(poses, np.float64)[order]
    f = np.arange(num_frames, dtype=np.float64)
    out = np.stack([np.interp(f, frames, poses[:, j]) for j in range(6)], -1)
    if units == "degrees":
        out[:, :3] *= _DEG
    return _finish(out, num_frames, path)


def _finish(poses: np.ndarray, num_frames: int, path: str) -> np.ndarray:
    if not np.all(np.isfinite(poses)):
        raise ValueError(f"{path}: poses contain non-finite values")
    if np.any(poses[:, 5] <= 0):
        raise ValueError(f"{path}: scale must be positive")
    return fit_length(poses.astype(np.float32), num_frames)
