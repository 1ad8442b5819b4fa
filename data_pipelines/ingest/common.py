"""Shared machinery of the ingestion tools: skip reasons, the JSON report, shards, the CLI.

Why skip-and-report instead of failing: a real folder of a few thousand videos always holds
some that are broken or unusable, and a run that dies on file 1,873 wastes the hours spent on
the first 1,872. So every per-file problem raises :class:`Skip` with a reason code from
:data:`REASONS`; the tool records it in ``<out>/ingest_report.json`` and moves on. The run
exits 0 when at least one record was written, 1 when nothing usable remained, and 2 on CLI
misuse (argparse convention).

Output layout (one ``--out`` per tool; ``data.root`` may point at their common parent)::

    <out>/<stream>-<split>-00000.array_record   schema.encode blobs, ``records_per_shard`` each
    <out>/ingest_report.json                    see :class:`Report`

The shard names match both ``data.sources.video = "<out>/*.array_record"`` and the
default search of ``sources.default_spec`` (``**/*<stream>*<split>*.array_record*``).
"""
from __future__ import annotations

import argparse
import atexit
import collections
import functools
import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

from array_record.python.array_record_module import ArrayRecordWriter
from tqdm import tqdm

from data_pipelines import schema
from data_pipelines.sources import STREAMS

# reason code -> what it means (also written into every report, so a report explains itself)
REASONS: dict[str, str] = {
    "non_ascii_name": "the path under --src has non-ASCII characters (record keys and the "
                      "tools reading reports are ASCII-only; rename the file)",
    "empty_file": "the file has zero bytes",
    "unreadable": "not a container/image the decoder can open (corrupt, truncated, other format)",
    "corrupt_stream": "the container opens but decoding fails part-way",
    "no_video_stream": "the container has no video stream",
    "no_audio_stream": "no audio stream, or one that decodes to no samples",
    "too_short": "fewer usable 25 fps frames (audio present, face tracked) than one clip",
    "variable_frame_rate": "more than 2% of frame intervals differ from the median interval "
                           "by more than 25% (dropped frames, mixed-rate segments)",
    "odd_frame_rate": "constant rate below 23.5 fps (25 fps would repeat frames: stutter) or "
                      "above 240 fps (not a talking-video rate)",
    "no_face": "a face was detected in fewer than half of the frames",
    "several_faces": "two or more faces of comparable size in at least 20% of the frames",
    "face_left_frame": "the face touches the image border, or is lost right next to it",
    "missing_cameras": "the capture folder has no cameras.json",
    "malformed_cameras": "cameras.json is not valid JSON or does not follow the documented format",
    "view_size_mismatch": "the views of one capture do not all have the same image size",
    "too_few_views": "fewer views than --min_views",
    "internal_error": "an unexpected exception (a bug, or an input the tool does not "
                      "understand); the message names it",
}


