"""Exact metrics on the built-in corpus's held-out identities (DESIGN §5).

The corpus knows the truth of every test clip (the frames, the head-pose trajectory, the
visemes of the speech, the mouth boxes), so a checkpoint is scored against it directly:

video clips (animate mode: the clip's first frame is the reference, its audio drives, its true
relative head poses are the view trajectory — so generated frame ``i`` has a ground truth):
    psnr, ssim          generated vs. true frames (dm_pix; higher is better)
    lip_acc             per-frame viseme accuracy of the *evaluator* lip reader on the generated
                        mouths against the audio's true visemes; ``lip_acc_gt`` is the same
                        reader on the true frames (the ceiling), ``lip_majority`` the
                        majority-class baseline
    id_cos              cosine of the *evaluator* identity embedding of generated frames to the
                        reference's; ``id_cos_gt`` the same for the true frames (the ceiling)
multi-view sets (view 0 is the reference, the other views are asked at their true camera poses):
    psnr, ssim, id_cos  as above, per view

The evaluator networks (``lip_eval``, ``identity_eval``) never conditioned or supervised the
model (``launch/train_encoders.py``). ``launch/evaluate.py`` is the CLI.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from starcaster_jax.inference import chunking
from starcaster_jax.inference import views as views_lib

VIDEO_METRICS = ("psnr", "ssim", "lip_acc", "lip_acc_gt", "lip_majority", "id_cos", "id_cos_gt")
MULTIVIEW_METRICS = ("psnr", "ssim", "id_cos")


@dataclasses.dataclass
class Evaluators:
    """The two scoring networks: ``lip`` (a LipReader) and ``identity`` (a built-in identity
    encoder), both frozen."""
    lip: object
    identity: object

    @classmethod
    def load(cls, encoders_dir: str) -> "Evaluators":
        from starcaster_jax.models import builtin_encoders as be
        return cls(lip=be.load(encoders_dir, "lip_eval"), identity=be.load(encoders_dir, "identity_eval"))

    def __post_init__(self):
        from flax import nnx
        from starcaster_jax.models import builtin_encoders as be
        from starcaster_jax.models.lipreading import accuracy
        self._embed = nnx.jit(be.identity_embedding)
        self._acc = nnx.jit(accuracy)

    def embed(self, frames: np.ndarray) -> np.ndarray:       # uint8 [N, H, W, 3] -> [N, 512]
        return np.asarray(self._embed(self.identity, _to_float(frames)))

    def lip_accuracy(self, frames: np.ndarray, boxes: np.ndarray, visemes: np.ndarray) -> float:
        batch = (_to_float(frames)[None], jnp.asarray(boxes, jnp.float32)[None])
        return float(self._acc(self.lip, batch, jnp.asarray(visemes, jnp.int32)[None]))


def _to_float(frames) -> jax.Array:
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


def image_metrics(generated: np.ndarray, truth: np.ndarray) -> dict:
    """uint8 ``[N, H, W, 3]`` pairs -> mean PSNR (dB) and SSIM (dm_pix, images in [0, 1])."""
    import dm_pix
    a = jnp.asarray(generated, jnp.float32) / 255.0
    b = jnp.asarray(truth, jnp.float32) / 255.0
    psnr = np.asarray(dm_pix.psnr(a, b))
    psnr = np.where(np.isfinite(psnr), psnr, 100.0)          # identical images: cap at 100 dB
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(np.asarray(dm_pix.ssim(a, b))))}


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    return np.stack([chunking.resize_square(np.asarray(f), size) for f in frames])


def _cos(e: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(e @ ref))


def evaluate_video(generator, record: dict, ev: Evaluators, *, seed: int = 0) -> dict:
    """One test clip in animate mode along its true trajectory (module docstring)."""
    res = int(generator.resolution)
    truth = _resize(record["frames"], res)                              # [F, R, R, 3]
    poses = views_lib.relative_to(np.asarray(record["pose"], np.float32), np.asarray(record["pose"][0]))
    audio = np.asarray(record["audio"], np.float32)
    gen = np.concatenate(list(generator.video(audio, reference=truth[0], poses=poses, seed=seed)), axis=0)
    n = min(len(gen), len(truth))
    gen, truth = gen[:n], truth[:n]
    boxes = np.asarray(record["mouth_box"][:n], np.float32)
    vis = np.asarray(record["viseme"][:n], np.int32)
    ref = ev.embed(truth[:1])[0]
    valid = vis[vis >= 0]
    out = image_metrics(gen, truth)
    out.update(lip_acc=ev.lip_accuracy(gen, boxes, vis), lip_acc_gt=ev.lip_accuracy(truth, boxes, vis),
               lip_majority=float(np.max(np.bincount(valid)) / max(len(valid), 1)) if len(valid) else 0.0,
               id_cos=_cos(ev.embed(gen), ref), id_cos_gt=_cos(ev.embed(truth), ref))
    return out


def evaluate_multiview(generator, record: dict, ev: Evaluators, *, seed: int = 0) -> dict:
    """One test multi-view set: view 0 is the reference, the others are generated at their
    true camera poses (relative to view 0), at most ``motion_max_seq_length - 1`` of them."""
    res = int(generator.resolution)
    truth = _resize(record["frames"], res)                              # [V, R, R, 3]
    pose = np.asarray(record["pose"], np.float32)
    v = min(len(truth), int(getattr(generator, "max_frames", len(truth))))
    poses = views_lib.relative_to(pose[1:v], pose[0])
    gen = generator.multiview(poses, reference=truth[0], seed=seed)
    out = image_metrics(gen, truth[1:v])
    out["id_cos"] = _cos(ev.embed(gen), ev.embed(truth[:1])[0])
    return out


def _mean(rows: Sequence[dict], keys) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in keys} if rows else {}


def evaluate(generator, video_records: Sequence[dict], multiview_records: Sequence[dict], ev: Evaluators, *,
             seed: int = 0, progress: Optional[Callable[[str], None]] = None) -> dict:
    """Mean metrics over the given test records (``{"video": {...}, "multiview": {...}}``) plus
    the per-record rows."""
    vid, mv = [], []
    for i, r in enumerate(video_records):
        vid.append(dict(key=str(r["key"]), **evaluate_video(generator, r, ev, seed=seed + i)))
        if progress:
            progress(f"video {i + 1}/{len(video_records)}")
    for i, r in enumerate(multiview_records):
        mv.append(dict(key=str(r["key"]), **evaluate_multiview(generator, r, ev, seed=seed + i)))
        if progress:
            progress(f"multiview {i + 1}/{len(multiview_records)}")
    return {"video": _mean(vid, VIDEO_METRICS), "multiview": _mean(mv, MULTIVIEW_METRICS),
            "num_video": len(vid), "num_multiview": len(mv), "rows": {"video": vid, "multiview": mv}}


def held_out_records(data_root: str, stream: str, num: int, *, split: str = "test") -> list[dict]:
    """The first ``num`` usable records of one stream of a split (distinct identities first)."""
    from data_pipelines.sources import default_spec, make_source
    src = make_source(default_spec(stream, data_root, split), stream, split=split, root=data_root)
    recs, seen, rest = [], set(), []
    for i in range(len(src)):
        r = src[i]
        if r is None:
            continue
        (rest if int(r["id_label"]) in seen else recs).append(r)
        seen.add(int(r["id_label"]))
    return (recs + rest)[:num]


def format_table(result: dict) -> str:
    lines = [f"{'stream':10s} {'metric':13s} {'value':>8s}", "-" * 33]
    for stream in ("video", "multiview"):
        for k, v in result[stream].items():
            lines.append(f"{stream:10s} {k:13s} {v:8.3f}")
    lines.append(f"({result['num_video']} clips, {result['num_multiview']} multi-view sets)")
    return "\n".join(lines)
