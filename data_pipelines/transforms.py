"""Per-example Grain transforms: decoded schema record -> training example.

All transforms are picklable ``grain.transforms.Map`` / ``RandomMap`` classes (multiprocess
workers pickle them). Randomness comes only from the ``rng`` Grain passes to ``random_map``
(derived from the dataset seed and the element index), so examples are reproducible and an
iterator restored from a checkpoint yields exactly the same next examples.

Chain per stream (see pipeline.py)::

    video:     VideoWindow -> RelativePose -> RandomHFlip -> Normalize
    multiview: MultiviewViews -> RelativePose -> RandomHFlip -> Normalize

Output example (T = F + K frames for video, T = V views for multiview; S = 640; w = audio
window in frames; all streams carry the same keys)::

    stream               int32   ()        0 = video, 1 = multiview
    frames               float32 [T,R,R,3] RGB in [-1, 1] (uint8 / 127.5 - 1), R = resolution
    audio                float32 [(T+2w)*S] 16 kHz mono, see "Audio alignment"; zeros for multiview
    has_audio            bool    ()        False for multiview
    pose                 float32 [T,6]     pose relative to frame/view 0, see "Relative pose"
    pose_valid           bool    ()        False -> pose is the identity (0,0,0,0,0,1); drop the
                                           view condition for this example
    viseme               int32   [T]       viseme class per frame, -1 unknown (always -1 for
                                           multiview)
    mouth_box            float32 [T,4]     (y0, x0, y1, x1) in [0,1], y down
    expression           float32 [T,4]     (mouth open, width, rounding, eyelid closure)
    expression_valid     bool    ()
    identity             float32 [D]       precomputed ``id_embedding`` if the record has one
                                           (D = E), else the ``id_vector`` (D = ID_DIM = 48)
    identity_is_embedding bool   ()        which of the two ``identity`` is
    id_vector            float32 [48]      ground-truth identity vector (zeros for real data)
    id_vector_valid      bool    ()
    id_label             int32   ()
    window_start         int32   ()        first frame of the video window in the record; -1
                                           for multiview
    flipped              bool    ()        horizontal flip applied

Audio alignment: the record's frame ``f`` owns ``audio[f*S:(f+1)*S]`` (S = 640 = 16000/25).
For a window starting at record frame ``s`` with ``T`` frames, ``audio`` holds record samples
``[(s-w)*S, (s+T+w)*S)``, zero-padded where that range leaves the clip (before the first or
after the last frame). So window frame ``t`` (0-based) is ``audio[(t+w)*S:(t+w+1)*S]`` and its
audio-encoder context of +-w frames is ``audio[t*S:(t+2w+1)*S]`` ((2w+1)*S samples).

Relative pose (the 6-d view signal): relative to the window's first frame (video) or the
first sampled view (multiview). Default ``mode="compose"`` follows ``schema.relative_pose``:
rotation R_rel = R_0^T R_t re-expressed as (yaw, pitch, roll); (tx, ty) differences; scale
ratio. ``mode="subtract"`` subtracts the (yaw, pitch, roll) angles instead (a small-angle
approximation of the same thing), with the same (tx, ty) differences and scale ratio. Either
way frame 0 maps to (0, 0, 0, 0, 0, 1).

Horizontal flip: frames reversed along x; the pose mirrored (yaw, pitch, roll, tx, ty, s) ->
(-yaw, pitch, -roll, -tx, ty, s) (mirroring is a conjugation of the rotation, so flipping
commutes with taking relative poses); mouth boxes (y0, x0, y1, x1) -> (y0, 1-x1, y1, 1-x0).
"""
from __future__ import annotations

from typing import Any

import grain
import numpy as np

from data_pipelines import schema

S = schema.SAMPLES_PER_FRAME
STREAM_IDS = {"video": 0, "multiview": 1}
IDENTITY_POSE = np.array([0, 0, 0, 0, 0, 1], np.float32)
_POSE_MIRROR = np.array([-1, 1, -1, -1, 1, 1], np.float32)


