"""Head pose of real faces: 2-D landmarks -> solvePnP against a canonical 3-D face -> the
schema's per-frame pose ``(yaw, pitch, roll, tx, ty, scale)``.

Why solvePnP: a landmark detector gives 2-D points only; the pose that projects a known 3-D
face onto them is a perspective-n-point problem OpenCV solves (SQPnP: the global optimum
from as few as 3 points, then Levenberg-Marquardt refinement). The canonical face is the
built-in corpus's mean head (synthetic/landmarks.py), so the recovered pose is in the
corpus convention by construction, and the math is proven by recovering the corpus's own
poses (tests/test_pose.py).

Camera model: the image (the output crop for ingestion) is a pinhole image with the
corpus's field of view (``tan_half_fov``, corpus.TAN_HALF_FOV): camera x right, y up, z
towards the viewer, looking down -z (render.py). OpenCV's camera has y down and z forward,
so ``R = D R_cv``, ``t = D t_cv`` with ``D = diag(1, -1, -1)``. Then, as corpus._pose_and_box:
``tx = t_x / (depth tan)``, ``ty = -t_y / (depth tan)`` (the head centre in units of the
image half-size, y down), ``scale = nominal_distance / depth`` (depth = -t_z): 1 at the
corpus's framing. A real lens's focal length is unknown; the rotation barely depends on it
at face-crop fields of view, and training uses the pose relative to a clip frame.

Landmarks in: ``[F, K, 2]`` in image-normalised (x, y), x right, y down, in [0, 1], with the
K points of ``landmarks.NAMES`` (or any subset, given as indices), NaN where the detector
found nothing. MediaPipe's 478-point mesh maps to them with :func:`from_mediapipe`.

Per frame a fit fails (``fit_ok`` False) when there are too few points, the solver fails,
the head is behind the camera, |pitch| reaches 85 degrees, or the reprojection RMS exceeds
``max_rms`` x the landmarks' extent. The track is then smoothed (Gaussian, ``sigma`` frames,
angles unwrapped) over the frames that fit, and failed frames are interpolated from their
neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from data_pipelines import schema
from data_pipelines.synthetic import corpus, landmarks

D = np.diag([1.0, -1.0, -1.0])
MAX_PITCH = np.radians(85.0)

# landmarks.NAMES -> MediaPipe face-mesh indices averaged for that point (subject's right is
# the image left of a frontal face): eye = mean of its two corners, brow = its middle.
MEDIAPIPE_POINTS = {
    "right_eye": (33, 133), "left_eye": (362, 263), "nose_tip": (1,), "mouth_right": (61,),
    "mouth_left": (291,), "right_brow": (105,), "left_brow": (334,), "chin": (152,),
    "nose_bridge": (168,),
}


def from_mediapipe(mesh: np.ndarray) -> np.ndarray:
    """MediaPipe landmarks [..., 478 (or 468), >=2] -> the named points [..., K, 2]."""
    mesh = np.asarray(mesh, np.float64)
    return np.stack([mesh[..., list(MEDIAPIPE_POINTS[n]), :2].mean(-2)
                     for n in landmarks.NAMES], -2)


@dataclass
class PoseTrack:
    """pose [F,6] (smoothed, failed frames interpolated), fit_ok [F], rms [F] (reprojection
    error / landmark extent), raw [F,6] (per-frame fits, NaN where failed)."""
    pose: np.ndarray
    fit_ok: np.ndarray
    rms: np.ndarray
    raw: np.ndarray


def solve(points: np.ndarray, model: np.ndarray, *, tan_half_fov: float = corpus.TAN_HALF_FOV,
          nominal_distance: float = corpus.NOMINAL_DISTANCE) -> tuple[np.ndarray, float]:
    """One frame: points [K,2] (normalised image x, y; y down) + model [K,3] (head frame)
    -> (pose [6], reprojection RMS in image half-sizes); NaN pose when the solver fails."""
    uv = np.ascontiguousarray(2.0 * np.asarray(points, np.float64) - 1.0)  # [-1,1], y down
    obj = np.ascontiguousarray(model, np.float64)
    k = np.array([[1.0 / tan_half_fov, 0, 0], [0, 1.0 / tan_half_fov, 0], [0, 0, 1.0]])
    dist = np.zeros(4)
    try:
        ok, rvec, tvec = cv2.solvePnP(obj, uv, k, dist, flags=cv2.SOLVEPNP_SQPNP)
        if ok:
            rvec, tvec = cv2.solvePnPRefineLM(obj, uv, k, dist, rvec, tvec)
    except cv2.error:
        ok = False
    if not ok:
        return np.full(6, np.nan), np.inf
    proj, _ = cv2.projectPoints(obj, rvec, tvec, k, dist)
    rms = float(np.sqrt(((proj.reshape(-1, 2) - uv) ** 2).sum(-1).mean()))
    rot_cv, _ = cv2.Rodrigues(rvec)
    rot, t = D @ rot_cv, D @ tvec.reshape(3)
    depth = -t[2]
    if depth <= 0:
        return np.full(6, np.nan), np.inf
    ypr = schema.matrix_to_pose(rot).astype(np.float64)
    return np.array([*ypr, t[0] / (depth * tan_half_fov), -t[1] / (depth * tan_half_fov),
                     nominal_distance / depth]), rms


def estimate(points: np.ndarray, model: np.ndarray | None = None, *, sigma: float = 1.0,
             max_rms: float = 0.05, min_points: int = 5, **camera) -> PoseTrack:
    """A clip's landmarks [F,K,2] (NaN = missing) -> :class:`PoseTrack`.

    ``model`` [K,3] defaults to the canonical face (landmarks.canonical_face()); ``camera``:
    ``tan_half_fov``, ``nominal_distance`` of :func:`solve`.
    """
    pts = np.asarray(points, np.float64)
    model = landmarks.canonical_face() if model is None else np.asarray(model, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (model.shape[0], 2):
        raise ValueError(f"landmarks: expected shape [F, {model.shape[0]}, 2], got {pts.shape}")
    n = pts.shape[0]
    raw = np.full((n, 6), np.nan)
    rms = np.full(n, np.inf)
    for f in range(n):
        have = np.isfinite(pts[f]).all(-1)
        if have.sum() < min_points:
            continue
        p, e = solve(pts[f, have], model[have], **camera)
        extent = float(np.ptp(pts[f, have], 0).max()) * 2.0  # in image half-sizes
        rms[f] = e / max(extent, 1e-9)
        if np.isfinite(p).all() and abs(p[1]) < MAX_PITCH and rms[f] <= max_rms:
            raw[f] = p
    ok = np.isfinite(raw).all(-1)
    return PoseTrack(smooth(raw, ok, sigma), ok, rms, raw)


def smooth(raw: np.ndarray, ok: np.ndarray, sigma: float) -> np.ndarray:
    """Per-frame poses [F,6] -> Gaussian-smoothed over the frames that fit (angles unwrapped,
    the scale in log space), failed frames linearly interpolated; identity if none fit."""
    n = raw.shape[0]
    out = np.tile(np.array([0, 0, 0, 0, 0, 1], np.float64), (n, 1))
    if not ok.any():
        return out.astype(np.float32)
    t = np.arange(n)
    good = raw[ok].copy()
    good[:, :3] = np.unwrap(good[:, :3], axis=0)
    good[:, 5] = np.log(good[:, 5])
    full = np.stack([np.interp(t, t[ok], good[:, k]) for k in range(6)], -1)
    if sigma > 0 and n > 1:
        full = gaussian_filter1d(full, sigma, axis=0, mode="nearest")
    full[:, 5] = np.exp(full[:, 5])
    full[:, :3] = np.angle(np.exp(1j * full[:, :3]))  # back to (-pi, pi]
    return full.astype(np.float32)
