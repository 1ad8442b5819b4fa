"""Exact metrics on the built-in corpus's held-out identities (DESIGN §5), every mode of the
paper's abstract, every number beside its baselines.

The corpus knows the truth of every test clip (frames, head poses, the visemes of the speech,
mouth boxes, and, split ``test_novel_video``, the same clip from a second camera), so a
checkpoint is scored against it directly. The modes and systems are described in ``modes.py``;
the metrics, all by evaluator networks that never conditioned or supervised the model:

    psnr, ssim      generated vs. true frames (dm_pix; higher is better; identical = 100 dB)
    lip_acc         per-frame viseme accuracy of ``lip_eval`` on the generated mouths against
                    the speech's true visemes
    id_cos          mean cosine of ``identity_eval`` embeddings of the frames to the reference's
    id_ver          the fraction of frames verified as the reference's person at the threshold
                    where held-out strangers are accepted at rate ``eval.far`` (evaluators.py)
    sharpness       variance of the Laplacian (long horizon, per segment)
    pose_std        head-pose std over time from ``pose_eval``, degrees (motion)

``evaluate`` runs the modes and returns means per mode and system (and per-record rows);
``report.format_markdown`` prints them; ``quick_eval`` is the cheap held-out check the training
loop calls. ``launch/evaluate.py`` is the CLI.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from starcaster_jax.evaluation import modes as modes_lib
from starcaster_jax.evaluation import report
from starcaster_jax.evaluation.data import held_out_records, long_records, novel_view_pairs, resize_frames  # noqa: F401
from starcaster_jax.evaluation.evaluators import Evaluators  # noqa: F401  (the public name)
from starcaster_jax.evaluation.metrics import image_metrics  # noqa: F401
from starcaster_jax.evaluation.modes import MODES, SYSTEMS, Options, Skip  # noqa: F401


@dataclasses.dataclass
class Inputs:
    """The held-out records of each mode."""
    video: Sequence[dict] = ()                 # animate, synthesize, motion
    multiview: Sequence[dict] = ()
    novel_view: Sequence[tuple] = ()           # (first-camera record, novel-view record)
    long: Sequence[dict] = ()

    def for_mode(self, mode: str) -> Sequence:
        return {"animate": self.video, "synthesize": self.video, "motion": self.video,
                "multiview": self.multiview, "novel_view": self.novel_view,
                "long_horizon": self.long}[mode]


def load_inputs(data_root: str, ev_cfg, *, split: str = "test") -> Inputs:
    """Records for the modes of ``ev_cfg`` (the config's ``eval`` section)."""
    modes = tuple(ev_cfg.modes)
    need_video = bool({"animate", "synthesize", "motion"} & set(modes))
    return Inputs(
        video=held_out_records(data_root, "video", ev_cfg.num_clips, split=split) if need_video else [],
        multiview=(held_out_records(data_root, "multiview", ev_cfg.num_multiview, split=split)
                   if "multiview" in modes else []),
        novel_view=novel_view_pairs(data_root, ev_cfg.num_novel_view) if "novel_view" in modes else [],
        long=long_records(data_root, ev_cfg.long_clips, ev_cfg.long_seconds) if "long_horizon" in modes else [])


def calibration_records(data_root: str, ev_cfg, *, split: str = "test") -> list[dict]:
    return held_out_records(data_root, "video", ev_cfg.calib_clips or 10 ** 9, split=split)


def _key(item) -> str:
    return str(item[1]["key"] if isinstance(item, tuple) else item["key"])


def _mean_systems(rows: Sequence[dict]) -> dict:
    out = {}
    for s in modes_lib.SYSTEMS:
        keys = [k for k in rows[0]["systems"].get(s, {})] if rows and s in rows[0]["systems"] else []
        if keys:
            out[s] = {k: float(np.mean([r["systems"][s][k] for r in rows])) for k in keys}
    return out


def evaluate(generators: Mapping, inputs: Inputs, ev: Evaluators, *, modes: Sequence[str] = MODES,
             seed: int = 0, opts: Options = Options(), keep_frames: bool = False,
             progress: Callable[[str], None] | None = None, standard=None) -> dict:
    """Every mode over its records for ``generators`` (``{"model": gen, "untrained": gen}``;
    either may be absent, e.g. in tests) -> ``{"modes": {mode: {"n", "metrics", "systems":
    {system: {metric: mean}}, "note"} | {"skipped": why}}, "keys": {mode: [record keys]},
    "rows": ..., "calibration": ..., "seed"}``; with ``keep_frames`` also ``"frames"``: the
    first record's frames of each mode (``{mode: {system: uint8 [N, R, R, 3]}}``, for a strip).
    Record ``i`` of every mode is generated with seed ``seed + i`` by every generator.
    ``standard`` (``standard.synthetic.SyntheticStandard``, built from the user's Inception /
    I3D / SyncNet / ArcFace paths) adds FID, FVD, LSE and CSIM per system as ``"standard"``."""
    if ev.threshold is None:
        raise ValueError("evaluate: calibrate the identity verifier first (Evaluators.calibrate)")
    out = {"modes": {}, "keys": {}, "rows": {}, "seed": seed, "calibration": dict(ev.calibration)}
    frames = {}
    for mode in modes:
        if mode not in modes_lib.MODE_FNS:
            raise ValueError(f"eval.modes: unknown mode {mode!r} (known: {list(modes_lib.MODES)})")
        items = list(inputs.for_mode(mode))
        if not items:
            out["modes"][mode] = {"skipped": "no held-out records for this mode in the corpus"}
            continue
        rows = []
        try:
            for i, item in enumerate(items):
                sc = modes_lib.MODE_FNS[mode](generators, item, ev, seed=seed + i, opts=opts)
                rows.append({"key": _key(item), "systems": sc.systems, "note": sc.note})
                if standard is not None:
                    standard.add(mode, sc, item)
                if keep_frames and i == 0:
                    frames[mode] = sc.frames
                if progress:
                    progress(f"{mode} {i + 1}/{len(items)}")
        except Skip as why:
            out["modes"][mode] = {"skipped": str(why)}
            continue
        note = {k: float(np.mean([r["note"][k] for r in rows])) for k in rows[0]["note"]}
        out["modes"][mode] = {"n": len(rows), "metrics": modes_lib.metric_names(mode, rows),
                              "systems": _mean_systems(rows), "note": note}
        std = standard.result(mode) if standard is not None else None
        if std is not None:
            out["modes"][mode]["standard"] = std
        out["keys"][mode] = [r["key"] for r in rows]
        out["rows"][mode] = rows
    if keep_frames:
        out["frames"] = frames
    return out


def format_table(result: dict) -> str:
    return report.format_markdown(result)


def quick_eval(generator, records: Sequence[dict], evaluators: Evaluators, *, seed: int = 0,
               columns: int = 8) -> dict:
    """A cheap held-out check for the training loop: animate mode on ``records`` for the model
    alone, beside the copy-reference and majority baselines (which need no generation).
    -> ``{"scalars": {"animate/psnr": ..., "animate/psnr_copy_reference": ...,
    "animate/lip_acc_majority": ..., ...}, "strip": uint8 [2R, columns*R, 3]}`` (true frames
    above generated ones, first record). ``evaluators`` must be calibrated
    (``Evaluators.calibrate`` on held-out clips, once, before the loop) unless ``records`` hold
    two identities or more, then they calibrate it."""
    if not records:
        raise ValueError("quick_eval: no records")
    if evaluators.threshold is None:
        evaluators.calibrate(records, resolution=int(generator.resolution))
    rows, strip = [], None
    for i, r in enumerate(records):
        sc = modes_lib.animate({"model": generator}, r, evaluators, seed=seed + i)
        rows.append(sc.systems)
        if strip is None:
            strip = report.frames_strip({"animate": sc.frames}, columns=columns)
    scalars = {}
    for system, suffix in (("model", ""), ("copy_reference", "_copy_reference"), ("majority", "_majority")):
        for k in rows[0][system]:
            scalars[f"animate/{k}{suffix}"] = float(np.mean([row[system][k] for row in rows]))
    return {"scalars": scalars, "strip": strip}
