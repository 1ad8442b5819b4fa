"""Feature extractors the user provides as ONNX models (Inception for FID, I3D for FVD), run with
onnxruntime.

Why ONNX: the reference extractors are TensorFlow graphs (FID's pool3 Inception, FVD's TF-Hub
I3D) or PyTorch ports of them (pytorch-fid's ``pt_inception``, StyleGAN-V's I3D torchscript);
none can be downloaded here and none is JAX. Any of them exports to ONNX, and one runtime runs
every export on CPU or GPU, so the metric code does not depend on which framework the user's
copy came from. The numbers are only comparable with papers that used the same network, the
same resize and the same pixel range: the report records all three.

What is read from the graph: the layout (``[N, 3, H, W]`` or ``[N, H, W, 3]`` images,
``[N, 3, T, H, W]`` or ``[N, T, H, W, 3]`` clips), H, W and T when they are static (else
299 / 224 / 16), a fixed batch size when the export has one (the tail batch is zero-padded and
dropped). The output used is the first one, flattened to ``[N, D]`` (export the pooled features,
not the logits).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

PIXEL_RANGES = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0), "byte": (0.0, 255.0)}


class FeatureModelError(ValueError):
    """A feature model file is missing, not ONNX, or not of the expected input layout (one line)."""


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [..., H, W, 3]`` -> ``[..., h, w, 3]``, bilinear (``cv2.INTER_LINEAR``, as pytorch-fid's
    ``F.interpolate``); unchanged when already that size."""
    import cv2  # noqa: PLC0415 (the media extra)
    frames = np.asarray(frames, np.uint8)
    h, w = size
    if frames.shape[-3:-1] == (h, w):
        return frames
    flat = frames.reshape((-1,) + frames.shape[-3:])
    out = np.stack([cv2.resize(np.ascontiguousarray(f), (w, h), interpolation=cv2.INTER_LINEAR) for f in flat])
    return out.reshape(frames.shape[:-3] + (h, w, 3))


class OnnxFeatures:
    """``kind="image"``: ``uint8 [N, H, W, 3]`` -> ``[N, D]``; ``kind="clip"``: ``uint8 [N, T, H, W, 3]``
    -> ``[N, D]``. RGB in, resized to the graph's size, scaled to ``pixel_range``."""

    def __init__(self, path: str, *, kind: str, pixel_range: str, flag: str = "--model",
                 default_size: int = 299, default_frames: int = 16, batch_size: int = 16,
                 providers: Sequence[str] = ("CPUExecutionProvider",)):
        import onnxruntime as ort  # noqa: PLC0415 (optional ONNX dependency)
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FeatureModelError(f"{flag} {path}: no such ONNX model")
        if pixel_range not in PIXEL_RANGES:
            raise FeatureModelError(f"{flag} pixel range {pixel_range!r}: expected one of {sorted(PIXEL_RANGES)}")
        try:
            self.session = ort.InferenceSession(path, providers=list(providers))
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors are many; one line names the file
            raise FeatureModelError(f"{flag} {path}: not a loadable ONNX model "
                                    f"({str(e).splitlines()[0][:160]})") from None
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        rank = {"image": 4, "clip": 5}[kind]
        if len(shape) != rank:
            raise FeatureModelError(f"{flag} {path}: expected a {rank}-d {kind} input, got {shape}")
        self.channels_first = shape[1] == 3
        if not self.channels_first and shape[-1] != 3:
            raise FeatureModelError(f"{flag} {path}: no 3-channel axis (second or last) in input {shape}")
        dims = shape[2:] if self.channels_first else shape[1:-1]               # [T,] H, W

        def static(v, default):
            return int(v) if isinstance(v, int) and v > 0 else default
        self.size = (static(dims[-2], default_size), static(dims[-1], default_size))
        self.frames = static(dims[0], default_frames) if kind == "clip" else 1
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.batch_size = self.fixed_batch or int(batch_size)
        self.kind, self.pixel_range, self.path = kind, pixel_range, path
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name

    def protocol(self) -> dict:
        """What a report must say for its number to be comparable."""
        lo, hi = PIXEL_RANGES[self.pixel_range]
        layout = ("NCHW" if self.channels_first else "NHWC") if self.kind == "image" else \
                 ("NCTHW" if self.channels_first else "NTHWC")
        out = {"model": os.path.abspath(self.path), "input_size": list(self.size), "layout": layout,
               "pixel_range": [lo, hi], "resize": "bilinear (cv2.INTER_LINEAR), whole frame, no crop",
               "channels": "RGB", "output": self.output_name}
        if self.kind == "clip":
            out["clip_frames"] = self.frames
        return out

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        """uint8 RGB -> the float32 network input (resize, scale, layout)."""
        lo, hi = PIXEL_RANGES[self.pixel_range]
        x = resize_frames(x, self.size).astype(np.float32) * ((hi - lo) / 255.0) + lo
        if self.channels_first:
            x = np.moveaxis(x, -1, 1)                           # [N, 3, (T,) H, W]
        return np.ascontiguousarray(x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """uint8 ``[N, (T,) H, W, 3]`` -> ``float64 [N, D]``."""
        x = np.asarray(x, np.uint8)
        rank = 4 if self.kind == "image" else 5
        if x.ndim != rank or x.shape[-1] != 3:
            raise ValueError(f"{self.kind} features: expected uint8 [N, {'T, ' if rank == 5 else ''}H, W, 3], "
                             f"got {x.shape}")
        if self.kind == "clip" and x.shape[1] != self.frames:
            raise ValueError(f"clip features: the model takes {self.frames}-frame clips, got {x.shape[1]}")
        outs = []
        for i in range(0, len(x), self.batch_size):
            chunk = self.preprocess(x[i:i + self.batch_size])
            n = len(chunk)
            if self.fixed_batch and n < self.fixed_batch:
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n,) + chunk.shape[1:], chunk.dtype)])
            y = self.session.run([self.output_name], {self.input_name: chunk})[0][:n]
            outs.append(np.asarray(y, np.float64).reshape(n, -1))
        return np.concatenate(outs) if outs else np.zeros((0, 0))


def clip_starts(num_frames: int, clip_frames: int, max_clips: int = 0) -> list[int]:
    """First frames of the non-overlapping ``clip_frames`` clips from the start of a video (at
    most ``max_clips`` when > 0): FVD's clip sampling here, deterministic."""
    starts = list(range(0, int(num_frames) - int(clip_frames) + 1, int(clip_frames)))
    return starts[:max_clips] if max_clips > 0 else starts


def frame_indices(num_frames: int, max_frames: int = 0) -> np.ndarray:
    """Frames used for FID: all, or ``max_frames`` evenly spaced (first and last included)."""
    if max_frames <= 0 or max_frames >= num_frames:
        return np.arange(num_frames)
    return np.unique(np.linspace(0, num_frames - 1, max_frames).round().astype(int))