class Skip(Exception):
    """A per-input problem: ``reason`` is a key of :data:`REASONS`, ``message`` says what."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def check_ascii(rel_path: str) -> None:
    """Skip a path (relative to --src) that is not pure ASCII."""
    if not rel_path.isascii():
        raise Skip("non_ascii_name", f"{rel_path!r}: expected an ASCII path")


def ok_entry(path: str, records: int, **info: Any) -> dict[str, Any]:
    """A report entry for an input that gave ``records`` records."""
    return {"path": path, "status": "ok", "records": int(records), **info}


def skip_entry(path: str, err: Skip, records: int = 0) -> dict[str, Any]:
    """A report entry for a skipped input ("partial" when some records were kept)."""
    return {"path": path, "status": "partial" if records else "skipped", "reason": err.reason,
            "message": err.message, "records": int(records)}


class Report:
    """Per-input status, reason and details; written as ``<out>/ingest_report.json``::

        {"tool": "videos", "src": ..., "out": ..., "settings": {...},
         "counts": {"inputs": 12, "ok": 3, "skipped": 9, "records": 7,
                    "reasons": {"no_face": 1, ...}},
         "inputs": [{"path": "a/b.mp4", "status": "ok", "records": 3, ...},
                    {"path": "c.mp4", "status": "skipped", "reason": "no_audio_stream",
                     "message": "..."}],
         "identities": {"name": id_label, ...}, "shards": ["video-train-00000.array_record"],
         "reasons": {code: meaning, ...}}

    ``status`` is "ok", "skipped", or "partial" (decoding failed after some records of the
    input had been written; they are kept and counted).
    """

    def __init__(self, tool: str, src: str, out: str, settings: dict[str, Any]):
        self.tool, self.src, self.out, self.settings = tool, src, out, settings
        self.inputs: list[dict[str, Any]] = []
        self.identities: dict[str, int] = {}
        self.shards: list[str] = []

    def ok(self, path: str, records: int, **info: Any) -> None:
        self.inputs.append(ok_entry(path, records=records, **info))

    def skip(self, path: str, err: Skip, records: int = 0) -> None:
        self.inputs.append(skip_entry(path, err, records))

    def counts(self) -> dict[str, Any]:
        status = collections.Counter(e["status"] for e in self.inputs)
        reasons = collections.Counter(e["reason"] for e in self.inputs if "reason" in e)
        return {"inputs": len(self.inputs), "ok": status["ok"], "partial": status["partial"],
                "skipped": status["skipped"],
                "records": sum(e["records"] for e in self.inputs),
                "reasons": dict(sorted(reasons.items()))}

    def write(self) -> str:
        path = join(self.out, "ingest_report.json")
        doc = {"tool": self.tool, "src": self.src, "out": self.out, "settings": self.settings,
               "counts": self.counts(), "inputs": self.inputs, "identities": self.identities,
               "shards": self.shards, "reasons": REASONS}
        text = json.dumps(doc, indent=1, ensure_ascii=True).encode()
        if is_remote(path):
            from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 (Beam loads only for ingestion)

            with FileSystems.create(path) as f:
                f.write(text)
        else:
            with open(path, "wb") as f:
                f.write(text)
        return path

    def summary(self) -> str:
        return Report.summary_of({"tool": self.tool, "counts": self.counts(), "out": self.out,
                                  "shards": self.shards})

    @staticmethod
    def summary_of(doc: dict[str, Any]) -> str:
        """A report document (as written) -> the few lines printed after a run."""
        c = doc["counts"]
        lines = [f"{doc['tool']}: {c['inputs']} inputs -> {c['ok']} ok, {c['partial']} partial, "
                 f"{c['skipped']} skipped; {c['records']} records in {len(doc['shards'])} "
                 "shard(s)"]
        lines += [f"  skipped {n:4d} x {r}" for r, n in c["reasons"].items()]
        lines.append(f"  report: {join(doc['out'], 'ingest_report.json')}")
        return "\n".join(lines)


class ShardWriter:
    """Validated, encoded records -> ``<out>/<stream>-<split>-NNNNN.array_record`` files.

    Records are written as they come (one clip's frames in memory at a time), rolling over to
    a new shard every ``records_per_shard`` records.
    """

    def __init__(self, out: str, stream: str, split: str = "train", records_per_shard: int = 256):
        if stream not in STREAMS:
            raise ValueError(f"stream {stream!r}: expected one of {sorted(STREAMS)}")
        self.out, self.prefix = out, f"{stream}-{split}"
        self.records_per_shard = max(1, int(records_per_shard))
        self.paths: list[str] = []
        self.count = 0
        self._writer = None
        self._in_shard = 0
        self.first_keys: list[str] = []  # key of each shard's first record

    def write(self, record: dict[str, Any]) -> None:
        blob = schema.encode(record)  # validates: a bad record is a bug here, not a skip
        if self._writer is None or self._in_shard >= self.records_per_shard:
            self._roll()
            self.first_keys.append(str(record["key"]))
        self._writer.write(blob)
        self._in_shard += 1
        self.count += 1

    def _roll(self) -> None:

        self.close()
        path = os.path.join(self.out, f"{self.prefix}-{len(self.paths):05d}.array_record")
        # group_size 1: one record per chunk, so a random read decodes only that record
        self._writer = ArrayRecordWriter(path, "group_size:1")
        self._in_shard = 0
        self.paths.append(path)

    def close(self) -> list[str]:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.paths


class OneLineParser(argparse.ArgumentParser):
    """argparse, but misuse prints ONE line (``prog: error: ...``) and exits 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--src", required=True, help="input folder (read recursively)")
    ap.add_argument("--out", required=True, help="output folder for shards and the report")
    ap.add_argument("--resolution", type=int, default=256,
                    help="square output size; training resolutions must divide it (default 256)")
    ap.add_argument("--split", default="train", help="split name in the shard file names")
    ap.add_argument("--records_per_shard", type=int, default=256)
    ap.add_argument("--overwrite", action="store_true",
                    help="delete this tool's earlier shards in --out first")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace, stream: str) -> None:
    """Exit 2 (one line) on a bad --src/--out/--resolution; prepare --out."""
    if args.resolution < 8:
        ap.error(f"--resolution {args.resolution}: expected at least 8")
    if args.records_per_shard < 1:
        ap.error(f"--records_per_shard {args.records_per_shard}: expected at least 1")
    if is_remote(args.src) or is_remote(args.out):
        return _check_remote(ap, args, stream)
    if not os.path.isdir(args.src):
        ap.error(f"--src {args.src}: expected an existing folder")
    if os.path.abspath(args.out) == os.path.abspath(args.src):
        ap.error("--out: expected a folder other than --src")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        ap.error(f"--out {args.out}: exists and is not a folder")
    os.makedirs(args.out, exist_ok=True)
    old = sorted(glob.glob(os.path.join(args.out, f"{stream}-*.array_record*")))
    if old and not args.overwrite:
        ap.error(f"--out {args.out}: already holds {len(old)} {stream} shard(s); "
                 "pass --overwrite or choose another folder")
    for p in old:
        os.remove(p)
    rep = os.path.join(args.out, "ingest_report.json")
    if os.path.exists(rep):
        try:
            tool = json.load(open(rep, encoding="utf-8")).get("tool")
        except (OSError, ValueError, AttributeError):
            tool = None
        if tool not in (None, stream_tool(stream)):
            ap.error(f"--out {args.out}: holds a '{tool}' ingestion; use one --out per tool")


