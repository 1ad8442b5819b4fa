"""Synthetic inputs for the ingestion tools' tests and benchmark: cartoon faces, talking videos.

Why a drawn face and not the built-in renderer's heads: OpenCV's Haar cascades find the
renderer's cartoon heads only now and then (checked at 128 and 192 px: ``_alt2`` in about
half of the frames, ``_default`` almost never), while the flat face drawn here (skin ellipse,
dark brows and pupils in white eyes, a red mouth) is found by ``_alt2``, ``_alt`` and
``_default`` in every frame from 96 to 256 px on backgrounds from grey 10 to 150 (a
background as bright as the skin, grey ~190, hides its outline and it is lost).
"""
from __future__ import annotations

import fractions
from collections.abc import Callable

import cv2
import numpy as np

SKIN_RGB = (225, 180, 150)
MOUTH_RGB = (140, 40, 40)


def draw_face(img: np.ndarray, cx: float, cy: float, s: float, mouth: float = 1.0) -> None:
    """Draw a face of height ~1.1 s centred at (cx, cy) in place on RGB uint8 ``img``;
    ``mouth`` in [0, 1] is the opening. The mouth centre is at (cx, cy + 0.28 s)."""
    def p(dx, dy):
        return int(round(cx + dx * s)), int(round(cy + dy * s))

    aa = cv2.LINE_AA
    cv2.ellipse(img, p(0, 0), (int(.42 * s), int(.55 * s)), 0, 0, 360, SKIN_RGB, -1, aa)
    for sx in (-1, 1):
        cv2.line(img, p(sx * .18 - .1, -.21), p(sx * .18 + .1, -.21), (60, 50, 40),
                 max(2, int(.04 * s)), aa)
        cv2.ellipse(img, p(sx * .18, -.1), (int(.09 * s), int(.045 * s)), 0, 0, 360,
                    (255, 255, 255), -1, aa)
        cv2.circle(img, p(sx * .18, -.1), int(.04 * s), (30, 30, 30), -1, aa)
    cv2.line(img, p(0, -.05), p(0, .12), (190, 140, 110), max(1, int(.03 * s)), aa)
    cv2.ellipse(img, p(0, .28), (int(.14 * s), max(1, int(.08 * s * mouth + .01 * s))), 0, 0,
                360, MOUTH_RGB, -1, aa)


def write_video(path, frame_fn: Callable[[int], np.ndarray], n: int, fps: float = 30, *,
                audio_fn: Callable[[int, int], np.ndarray] | None = None, sr: int = 44100,
                channels: int = 2, pts_ms=None, rotation: int = 0, crf: int = 10) -> None:
    """H.264 mp4/mov/mkv of ``n`` RGB frames ``frame_fn(j)`` [H,W,3] (even H, W) and, when
    ``audio_fn(num_samples, sr) -> [channels, num_samples]`` float32 is given, an AAC track
    of the video's duration. ``frame_fn=None`` writes audio only. ``pts_ms``: per-frame
    timestamps in ms (variable frame rate); ``rotation``: display matrix, counter-clockwise
    degrees (how a phone marks a sideways recording)."""
    import av  # noqa: PLC0415 (the media extra)

    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as c:
        if frame_fn is not None:
            h, w = frame_fn(0).shape[:2]
            vs = c.add_stream("libx264", rate=int(round(fps)))
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.options = {"crf": str(crf), "preset": "ultrafast"}
            if pts_ms is not None:
                vs.codec_context.time_base = vs.time_base = tb
            if rotation:
                vs.set_display_rotation(rotation)
        if audio_fn is not None:
            a = c.add_stream("aac", rate=sr)
            a.layout = "stereo" if channels == 2 else "mono"
        if frame_fn is not None:
            for j in range(n):
                f = av.VideoFrame.from_ndarray(frame_fn(j), format="rgb24")
                if pts_ms is not None:
                    f.pts, f.time_base = int(pts_ms[j]), tb
                for pkt in vs.encode(f):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
        if audio_fn is not None:
            dur = (pts_ms[-1] / 1000 + 1 / fps) if pts_ms is not None else n / fps
            x = np.ascontiguousarray(audio_fn(int(round(dur * sr)), sr), np.float32)
            fr = av.AudioFrame.from_ndarray(x.reshape(channels, -1), format="fltp",
                                            layout=a.layout.name)
            fr.sample_rate, fr.pts = sr, 0
            for pkt in list(a.encode(fr)) + list(a.encode(None)):
                c.mux(pkt)
