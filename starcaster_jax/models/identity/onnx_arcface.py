"""The identity-encoder interface and its ONNX implementation for a user's insightface ArcFace.

Why an interface: DESIGN §2 makes the image -> embedding step pluggable — a real ArcFace
(``arcface.onnx`` / ``w600k_r50.onnx`` / ``glintr100.onnx`` from insightface, which we cannot
download) when the user has one, the project's own ``BuiltinIdentityEncoder`` otherwise. Both
give L2-normalised ``[B, 512]`` embeddings from ``uint8 [B, H, W, 3]`` RGB images.

Pre-processing replicates insightface's ``ArcFaceONNX``: RGB, NCHW, ``(x - 127.5) / 127.5``,
unless the graph starts with its own ``Sub`` and ``Mul`` nodes (some exports fold the
normalisation in: then raw ``0..255`` pixels are fed; the same test insightface applies).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from starcaster_jax.models.identity.faces import face_crops, load_image


@runtime_checkable
class IdentityEncoder(Protocol):
    """Anything that maps RGB images to identity embeddings."""

    embed_dim: int

    def embed(self, images) -> np.ndarray:
        """``uint8 [B, H, W, 3]`` RGB -> ``float32 [B, embed_dim]``, L2-normalised."""
        ...


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def _graph_normalizes_itself(model_path: str) -> bool:
    import onnx  # noqa: PLC0415 (optional ONNX dependency)
    graph = onnx.load(model_path).graph
    names = [n.name for n in graph.node[:8]]
    sub = any(n.startswith(("Sub", "_minus")) for n in names)
    mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return sub and mul


class OnnxArcFace:
    """onnxruntime runner for an insightface-style ArcFace ``.onnx`` (NCHW ``[N, 3, S, S]`` in).

    ``normalize``: ``"auto"`` (insightface's graph test), ``"arcface"`` ((x-127.5)/127.5) or
    ``"none"`` (raw pixels). Crops come from ``faces.face_crops``: 5-point alignment when
    ``keypoints [B, 5, 2]`` are given, pre-aligned crops with ``aligned=True``, else the Haar
    fallback.
    """

    def __init__(self, model_path: str, *, providers: Sequence[str] = ("CPUExecutionProvider",),
                 normalize: str = "auto", batch_size: int = 32):
        import onnxruntime as ort  # noqa: PLC0415 (optional ONNX dependency)
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"{model_path}: no such ONNX model")
        try:
            self.session = ort.InferenceSession(model_path, providers=list(providers))
        except Exception as e:  # noqa: BLE001 - re-raised with the file name, one line
            raise ValueError(f"{model_path}: not a loadable ONNX model ({str(e).splitlines()[0]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)                                   # e.g. ['None', 3, 112, 112]
        if len(shape) != 4 or shape[1] != 3 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise ValueError(f"{model_path}: expected an NCHW input [N, 3, S, S], got {shape}")
        self.input_size = int(shape[2])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        out = self.session.get_outputs()[0]
        self.output_name = out.name
        self.embed_dim = int(out.shape[-1]) if isinstance(out.shape[-1], int) else 512
        if normalize == "auto":
            normalize = "none" if _graph_normalizes_itself(model_path) else "arcface"
        if normalize not in ("arcface", "none"):
            raise ValueError(f"normalize: expected 'auto', 'arcface' or 'none', got {normalize!r}")
        self.normalize = normalize
        self.batch_size = self.fixed_batch or batch_size
        self.model_path = model_path

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        """``uint8 [B, S, S, 3]`` RGB -> ``float32 [B, 3, S, S]`` network input."""
        x = crops.astype(np.float32)
        if self.normalize == "arcface":
            x = (x - 127.5) / 127.5
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Aligned ``uint8 [B, S, S, 3]`` -> ``[B, embed_dim]`` L2-normalised."""
        x = self.preprocess(np.asarray(crops))
        outs = []
        for i in range(0, len(x), self.batch_size):
            chunk = x[i:i + self.batch_size]
            n = len(chunk)
            if self.fixed_batch and n < self.fixed_batch:   # a fixed-batch export: pad the tail
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self.session.run([self.output_name], {self.input_name: chunk})[0][:n])
        return normalize_rows(np.concatenate(outs).reshape(len(x), -1))

    def embed(self, images, keypoints=None, *, aligned: bool = False, names=None) -> np.ndarray:
        """``uint8 [B, H, W, 3]`` RGB (+ optional ``keypoints [B, 5, 2]``) -> ``[B, embed_dim]``."""
        return self.embed_crops(face_crops(images, keypoints, size=self.input_size,
                                           aligned=aligned, names=names))

    def embed_files(self, paths: Sequence[str], keypoints=None) -> np.ndarray:
        """Embeddings of image files (one at a time: files may differ in size)."""
        kps = [None] * len(paths) if keypoints is None else list(np.asarray(keypoints, np.float32))
        return np.concatenate([self.embed(load_image(p), None if k is None else k[None], names=[p])
                               for p, k in zip(paths, kps)])
