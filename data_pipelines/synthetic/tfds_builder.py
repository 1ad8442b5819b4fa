"""TFDS builder for the built-in corpus: ArrayRecord shards readable without TensorFlow.

Splits (identities are disjoint between train_* and test_*; half of the test identities
speak with voices never used in training):

    train_video, train_multiview, test_video, test_multiview, test_novel_video

``test_novel_video``: the first ``novel_views_per_id`` test clips of every test identity again,
seen by a second, moving camera never used in training (``corpus.make_novel_view_record``; key =
the ``test_video`` clip's key + ``/novel``): the free-viewpoint test's ground truth.

Each example is ``{"record": bytes}``, a schema.encode blob (see data_pipelines/schema.py
for why one deterministic blob rather than a multi-feature tf.Example). Read with::

    import tensorflow_datasets as tfds
    from data_pipelines import schema
    builder = tfds.builder_from_directory(path)       # path printed by build.py
    source = builder.as_data_source("train_video")    # random access, len(source)
    record = schema.decode(source[0])

Same config + seed -> byte-identical ArrayRecord shards, with any number of workers.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp

import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from data_pipelines import schema
from data_pipelines.synthetic import corpus, speech, visemes

SPLITS = ("train_video", "train_multiview", "test_video", "test_multiview", "test_novel_video")
NOVEL_SPLIT = "test_novel_video"


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    """Corpus size and rendering settings (everything that changes the bytes)."""
    n_train_ids: int = 24
    n_test_ids: int = 6
    clips_per_id: int = 8
    multiview_per_id: int = 4
    views: int = 8
    resolution: int = 64
    clip_seconds: tuple = (3.0, 4.0)
    supersample: int = corpus.SUPERSAMPLE
    novel_views_per_id: int = 2      # test clips per test identity also rendered from a novel camera
    seed: int = 0


PRESETS = {
    # ~30 identities, ~240 clips of 3-4 s (~20k frames) + 120 multi-view sets: under a minute.
    # No supersampling: 4x faster to render (25 s instead of 90 s on 2 cores), and at 64 px
    # the edges alias only slightly.
    "demo": dict(n_train_ids=24, n_test_ids=6, clips_per_id=8, multiview_per_id=4, supersample=1),
    # ~10x demo: a corpus to train the tiny configs to convergence (about an hour on 2 cores).
    "small": dict(n_train_ids=200, n_test_ids=40, clips_per_id=10, multiview_per_id=8),
    # For accelerators: 2,000 identities, ~40k clips (many CPU-hours; use --workers).
    "large": dict(n_train_ids=1800, n_test_ids=200, clips_per_id=20, multiview_per_id=12),
    # Unit tests: seconds.
    "tiny": dict(n_train_ids=2, n_test_ids=2, clips_per_id=1, multiview_per_id=1, views=4,
                 resolution=32, clip_seconds=(1.2, 1.6), supersample=1, novel_views_per_id=1),
}


def make_config(preset: str, resolution: int | None = None, seed: int = 0,
                **overrides) -> SyntheticConfig:
    kw = dict(PRESETS[preset])
    if resolution is not None:
        kw["resolution"] = resolution
    kw.update(overrides)
    res = kw.get("resolution", 64)
    return SyntheticConfig(name=f"{preset}_{res}px_seed{seed}", seed=seed,
                           description=f"preset {preset}: {kw}", **kw)


def voices_for(label: int, n_train: int) -> tuple[str, ...]:
    """Train identities speak training voices; every other test identity a held-out one."""
    if label < n_train or (label - n_train) % 2 == 1:
        return speech.VOICES_TRAIN
    return speech.VOICES_HELDOUT


def split_labels(cfg: SyntheticConfig, split: str) -> range:
    if split.startswith("train"):
        return range(cfg.n_train_ids)
    return range(cfg.n_train_ids, cfg.n_train_ids + cfg.n_test_ids)


def split_tasks(cfg: SyntheticConfig, split: str) -> list[tuple]:
    """(kind, label, index) for every record of a split, in a fixed order."""
    kind = schema.KIND_VIDEO if split.endswith("video") else schema.KIND_MULTIVIEW
    per_id = cfg.clips_per_id if kind == schema.KIND_VIDEO else cfg.multiview_per_id
    if split == NOVEL_SPLIT:
        return [(NOVEL_SPLIT, lab, i) for lab in split_labels(cfg, split)
                for i in range(min(cfg.novel_views_per_id, cfg.clips_per_id))]
    return [(kind, lab, i) for lab in split_labels(cfg, split) for i in range(per_id)]


def make_record(cfg: SyntheticConfig, task: tuple) -> dict:
    kind, label, index = task
    person = corpus.make_person(cfg.seed, label, voices_for(label, cfg.n_train_ids))
    if kind == NOVEL_SPLIT:
        return corpus.make_novel_view_record(cfg.seed, person, index, cfg.resolution,
                                             tuple(cfg.clip_seconds), ss=cfg.supersample)
    if kind == schema.KIND_VIDEO:
        return corpus.make_video_record(cfg.seed, person, index, cfg.resolution,
                                        tuple(cfg.clip_seconds), ss=cfg.supersample)
    return corpus.make_multiview_record(cfg.seed, person, index, cfg.resolution, cfg.views,
                                        ss=cfg.supersample)


def _encode_task(args) -> tuple[str, bytes, int]:
    cfg, task = args
    rec = make_record(cfg, task)
    return rec["key"], schema.encode(rec), rec["frames"].shape[0]


class StarcasterSynthetic(tfds.core.GeneratorBasedBuilder):
    """The built-in synthetic 3D talking-head corpus (DESIGN.md §5)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Split test_novel_video (free-viewpoint truth)."}
    BUILDER_CONFIGS = [make_config(p) for p in ("demo", "small", "large", "tiny")]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """No checksums file to find: the data is generated, nothing is downloaded. (TFDS's
        own lookup also needs the importlib_resources backport, which we do not install.)"""
        return None

    def __init__(self, *args, workers: int = 1, progress: bool = False, **kwargs):
        self._workers = max(1, int(workers))
        self._progress = progress
        self._pool = None
        self._bar = None
        self.frames_written = 0
        super().__init__(*args, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        meta = tfds.core.MetadataDict(
            config={k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in dataclasses.asdict(cfg).items()
                    if k not in ("name", "description", "release_notes", "supported_versions",
                                 "tags", "version")},
            visemes=list(visemes.VISEMES), id_dim=schema.ID_DIM,
            voices_train=list(speech.VOICES_TRAIN), voices_heldout=list(speech.VOICES_HELDOUT),
            record_format="data_pipelines.schema blob under feature 'record'",
        )
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=schema.tfds_features(),
            metadata=meta, homepage="https://arxiv.org/abs/2512.13247")

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split):
        cfg = self.builder_config
        tasks = [(cfg, t) for t in split_tasks(cfg, split)]
        if self._workers > 1:
            if self._pool is None:  # spawn: safe even if the caller has started JAX threads
                self._pool = mp.get_context("spawn").Pool(self._workers)
            results = self._pool.imap(_encode_task, tasks, chunksize=1)
        else:
            results = map(_encode_task, tasks)
        if self._progress and self._bar is None:  # one bar over every split
            total = sum(len(split_tasks(cfg, s)) for s in SPLITS)
            self._bar = tqdm(total=total, unit="rec", desc="rendering", dynamic_ncols=True)
        for key, blob, n_frames in results:
            self.frames_written += n_frames
            if self._bar is not None:
                self._bar.set_postfix_str(split, refresh=False)
                self._bar.update(1)
            yield key, {"record": blob}

    def _download_and_prepare(self, *args, **kwargs):
        try:
            return super()._download_and_prepare(*args, **kwargs)
        finally:
            if self._pool is not None:
                self._pool.close()
                self._pool.join()
                self._pool = None
            if self._bar is not None:
                self._bar.close()
                self._bar = None


def build(out_dir: str, cfg: SyntheticConfig, workers: int = 1, progress: bool = False):
    """Generate (or reuse) the corpus under out_dir; -> the prepared builder."""
    registered = StarcasterSynthetic.builder_configs.get(cfg.name)
    if registered is not None:  # TFDS wants the registered object itself, or a new name
        cfg = registered if registered == cfg else dataclasses.replace(cfg, name=cfg.name + "_custom")
    builder = StarcasterSynthetic(config=cfg, data_dir=out_dir, file_format="array_record",
                                  workers=workers, progress=progress)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder

