"""The training input pipeline: two decoupled streams, batched per stream, mixed by weight.

Per stream (``"video"``, ``"multiview"``)::

    MapDataset.source(RecordSource)            decoded records, None for skipped ones
      [process_index::process_count]           per-process shard: disjoint and complete
      .seed(s).shuffle().repeat()              global shuffle, infinite epochs
      .random_map(VideoWindow | MultiviewViews).map(RelativePose)
      .random_map(RandomHFlip).map(Normalize)
      .to_iter_dataset(ReadOptions)            drops the skipped (None) records
      .batch(per_process_batch, drop_remainder=True)

then ``grain.IterDataset.mix({name: ds}, {name: weight})`` so every batch comes from ONE stream
(``batch["stream"]`` is constant within a batch; the training loop dispatches on
``int(batch["stream"][0])`` to that stream's compiled step), optionally followed by
``.mp_prefetch(grain.MultiprocessingOptions(num_workers))``. Mixing is by batches: with weights
w the fraction of batches from each stream tends to w / sum(w). The mix state is keyed by
stream name, so ``get_state``/``set_state`` and the Orbax ``grain.checkpoint.CheckpointSave`` /
``CheckpointRestore`` round-trip restore exactly the next batches.

Config (``config_like`` is a full config with a ``data`` section or the ``data`` section itself;
attribute or mapping access)::

    data.batch_size    GLOBAL batch size (divided by process_count; must divide)
    data.num_frames F, data.context_frames K  -> video windows of F + K frames
    data.window_frames  overrides the window length (self-forcing needs K + (R+1) F)
    data.num_views     V views per multi-view example
    data.resolution    output resolution (records must be k * resolution square)
    data.mixture       {stream: weight}; streams with weight 0 are not opened
    data.sources       optional {stream: spec} (see sources.open_source); default: ArrayRecord
                       shards named *<stream>* under data.root
    data.root, data.split ("train"), data.hflip (bool or probability), data.pose_mode
    data.num_shards    logical data shards (default: one per process). Each shard is its own
                       shuffled stream of batch/num_shards examples; a process reads its
                       num_shards/process_count shards and concatenates them, so the GLOBAL
                       batches are the same on 1 process and on N (and a job can resume on
                       another number of hosts).
    data.num_workers   multiprocess prefetch workers (0 = in-process), data.read_threads (2),
    data.prefetch      per-stream read-ahead in batches
    model.audio.window  +-w audio frames; seed: the run's seed

Every field is declared, with its default, in configs/common.py; ``PipelineConfig`` reads each
one without a fallback. (A flat mapping of the data fields that carries ``audio_window`` and
``seed`` itself works too: the tests build those.)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np

from data_pipelines import transforms as T
from data_pipelines.sources import STREAMS, RecordSource, default_spec, make_source

STREAM_IDS = T.STREAM_IDS
STREAM_NAMES = {v: k for k, v in STREAM_IDS.items()}


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The pipeline's settings, resolved once from the config's ``data`` section (declared, with
    their defaults, in configs/common.py) plus ``model.audio.window`` and ``seed``."""
    batch_size: int                  # GLOBAL batch (divided over processes)
    num_frames: int                  # video window length (F + K, or data.window_frames)
    num_views: int
    resolution: int | None
    mixture: Mapping[str, float]     # streams with a positive weight only
    sources: Mapping[str, Any]       # {stream: spec}; streams without one read data.root
    root: str
    split: str
    hflip: float                     # probability
    pose_mode: str
    num_workers: int
    read_threads: int
    prefetch: int
    num_shards: int
    audio_window: int
    seed: int

    FIELDS = ("batch_size", "num_frames", "context_frames", "window_frames", "num_views",
              "resolution", "mixture", "sources", "root", "split", "hflip", "pose_mode",
              "num_workers", "read_threads", "prefetch", "num_shards")

    @classmethod
    def from_config(cls, config_like: Any) -> PipelineConfig:
        """A full config (``data``, ``model.audio.window``, ``seed``; attribute or mapping access)
        or a flat mapping of the data fields plus ``audio_window`` and ``seed``."""
        def get(obj, key, where):
            try:
                return obj[key] if isinstance(obj, Mapping) or hasattr(obj, "__getitem__") else getattr(obj, key)
            except (KeyError, AttributeError):
                raise ValueError(f"{where}{key}: missing (declared in configs/common.py)") from None

        if (isinstance(config_like, Mapping) and "data" in config_like) or hasattr(config_like, "data"):
            data, where = get(config_like, "data", ""), "data."
            audio_window = get(get(get(config_like, "model", ""), "audio", "model."), "window", "model.audio.")
            seed = get(config_like, "seed", "")
        else:
            data, where = config_like, ""
            audio_window, seed = get(data, "audio_window", ""), get(data, "seed", "")
        f = {k: get(data, k, where) for k in cls.FIELDS}
        mixture = {str(k): float(v) for k, v in dict(f["mixture"]).items() if float(v) > 0}
        for k in mixture:
            if k not in STREAMS:
                raise ValueError(f"{where}mixture: unknown stream {k!r} (expected {sorted(STREAMS)})")
        if not mixture:
            raise ValueError(f"{where}mixture: no stream with a positive weight")
        hflip = f["hflip"]
        return cls(
            batch_size=int(f["batch_size"]),
            num_frames=int(f["window_frames"]) or int(f["num_frames"]) + int(f["context_frames"]),
            num_views=int(f["num_views"]), resolution=f["resolution"], mixture=mixture,
            sources={k: v for k, v in dict(f["sources"] or {}).items() if v},
            root=str(f["root"]), split=str(f["split"]),
            hflip=0.5 if hflip is True else (0.0 if hflip is False else float(hflip)),
            pose_mode=str(f["pose_mode"]), num_workers=int(f["num_workers"]),
            read_threads=max(int(f["read_threads"]), 1), prefetch=int(f["prefetch"]),
            num_shards=int(f["num_shards"]), audio_window=int(audio_window), seed=int(seed))


