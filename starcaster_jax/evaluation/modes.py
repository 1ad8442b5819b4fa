"""One function per evaluation mode: it makes every system's frames for one held-out record and
scores them all with the same metrics against the same truth.

Systems (the columns of every table):
    ground_truth     the true frames (the ceiling)
    copy_reference   the reference frame repeated (what a static model scores); in synthesize
                     mode, which has no reference, the clip's first true frame
    untrained        the same config freshly initialised with the config's seed (baselines.py)
    majority         lip sync only: always answering the clip's most frequent viseme
    model            the checkpoint

Modes (a generator is anything with ``video(audio, *, reference|id_emb, poses, seed)`` and
``multiview(poses, *, reference, seed)``, as ``inference.generate.Generator``):
    animate       reference = the clip's first frame, its audio, its true head poses
    synthesize    the identity embedding of that frame alone (no reference latent), the audio;
                  the true poses when ``synthesize_poses`` (so frames can be compared)
    novel_view    the first-camera reference, the audio, the poses of the clip seen by a second,
                  moving camera (split ``test_novel_video``); compared with that camera's frames
    multiview     view 0 is the reference, the other views at their true camera poses
    long_horizon  animate over a long clip; metrics per segment (the drift curve)
    motion        animate with no pose input (the model moves the head); head-pose std over time
                  from the ``pose_eval`` evaluator (the "static animation" claim)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from starcaster_jax.evaluation import metrics as M
from starcaster_jax.evaluation.data import resize_frames
from starcaster_jax.inference import views as views_lib

SYSTEMS = ("ground_truth", "copy_reference", "untrained", "majority", "model")
MODES = ("animate", "synthesize", "novel_view", "multiview", "long_horizon", "motion")
VIDEO_METRICS = ("psnr", "ssim", "lip_acc", "id_cos", "id_ver")
MULTIVIEW_METRICS = ("psnr", "ssim", "id_cos", "id_ver")
MOTION_METRICS = ("pose_std",)
LONG_METRICS = ("psnr", "sharpness", "id_cos", "id_ver")


class Skip(Exception):
    """A mode that does not apply to this checkpoint or corpus (the reason is reported)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What the config's ``eval`` section says about the modes (configs/common.py)."""
    synthesize_poses: bool = True
    segment_seconds: float = 5.0


@dataclasses.dataclass
class Scored:
    """One record of one mode: ``systems[system][metric]`` and the frames that were scored."""
    systems: dict
    frames: dict          # system -> uint8 [N, R, R, 3] (no "majority")
    truth: np.ndarray
    note: dict = dataclasses.field(default_factory=dict)


def _res(gens: Mapping) -> int:
    return int(next(iter(gens.values())).resolution)


def _video(gen, audio, **kw) -> np.ndarray:
    return np.concatenate(list(gen.video(np.asarray(audio, np.float32), **kw)), axis=0)


def _repeat(ref: np.ndarray, n: int) -> np.ndarray:
    return np.repeat(np.asarray(ref)[None], n, axis=0)


def _true_poses(record: dict, ref_pose) -> np.ndarray:
    return views_lib.relative_to(np.asarray(record["pose"], np.float32), np.asarray(ref_pose, np.float32))


def score_video(frames, truth, reference, boxes, vis, ev) -> dict:
    """The video metrics of ``frames`` against ``truth`` (trimmed to the shorter)."""
    n = min(len(frames), len(truth))
    out = M.image_metrics(frames[:n], truth[:n])
    out["lip_acc"] = ev.lip_accuracy(frames[:n], boxes[:n], vis[:n])
    out.update(ev.identity_scores(frames[:n], reference))
    return out


def _score_all(outs: dict, truth, reference, record, ev) -> Scored:
    boxes = np.asarray(record["mouth_box"], np.float32)
    vis = np.asarray(record["viseme"], np.int32)
    systems = {k: score_video(v, truth, reference, boxes, vis, ev) for k, v in outs.items()}
    systems["majority"] = {"lip_acc": M.majority_fraction(vis[:len(truth)])}
    return Scored(systems, outs, truth)


def _baselines(truth, reference) -> dict:
    return {"ground_truth": truth, "copy_reference": _repeat(reference, len(truth))}


def animate(gens: Mapping, record: dict, ev, *, seed: int = 0, opts: Options = Options()) -> Scored:
    truth = resize_frames(record["frames"], _res(gens))                # [F, R, R, 3]
    ref, poses = truth[0], _true_poses(record, record["pose"][0])
    outs = _baselines(truth, ref)
    for name, g in gens.items():
        outs[name] = _video(g, record["audio"], reference=ref, poses=poses, seed=seed)
    return _score_all(outs, truth, ref, record, ev)


def _no_identity_branch(gen) -> bool:
    cfg = getattr(gen, "config", None)
    return bool(cfg is not None and cfg.train.strict_reference)


