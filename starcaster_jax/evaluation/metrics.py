"""Frame-level metrics of the evaluation, on uint8 frames (NumPy in, Python floats out).

PSNR/SSIM come from dm_pix, the Laplacian from OpenCV, the FAR threshold from
``models/identity/metrics.tar_at_far``; what is here is only how they are combined.
"""
from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from starcaster_jax.models.identity.metrics import tar_at_far

PSNR_CAP = 100.0   # dB reported for identical images (the ceiling of ground truth)


def image_metrics(generated: np.ndarray, truth: np.ndarray) -> dict:
    """uint8 ``[N, H, W, 3]`` pairs -> mean PSNR (dB, identical images capped at ``PSNR_CAP``)
    and SSIM (dm_pix, images in [0, 1])."""
    n = len(generated)
    if n == 0 or len(truth) != n:
        raise ValueError(f"image_metrics: {n} generated vs {len(truth)} true frames")
    psnr, ssim = _pix(_pad_rows(generated), _pad_rows(truth))
    psnr = np.asarray(psnr)[:n]
    psnr = np.where(np.isfinite(psnr), np.minimum(psnr, PSNR_CAP), PSNR_CAP)
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(np.asarray(ssim)[:n]))}


def box_pixels(box: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
    """A ``(y0, x0, y1, x1)`` box normalised to [0, 1] -> integer pixel bounds, at least one
    pixel each way (a box of a few pixels still scores)."""
    y0, x0 = int(np.floor(box[0] * h)), int(np.floor(box[1] * w))
    y1, x1 = int(np.ceil(box[2] * h)), int(np.ceil(box[3] * w))
    y0, x0 = min(max(y0, 0), h - 1), min(max(x0, 0), w - 1)
    return y0, x0, max(y1, y0 + 1), max(x1, x0 + 1)


def mouth_psnr(generated: np.ndarray, truth: np.ndarray, boxes: np.ndarray) -> float:
    """Mean over frames of the PSNR (dB, images in [0, 1], capped at ``PSNR_CAP``) inside each
    frame's mouth box: the lips are a few percent of a frame, so a whole-frame PSNR hides them.
    uint8 ``generated, truth [N, H, W, 3]``, ``boxes [N, 4]`` ``(y0, x0, y1, x1)`` in [0, 1]."""
    n = len(generated)
    if n == 0 or len(truth) != n or len(boxes) != n:
        raise ValueError(f"mouth_psnr: {n} generated vs {len(truth)} true frames vs {len(boxes)} boxes")
    h, w = truth.shape[1:3]
    out = []
    for g, t, b in zip(generated, truth, np.asarray(boxes, np.float64)):
        y0, x0, y1, x1 = box_pixels(b, h, w)
        d = g[y0:y1, x0:x1].astype(np.float64) / 255.0 - t[y0:y1, x0:x1].astype(np.float64) / 255.0
        mse = float(np.mean(d ** 2))
        out.append(PSNR_CAP if mse == 0.0 else min(10.0 * np.log10(1.0 / mse), PSNR_CAP))
    return float(np.mean(out))


def _pad_rows(x: np.ndarray) -> np.ndarray:
    """Pad ``[N, ...]`` to a power-of-two N (>= 8) with copies of the last row: a few compiled
    shapes whatever the clip lengths (the per-image scores of the copies are dropped)."""
    x = np.asarray(x)
    n = max(8, 1 << max(0, len(x) - 1).bit_length())
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), 0)]) if n > len(x) else x


@jax.jit
def _pix(a, b):   # uint8 [N, H, W, 3] pairs -> per-image PSNR [N] and SSIM [N] of images in [0, 1]
    a, b = a.astype(jnp.float32) / 255.0, b.astype(jnp.float32) / 255.0
    return dm_pix.psnr(a, b), dm_pix.ssim(a, b)


def sharpness(frames: np.ndarray) -> float:
    """Mean variance of the Laplacian of the grey frames (uint8 ``[N, H, W, 3]``): falls as a
    video blurs (long-horizon drift), 0 for a flat image."""
    import cv2  # noqa: PLC0415 (the media extra)
    return float(np.mean([cv2.Laplacian(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY),
                                        cv2.CV_64F).var() for f in frames]))


def far_threshold(impostor: np.ndarray, far: float) -> float:
    """The verification threshold at false-accept rate ``far``: the lowest ``t`` with
    ``#(impostor > t) / #impostor <= far`` (``tar_at_far``'s rule). Needs ``>= 1/far`` scores,
    else the FAR cannot be resolved and this raises ValueError."""
    impostor = np.asarray(impostor, np.float64).ravel()
    if len(impostor) * far < 1.0 - 1e-9:
        raise ValueError(f"identity calibration: {len(impostor)} impostor pairs cannot resolve "
                         f"FAR={far:g} (need >= {int(np.ceil(1 / far))}): score more test clips")
    return tar_at_far(impostor[:1], impostor, far)[1]


def impostor_scores(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosines of every pair of L2-normalised embeddings ``[N, E]`` with different labels."""
    labels = np.asarray(labels).ravel()
    sim = np.asarray(emb, np.float64) @ np.asarray(emb, np.float64).T
    iu = np.triu_indices(len(labels), k=1)
    return sim[iu][labels[iu[0]] != labels[iu[1]]]


def pose_std_deg(ypr: np.ndarray) -> float:
    """Head-pose standard deviation over time (radians ``[F, 3]``), mean over yaw, pitch and
    roll, in degrees. 0 for a static head."""
    return float(np.mean(np.std(np.asarray(ypr, np.float64), axis=0)) * 180.0 / np.pi)


def majority_fraction(visemes: np.ndarray) -> float:
    """Accuracy of always answering the clip's most frequent viseme (labels < 0 ignored)."""
    v = np.asarray(visemes).ravel()
    v = v[v >= 0]
    return float(np.max(np.bincount(v)) / len(v)) if len(v) else 0.0


def segments(n: int, length: int) -> list[tuple[int, int]]:
    """``[start, end)`` frame ranges of consecutive segments of ``length`` frames covering
    ``[0, n)``; a last partial segment is kept only if at least half as long."""
    out = [(s, min(s + length, n)) for s in range(0, n, length)]
    if len(out) > 1 and out[-1][1] - out[-1][0] < length / 2:
        out.pop()
    return out