def _stream_seed(seed: int, stream: str, process_index: int) -> int:
    ss = np.random.SeedSequence([seed, STREAM_IDS[stream], process_index])
    return int(ss.generate_state(1, np.uint32)[0])


def stream_dataset(source: RecordSource, stream: str, cfg: PipelineConfig, *,
                   process_index: int = 0, process_count: int = 1,
                   batch_size: int | None = None) -> grain.IterDataset:
    """Batched, shuffled, infinite IterDataset of one stream (this process's shard)."""
    ds = grain.MapDataset.source(source)
    if process_count > 1:
        ds = ds[process_index::process_count]
    ds = ds.seed(_stream_seed(cfg.seed, stream, process_index)).shuffle().repeat()
    if stream == "video":
        ds = ds.random_map(T.VideoWindow(cfg.num_frames, cfg.audio_window))
    else:
        ds = ds.random_map(T.MultiviewViews(cfg.num_views, cfg.audio_window))
    ds = ds.map(T.RelativePose(cfg.pose_mode))
    ds = ds.random_map(T.RandomHFlip(cfg.hflip))
    ds = ds.map(T.Normalize(cfg.resolution))
    bs = int(batch_size or cfg.batch_size)
    it = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=cfg.read_threads, prefetch_buffer_size=max(cfg.prefetch, 1) * bs))
    return it.batch(bs, drop_remainder=True)


def process_shard(n: int, process_index: int, process_count: int) -> np.ndarray:
    """Record indices of one process's shard (the ``[pi::pc]`` slice the pipeline uses)."""
    return np.arange(n)[process_index::process_count]


class TrainIterator(grain.DatasetIterator):
    """The mixed-stream batch iterator (a grain ``DatasetIterator``: ``get_state``/
    ``set_state`` and ``grain.checkpoint.CheckpointSave``/``CheckpointRestore`` work on it).

    ``skipped``: ``{stream: {reason: count}}`` of records skipped by the sources read in this
    process (see sources.py). ``streams``: {name: weight}. ``batch_size``: per-process batch.
    """

    def __init__(self, inner: grain.DatasetIterator, sources: Mapping[str, RecordSource],
                 weights: Mapping[str, float], batch_size: int):
        super().__init__(inner)
        self.sources = dict(sources)
        self.streams = dict(weights)
        self.batch_size = batch_size

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)

    @property
    def skipped(self) -> dict[str, dict[str, int]]:
        return {k: dict(s.skipped) for k, s in self.sources.items()}

    def close(self) -> None:
        close = getattr(self._parent, "close", None)
        if close is not None:
            close()