def _check_remote(ap: argparse.ArgumentParser, args: argparse.Namespace, stream: str) -> None:
    """The checks of check_args for gs:// (or other Beam filesystem) paths."""
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 (Beam loads only for ingestion)

    if not is_remote(args.src) and not os.path.isdir(args.src):
        ap.error(f"--src {args.src}: expected an existing folder")
    if not is_remote(args.out):
        os.makedirs(args.out, exist_ok=True)
    old = [m.path for r in FileSystems.match([join(args.out, f"{stream}-*.array_record*")])
           for m in r.metadata_list]
    if old and not args.overwrite:
        ap.error(f"--out {args.out}: already holds {len(old)} {stream} shard(s); "
                 "pass --overwrite or choose another folder")
    if old:
        FileSystems.delete(old)


# ---------------------------------------------------------------- local or gs:// paths
def is_remote(path: str) -> bool:
    """A Beam filesystem URL (gs://, s3://, ...) rather than a local path."""
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(base, *parts)


def absolute(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(path)


def upload(local: str, dest: str) -> None:
    """Copy a local file to ``dest`` (local or remote), creating local folders."""
    if not is_remote(dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.move(local, dest)
        return
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 (Beam loads only for ingestion)

    with open(local, "rb") as f, FileSystems.create(dest) as g:
        shutil.copyfileobj(f, g, 1 << 22)


def download(url: str, local: str) -> None:
    """Copy a remote file (any Beam filesystem) to the local path ``local``."""
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 (Beam loads only for ingestion)

    with open(local, "wb") as g, FileSystems.open(url) as f:
        shutil.copyfileobj(f, g, 1 << 22)


def read_report(out: str) -> dict[str, Any]:
    path = join(out, "ingest_report.json")
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 (Beam loads only for ingestion)

        with FileSystems.open(path) as f:
            return json.loads(f.read().decode())
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class local_input:
    """``with local_input(path) as p``: ``p`` is ``path``, or a temp copy of a remote file
    (PyAV and OpenCV read local files). A Skip raised inside names ``path``, not the copy."""

    def __init__(self, path: str):
        self.path, self.tmp = path, None

    def __enter__(self) -> str:
        if not is_remote(self.path):
            return self.path
        fd, self.tmp = tempfile.mkstemp(suffix=os.path.splitext(self.path)[1])
        os.close(fd)
        download(self.path, self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp:
            os.remove(self.tmp)
            if isinstance(exc, Skip):  # the report names the input, not its temp copy
                exc.message = exc.message.replace(self.tmp, self.path)


def file_exists(path: str) -> bool:
    """An existing file, local or on a Beam filesystem (a model given as ``gs://...``)."""
    if not is_remote(path):
        return os.path.isfile(path)
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 (Beam loads only for ingestion)

    return FileSystems.exists(path)


@functools.cache
def local_model(path: str) -> str:
    """A model file as a local path: ``path`` itself, or, for a remote one, a copy made once
    per worker process (Dataflow workers cannot see the launching machine's disk, and
    onnxruntime / MediaPipe / OpenCV load local files only). The copy lives until the
    process exits."""
    if not is_remote(path):
        return path
    folder = tempfile.mkdtemp(prefix="ingest-model-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    local = os.path.join(folder, path.rstrip("/").rsplit("/", 1)[-1])
    download(path, local)
    return local


def stream_tool(stream: str) -> str:
    return {"video": "videos", "multiview": "multiview"}[stream]


def list_inputs(src: str, exts: Iterable[str]) -> list[str]:
    """Files under ``src`` (recursive, sorted, no symlinked folders) ending in one of ``exts``,
    as paths relative to ``src``."""
    exts = tuple(e.lower() for e in exts)
    if is_remote(src):
        from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 (Beam loads only for ingestion)

        base = src.rstrip("/") + "/"
        found = [m.path for r in FileSystems.match([base + "**"]) for m in r.metadata_list]
        return sorted(p[len(base):] for p in found if p.lower().endswith(exts)
                      and not os.path.basename(p).startswith("."))
    out = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(exts) and not f.startswith("."):
                out.append(os.path.relpath(os.path.join(root, f), src))
    return out


def identity_labels(names: Iterable[str]) -> dict[str, int]:
    """Identity name -> id_label: sorted order, so labels do not depend on walk order."""
    return {n: i for i, n in enumerate(sorted(set(names)))}


def progress(items: list, quiet: bool, desc: str):
    if quiet:
        return items

    return tqdm(items, desc=desc, unit="file", file=sys.stderr)


def finish(report: Report, writer: ShardWriter, quiet: bool = False) -> int:
    """Close shards, write the report, print the summary; -> exit code (0 or 1)."""
    report.shards = [os.path.basename(p) for p in writer.close()]
    report.write()
    if not quiet:
        print(report.summary())
    if writer.count == 0:
        print(f"{report.tool}: no usable input under {report.src} (see the report)",
              file=sys.stderr)
        return 1
    return 0
