"""Faces in real footage: detection, a stable track, square crops, mouth boxes, pose.

Detectors (boxes are ``[N,4]`` float ``(x0, y0, x1, y1)`` in source pixels, largest first):

* :class:`HaarDetector` (default): OpenCV's shipped Viola-Jones cascade
  ``haarcascade_frontalface_alt2.xml`` (OpenCV 4.x wheels ship it; ``--detector_model`` may
  name another cascade xml). Chosen over ``_default`` because on the built-in renderer's
  heads it fired in about half of the frames where ``_default`` almost never did; Haar
  cascades find frontal and moderately turned faces, not profiles. Runs on a histogram-
  equalised grey image whose longer side is at most 480 px (videos --detect_side, default 480): faster, and
  finer scales only add false hits.
* :class:`MediapipeDetector`: a user-provided MediaPipe Tasks face-detector model (``.tflite``,
  e.g. BlazeFace short-range); mediapipe wheels ship no models.
* :class:`MediapipeLandmarker` (optional, ``--landmarks PATH``, a FaceLandmarker ``.task``):
  478 landmarks and the facial transformation matrix on each output crop -> mouth box from
  the lip contour and head pose (``pose_valid=True``).

Track -> crop (why): per-frame detections jitter by several percent of the face size, and
training on crops that shake would teach the model to shake. So the largest face of each
frame is taken, gaps of at most ``max_gap`` frames are linearly interpolated, longer gaps
split the video into segments, and the crop centre and size are Gaussian-smoothed over time
(sigma ``smooth`` frames). The crop is a square of side ``crop_scale`` x the face-box side,
centred ``shift_up`` x side above the box centre (the Haar box spans brows to chin; the crop
should hold the hair), and is moved/shrunk to stay inside the image (never padded).

Mouth box without landmarks (the documented heuristic): in the face box (x0, y0, w, h) the
mouth is taken to lie in x in [0.22, 0.78] w and y in [0.62, 0.95] h. A Haar face box spans
about brows to chin, which puts the lips in its lower third; the band is wide so that head
turns and speakers' proportions stay inside (on the test videos' drawn face the mouth sits
at 0.75 h, 0.36-0.62 w). It is a heuristic, not checked against real faces here: give
``--landmarks`` when mouth boxes matter (the lip-reading loss crops them). The box follows
the face box lightly smoothed (sigma 1 frame), so it moves with the head inside the crop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from data_pipelines.ingest.common import Skip
from data_pipelines.schema import matrix_to_pose

DEFAULT_CASCADE = "haarcascade_frontalface_alt2.xml"
MOUTH_IN_FACE = (0.62, 0.22, 0.95, 0.78)  # (y0, x0, y1, x1) as fractions of the face box

# MediaPipe face-mesh indices of the outer lip contour (landmarks 0..467).
LIP_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39,
             40, 185)


# ----------------------------------------------------------------------------- detectors
class HaarDetector:
    """OpenCV cascade face detector on grey frames. ``wants = "gray"``."""

    wants = "gray"

    def __init__(self, model_path: str | None = None, max_side: int = 480,
                 min_face: float = 0.08):
        path = model_path or os.path.join(cv2.data.haarcascades, DEFAULT_CASCADE)
        try:
            self.cascade = cv2.CascadeClassifier(path)
        except (cv2.error, SystemError):  # OpenCV raises on a malformed xml
            self.cascade = None
        if self.cascade is None or self.cascade.empty():
            raise ValueError(f"{path}: expected an OpenCV Haar cascade .xml file")
        self.max_side, self.min_face = int(max_side), float(min_face)

    def __call__(self, gray: np.ndarray) -> np.ndarray:
        """grey uint8 [H,W] -> boxes [N,4] (x0,y0,x1,y1) in pixels of ``gray``, largest first."""
        h, w = gray.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(gray, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA
                           ) if s < 1 else gray
        m = max(20, int(self.min_face * min(small.shape)))
        hits = self.cascade.detectMultiScale(cv2.equalizeHist(small), scaleFactor=1.1,
                                             minNeighbors=5, minSize=(m, m))
        if len(hits) == 0:
            return np.zeros((0, 4), np.float32)
        b = np.asarray(hits, np.float32) / s
        b = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)
        return b[np.argsort(-(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), kind="stable")]


def _mediapipe():
    try:
        import mediapipe as mp  # noqa: F401, PLC0415 (optional MediaPipe dependency)
        from mediapipe.tasks.python import vision  # noqa: PLC0415 (optional MediaPipe dependency)
        from mediapipe.tasks.python.core.base_options import BaseOptions  # noqa: PLC0415 (optional MediaPipe dependency)
    except ImportError:
        raise ImportError("--detector mediapipe / --landmarks need the mediapipe package "
                          "(pip install mediapipe)") from None
    return mp, vision, BaseOptions


class MediapipeDetector:
    """MediaPipe Tasks FaceDetector from a user-provided ``.tflite``. ``wants = "rgb24"``."""

    wants = "rgb24"

    def __init__(self, model_path: str, min_confidence: float = 0.5):
        mp, vision, BaseOptions = _mediapipe()
        self._mp = mp
        self._det = vision.FaceDetector.create_from_options(vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=model_path),
            min_detection_confidence=min_confidence))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        img = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        boxes = [(d.bounding_box.origin_x, d.bounding_box.origin_y,
                  d.bounding_box.origin_x + d.bounding_box.width,
                  d.bounding_box.origin_y + d.bounding_box.height)
                 for d in self._det.detect(img).detections]
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        return b[np.argsort(-(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), kind="stable")]


class MediapipeLandmarker:
    """MediaPipe Tasks FaceLandmarker (``.task``): crop -> (landmarks [478,3] in crop-normalised
    x, y, or None; 4x4 facial transformation matrix or None)."""

    def __init__(self, model_path: str):
        mp, vision, BaseOptions = _mediapipe()
        self._mp = mp
        self._lm = vision.FaceLandmarker.create_from_options(vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=model_path), num_faces=1,
            output_facial_transformation_matrixes=True))

    def __call__(self, rgb: np.ndarray):
        img = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        res = self._lm.detect(img)
        if not res.face_landmarks:
            return None, None
        pts = np.array([(p.x, p.y, p.z) for p in res.face_landmarks[0]], np.float32)
        mats = res.facial_transformation_matrixes
        return pts, (np.asarray(mats[0], np.float32) if mats else None)


def make_detector(kind: str, model_path: str | None = None):
    if kind == "haar":
        return HaarDetector(model_path)
    if kind == "mediapipe":
        if not model_path:
            raise ValueError("--detector mediapipe: expected --detector_model PATH (.tflite)")
        return MediapipeDetector(model_path)
    raise ValueError(f"--detector {kind}: expected 'haar' or 'mediapipe'")


# ------------------------------------------------------------------ landmarks -> box, pose
def mouth_box_from_landmarks(pts: np.ndarray, pad: float = 0.15) -> np.ndarray:
    """Landmarks [478,3] (x, y normalised) -> (y0, x0, y1, x1) of the outer lips, padded by
    ``pad`` x the lip size on each side, clipped to [0, 1]."""
    lips = pts[list(LIP_OUTER), :2]
    (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
    px, py = pad * (x1 - x0), pad * max(y1 - y0, 0.3 * (x1 - x0))  # closed lips are thin
    return np.clip([y0 - py, x0 - px, y1 + py, x1 + px], 0.0, 1.0).astype(np.float32)


def pose_from_landmarks(pts: np.ndarray, matrix: np.ndarray, nominal: float) -> np.ndarray:
    """(landmarks [478,3], facial transformation matrix [4,4]) -> pose [6] in the schema
    convention. MediaPipe's matrix maps the canonical face (x right, y up, z towards the
    viewer) into the camera frame with the same axes, i.e. its rotation block is the
    schema's head-in-camera R. (tx, ty): landmark centre in units of the crop half-size
    (x right, y down); scale: landmark extent / ``nominal`` (the extent at the nominal
    framing: face-box fraction of the crop)."""

    rot = np.asarray(matrix, np.float64)[:3, :3]
    rot = rot / np.cbrt(np.linalg.det(rot))  # drop any uniform scale
    ypr = matrix_to_pose(rot)
    xy = pts[:, :2]
    c = (xy.min(0) + xy.max(0)) / 2
    ext = float((xy.max(0) - xy.min(0)).max())
    return np.array([*ypr, 2 * c[0] - 1, 2 * c[1] - 1, ext / nominal], np.float32)


# ----------------------------------------------------------------------------- tracking
@dataclass
class Track:
    """Per-frame primary face box [N,4] (NaN where no face) and face segments [start, end)."""
    boxes: np.ndarray
    segments: list[tuple[int, int]]
    face_fraction: float
    several_fraction: float


def _comparable(boxes: np.ndarray, ratio: float) -> int:
    """How many of ``boxes`` (largest first) are at least ``ratio`` x the largest's side and
    do not overlap it by more than a third (nested/duplicate hits are not a second face)."""
    if len(boxes) < 2:
        return len(boxes)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    b0 = boxes[0]
    n = 1
    for b, s in zip(boxes[1:], side[1:]):
        iw = max(0.0, min(b[2], b0[2]) - max(b[0], b0[0]))
        ih = max(0.0, min(b[3], b0[3]) - max(b[1], b0[1]))
        if s >= ratio * side[0] and iw * ih <= (s * s) / 3:
            n += 1
    return n


def _near_border(box: np.ndarray, h: int, w: int, frac: float) -> bool:
    """The box is closer to an image border than ``frac`` x its size (the head around a Haar
    box extends about a quarter of its size beyond it: so close, the head is already cut)."""
    m = frac * max(box[2] - box[0], box[3] - box[1])
    return bool(box[0] < m or box[1] < m or box[2] > w - m or box[3] > h - m)


def track_faces(dets: list[np.ndarray], height: int, width: int, *, max_gap: int = 12,
                min_face_fraction: float = 0.5, several_ratio: float = 0.5,
                several_fraction: float = 0.2, border_frac: float = 0.25) -> Track:
    """Per-frame detections -> :class:`Track`; raises :class:`Skip` (no_face, several_faces,
    face_left_frame) by the rules in common.REASONS."""
    n = len(dets)
    has = np.array([len(d) > 0 for d in dets], bool)
    n_face = int(has.sum())
    face_fraction = n_face / max(n, 1)
    if face_fraction < min_face_fraction:
        raise Skip("no_face", f"face in {n_face} of {n} frames; expected at least "
                              f"{min_face_fraction:.0%}")
    multi = sum(_comparable(d, several_ratio) >= 2 for d in dets if len(d))
    several = multi / n_face
    if several >= several_fraction:
        raise Skip("several_faces", f"{multi} of {n_face} frames with a face show 2+ "
                                    f"comparable faces; expected one speaker")
    boxes = np.full((n, 4), np.nan, np.float32)
    for i, d in enumerate(dets):
        if len(d):
            boxes[i] = d[0]
    idx = np.flatnonzero(has)
    for i in idx:
        if boxes[i, 0] < 0 or boxes[i, 1] < 0 or boxes[i, 2] > width or boxes[i, 3] > height:
            raise Skip("face_left_frame", f"frame {i}: face box crosses the image border")
    # segments: runs of detections whose gaps are <= max_gap frames
    segments, start = [], idx[0]
    for a, b in zip(idx[:-1], idx[1:]):
        if b - a - 1 > max_gap:
            segments.append((int(start), int(a) + 1))
            start = b
    segments.append((int(start), int(idx[-1]) + 1))
    for s, e in segments:  # a face lost (or found) right at the border left (or entered) it
        for i, lost in ((s, s > 0), (e - 1, e < n)):
            if lost and _near_border(boxes[i], height, width, border_frac):
                raise Skip("face_left_frame", f"frame {i}: face lost next to the image border")
        for i in np.flatnonzero(has[s:e]) + s:
            if _near_border(boxes[i], height, width, border_frac / 5):
                raise Skip("face_left_frame", f"frame {i}: face box touches the image border")
    for s, e in segments:  # fill the short gaps inside each segment
        seg = boxes[s:e]
        ok = ~np.isnan(seg[:, 0])
        t = np.arange(e - s)
        for k in range(4):
            seg[:, k] = np.interp(t, t[ok], seg[ok, k])
    return Track(boxes, segments, face_fraction, several)


def smooth_crops(face: np.ndarray, height: int, width: int, *, crop_scale: float = 2.0,
                 shift_up: float = 0.1, smooth: float = 7.5) -> np.ndarray:
    """Face boxes of one segment [n,4] -> square crops [n,3] (cx, cy, side) in pixels:
    smoothed over time, moved and shrunk to stay inside the image."""
    side = crop_scale * np.maximum(face[:, 2] - face[:, 0], face[:, 3] - face[:, 1])
    cx = (face[:, 0] + face[:, 2]) / 2
    cy = (face[:, 1] + face[:, 3]) / 2 - shift_up * side
    if smooth > 0 and len(face) > 1:
        cx, cy, side = (gaussian_filter1d(v.astype(np.float64), smooth, mode="nearest")
                        for v in (cx, cy, side))
    side = np.minimum(side, min(height, width))
    cx = np.clip(cx, side / 2, width - side / 2)
    cy = np.clip(cy, side / 2, height - side / 2)
    return np.stack([cx, cy, side], -1).astype(np.float32)


def crop_resize(img: np.ndarray, crop: np.ndarray, res: int) -> np.ndarray:
    """uint8 [H,W,C] + (cx, cy, side) -> [res,res,C] (area filter when shrinking)."""
    cx, cy, side = (float(v) for v in crop)
    s = max(1, int(round(side)))
    x0 = int(np.clip(round(cx - s / 2), 0, img.shape[1] - s))
    y0 = int(np.clip(round(cy - s / 2), 0, img.shape[0] - s))
    patch = img[y0:y0 + s, x0:x0 + s]
    interp = cv2.INTER_AREA if s >= res else cv2.INTER_CUBIC
    return cv2.resize(patch, (res, res), interpolation=interp)


def face_in_crop(face: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """Face boxes [n,4] (pixels) -> boxes in crop-normalised (x0, y0, x1, y1) [n,4]."""
    x0 = crops[:, 0] - crops[:, 2] / 2
    y0 = crops[:, 1] - crops[:, 2] / 2
    return np.stack([(face[:, 0] - x0) / crops[:, 2], (face[:, 1] - y0) / crops[:, 2],
                     (face[:, 2] - x0) / crops[:, 2], (face[:, 3] - y0) / crops[:, 2]], -1)


def heuristic_mouth_boxes(face: np.ndarray, crops: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Face boxes [n,4] (pixels) + crops [n,3] -> mouth boxes (y0, x0, y1, x1) in [0,1] [n,4],
    from the MOUTH_IN_FACE fractions of the (lightly smoothed) face box."""
    f = gaussian_filter1d(face.astype(np.float64), sigma, axis=0, mode="nearest") \
        if sigma > 0 and len(face) > 1 else face.astype(np.float64)
    b = face_in_crop(f, crops)  # (x0, y0, x1, y1) normalised
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    fy0, fx0, fy1, fx1 = MOUTH_IN_FACE
    box = np.stack([b[:, 1] + fy0 * h, b[:, 0] + fx0 * w, b[:, 1] + fy1 * h, b[:, 0] + fx1 * w], -1)
    return np.clip(box, 0.0, 1.0).astype(np.float32)


def box_pose(face: np.ndarray, crops: np.ndarray, crop_scale: float) -> np.ndarray:
    """(tx, ty, scale) [n,3] of the face box in the crop (schema convention: centre in units
    of the crop half-size, x right / y down; scale 1 = the nominal framing, face side =
    crop side / crop_scale). The rotation stays unknown without landmarks."""
    b = face_in_crop(face.astype(np.float64), crops)
    tx = (b[:, 0] + b[:, 2]) - 1.0
    ty = (b[:, 1] + b[:, 3]) - 1.0
    s = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * crop_scale
    return np.stack([tx, ty, s], -1).astype(np.float32)
