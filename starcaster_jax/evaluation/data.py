"""Held-out records of the built-in corpus for the evaluation: test clips, their novel-view
renders (split ``test_novel_video``) and long clips made on demand from the corpus's own
config (``corpus.make_long_video_record``: the same identities, a clip no split holds)."""
from __future__ import annotations

import numpy as np

from data_pipelines import schema
from data_pipelines.sources import default_spec, find_tfds_dir, make_source
from data_pipelines.synthetic import corpus, tfds_builder
from data_pipelines.synthetic.tfds_builder import NOVEL_SPLIT
from starcaster_jax.inference import chunking


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> ``[N, size, size, 3]`` (centre crop + resize, as generation)."""
    return np.stack([chunking.resize_square(np.asarray(f), size) for f in frames])


def held_out_records(data_root: str, stream: str, num: int, *, split: str = "test") -> list[dict]:
    """The first ``num`` usable records of one stream of a split (distinct identities first)."""
    src = make_source(default_spec(stream, data_root, split), stream, split=split, root=data_root)
    recs, seen, rest = [], set(), []
    for i in range(len(src)):
        r = src[i]
        if r is None:
            continue
        (rest if int(r["id_label"]) in seen else recs).append(r)
        seen.add(int(r["id_label"]))
    return (recs + rest)[:num]


def _builder(data_root: str):
    import tensorflow_datasets as tfds  # noqa: PLC0415 (TensorFlow loads only where TFDS is read)

    path = find_tfds_dir(data_root)
    if path is None:
        raise FileNotFoundError(f"--data {data_root}: no (single) prepared TFDS dataset below it")
    return tfds.builder_from_directory(path)


def novel_view_pairs(data_root: str, num: int) -> list[tuple[dict, dict]]:
    """Up to ``num`` ``(first_camera_record, novel_view_record)`` pairs (distinct identities
    first): the free-viewpoint test. Empty when the corpus predates split ``test_novel_video``."""
    b = _builder(data_root)
    if NOVEL_SPLIT not in b.info.splits or num <= 0:
        return []
    src = b.as_data_source(NOVEL_SPLIT)
    novel = [schema.decode(src[i]) for i in range(len(src))]
    firsts = {r["key"]: r for r in held_out_records(data_root, "video", 10 ** 9)}
    pairs, seen, rest = [], set(), []
    for nv in novel:
        first = firsts.get(nv["key"].removesuffix("/novel"))
        if first is None:
            raise ValueError(f"{data_root}: novel-view record {nv['key']} has no test_video clip")
        (rest if int(nv["id_label"]) in seen else pairs).append((first, nv))
        seen.add(int(nv["id_label"]))
    return (pairs + rest)[:num]


def long_records(data_root: str, num: int, seconds: float) -> list[dict]:
    """``num`` held-out clips of ``seconds`` each (test identities in turn), rendered now from
    the corpus's recorded config (seed, identities, resolution, supersampling)."""
    cfg = _builder(data_root).info.metadata["config"]
    n_train, n_test = int(cfg["n_train_ids"]), int(cfg["n_test_ids"])
    out = []
    for i in range(num):
        label = n_train + i % n_test
        person = corpus.make_person(int(cfg["seed"]), label, tfds_builder.voices_for(label, n_train))
        out.append(corpus.make_long_video_record(int(cfg["seed"]), person, float(seconds),
                                                 int(cfg["resolution"]), index=i // n_test,
                                                 ss=int(cfg["supersample"])))
    return out