def make_train_dataset(config_like: Any, *, process_index: int | None = None,
                       process_count: int | None = None,
                       sources: Mapping[str, Any] | None = None):
    """-> (IterDataset of mixed per-stream batches, {stream: RecordSource}, PipelineConfig,
    per-process batch size)."""
    cfg = config_like if isinstance(config_like, PipelineConfig) else PipelineConfig.from_config(config_like)
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= pi < pc:
        raise ValueError(f"process_index {pi} not in [0, {pc})")
    shards = int(cfg.num_shards or pc)
    if shards % pc:
        raise ValueError(f"data.num_shards={shards} must be a multiple of the {pc} processes")
    if cfg.batch_size % shards:
        raise ValueError(f"global batch {cfg.batch_size} not divisible by {shards} data shards")
    bs = cfg.batch_size // pc
    specs = dict(cfg.sources)
    specs.update(dict(sources or {}))
    srcs: dict[str, RecordSource] = {}
    for name in cfg.mixture:
        spec = specs.get(name)
        if spec is None:
            spec = default_spec(name, cfg.root, cfg.split)
        need = cfg.num_frames if name == "video" else cfg.num_views
        srcs[name] = make_source(spec, name, split=cfg.split, root=cfg.root,
                                 min_frames=need, resolution=cfg.resolution)
        if isinstance(spec, RecordSource):  # caller-built source: enforce the window length
            srcs[name].min_frames = max(srcs[name].min_frames, need)

    def shard_dataset(shard: int) -> grain.IterDataset:
        per_stream = {name: stream_dataset(src, name, cfg, process_index=shard,
                                           process_count=shards, batch_size=bs * pc // shards)
                      for name, src in srcs.items()}
        if len(per_stream) == 1:
            return next(iter(per_stream.values()))
        return grain.IterDataset.mix(per_stream, cfg.mixture)

    per = shards // pc
    if per == 1:
        ds = shard_dataset(pi)
    else:  # several logical shards in this process: same global batches on any process count
        ds = grain.experimental.ZipIterDataset([shard_dataset(pi * per + j) for j in range(per)])
        ds = ds.map(_concat_batches)
    if cfg.num_workers > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
    return ds, srcs, cfg, bs


def _concat_batches(parts):
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}


def make_train_iterator(config_like: Any, *, process_index: int | None = None,
                        process_count: int | None = None,
                        sources: Mapping[str, Any] | None = None) -> TrainIterator:
    """Infinite iterator of per-process batches, each from one stream (see module docstring).

    ``process_index``/``process_count`` default to ``jax.process_index()``/``process_count()``.
    ``sources`` overrides ``data.sources`` ({stream: spec or RecordSource}).
    """
    ds, srcs, cfg, per_process = make_train_dataset(config_like, process_index=process_index,
                                                    process_count=process_count, sources=sources)
    return TrainIterator(iter(ds), srcs, cfg.mixture, per_process)


def to_global_batch(batch: Mapping[str, Any], sharding: Any) -> dict[str, jax.Array]:
    """Per-process numpy batch -> global ``jax.Array``s with ``sharding`` (leading axis = batch).

    ``sharding`` is one ``jax.sharding.Sharding`` used for every leaf, or a pytree of them
    matching ``batch``. Each process passes its own rows; the global batch dimension is
    ``process_count * per_process_batch`` (``jax.make_array_from_process_local_data``).
    """
    if isinstance(sharding, jax.sharding.Sharding):
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
                for k, v in batch.items()}
    return jax.tree.map(lambda s, v: jax.make_array_from_process_local_data(s, np.asarray(v)),
                        sharding, dict(batch))


__all__ = ["make_train_iterator", "make_train_dataset", "stream_dataset", "to_global_batch",
           "TrainIterator", "process_shard", "STREAM_IDS", "STREAM_NAMES"]