def synthesize(gens: Mapping, record: dict, ev, *, seed: int = 0, opts: Options = Options()) -> Scored:
    if any(_no_identity_branch(g) for g in gens.values()):
        raise Skip("strict_reference checkpoint: trained without identity tokens")
    truth = resize_frames(record["frames"], _res(gens))
    ref = truth[0]
    poses = _true_poses(record, record["pose"][0]) if opts.synthesize_poses else None
    outs = _baselines(truth, ref)
    for name, g in gens.items():
        outs[name] = _video(g, record["audio"], id_emb=g.identity_from_image(ref), poses=poses, seed=seed)
    return _score_all(outs, truth, ref, record, ev)


def novel_view(gens: Mapping, pair: tuple, ev, *, seed: int = 0, opts: Options = Options()) -> Scored:
    first, novel = pair
    res = _res(gens)
    truth = resize_frames(novel["frames"], res)                        # the second camera's frames
    ref = resize_frames(np.asarray(first["frames"][:1]), res)[0]       # the first camera's frame 0
    poses = _true_poses(novel, first["pose"][0])
    outs = _baselines(truth, ref)
    for name, g in gens.items():
        outs[name] = _video(g, novel["audio"], reference=ref, poses=poses, seed=seed)
    return _score_all(outs, truth, ref, novel, ev)


def multiview(gens: Mapping, record: dict, ev, *, seed: int = 0, opts: Options = Options()) -> Scored:
    res = _res(gens)
    views = resize_frames(record["frames"], res)                       # [V, R, R, 3]
    pose = np.asarray(record["pose"], np.float32)
    v = min([len(views)] + [int(getattr(g, "max_frames", len(views))) for g in gens.values()])
    poses = views_lib.relative_to(pose[1:v], pose[0])
    ref, truth = views[0], views[1:v]
    outs = _baselines(truth, ref)
    for name, g in gens.items():
        outs[name] = g.multiview(poses, reference=ref, seed=seed)
    systems = {}
    for k, f in outs.items():
        systems[k] = dict(M.image_metrics(f, truth), **ev.identity_scores(f, ref))
    return Scored(systems, outs, truth)


def segment_names(n_frames: int, seconds: float, fps: int = 25) -> list[tuple[str, int, int]]:
    """``(suffix, start, end)`` of the long-horizon segments, e.g. ``("0-5s", 0, 125)``."""
    length = max(1, int(round(seconds * fps)))
    return [(f"{a / fps:g}-{b / fps:g}s", a, b) for a, b in M.segments(n_frames, length)]


def long_horizon(gens: Mapping, record: dict, ev, *, seed: int = 0, opts: Options = Options()) -> Scored:
    truth = resize_frames(record["frames"], _res(gens))
    ref, poses = truth[0], _true_poses(record, record["pose"][0])
    outs = _baselines(truth, ref)
    for name, g in gens.items():
        outs[name] = _video(g, record["audio"], reference=ref, poses=poses, seed=seed)
    segs = segment_names(len(truth), opts.segment_seconds)
    systems = {}
    for k, f in outs.items():
        row = {}
        for suffix, a, b in segs:
            m = M.image_metrics(f[a:b], truth[a:b])
            ids = ev.identity_scores(f[a:b], ref)
            row.update({f"psnr@{suffix}": m["psnr"], f"sharpness@{suffix}": M.sharpness(f[a:b]),
                        f"id_cos@{suffix}": ids["id_cos"], f"id_ver@{suffix}": ids["id_ver"]})
        systems[k] = row
    return Scored(systems, outs, truth, note={"seconds": len(truth) / 25.0})


def motion(gens: Mapping, record: dict, ev, *, seed: int = 0, opts: Options = Options()) -> Scored:
    if ev.pose is None:
        raise Skip("no pose_eval evaluator in the encoders directory "
                   "(python -m launch.train_encoders --encoders pose_eval ...)")
    truth = resize_frames(record["frames"], _res(gens))
    ref = truth[0]
    outs = _baselines(truth, ref)
    for name, g in gens.items():
        outs[name] = _video(g, record["audio"], reference=ref, poses=None, seed=seed)
    systems = {k: {"pose_std": M.pose_std_deg(ev.head_pose(f))} for k, f in outs.items()}
    true_ypr = np.asarray(record["pose"], np.float32)[:, :3]
    pred = ev.head_pose(truth)
    note = {"label_pose_std": M.pose_std_deg(true_ypr),
            "evaluator_mae_deg": float(np.mean(np.abs(pred - true_ypr)) * 180.0 / np.pi)}
    return Scored(systems, outs, truth, note=note)


MODE_FNS: dict[str, Callable] = {"animate": animate, "synthesize": synthesize, "novel_view": novel_view,
                                 "multiview": multiview, "long_horizon": long_horizon, "motion": motion}


def metric_names(mode: str, rows: list | None = None) -> list[str]:
    """Metrics of a mode in table order (long horizon: every metric per segment)."""
    if mode == "multiview":
        return list(MULTIVIEW_METRICS)
    if mode == "motion":
        return list(MOTION_METRICS)
    if mode == "long_horizon":
        keys = list(rows[0]["systems"]["model"]) if rows else []
        return [k for m in LONG_METRICS for k in keys if k.split("@")[0] == m]
    return list(VIDEO_METRICS)
