"""Grain random-access sources of decoded schema records, one per stream.

A :class:`RecordSource` wraps any random-access collection of stored records (ArrayRecord
shards through ``grain.sources.ArrayRecordDataSource``, a TFDS ``builder.as_data_source(split)``
/ ``tfds.data_source(...)``, or any in-memory sequence of blobs) and returns the decoded record
dict (``schema.decode``) for the records that belong to its stream and are usable, or ``None``
for the others. Grain drops ``None`` elements when the map dataset is turned into an iterator,
so a corrupt or unusable record never crashes training: it is skipped and counted by reason in
``RecordSource.skipped`` (a ``collections.Counter``).

Skip reasons (counted once per read, i.e. once per epoch for a persistently bad record):

    read_error      the underlying source raised while reading the record
    decode_error    ``schema.decode`` failed (bad magic, corrupt header, truncated payload)
    invalid_record  ``schema.validate`` rejected the decoded record
    too_short       fewer frames (video) / views (multiview) than the window needs
    bad_resolution  frames are not square or not an integer multiple of the target resolution
    other_kind      (not an error) the record belongs to the other stream; only happens when
                    one dataset holds both kinds

Counts live in the process that reads: with ``num_workers > 0`` the reads happen in worker
processes and the counters of the main-process source stay at zero (run with 0 workers to
audit a corpus).

Source specs understood by :func:`open_source` (``spec``):
    * a sequence/RandomAccessDataSource (anything with ``__len__``/``__getitem__``) of blobs
      or TFDS example dicts ``{"record": blob}``;
    * an object with ``as_data_source`` (a TFDS builder), read at ``split``;
    * ``"tfds:NAME[/CONFIG][:SPLIT]"`` -> ``tfds.data_source(NAME[/CONFIG], split, data_dir=root)``;
    * a prepared TFDS dataset directory (``tfds.builder_from_directory``); TFDS datasets are read
      at split ``{split}_{stream}`` when it exists (the built-in corpus), else ``split``;
    * a path / glob / list of paths or globs of ArrayRecord files.
"""
from __future__ import annotations

import collections
import glob
import os
from collections.abc import Sequence
from typing import Any

import grain
from array_record.python.array_record_module import ArrayRecordWriter

from data_pipelines import schema

STREAMS = {"video": schema.KIND_VIDEO, "multiview": schema.KIND_MULTIVIEW}


class RecordSource(grain.sources.RandomAccessDataSource):
    """Decoded records of one stream; ``None`` (skipped and counted) for unusable ones.

    Args:
      inner: random-access collection of blobs or ``{"record": blob}`` dicts.
      stream: "video" or "multiview".
      min_frames: minimum number of frames (video) or views (multiview) a record needs.
      resolution: target square resolution; frames must be ``k * resolution`` square (k >= 1
        integer, box-downsampled later by the transforms). ``None`` accepts any size.
      validate: run ``schema.validate`` on each decoded record (cheap next to decoding).
    """

    def __init__(self, inner: Any, stream: str, *, min_frames: int = 1,
                 resolution: int | None = None, validate: bool = True):
        if stream not in STREAMS:
            raise ValueError(f"stream {stream!r}: expected one of {sorted(STREAMS)}")
        self.inner = inner
        self.stream = stream
        self.kind = STREAMS[stream]
        self.min_frames = int(min_frames)
        self.resolution = resolution
        self.validate = validate
        self.skipped: collections.Counter = collections.Counter()

    def __len__(self) -> int:
        return len(self.inner)

    def __repr__(self) -> str:
        return (f"RecordSource(stream={self.stream!r}, n={len(self)}, "
                f"min_frames={self.min_frames}, resolution={self.resolution})")

    def _skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        return None

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            raw = self.inner[int(index)]
        except Exception:  # noqa: BLE001 - any storage failure is a skip, never a crash
            return self._skip("read_error")
        try:
            rec = schema.decode(raw)
        except Exception:  # noqa: BLE001
            return self._skip("decode_error")
        if self.validate:
            try:
                schema.validate(rec)
            except Exception:  # noqa: BLE001
                return self._skip("invalid_record")
        if int(rec.get("kind", -1)) != self.kind:
            return self._skip("other_kind")
        fr = rec["frames"]
        if fr.shape[0] < self.min_frames:
            return self._skip("too_short")
        if self.resolution is not None:
            h, w = fr.shape[1:3]
            if h != w or h < self.resolution or h % self.resolution:
                return self._skip("bad_resolution")
        return rec


def _expand_paths(spec: str | os.PathLike | Sequence[Any], root: str) -> list[str]:
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for p in items:
        p = os.fspath(p)
        if root and not os.path.isabs(p):
            p = os.path.join(root, p)
        hits = sorted(glob.glob(p, recursive=True))
        if not hits and os.path.exists(p):
            hits = [p]
        out.extend(hits)
    if not out:
        raise FileNotFoundError(f"no ArrayRecord files match {spec!r} (root={root!r})")
    return out


def _split_for(splits: Any, split: str, stream: str | None) -> str:
    """The built-in corpus names its splits ``{split}_{stream}`` (train_video, ...): use that
    when it exists, else ``split`` itself (a dataset holding one kind, or both)."""
    names = set(splits or ())
    if stream and f"{split}_{stream}" in names:
        return f"{split}_{stream}"
    return split


def is_tfds_dir(path: str) -> bool:
    """A prepared TFDS dataset directory (``dataset_info.json`` inside)."""
    return os.path.isfile(os.path.join(path, "dataset_info.json"))


def open_source(spec: Any, *, split: str = "train", root: str = "",
                stream: str | None = None) -> Any:
    """Storage spec -> random-access collection of stored records (see module docstring).

    TFDS datasets (a builder, ``"tfds:NAME[/CONFIG][:SPLIT]"`` or a prepared dataset
    directory) are read at split ``{split}_{stream}`` when the dataset has it (the built-in
    corpus: ``train_video``, ``train_multiview``, ...), else at ``split``.
    """
    if hasattr(spec, "as_data_source"):
        return spec.as_data_source(_split_for(spec.info.splits, split, stream))
    if isinstance(spec, str) and spec.startswith("tfds:"):
        import tensorflow_datasets as tfds  # local: raw ArrayRecord readers need no TFDS  # noqa: PLC0415 (TensorFlow loads only where TFDS is read)

        name, _, sp = spec[len("tfds:"):].partition(":")
        if sp:
            return tfds.data_source(name, split=sp, data_dir=root or None)
        builder = tfds.builder(name, data_dir=root or None)
        return open_source(builder, split=split, stream=stream)
    if isinstance(spec, (str, os.PathLike)) and os.path.isdir(spec) and is_tfds_dir(spec):
        import tensorflow_datasets as tfds  # noqa: PLC0415 (TensorFlow loads only where TFDS is read)

        return open_source(tfds.builder_from_directory(os.fspath(spec)), split=split,
                           stream=stream)
    if isinstance(spec, (str, os.PathLike)) or (
            isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], (str, os.PathLike))):
        return grain.sources.ArrayRecordDataSource(_expand_paths(spec, root))
    if hasattr(spec, "__len__") and hasattr(spec, "__getitem__"):
        return spec
    raise TypeError(f"cannot open a record source from {type(spec).__name__}: {spec!r}")


def find_tfds_dir(root: str) -> str | None:
    """``root`` itself or the single prepared TFDS dataset directory below it."""
    if is_tfds_dir(root):
        return root
    hits = sorted(os.path.dirname(p) for p in
                  glob.glob(os.path.join(root, "**", "dataset_info.json"), recursive=True))
    return hits[0] if len(hits) == 1 else None


def default_spec(stream: str, root: str, split: str = "train") -> Any:
    """What to read for ``stream`` when ``data.sources`` does not say: the prepared TFDS
    dataset at/below ``root`` (exactly one, e.g. the built-in corpus from build.py), else the
    ArrayRecord shards ``**/*{stream}*{split}*.array_record*`` (or ``**/*{stream}*.array_record*``)."""
    if not root:
        raise FileNotFoundError(f"stream {stream!r}: set data.root or data.sources.{stream}")
    d = find_tfds_dir(root)
    if d is not None:
        return d
    for pat in (f"**/*{stream}*{split}*.array_record*", f"**/*{split}*{stream}*.array_record*",
                f"**/*{stream}*.array_record*"):
        hits = sorted(glob.glob(os.path.join(root, pat), recursive=True))
        if hits:
            return hits
    raise FileNotFoundError(f"no TFDS dataset or ArrayRecord shards for stream {stream!r} under "
                            f"{root!r}; set data.sources.{stream} to a path/glob/'tfds:NAME:SPLIT'")


def make_source(spec: Any, stream: str, *, split: str = "train", root: str = "",
                min_frames: int = 1, resolution: int | None = None) -> RecordSource:
    """Open ``spec`` and wrap it as the decoded, skip-counting source of ``stream``."""
    if isinstance(spec, RecordSource):
        return spec
    return RecordSource(open_source(spec, split=split, root=root, stream=stream), stream,
                        min_frames=min_frames, resolution=resolution)


def write_array_record(path: str, blobs: Sequence[bytes]) -> str:
    """Write blobs to one ArrayRecord file (tests, ingestion of raw blobs). Returns ``path``."""

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    w = ArrayRecordWriter(os.fspath(path), "group_size:1")
    for b in blobs:
        w.write(bytes(b))
    w.close()
    return path


__all__ = ["STREAMS", "RecordSource", "open_source", "make_source", "default_spec", "find_tfds_dir",
           "write_array_record"]
