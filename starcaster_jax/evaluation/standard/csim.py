"""CSIM: the ArcFace cosine similarity of generated frames to the reference identity.

Protocol: the reference is the first frame of the real video of the same name (the frame an
animate-mode generator is given); every generated frame (or ``max_frames`` evenly spaced) is
embedded, and a video scores the mean cosine of its frames to the reference; the set scores the
mean over videos. Crops: ``crop="haar"`` finds the face with the OpenCV Haar cascade and frames it
like insightface's 5-point alignment (``models/identity/faces.py``: rougher, no roll correction);
``crop="whole"`` takes the whole frame, resized to the model's input, as the crop (for videos
that already are aligned face crops). The ONNX runner is the project's
``models/identity/onnx_arcface.OnnxArcFace`` (insightface's pre-processing).
"""
from __future__ import annotations

import numpy as np

from starcaster_jax.evaluation.standard.onnx_features import frame_indices, resize_frames
from starcaster_jax.models.identity.faces import FaceNotFoundError, face_crops
from starcaster_jax.models.identity.onnx_arcface import OnnxArcFace

CROPS = ("haar", "whole")


class NoFace(ValueError):
    """The reference frame has no detectable face: the video cannot be scored."""


class CSIMScorer:
    """Cosine of ArcFace embeddings of generated frames to a reference frame."""

    def __init__(self, model_path: str, *, crop: str = "haar", max_frames: int = 0):
        if crop not in CROPS:
            raise ValueError(f"CSIM crop {crop!r}: expected one of {CROPS}")
        self.arcface = OnnxArcFace(model_path)
        self.crop, self.max_frames = crop, int(max_frames)

    def protocol(self) -> dict:
        return {"model": self.arcface.model_path, "input_size": self.arcface.input_size,
                "normalize": self.arcface.normalize, "crop": self.crop,
                "reference": "first frame of the real video of the same name",
                "frames": "all" if self.max_frames <= 0 else f"{self.max_frames} evenly spaced per video",
                "aggregate": "mean cosine over a video's frames, then mean over videos"}

    def crops(self, frames: np.ndarray) -> tuple[np.ndarray, int]:
        """``uint8 [N, H, W, 3]`` -> the crops of the frames with a face ``[M, S, S, 3]`` and the
        number of frames without one (Haar crop only)."""
        s = self.arcface.input_size
        if self.crop == "whole":
            return resize_frames(frames, (s, s)), 0
        out, missed = [], 0
        for f in frames:
            try:
                out.append(face_crops(f[None], size=s)[0])
            except FaceNotFoundError:
                missed += 1
        return (np.stack(out) if out else np.zeros((0, s, s, 3), np.uint8)), missed

    def embed(self, frames: np.ndarray) -> tuple[np.ndarray, int]:
        crops, missed = self.crops(np.asarray(frames, np.uint8))
        if not len(crops):
            return np.zeros((0, self.arcface.embed_dim), np.float32), missed
        return self.arcface.embed_crops(crops), missed

    def score(self, generated: np.ndarray, reference: np.ndarray) -> dict:
        """``{"csim", "frames", "frames_without_face"}`` of one video; NoFace when the reference
        (``uint8 [H, W, 3]``) or every generated frame has no detectable face."""
        ref, _ = self.embed(np.asarray(reference)[None])
        if not len(ref):
            raise NoFace("no face detected in the reference frame (Haar cascade)")
        idx = frame_indices(len(generated), self.max_frames)
        emb, missed = self.embed(np.asarray(generated)[idx])
        if not len(emb):
            raise NoFace(f"no face detected in any of {len(idx)} generated frames (Haar cascade)")
        return {"csim": float(np.mean(emb @ ref[0])), "frames": int(len(emb)), "frames_without_face": missed}
