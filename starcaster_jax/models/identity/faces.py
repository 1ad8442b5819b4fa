"""Reading images and making ArcFace crops: 5-point alignment, or a Haar-cascade fallback.

Why: face-recognition networks only give identity-faithful embeddings on crops framed like
their training data. insightface's ArcFace models were trained on 112x112 crops warped so the
5 landmarks (eyes, nose tip, mouth corners) land on a fixed template (``ARCFACE_TEMPLATE``),
with a least-squares *similarity* transform (rotation + uniform scale + translation; Umeyama,
as ``skimage.transform.SimilarityTransform.estimate`` in insightface's ``face_align``).

When no landmarks are given, the documented fallback is OpenCV's frontal-face Haar cascade
(shipped with the opencv-python 4.x wheels): the largest detected box is made square, centred
``HAAR_SHIFT`` box-heights below the box centre and enlarged by ``HAAR_ENLARGE``, cut out
(zero padding outside the image) and resized to 112. The numbers map the cascade's box (eye
distance ~0.4 of its width, eyes ~0.38 and mouth ~0.78 down) approximately onto the template's
framing (eye distance 0.31, eyes 0.46, mouth 0.82 of the crop). It is rougher than landmark
alignment (no roll correction): pass keypoints whenever a detector gives them.
"""
from __future__ import annotations

import os

import numpy as np

# insightface ``arcface_dst``: (x, y) of left eye, right eye, nose, left/right mouth corner, 112x112.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
ARCFACE_SIZE = 112
HAAR_ENLARGE = 1.3
HAAR_SHIFT = 0.05
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


class ImageReadError(ValueError):
    """A file is missing or is not a readable image."""


class FaceNotFoundError(ValueError):
    """No face could be located in an image."""


def _cv2():
    try:
        import cv2  # noqa: PLC0415 (the media extra)
    except ImportError:  # pragma: no cover - cv2 is a dependency of the identity extras
        raise ImportError("face cropping needs OpenCV: pip install opencv-python-headless") from None
    return cv2


def load_image(path: str) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` from an image file; one-line ``ImageReadError`` naming the file."""
    cv2 = _cv2()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: no such image file")
    img = cv2.imread(path, cv2.IMREAD_COLOR)  # also converts grey / drops alpha
    if img is None or img.size == 0:
        raise ImageReadError(f"{path}: not a readable image (unknown format or corrupt file)")
    return np.ascontiguousarray(img[..., ::-1])


def check_images(images, name: str = "images") -> np.ndarray:
    """``uint8 [B, H, W, 3]`` (a single ``[H, W, 3]`` image gets a batch axis)."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"{name}: expected RGB images [B, H, W, 3], got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 pixels in [0, 255], got dtype {a.dtype}")
    return a


def arcface_template(size: int = ARCFACE_SIZE) -> np.ndarray:
    """The 5-point template for a ``size`` crop (insightface ``estimate_norm``: 112 multiples
    scale it, 128 multiples also shift x by 8 * size/128)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112.0)
    if size % 128 == 0:
        r = size / 128.0
        return ARCFACE_TEMPLATE * r + np.array([8.0 * r, 0.0], np.float32)
    raise ValueError(f"ArcFace crops are 112 or 128 multiples, got {size}")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``[2, 3]`` mapping ``src [N, 2]`` onto ``dst [N, 2]`` (Umeyama 1991)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)                                   # [2, 2]
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var = (s0 ** 2).sum() / len(src)
    scale = (sig * d).sum() / var
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(image: np.ndarray, keypoints, size: int = ARCFACE_SIZE) -> np.ndarray:
    """``image uint8 [H, W, 3]``, ``keypoints [5, 2]`` (x, y pixels; order of the template) ->
    aligned crop ``uint8 [size, size, 3]``."""
    kp = np.asarray(keypoints, np.float32)
    if kp.shape != (5, 2):
        raise ValueError(f"keypoints: expected [5, 2] (x, y) per face, got shape {kp.shape}")
    m = similarity_transform(kp, arcface_template(size))
    cv2 = _cv2()
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def detect_faces(image: np.ndarray, *, min_size_frac: float = 0.1) -> np.ndarray:
    """Haar-cascade face boxes ``[N, 4]`` as ``(x, y, w, h)`` pixels, largest first."""
    cv2 = _cv2()
    casc = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, HAAR_CASCADE))
    if casc.empty():
        raise RuntimeError(f"OpenCV Haar cascade {HAAR_CASCADE} not found under cv2.data.haarcascades")
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    m = max(16, int(min(grey.shape) * min_size_frac))
    boxes = casc.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(m, m))
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    return boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")]


def crop_box(image: np.ndarray, box, size: int = ARCFACE_SIZE, *, enlarge: float = HAAR_ENLARGE,
             shift: float = HAAR_SHIFT) -> np.ndarray:
    """Square crop around ``box = (x, y, w, h)``: side ``max(w, h) * enlarge``, centre moved
    ``shift * h`` down, zero padded outside the image, resized to ``size``. ``uint8 [size, size, 3]``."""
    cv2 = _cv2()
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * enlarge
    cx, cy = x + w / 2.0, y + h / 2.0 + shift * h
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(1, int(round(side)))
    H, W = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    crop = image[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def face_crops(images, keypoints=None, *, size: int = ARCFACE_SIZE, aligned: bool = False,
               names=None) -> np.ndarray:
    """ArcFace input crops ``uint8 [B, size, size, 3]`` from ``images uint8 [B, H, W, 3]``.

    ``keypoints [B, 5, 2]`` -> similarity alignment; ``aligned=True`` -> images are already
    aligned ``size`` crops; otherwise the Haar fallback (``FaceNotFoundError`` naming the image
    when no face is found). ``names`` (e.g. file paths) make error messages point at the input.
    """
    images = check_images(images)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    if keypoints is not None:
        kps = np.asarray(keypoints, np.float32)
        if kps.shape != (len(images), 5, 2):
            raise ValueError(f"keypoints: expected [B, 5, 2] = {[len(images), 5, 2]} (x, y) pixels, "
                             f"got shape {list(kps.shape)}")
        return np.stack([align_face(im, kp, size) for im, kp in zip(images, kps)])
    if aligned:
        if images.shape[1:3] != (size, size):
            raise ValueError(f"aligned=True needs {size}x{size} crops, got {images.shape[1:3]}")
        return images
    out = []
    for im, name in zip(images, names):
        boxes = detect_faces(im)
        if not len(boxes):
            raise FaceNotFoundError(f"{name}: no face detected (OpenCV Haar cascade); pass 5 "
                                    f"keypoints or an aligned {size}x{size} crop")
        out.append(crop_box(im, boxes[0], size))
    return np.stack(out)
