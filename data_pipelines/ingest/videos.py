"""CLI: a folder of talking videos -> fixed-length clip records (the video stream).

    python -m data_pipelines.ingest.videos --src DIR --out DIR [--clip_frames 100]
        [--resolution 256] [--detector haar|mediapipe] [--detector_model PATH]
        [--landmarks PATH] [--arcface MODEL.onnx [--arcface_mean]] [--crop_scale 2.0]
        [--split train] [--overwrite] [--quiet] [Beam options: --runner, --direct_num_workers ..]

Runs as an Apache Beam pipeline (beam.py): the DirectRunner on all local cores by default.

Every ``*.mp4|*.mov|*.mkv`` under ``--src`` (recursive) is read with PyAV; the result is
``<out>/video-<split>-NNNNN.array_record`` shards of ``schema`` records (readable as
``--config.data.sources.video=<out>/*.array_record``) and ``<out>/ingest_report.json``.

Per file (why each step):

1. Timestamps from the demuxed packets (no decoding): checks duration, variable and odd frame
   rates before paying for decoding (rules in common.REASONS).
2. Audio: decoded and resampled to 16 kHz mono by libswresample (``av.AudioResampler``,
   timeline preserving). The usable time span is where video and audio overlap.
3. Resampling to 25 fps by timestamps: output frame k covers ``[t0 + k/25, t0 + (k+1)/25)``
   and shows the source frame on screen at the centre of that interval (what a player shows),
   so a constant 30 fps source is decimated evenly, 50 fps exactly, 24 fps repeats one frame
   a second. Its audio is samples ``[k*640, (k+1)*640)`` counted from ``t0``: sync is kept to
   the sample whatever the source rates.
4. Pass 1 decodes the frames the grid needs as small grey images and detects faces; the
   track (faces.py) decides no_face / several_faces / face_left_frame and gives the face
   segments and smoothed square crops.
5. Pass 2 decodes again at full size, crops and resizes each frame, and writes clips of
   ``--clip_frames`` consecutive frames inside each face segment (the remainder of a segment
   is dropped) as they complete, so memory holds one clip, not one video.

Record fields (schema.py): frames [F,R,R,3] RGB uint8, audio [F*640], mouth_box [F,4]
(landmarks if ``--landmarks`` else the face-box heuristic of faces.py), pose [F,6]: with
landmarks the head pose by solvePnP (pose.py; ``pose_valid=True`` when >= 90% of the clip's
frames fit), else rotation 0 and (tx, ty, scale) of the face box in the crop with
``pose_valid=False`` (the loader then drops the view condition); viseme -1, expression
invalid; with ``--arcface`` id_embedding is the ArcFace embedding (arcface.py) and
id_vector_valid True, else id_embedding is empty and id_vector_valid False.
``key`` is ``ingest/<path>/f<first 25 fps frame>``.

Identity: the first folder under ``--src`` names the identity (VoxCeleb-like
``<id>/<video>/<clip>.mp4``); a file directly in ``--src`` is its own identity. Labels are
the sorted names' indices (listed in the report). Videos carrying a display-rotation matrix
(phones) are turned upright first.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from data_pipelines import schema
from data_pipelines.ingest import arcface, beam, common, faces
from data_pipelines.ingest import pose as posemod
from data_pipelines.ingest.common import Skip
from data_pipelines.synthetic import landmarks

VIDEO_EXTS = (".mp4", ".mov", ".mkv")
# FFmpeg demuxers of image files (besides the "<codec>_pipe" ones: png_pipe, jpeg_pipe, ...): an
# image named .mp4 opens as a video stream without audio, and is "unreadable", not "no audio".
IMAGE_DEMUXERS = ("image2", "gif", "apng")
FPS, SR, S = schema.FPS, schema.SAMPLE_RATE, schema.SAMPLES_PER_FRAME
MIN_FPS, MAX_FPS = 23.5, 240.0
VFR_TOL, VFR_MAX_FRACTION = 0.25, 0.02
DETECT_SIDE = 480  # default --detect_side: longer side of the grey frames faces are found on
POSE_MIN_FIT = 0.9  # a clip's pose is valid when solvePnP fits at least this share of frames


def _av():
    import av  # local: `--help` and CLI misuse answer without loading FFmpeg  # noqa: PLC0415 (the media extra)

    return av


def identity_of(rel: str) -> str:
    parts = rel.replace(os.sep, "/").split("/")
    return parts[0] if len(parts) > 1 else os.path.splitext(parts[0])[0]


# ------------------------------------------------------------------------------ probing
def probe(path: str) -> dict[str, Any]:
    """Streams and sorted video timestamps (seconds) from the demuxed packets."""
    av = _av()
    try:
        with av.open(path) as c:
            fmt = c.format.name
            if fmt in IMAGE_DEMUXERS or fmt.endswith("_pipe"):  # images open as 1-stream video
                raise Skip("unreadable", f"{path}: an image file ({fmt}); expected a video "
                                         "container")
            if not c.streams.video:
                raise Skip("no_video_stream", f"{path}: expected a video stream, found "
                                              f"{[s.type for s in c.streams] or 'none'}")
            if not c.streams.audio:
                raise Skip("no_audio_stream", f"{path}: expected an audio stream")
            vs = c.streams.video[0]
            tb = float(vs.time_base)
            pts = [p.pts for p in c.demux(vs) if p.size]
            w, h = vs.codec_context.width, vs.codec_context.height
    except Skip:
        raise
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise Skip("unreadable", f"{path}: expected a media container ({e})") from None
    if not pts:
        raise Skip("too_short", f"{path}: video stream holds no frames")
    if any(p is None for p in pts):
        raise Skip("unreadable", f"{path}: video packets carry no timestamps")
    times = np.sort(np.asarray(pts, np.float64)) * tb
    return {"pts": sorted(pts), "times": times, "width": w, "height": h}


def check_rate(times: np.ndarray, clip_frames: int, path: str) -> float:
    """Sorted frame times -> the constant frame rate; Skip on too short / VFR / odd rate."""
    if len(times) < 2:
        raise Skip("too_short", f"{path}: {len(times)} frame(s); expected {clip_frames} at 25 fps")
    d = np.diff(times)
    med = float(np.median(d))
    if med <= 0:
        raise Skip("variable_frame_rate", f"{path}: repeated frame timestamps")
    if (times[-1] - times[0] + med) * FPS < clip_frames:
        raise Skip("too_short", f"{path}: {times[-1] - times[0] + med:.2f} s; expected at "
                                f"least {clip_frames / FPS:.2f} s ({clip_frames} frames at 25 fps)")
    bad = np.abs(d - med) > VFR_TOL * med
    if bad.mean() > VFR_MAX_FRACTION:
        raise Skip("variable_frame_rate", f"{path}: {int(bad.sum())} of {len(d)} frame intervals "
                                          f"differ from the median ({1 / med:.2f} fps) by >25%")
    fps = 1.0 / med
    if not MIN_FPS <= fps <= MAX_FPS:
        raise Skip("odd_frame_rate", f"{path}: {fps:.2f} fps; expected {MIN_FPS}-{MAX_FPS:.0f} fps")
    return fps


def decode_audio(path: str) -> tuple[np.ndarray, float]:
    """-> (16 kHz mono float32 [n], start time of the first sample in seconds)."""
    av = _av()
    res = av.AudioResampler(format="flt", layout="mono", rate=SR)
    chunks, start = [], None
    try:
        with av.open(path) as c:
            for fr in c.decode(c.streams.audio[0]):
                if start is None:
                    start = float(fr.time) if fr.time is not None else 0.0
                chunks += [o.to_ndarray().reshape(-1) for o in res.resample(fr)]
            chunks += [o.to_ndarray().reshape(-1) for o in res.resample(None)]
    except av.FFmpegError as e:
        raise Skip("corrupt_stream", f"{path}: audio decoding failed ({e})") from None
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise Skip("no_audio_stream", f"{path}: the audio stream decodes to no samples")
    if not np.isfinite(audio).all():
        raise Skip("corrupt_stream", f"{path}: audio holds NaN/Inf samples")
    return np.clip(audio, -1.0, 1.0), start or 0.0


def frame_grid(times: np.ndarray, fps: float, a0: float, n_audio: int) -> tuple[np.ndarray, float]:
    """-> (source frame index per 25 fps output frame [N], output start time t0)."""
    t0 = max(float(times[0]), a0)
    t1 = min(float(times[-1]) + 1.0 / fps, a0 + n_audio / SR)
    n = max(0, math.floor((t1 - t0) * FPS + 1e-6))
    centres = t0 + (np.arange(n) + 0.5) / FPS
    return np.searchsorted(times, centres, side="right") - 1, t0


# ----------------------------------------------------------------------------- decoding
def decode_frames(path: str, pts: list[int], wanted: np.ndarray, fmt: str,
                  scale: float = 1.0) -> Iterator[tuple[int, np.ndarray, int]]:
    """Yield (source index, upright uint8 image, quarter turns applied) for the source
    indices in ``wanted``, in order; ``fmt`` "gray" or "rgb24", ``scale`` < 1 shrinks
    (swscale, area filter). Upright: the display matrix's counter-clockwise rotation (a
    multiple of 90 degrees) is applied, as a player would."""
    av = _av()
    index = {p: i for i, p in enumerate(pts)}
    want = set(int(i) for i in wanted)
    try:
        with av.open(path) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            for fr in c.decode(vs):
                j = index.get(fr.pts)
                if j is None or j not in want:
                    continue
                kw = {}
                if scale < 1:
                    kw = {"width": max(2, round(fr.width * scale)),
                          "height": max(2, round(fr.height * scale)), "interpolation": "AREA"}
                turns = int(round((fr.rotation or 0) / 90.0)) % 4
                img = fr.to_ndarray(format=fmt, **kw)
                yield j, (np.ascontiguousarray(np.rot90(img, turns)) if turns else img), turns
    except av.FFmpegError as e:
        raise Skip("corrupt_stream", f"{path}: video decoding failed ({e})") from None


# ------------------------------------------------------------------------------- ingest
@dataclasses.dataclass
class Settings:
    """What one run does to every video (the CLI flags; ``smooth`` is the crop's temporal
    Gaussian sigma in 25 fps frames)."""
    clip_frames: int = 100
    resolution: int = 256
    crop_scale: float = 2.0
    smooth: float = 7.5
    detector: Any = dataclasses.field(default_factory=faces.HaarDetector)
    landmarker: Any = None
    arcface: Any = None  # arcface.ArcFace, or None: id_vector_valid stays False
    arcface_mean: bool = False
    arcface_stride: int = 5
    detect_side: int = DETECT_SIDE


def ingest_video(path: str, rel: str, label: int, cfg: Settings,
                 writer: common.ShardWriter) -> dict[str, Any]:
    """One video -> records written to ``writer``; -> report details. Raises Skip."""
    common.check_ascii(rel)
    if os.path.getsize(path) == 0:
        raise Skip("empty_file", f"{rel}: zero bytes")
    info = probe(path)
    fps = check_rate(info["times"], cfg.clip_frames, rel)
    audio, a0 = decode_audio(path)
    src, t0 = frame_grid(info["times"], fps, a0, audio.size)  # [N]
    n = len(src)
    if n < cfg.clip_frames:
        raise Skip("too_short", f"{rel}: {n} frames at 25 fps with audio; expected "
                                f"{cfg.clip_frames}")
    # pass 1: detect on small frames of the sources the grid uses
    scale = min(1.0, cfg.detect_side / max(info["width"], info["height"]))
    det_of: dict[int, np.ndarray] = {}
    turns = None
    # `turns` is read after the loop: the rotation of the last decoded frame.
    for j, img, turns in decode_frames(path, info["pts"], np.unique(src), cfg.detector.wants,  # noqa: B007
                                       scale):
        det_of[j] = cfg.detector(img) / scale
    if turns is None:
        raise Skip("corrupt_stream", f"{rel}: no frame could be decoded")
    hh, ww = info["height"], info["width"]
    if turns % 2:  # upright full size
        hh, ww = ww, hh
    dets = [det_of.get(int(j), np.zeros((0, 4), np.float32)) for j in src]
    track = faces.track_faces(dets, hh, ww)
    clips = [(s + i * cfg.clip_frames, s + (i + 1) * cfg.clip_frames)
             for s, e in track.segments for i in range((e - s) // cfg.clip_frames)]
    if not clips:
        longest = max(e - s for s, e in track.segments)
        raise Skip("too_short", f"{rel}: longest face segment {longest} frames; expected "
                                f"{cfg.clip_frames}")
    crops = np.zeros((n, 3), np.float32)  # (cx, cy, side) per output frame
    for s, e in track.segments:
        crops[s:e] = faces.smooth_crops(track.boxes[s:e], hh, ww, crop_scale=cfg.crop_scale,
                                        smooth=cfg.smooth)
    # pass 2: full-size frames -> crops -> clips, written as each completes
    s0 = round((t0 - a0) * SR)
    need = np.concatenate([src[a:b] for a, b in clips])
    outputs_of: dict[int, list[int]] = {}
    for a, b in clips:
        for k in range(a, b):
            outputs_of.setdefault(int(src[k]), []).append(k)
    pending = {k: None for a, b in clips for k in range(a, b)}
    stats = {"pose_failed_frames": 0}
    written, clip_i = 0, 0
    try:
        for j, img, _ in decode_frames(path, info["pts"], need, "rgb24"):
            for k in outputs_of[j]:
                pending[k] = faces.crop_resize(img, crops[k], cfg.resolution)
            while clip_i < len(clips) and all(pending[k] is not None
                                              for k in range(*clips[clip_i])):
                a, b = clips[clip_i]
                frames = np.stack([pending.pop(k) for k in range(a, b)])  # [F,R,R,3]
                writer.write(_record(rel, label, a, frames, audio[s0 + a * S:s0 + b * S],
                                     track.boxes[a:b], crops[a:b], cfg, stats))
                written, clip_i = written + 1, clip_i + 1
    except Skip as err:
        if not written:
            raise
        err.partial = written  # type: ignore[attr-defined]
        raise
    if clip_i < len(clips):
        err = Skip("corrupt_stream", f"{rel}: frames missing on the second decoding pass")
        err.partial = written  # type: ignore[attr-defined]
        raise err
    return {"records": written, "frames": written * cfg.clip_frames,
            "source_fps": round(fps, 3), "duration_s": round(float(info["times"][-1] -
                                                                   info["times"][0] + 1 / fps), 3),
            "face_fraction": round(track.face_fraction, 3), "size": [ww, hh],
            "rotation": 90 * turns, **(stats if cfg.landmarker is not None else {})}


def _record(rel: str, label: int, first: int, frames: np.ndarray, audio: np.ndarray,
            face: np.ndarray, crops: np.ndarray, cfg: Settings,
            stats: dict[str, int]) -> dict[str, Any]:
    rec = schema.empty_like_real(frames)
    f, res = frames.shape[0], frames.shape[1]
    mouth = faces.heuristic_mouth_boxes(face, crops)  # [F,4]
    pose = np.zeros((f, 6), np.float32)
    pose[:, 3:] = faces.box_pose(face, crops, cfg.crop_scale)
    pose_valid = False
    box = faces.face_in_crop(face.astype(np.float64), crops) * res  # [F,4] crop pixels
    five = np.stack([arcface.five_from_box(b) for b in box])  # [F,5,2] crop pixels
    if cfg.landmarker is not None:
        mesh = np.full((f, 478, 2), np.nan)
        for i, fr in enumerate(frames):
            pts, _ = cfg.landmarker(fr)
            if pts is not None:
                mouth[i] = faces.mouth_box_from_landmarks(pts)
                mesh[i, :len(pts)] = pts[:, :2]
        named = posemod.from_mediapipe(mesh)  # [F,K,2], NaN where no face
        track = posemod.estimate(named)
        stats["pose_failed_frames"] += int((~track.fit_ok).sum())
        if track.fit_ok.mean() >= POSE_MIN_FIT:
            pose, pose_valid = track.pose, True
        have = np.isfinite(named).all((1, 2))
        five[have] = named[have][:, list(landmarks.FIVE)] * res
    rec_id = {}
    if cfg.arcface is not None:
        rec_id = dict(id_embedding=arcface.clip_embedding(cfg.arcface, frames, five,
                                                          cfg.arcface_mean, cfg.arcface_stride),
                      id_vector_valid=True)
    key_path = rel.replace(os.sep, "/")
    rec.update(key=f"ingest/{key_path}/f{first:06d}", source=f"ingest:{key_path}",
               audio=np.ascontiguousarray(audio, np.float32), pose=pose, pose_valid=pose_valid,
               mouth_box=mouth, id_label=int(label), **rec_id)
    return rec


def build_parser() -> common.OneLineParser:
    ap = common.OneLineParser(prog="python -m data_pipelines.ingest.videos",
                              description=__doc__.split("\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--clip_frames", type=int, default=100, help="frames per record (25 fps)")
    ap.add_argument("--detector", default="haar", choices=("haar", "mediapipe"))
    ap.add_argument("--detector_model", default=None,
                    help="haar: cascade .xml (default: OpenCV's frontalface_alt2); "
                         "mediapipe: face detector .tflite (required)")
    ap.add_argument("--landmarks", default=None,
                    help="MediaPipe FaceLandmarker .task: mouth boxes from the lips, head pose "
                         "by solvePnP (pose.py), 5-point ArcFace alignment")
    ap.add_argument("--arcface", default=None,
                    help="ArcFace ONNX model (insightface layout, [N,3,112,112] -> [N,E]): "
                         "fills id_embedding and sets id_vector_valid")
    ap.add_argument("--arcface_mean", action="store_true",
                    help="id_embedding = the clip's mean embedding (every --arcface_stride-th "
                         "frame) instead of the reference (first) frame's")
    ap.add_argument("--arcface_stride", type=int, default=5)
    ap.add_argument("--crop_scale", type=float, default=2.0, help="crop side / face-box side")
    ap.add_argument("--detect_side", type=int, default=DETECT_SIDE,
                    help="faces are detected on grey frames shrunk to this longer side")
    return ap


def make_settings(spec: dict[str, Any]) -> Settings:
    """The CLI's choices -> Settings with models loaded (runs once per Beam worker)."""
    local = {k: common.local_model(spec[k]) if spec[k] else spec[k]
             for k in ("detector_model", "landmarks", "arcface")}  # gs:// models: a local copy
    return Settings(spec["clip_frames"], spec["resolution"], spec["crop_scale"],
                    detector=faces.make_detector(spec["detector"], local["detector_model"]),
                    landmarker=(faces.MediapipeLandmarker(local["landmarks"])
                                if local["landmarks"] else None),
                    arcface=arcface.ArcFace(local["arcface"]) if local["arcface"] else None,
                    arcface_mean=spec["arcface_mean"], arcface_stride=spec["arcface_stride"],
                    detect_side=spec["detect_side"])


