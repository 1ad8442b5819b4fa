"""The field's standard metrics, accumulated video by video: FID, FVD, LSE-D / LSE-C, CSIM.

Why one accumulator: the video-directory evaluator (``launch/evaluate_videos.py``) and the
synthetic evaluation (``synthetic.evaluate``'s ``standard=``) feed it the same way, one
``(generated, real, audio)`` triple at a time, and get the same report. Each metric runs only when
its network was given (weights are the user's local files, nothing is downloaded); a video a
metric cannot score (too short for a clip, no audio, no face) is counted in ``skipped`` with the
reason, never silently dropped.

Protocols (also in the report's ``protocol`` entries):
    FID   Inception-style ONNX features of every frame (``fid_max_frames`` > 0: that many evenly
          spaced per video) of all generated vs all real videos, whole frame resized to the
          graph's input (299), RGB, ``inception_range`` (default [0, 1], pytorch-fid's input).
    FVD   I3D ONNX features of non-overlapping clips of T frames (the graph's T, else 16) from
          the start of each video (at most ``fvd_max_clips`` per video when > 0), 224 x 224, RGB,
          ``i3d_range`` (default [-1, 1], the TF-Hub I3D's input).
    LSE   ``lse.py`` (SyncNet, Wav2Lip's scores_LSE); the real videos' own audio gives the
          ceiling (``lse_real``).
    CSIM  ``csim.py`` (ArcFace cosine to the real video's first frame).
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from starcaster_jax.evaluation.standard import lse as lse_lib
from starcaster_jax.evaluation.standard.frechet import frechet_from_features
from starcaster_jax.evaluation.standard.onnx_features import OnnxFeatures, clip_starts, frame_indices

METRICS = ("fid", "fvd", "lse", "csim")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sampling and pre-processing choices (module docstring)."""
    fid_max_frames: int = 0
    fvd_max_clips: int = 0
    inception_range: str = "unit"
    i3d_range: str = "symmetric"
    csim_crop: str = "haar"
    csim_max_frames: int = 0
    batch_size: int = 16


class Skips:
    """Why videos were not scored: per metric (or ``all``), counted by reason."""

    def __init__(self):
        self.videos: dict[str, dict[str, str]] = {}

    def add(self, name: str, what: str, reason: str) -> None:
        self.videos.setdefault(name, {}).setdefault(what, reason)    # the first, most specific reason

    def summary(self) -> dict:
        by = Counter(f"{what}: {reason.split(' (')[0]}" for d in self.videos.values() for what, reason in d.items())
        return {"count": len(self.videos), "by_reason": dict(sorted(by.items())), "videos": self.videos}


def _mean(rows: list[dict], key: str) -> float | None:
    return float(np.mean([r[key] for r in rows])) if rows else None


