"""ArcFace identity embeddings from a user's ONNX model (insightface layout).

Why insightface's protocol exactly: an ArcFace model only gives meaningful embeddings for
crops aligned the way it was trained, i.e. insightface's ``norm_crop``: the similarity
transform that maps the face's 5 landmarks (eyes, nose tip, mouth corners, image-left first)
onto the ``ARCFACE_DST`` template of a 112 x 112 crop. The model input is that crop, RGB,
``(x - mean) / std`` with insightface's choice of mean/std (0 and 1 when the graph starts
with its own Sub/Mul normalisation, else 127.5 and 127.5), NCHW float32; its output the
embedding ``[N, E]`` (E = 512 for the released models), L2-normalised here (what
insightface calls ``normed_embedding``; cosine similarity is all that is used downstream).

The 5 landmarks come from MediaPipe (``--landmarks``; pose.from_mediapipe), else from the
face box by the template's own proportions (:func:`five_from_box`: an approximation for
frontal faces, recorded in the report settings as ``arcface_points``).
"""
from __future__ import annotations

import cv2
import numpy as np

SIZE = 112
# insightface.utils.face_align.arcface_dst: (x, y) in the 112 x 112 crop.
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def alignment(points: np.ndarray) -> np.ndarray:
    """5 landmarks [5,2] (pixels) -> the 2x3 similarity transform onto ARCFACE_DST."""
    m, _ = cv2.estimateAffinePartial2D(np.asarray(points, np.float32), ARCFACE_DST,
                                       method=cv2.LMEDS)
    if m is None:
        raise ValueError("arcface: the 5 landmarks are degenerate (no similarity transform)")
    return m


def norm_crop(img: np.ndarray, points: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3] + 5 landmarks [5,2] (pixels) -> the aligned crop [112,112,3]."""
    return cv2.warpAffine(img, alignment(points), (SIZE, SIZE), borderValue=0.0)


def five_from_box(box: np.ndarray) -> np.ndarray:
    """A face box (x0, y0, x1, y1) in pixels -> 5 points placed as in the template, the
    template's face (x 30-82, y 40-104 of 112) stretched onto the box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    rel = (ARCFACE_DST - [30.0, 40.0]) / [52.0, 64.0]
    return (np.array([x0, y0]) + rel * [x1 - x0, y1 - y0]).astype(np.float32)


class ArcFace:
    """An insightface-layout ArcFace ONNX model on CPU (onnxruntime)."""

    def __init__(self, model_path: str):
        import onnx  # noqa: PLC0415 (optional ONNX dependency)
        import onnxruntime as ort  # noqa: PLC0415 (optional ONNX dependency)

        try:
            graph = onnx.load(model_path).graph
        except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
            raise ValueError(f"--arcface {model_path}: expected an ONNX model ({e})") from None
        ops = [n.op_type for n in graph.node[:8]]
        # insightface.model_zoo.arcface_onnx: graphs that normalise themselves take raw pixels
        sub_mul = "Sub" in ops and "Mul" in ops
        self.mean, self.std = (0.0, 1.0) if sub_mul else (127.5, 127.5)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # one per Beam worker process
        self.session = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4 or inp.shape[1] != 3 or tuple(inp.shape[2:]) != (SIZE, SIZE):
            raise ValueError(f"--arcface {model_path}: expected input [N,3,{SIZE},{SIZE}], got "
                             f"{inp.shape}")
        self.input = inp.name

    def blob(self, crops: np.ndarray) -> np.ndarray:
        """Aligned RGB crops [N,112,112,3] uint8 -> model input [N,3,112,112] float32."""
        x = (np.asarray(crops, np.float32) - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Aligned crops [N,112,112,3] -> L2-normalised embeddings [N,E] float32."""
        e = self.session.run(None, {self.input: self.blob(crops)})[0].astype(np.float32)
        return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)

    def embed(self, img: np.ndarray, points: np.ndarray) -> np.ndarray:
        """One RGB image + its 5 landmarks [5,2] (pixels) -> embedding [E]."""
        return self.embed_crops(norm_crop(img, points)[None])[0]


def clip_embedding(model: ArcFace, frames: np.ndarray, points: np.ndarray, mean: bool = False,
                   stride: int = 5) -> np.ndarray:
    """A clip's frames [F,H,W,3] and 5 landmarks per frame [F,5,2] -> id_embedding [E]: the
    reference (first) frame's, or with ``mean`` the renormalised mean over every
    ``stride``-th frame."""
    idx = np.arange(0, frames.shape[0], stride) if mean else np.array([0])
    crops = np.stack([norm_crop(frames[i], points[i]) for i in idx])
    e = model.embed_crops(crops).mean(0)
    return (e / max(float(np.linalg.norm(e)), 1e-12)).astype(np.float32)
