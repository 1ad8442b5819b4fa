"""The built-in corpus as the encoder trainings read it: decoded clips in memory, and the array
helpers their evaluations share (static-shape windows and padded batches).

Why in memory: the tiny and demo corpora are a few MiB of frames, and every encoder samples its
own crops, windows and frames from them; a Grain pipeline would add nothing but start-up time.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from data_pipelines import schema
from data_pipelines.sources import find_tfds_dir


class CorpusError(ValueError):
    """The corpus cannot train the encoders (a split missing or empty, test identities among the
    training ones, clips shorter than a window): the launcher's one ``error:`` line, exit 2."""


@dataclasses.dataclass
class Clip:
    label: int
    frames: np.ndarray          # uint8 [F, H, W, 3]
    audio: np.ndarray           # float32 [F*640]
    viseme: np.ndarray          # int32 [F]
    mouth_box: np.ndarray       # float32 [F, 4]
    pose: np.ndarray | None = None  # float32 [F, 6] (schema pose: yaw, pitch, roll, x, y, scale)


@dataclasses.dataclass
class Corpus:
    path: str
    train: list[Clip]
    test: list[Clip]
    train_views: np.ndarray     # uint8 [N, H, W, 3] multi-view stills of train identities
    train_view_labels: np.ndarray
    num_train_ids: int
    resolution: int
    train_view_poses: np.ndarray | None = None   # float32 [N, 6] poses of train_views


def _read(builder, split: str) -> list[dict]:
    if split not in builder.info.splits:
        return []
    src = builder.as_data_source(split)
    return [schema.decode(src[i]) for i in range(len(src))]


def load_corpus(data_dir: str) -> Corpus:
    """Decode the built-in corpus's splits (train_video, train_multiview, test_video)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 (TensorFlow loads only where TFDS is read)

    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data {data_dir}: no such directory (build the corpus with "
                                f"`python -m data_pipelines.synthetic.build --out DIR`)")
    path = find_tfds_dir(data_dir)
    if path is None:
        raise FileNotFoundError(f"--data {data_dir}: no (single) prepared TFDS dataset below it "
                                f"(dataset_info.json)")
    builder = tfds.builder_from_directory(path)
    missing = [s for s in ("train_video", "test_video") if s not in builder.info.splits]
    if missing:
        raise CorpusError(f"--data {path}: the built-in encoders need splits train_video and "
                          f"test_video; missing {missing}")

    def clips(split):
        return [Clip(int(r["id_label"]), np.array(r["frames"]), np.array(r["audio"]),
                     np.array(r["viseme"], np.int32), np.array(r["mouth_box"], np.float32),
                     np.array(r["pose"], np.float32)) for r in _read(builder, split)]

    train, test = clips("train_video"), clips("test_video")
    if not train or not test:
        raise CorpusError(f"--data {path}: empty train_video or test_video split")
    views = _read(builder, "train_multiview")
    res = train[0].frames.shape[1]
    tv = (np.concatenate([r["frames"] for r in views]) if views
          else np.zeros((0, res, res, 3), np.uint8))
    tl = (np.concatenate([np.full(len(r["frames"]), int(r["id_label"])) for r in views]) if views
          else np.zeros((0,), np.int64))
    labels = sorted({c.label for c in train})
    test_labels = {c.label for c in test}
    if test_labels & set(labels):
        raise CorpusError(f"--data {path}: test identities overlap the training ones")
    remap = {lab: i for i, lab in enumerate(labels)}           # ArcFace classes 0..N-1
    for c in train:
        c.label = remap[c.label]
    keep = np.isin(tl, labels)
    tl = np.array([remap[int(v)] for v in tl[keep]], np.int64)
    tp = (np.concatenate([np.asarray(r["pose"], np.float32) for r in views]) if views
          else np.zeros((0, 6), np.float32))
    return Corpus(path, train, test, tv[keep], tl, len(labels), res, tp[keep])


def train_frames(corpus: Corpus, every: int) -> np.ndarray:
    """Every ``every``-th frame of each training clip, then the multi-view stills: uint8 [N, H, W, 3]."""
    return np.concatenate([c.frames[::every] for c in corpus.train] + [corpus.train_views])


def long_enough(clips: list[Clip], length: int, who: str) -> list[int]:
    """Indices of the clips with at least ``length`` frames (a training window); none is a
    :class:`CorpusError` naming ``who``."""
    ok = [i for i, c in enumerate(clips) if len(c.viseme) >= length]
    if not ok:
        raise CorpusError(f"{who}: no training clip has {length} frames")
    return ok


# ----------------------------------------------------------------------------- arrays

def to_float(u8: np.ndarray) -> np.ndarray:
    return u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)   # transforms.Normalize


def windows(clips: list[Clip], length: int):
    """Every clip cut into consecutive windows of ``length`` frames, the tail padded (-1 labels):
    -> (clip index [W], start [W]). Static shapes for evaluation."""
    idx, starts = [], []
    for i, c in enumerate(clips):
        for s in range(0, len(c.viseme), length):
            idx.append(i)
            starts.append(s)
    return np.asarray(idx), np.asarray(starts)


def pad_take(a: np.ndarray, start: int, length: int, fill) -> np.ndarray:
    part = a[start:start + length]
    if len(part) == length:
        return part
    pad = np.full((length - len(part), *a.shape[1:]), fill, a.dtype)
    return np.concatenate([part, pad])


def pad_batch(x: np.ndarray, n: int, fill=0) -> np.ndarray:
    if len(x) == n:
        return x
    return np.concatenate([x, np.full((n - len(x), *x.shape[1:]), fill, x.dtype)])


def chance(labels: np.ndarray) -> float:
    """Majority-class frequency of the valid (>= 0) labels."""
    labels = labels[labels >= 0]
    return float(np.bincount(labels).max() / max(len(labels), 1))