class StandardMetrics:
    """``add(...)`` per video, then ``result()``. ``fid`` / ``fvd``: :class:`OnnxFeatures`
    (``kind="image"`` / ``"clip"``), ``lse``: :class:`~.lse.LSEScorer`, ``csim``:
    :class:`~.csim.CSIMScorer`; any may be None (that metric is reported as not computed)."""

    def __init__(self, *, fid: OnnxFeatures | None = None, fvd: OnnxFeatures | None = None,
                 lse=None, csim=None, settings: Settings | None = None, skips: Skips | None = None,
                 real_lse: bool = True):
        self.fid, self.fvd, self.lse, self.csim = fid, fvd, lse, csim
        self.settings, self.real_lse = settings or Settings(), real_lse
        self.skips = skips or Skips()
        self._feats = {("fid", "generated"): [], ("fid", "real"): [], ("fvd", "generated"): [], ("fvd", "real"): []}
        self._lse: dict[str, list] = {"generated": [], "real": []}
        self._csim: list[dict] = []
        self.videos = 0

    @classmethod
    def from_paths(cls, *, inception: str = "", i3d: str = "", syncnet: str = "", arcface: str = "",
                   settings: Settings | None = None, skips: Skips | None = None) -> StandardMetrics:
        """Load the networks whose paths are given (missing files, wrong layouts raise one line)."""
        from starcaster_jax.evaluation.standard.csim import CSIMScorer  # noqa: PLC0415 (onnxruntime, cv2: only with --arcface)
        from starcaster_jax.evaluation.standard.syncnet import load_syncnet  # noqa: PLC0415 (torch pickle reader: only with --syncnet)
        s = settings or Settings()
        return cls(
            fid=OnnxFeatures(inception, kind="image", pixel_range=s.inception_range, flag="--inception",
                             default_size=299, batch_size=s.batch_size) if inception else None,
            fvd=OnnxFeatures(i3d, kind="clip", pixel_range=s.i3d_range, flag="--i3d", default_size=224,
                             batch_size=max(1, s.batch_size // 4)) if i3d else None,
            lse=lse_lib.LSEScorer(load_syncnet(syncnet)) if syncnet else None,
            csim=CSIMScorer(arcface, crop=s.csim_crop, max_frames=s.csim_max_frames) if arcface else None,
            settings=s, skips=skips)

    def spawn(self, metrics=METRICS, *, real_lse: bool = True) -> StandardMetrics:
        """A fresh accumulator sharing these networks, restricted to ``metrics``."""
        nets = {m: getattr(self, m) if m in metrics else None for m in METRICS}
        return StandardMetrics(**nets, settings=self.settings, real_lse=real_lse)

    # -- per video
    def _clips(self, frames: np.ndarray) -> np.ndarray:
        t = self.fvd.frames
        starts = clip_starts(len(frames), t, self.settings.fvd_max_clips)
        return np.stack([frames[s:s + t] for s in starts]) if starts else np.zeros((0, t) + frames.shape[1:], np.uint8)

    def add(self, name: str, generated: np.ndarray, real: np.ndarray, *, audio: np.ndarray | None = None,
            real_audio: np.ndarray | None = None, fps: float = 25.0, real_fps: float = 25.0,
            reference: np.ndarray | None = None) -> None:
        """One video: ``generated`` / ``real`` RGB ``uint8 [F, H, W, 3]`` (lengths and sizes may
        differ); ``audio`` (float mono 16 kHz ``[S]``) drives the generated video, ``real_audio``
        is the real video's own track (either may be None); ``reference`` (``[H, W, 3]``, default
        ``real[0]``) is the identity CSIM compares with."""
        self.videos += 1
        if self.fid is not None:
            for side, f in (("generated", generated), ("real", real)):
                self._feats["fid", side].append(self.fid(f[frame_indices(len(f), self.settings.fid_max_frames)]))
        if self.fvd is not None:
            clips = {"generated": self._clips(generated), "real": self._clips(real)}
            short = [k for k, c in clips.items() if not len(c)]
            if short:
                self.skips.add(name, "fvd", f"shorter than {self.fvd.frames} frames ({' and '.join(short)})")
            else:
                for side, c in clips.items():
                    self._feats["fvd", side].append(self.fvd(c))
        if self.lse is not None:
            sides = [("generated", generated, audio, fps)] + ([("real", real, real_audio, real_fps)]
                                                               if self.real_lse else [])
            for side, frames, a, rate in sides:
                row = self._lse_one(frames, a, rate)
                if isinstance(row, str):
                    self.skips.add(name, f"lse_{side}" if side == "real" else "lse", row)
                else:
                    self._lse[side].append(dict(row, video=name))
        if self.csim is not None:
            from starcaster_jax.evaluation.standard.csim import NoFace  # noqa: PLC0415 (cv2/onnxruntime: only with --arcface)
            try:
                ref = real[0] if reference is None else reference
                self._csim.append(dict(self.csim.score(generated, ref), video=name))
            except NoFace as e:
                self.skips.add(name, "csim", str(e))

    def _lse_one(self, frames, audio, fps) -> dict | str:
        if audio is None:
            return "no audio"
        if abs(float(fps) - lse_lib.FPS) > 1e-3:
            return f"{fps:g} fps (SyncNet's windows need 25 fps)"
        try:
            return self.lse.score(frames, audio)
        except lse_lib.TooShort as e:
            return f"too short ({e})"

    # -- results
    def _frechet(self, kind: str, model: OnnxFeatures | None, flag: str) -> dict:
        if model is None:
            return {"computed": False, "why": f"no {flag} model given"}
        g, r = (np.concatenate(self._feats[kind, s]) if self._feats[kind, s] else np.zeros((0, 1))
                for s in ("generated", "real"))
        out = {"generated_samples": int(len(g)), "real_samples": int(len(r)), "protocol": model.protocol()}
        if len(g) < 2 or len(r) < 2:
            return dict(out, computed=False, why="fewer than 2 samples on a side")
        out.update(computed=True, value=frechet_from_features(g, r))
        if min(len(g), len(r)) <= g.shape[1]:
            out["note"] = (f"{min(len(g), len(r))} samples for {g.shape[1]}-d features: the covariance is "
                           "rank-deficient and the distance biased; compare only at equal sample counts")
        return out

    def result(self) -> dict:
        """``{metric: {"computed", "value"..., "protocol"}}``, ``"videos"`` and ``"skipped"``."""
        s = self.settings
        fid = self._frechet("fid", self.fid, "--inception")
        if fid.get("protocol"):
            fid["protocol"]["frames"] = ("all" if s.fid_max_frames <= 0
                                         else f"{s.fid_max_frames} evenly spaced per video")
        fvd = self._frechet("fvd", self.fvd, "--i3d")
        if fvd.get("protocol"):
            fvd["protocol"]["clips"] = ("non-overlapping from frame 0" +
                                        (f", at most {s.fvd_max_clips} per video" if s.fvd_max_clips > 0 else ""))
        if self.lse is None:
            lse = {"computed": False, "why": "no --syncnet model given"}
        else:
            g, r = self._lse["generated"], self._lse["real"]
            lse = {"computed": bool(g), "lse_d": _mean(g, "lse_d"), "lse_c": _mean(g, "lse_c"),
                   "videos": len(g), "lse_d_real": _mean(r, "lse_d"), "lse_c_real": _mean(r, "lse_c"),
                   "videos_real": len(r), "per_video": g, "per_video_real": r, "protocol": lse_lib.PROTOCOL}
        if self.csim is None:
            csim = {"computed": False, "why": "no --arcface model given"}
        else:
            csim = {"computed": bool(self._csim), "value": _mean(self._csim, "csim"), "videos": len(self._csim),
                    "per_video": self._csim, "protocol": self.csim.protocol()}
        return {"videos": self.videos, "fid": fid, "fvd": fvd, "lse": lse, "csim": csim,
                "skipped": self.skips.summary()}


def summary_lines(result: dict) -> list[str]:
    """A short markdown table of ``result()`` (what was not computed says why)."""
    rows = [("FID", result["fid"], "value", ".2f"), ("FVD", result["fvd"], "value", ".2f"),
            ("LSE-D (lower is better)", result["lse"], "lse_d", ".3f"),
            ("LSE-C (higher is better)", result["lse"], "lse_c", ".3f"), ("CSIM", result["csim"], "value", ".3f")]
    lines = ["| metric | value | note |", "|---|---|---|"]
    for label, sec, key, fmt in rows:
        v = sec.get(key)
        note = sec.get("why", sec.get("note", ""))
        if key in ("lse_d", "lse_c") and sec.get(f"{key}_real") is not None:
            note = f"real videos: {format(sec[f'{key}_real'], fmt)}"
        lines.append(f"| {label} | {'—' if v is None else format(v, fmt)} | {note} |")
    sk = result["skipped"]
    if sk["count"]:
        reasons = "; ".join(f"{k} x{n}" for k, n in sk["by_reason"].items())
        lines += ["", f"skipped ({sk['count']} video(s)): {reasons}"]
    return lines
