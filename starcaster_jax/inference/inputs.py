"""A generation's user inputs, read and checked before any model is loaded: speech from an audio
or video file, the face crop of a reference image, an identity embedding from a ``.npy`` file.

Each problem raises ``GenerationError`` with a one-line message naming the file, so a launcher
reports a typo before it spends a model load.
"""
from __future__ import annotations

import os

import numpy as np

from starcaster_jax.inference.chunking import (
    SAMPLE_RATE,
    GenerationError,
    check_speech,
    normalize_embedding,
    resize_square,
)
from starcaster_jax.media.video import VIDEO_EXTENSIONS, MediaError, read_audio_from_video
from starcaster_jax.models.audio.io import load_audio
from starcaster_jax.models.identity.faces import crop_box, detect_faces

FACE_ENLARGE = 1.8   # talking-head framing: the crop side is 1.8x the detector's face box


def load_speech(path: str) -> np.ndarray:
    """Speech from an audio file (WAV/FLAC/MP3/...) or a video's audio track -> float32 mono
    16 kHz ``[S]``, checked by :func:`check_speech`. Other rates are resampled, stereo is
    downmixed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GenerationError(f"{path}: no such audio file")
    try:
        if path.lower().endswith(VIDEO_EXTENSIONS):
            raw = read_audio_from_video(path, SAMPLE_RATE)
            audio = load_audio(raw, SAMPLE_RATE)  # finiteness checks
        else:
            try:
                audio = load_audio(path, SAMPLE_RATE)
            except ValueError as first:  # a container libsndfile does not read: let libav try
                try:
                    audio = load_audio(read_audio_from_video(path, SAMPLE_RATE), SAMPLE_RATE)
                except MediaError:
                    raise GenerationError(str(first).splitlines()[0]) from None
    except MediaError as e:
        raise GenerationError(str(e)) from None
    except ValueError as e:
        if isinstance(e, GenerationError):
            raise
        raise GenerationError(f"{path}: {str(e).splitlines()[0]}") from None
    return check_speech(audio, path)


def reference_crop(image: np.ndarray, resolution: int, *, face_check: str = "auto",
                   name: str = "reference image") -> np.ndarray:
    """Square crop of the face in a reference image, ``uint8 [S, S, 3]`` (resized to the model
    resolution later by ``Generator.prepare_image``).

    ``face_check``: ``"on"`` runs OpenCV's face detector and crops around the largest face
    (no face -> ``GenerationError``); ``"off"`` takes the centre square as it is; ``"auto"``
    (default) treats an image no larger than the model resolution as an already-framed face
    crop (the built-in corpus's heads, too small for the detector) and checks anything larger
    (a photo).
    """
    if face_check not in ("auto", "on", "off"):
        raise ValueError(f"face_check: expected auto|on|off, got {face_check!r}")
    img = np.asarray(image)                                                   # [H, W, 3]
    if face_check == "off" or (face_check == "auto" and max(img.shape[:2]) <= resolution):
        return resize_square(img, min(img.shape[:2]))
    boxes = detect_faces(img)
    if not len(boxes):
        raise GenerationError(f"{name}: no face detected (OpenCV Haar cascade); give a photo with a "
                              f"visible frontal face, or a ready face crop with --face_check off")
    x, y, w, h = boxes[0]
    side = int(round(max(w, h) * FACE_ENLARGE))
    return crop_box(img, boxes[0], size=min(side, max(img.shape[:2])), enlarge=FACE_ENLARGE, shift=0.0)


def load_embedding(path: str, dim: int = 512) -> np.ndarray:
    """An identity embedding from a ``.npy`` file (``[dim]`` or ``[1, dim]``) -> L2-normalised
    float32 ``[dim]``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GenerationError(f"{path}: no such identity embedding file")
    try:
        e = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for bad files
        raise GenerationError(f"{path}: not a .npy array ({type(exc).__name__})") from None
    e = normalize_embedding(e, path)
    if e.shape != (dim,):
        raise GenerationError(f"{path}: expected a {dim}-d embedding, got shape {e.shape}")
    return e


__all__ = ["FACE_ENLARGE", "load_embedding", "load_speech", "reference_crop"]