def ingest_item(item: tuple[str, str, int], cfg: Settings, writer) -> dict[str, Any]:
    """(src, rel, label) -> the input's report entry; records go to ``writer``. Never raises."""
    src, rel, label = item
    try:
        with common.local_input(common.join(src, rel)) as path:
            info = ingest_video(path, rel, label, cfg, writer)
    except Skip as err:
        return common.skip_entry(rel, err, getattr(err, "partial", 0))
    except Exception as e:  # noqa: BLE001 - one odd file must not end a long run
        print(f"warning: {rel}: {type(e).__name__}: {e}", file=sys.stderr)
        return common.skip_entry(rel, Skip("internal_error", f"{rel}: {type(e).__name__}: {e}"))
    return common.ok_entry(rel, identity=identity_of(rel), id_label=label, **info)


def main(argv: list[str] | None = None) -> int:
    """Parse our flags (the rest go to Beam), list the inputs, run the pipeline (beam.py)."""
    ap = build_parser()
    args, beam_args = ap.parse_known_args(argv)
    if args.clip_frames < 1:
        ap.error(f"--clip_frames {args.clip_frames}: expected at least 1")
    if args.detect_side < 32:
        ap.error(f"--detect_side {args.detect_side}: expected at least 32")
    if args.arcface_stride < 1:
        ap.error(f"--arcface_stride {args.arcface_stride}: expected at least 1")
    for opt in ("detector_model", "landmarks", "arcface"):
        p = getattr(args, opt)
        if p and not common.file_exists(p):
            ap.error(f"--{opt} {p}: expected an existing file")
    common.check_args(ap, args, "video")
    spec = {k: getattr(args, k) for k in ("clip_frames", "resolution", "detector",
                                          "detector_model", "landmarks", "crop_scale",
                                          "arcface", "arcface_mean", "arcface_stride",
                                          "detect_side")}
    try:
        make_settings(spec)  # fail here, in one line, not in every worker
    except (ImportError, ValueError, RuntimeError) as e:
        ap.error(str(e).splitlines()[0])

    files = common.list_inputs(args.src, VIDEO_EXTS)
    labels = common.identity_labels(identity_of(r) for r in files)
    src = common.absolute(args.src)
    settings = dict(spec, split=args.split)
    return beam.run(tool="videos", stream="video", items=[(src, r, labels[identity_of(r)])
                                                         for r in files],
                    make_settings=make_settings, spec=spec, ingest=ingest_item, args=args,
                    beam_args=beam_args, ap=ap, settings=settings, identities=labels)


if __name__ == "__main__":
    raise SystemExit(main())