def audio_window(audio: np.ndarray, start: int, num_frames: int, w: int) -> np.ndarray:
    """Record samples ``[(start-w)*S, (start+num_frames+w)*S)``, zero-padded outside the clip."""
    out = np.zeros(((num_frames + 2 * w) * S,), np.float32)
    lo, hi = (start - w) * S, (start + num_frames + w) * S
    a, b = max(lo, 0), min(hi, audio.shape[0])
    if b > a:
        out[a - lo:b - lo] = audio[a:b]
    return out


def _identity_fields(rec: dict[str, Any]) -> dict[str, Any]:
    emb = np.asarray(rec["id_embedding"], np.float32)
    use_emb = emb.size > 0
    return {
        "identity": (emb if use_emb else np.asarray(rec["id_vector"], np.float32)).copy(),
        "identity_is_embedding": np.bool_(use_emb),
        "id_vector": np.asarray(rec["id_vector"], np.float32).copy(),
        "id_vector_valid": np.bool_(rec["id_vector_valid"]),
        "id_label": np.int32(rec["id_label"]),
    }


class VideoWindow(grain.transforms.RandomMap):
    """Random window of ``num_frames`` (= F + K) consecutive frames plus its aligned audio."""

    def __init__(self, num_frames: int, audio_window: int = 0):
        self.num_frames = int(num_frames)
        self.audio_window = int(audio_window)

    def random_map(self, rec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        n, t = rec["frames"].shape[0], self.num_frames
        s = int(rng.integers(0, n - t + 1))
        sl = slice(s, s + t)
        return {
            "stream": np.int32(STREAM_IDS["video"]),
            "frames": rec["frames"][sl],
            "audio": audio_window(rec["audio"], s, t, self.audio_window),
            "has_audio": np.bool_(True),
            "pose": np.asarray(rec["pose"][sl], np.float32),
            "pose_valid": np.bool_(rec["pose_valid"]),
            "viseme": np.asarray(rec["viseme"][sl], np.int32).copy(),
            "mouth_box": np.asarray(rec["mouth_box"][sl], np.float32).copy(),
            "expression": np.asarray(rec["expression"][sl], np.float32).copy(),
            "expression_valid": np.bool_(rec["expression_valid"]),
            **_identity_fields(rec),
            "window_start": np.int32(s),
        }


class MultiviewViews(grain.transforms.RandomMap):
    """``num_views`` views of a multi-view set: a random ordered subset (``shuffle=True``) or
    the first ``num_views``; audio zeros of the video stream's layout, visemes -1."""

    def __init__(self, num_views: int, audio_window: int = 0, shuffle: bool = True):
        self.num_views = int(num_views)
        self.audio_window = int(audio_window)
        self.shuffle = bool(shuffle)

    def random_map(self, rec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        n, v = rec["frames"].shape[0], self.num_views
        idx = rng.permutation(n)[:v] if self.shuffle else np.arange(v)
        return {
            "stream": np.int32(STREAM_IDS["multiview"]),
            "frames": rec["frames"][idx],
            "audio": np.zeros(((v + 2 * self.audio_window) * S,), np.float32),
            "has_audio": np.bool_(False),
            "pose": np.asarray(rec["pose"][idx], np.float32),
            "pose_valid": np.bool_(rec["pose_valid"]),
            "viseme": np.full((v,), -1, np.int32),
            "mouth_box": np.asarray(rec["mouth_box"][idx], np.float32),
            "expression": np.asarray(rec["expression"][idx], np.float32),
            "expression_valid": np.bool_(rec["expression_valid"]),
            **_identity_fields(rec),
            "window_start": np.int32(-1),
        }


def relative_pose(pose: np.ndarray, mode: str = "compose") -> np.ndarray:
    """Absolute [T,6] -> relative to index 0 (see module docstring for the two modes)."""
    if mode == "compose":
        return schema.relative_pose(np.asarray(pose, np.float32), 0)
    if mode == "subtract":
        out = np.asarray(pose, np.float32).copy()
        out[:, :5] -= out[0:1, :5]
        out[:, 5] = pose[:, 5] / pose[0, 5]
        return out
    raise ValueError(f"relative pose mode {mode!r}: expected 'compose' or 'subtract'")


class RelativePose(grain.transforms.Map):
    """Pose relative to frame 0; the identity pose when ``pose_valid`` is False."""

    def __init__(self, mode: str = "compose"):
        if mode not in ("compose", "subtract"):
            raise ValueError(f"relative pose mode {mode!r}: expected 'compose' or 'subtract'")
        self.mode = mode

    def map(self, ex: dict[str, Any]) -> dict[str, Any]:
        ex = dict(ex)
        t = ex["pose"].shape[0]
        if bool(ex["pose_valid"]) and np.all(ex["pose"][:, 5] > 0):
            ex["pose"] = relative_pose(ex["pose"], self.mode).astype(np.float32)
        else:
            ex["pose"] = np.tile(IDENTITY_POSE, (t, 1))
            ex["pose_valid"] = np.bool_(False)
        return ex


def mirror_pose(pose: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll, tx, ty, s) -> (-yaw, pitch, -roll, -tx, ty, s)."""
    return (np.asarray(pose, np.float32) * _POSE_MIRROR).astype(np.float32)


def mirror_boxes(box: np.ndarray) -> np.ndarray:
    """(y0, x0, y1, x1) -> (y0, 1-x1, y1, 1-x0)."""
    box = np.asarray(box, np.float32)
    return np.stack([box[..., 0], 1 - box[..., 3], box[..., 2], 1 - box[..., 1]], -1)


def hflip(ex: dict[str, Any]) -> dict[str, Any]:
    """Mirror an example horizontally (frames, pose, mouth boxes)."""
    ex = dict(ex)
    ex["frames"] = np.ascontiguousarray(ex["frames"][:, :, ::-1])
    ex["pose"] = mirror_pose(ex["pose"])
    ex["mouth_box"] = mirror_boxes(ex["mouth_box"])
    ex["flipped"] = np.bool_(not bool(ex.get("flipped", False)))
    return ex


class RandomHFlip(grain.transforms.RandomMap):
    """Horizontal flip with probability ``p`` (0 disables; 1 always flips)."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def random_map(self, ex: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        flip = rng.random() < self.p  # always draw, so p does not change the other draws
        if flip:
            return hflip(ex)
        ex = dict(ex)
        ex.setdefault("flipped", np.bool_(False))
        return ex


def to_resolution(frames: np.ndarray, resolution: int | None) -> np.ndarray:
    """uint8 [T,H,H,3] -> [T,R,R,3] by box averaging (H = k*R, checked by the source)."""
    h = frames.shape[1]
    if resolution is None or h == resolution:
        return frames
    k = h // resolution
    t, _, w, c = frames.shape
    x = frames.reshape(t, resolution, k, w // k, k, c).astype(np.float32)
    return x.mean(axis=(2, 4))


class Normalize(grain.transforms.Map):
    """Frames -> float32 [-1, 1] at ``resolution``; casts every field to its final dtype."""

    def __init__(self, resolution: int | None = None):
        self.resolution = resolution

    def map(self, ex: dict[str, Any]) -> dict[str, Any]:
        ex = dict(ex)
        fr = to_resolution(ex["frames"], self.resolution)
        ex["frames"] = (np.asarray(fr, np.float32) / np.float32(127.5) - np.float32(1.0))
        ex.setdefault("flipped", np.bool_(False))
        for k in ("audio", "pose", "mouth_box", "expression", "identity", "id_vector"):
            ex[k] = np.ascontiguousarray(ex[k], np.float32)
        ex["viseme"] = np.ascontiguousarray(ex["viseme"], np.int32)
        return ex


EXAMPLE_KEYS = ("stream", "frames", "audio", "has_audio", "pose", "pose_valid", "viseme",
                "mouth_box", "expression", "expression_valid", "identity",
                "identity_is_embedding", "id_vector", "id_vector_valid", "id_label",
                "window_start", "flipped")
