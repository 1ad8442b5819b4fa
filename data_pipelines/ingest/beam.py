"""The ingestion tools as Apache Beam pipelines: one machine's cores, or a Dataflow fleet.

Why Beam: today's per-file work (decode, track, crop, encode) is embarrassingly parallel, and
dataset-scale folders (VoxCeleb2: ~2,400 h) need many machines; Beam is the engine TFDS and
the Google research codebases prepare such datasets with, and the same pipeline runs on the
DirectRunner here and on Dataflow / Flink / Spark there.

The pipeline (one per tool run)::

    Create(inputs) -> Reshuffle -> ParDo(ingest one input; write its records)
                                     |-- main output: one report entry per input
                                     '-- "shards": the shard files each bundle wrote
    Create([None]) -> Map(finalize, entries=AsList, shards=AsList)
                       (rename shards to <stream>-<split>-NNNNN.array_record, write the report)

Records never travel as PCollection elements: a clip is tens of MB, so each bundle writes
its records straight into its own ArrayRecord shards (a local temp file, copied to
``<out>/.ingest-tmp/`` when the bundle finishes, then renamed by ``finalize``). Only shards
that a committed bundle reported are kept, so a bundle the runner retried leaves no
duplicates (the FileBasedSink pattern; array_record's own Beam sink writes to local disk
only). A per-input failure is a report entry (common.Skip), never a pipeline failure.

Options: our flags are parsed by the tool's argparse; every other ``--flag`` goes to Beam's
``PipelineOptions`` (``--runner DataflowRunner --project .. --region .. --temp_location
gs://..``; ``--direct_num_workers N``). Defaults: the DirectRunner in ``multi_processing``
mode with one worker per CPU core. ``--direct_running_mode in_memory`` is the single-process
path.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from data_pipelines.ingest import common

TMP = ".ingest-tmp"


def _beam():
    import apache_beam as beam  # local: `--help` and CLI misuse answer without loading Beam  # noqa: PLC0415 (Beam loads only for ingestion)

    return beam


def pipeline_options(beam_args: Sequence[str], ap) -> Any:
    """Beam flags (not ours) -> PipelineOptions with our defaults; exit 2 on stray words."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, WorkerOptions  # noqa: PLC0415 (Beam loads only for ingestion)

    stray = [a for a in beam_args if not a.startswith("--") and not _is_value(beam_args, a)]
    if stray:
        ap.error(f"unexpected argument {stray[0]!r}: expected --flag or --flag=value")
    opts = PipelineOptions(list(beam_args))
    std, direct = opts.view_as(StandardOptions), opts.view_as(DirectOptions)
    if std.runner is None:
        std.runner = "DirectRunner"
    given = " ".join(beam_args)
    if "--direct_running_mode" not in given:
        direct.direct_running_mode = "multi_processing"
    if "--direct_num_workers" not in given:
        single = direct.direct_running_mode == "in_memory"
        direct.direct_num_workers = 1 if single else (os.cpu_count() or 1)
    if "--default_sdk_harness_log_level" not in given:  # workers' INFO lines drown the summary
        opts.view_as(WorkerOptions).default_sdk_harness_log_level = "WARNING"
    return opts


def _is_value(args: Sequence[str], a: str) -> bool:
    i = args.index(a)
    return i > 0 and args[i - 1].startswith("--") and "=" not in args[i - 1]


def _make_dofn():
    """The DoFn class, built on first use (its base class lives in apache_beam)."""
    beam = _beam()
    from apache_beam.transforms.window import GlobalWindows  # noqa: PLC0415 (Beam loads only for ingestion)

    class IngestFn(beam.DoFn):
        """One input -> its records in this bundle's shards; -> its report entry."""

        def __init__(self, make_settings, spec, ingest, out, stream, split, rps):
            self.make_settings, self.spec, self.ingest = make_settings, spec, ingest
            self.out, self.stream, self.split, self.rps = out, stream, split, rps

        def setup(self):
            self.cfg = self.make_settings(self.spec)  # detectors/ONNX sessions: per worker

        def start_bundle(self):
            self.tmp = tempfile.mkdtemp(prefix="starcaster_ingest_")
            self.writer = common.ShardWriter(self.tmp, self.stream, self.split, self.rps)

        def process(self, item):
            yield self.ingest(item, self.cfg, self.writer)

        def finish_bundle(self):
            paths = self.writer.close()
            bundle = uuid.uuid4().hex
            for i, (path, first) in enumerate(zip(paths, self.writer.first_keys)):
                dest = common.join(self.out, TMP, f"{bundle}-{i:05d}.array_record")
                common.upload(path, dest)
                yield beam.pvalue.TaggedOutput("shards",
                                               GlobalWindows.windowed_value((first, dest)))
            shutil.rmtree(self.tmp, ignore_errors=True)

    return IngestFn


def finalize(_, entries: list[dict], shards: list[tuple[str, str]], *, tool: str, src: str,
             out: str, stream: str, split: str, settings: dict, identities: dict) -> str:
    """Committed shards -> ``<stream>-<split>-NNNNN.array_record`` (ordered by their first
    record key, so a rerun names them alike); entries -> ``<out>/ingest_report.json``."""
    from apache_beam.io.filesystems import FileSystems  # noqa: PLC0415 (Beam loads only for ingestion)

    names = []
    for i, (_, tmp) in enumerate(sorted(shards)):
        name = f"{stream}-{split}-{i:05d}.array_record"
        FileSystems.rename([tmp], [common.join(out, name)])
        names.append(name)
    left = common.join(out, TMP)  # shards of retried bundles, never reported
    if common.is_remote(out):  # an object store has no folder to test for: list the prefix
        stale = [m.path for r in FileSystems.match([left + "/**"]) for m in r.metadata_list]
        if stale:
            FileSystems.delete(stale)
    elif os.path.isdir(left):
        shutil.rmtree(left)
    report = common.Report(tool, src, out, settings)
    report.inputs = sorted(entries, key=lambda e: e["path"])
    report.identities = identities
    report.shards = names
    return report.write()


def run(*, tool: str, stream: str, items: list, make_settings: Callable, spec: Any,
        ingest: Callable, args, beam_args: Sequence[str], ap, settings: dict,
        identities: dict) -> int:
    """Build and run the pipeline; print the summary; -> exit code (0 records written, 1 none).

    ``items``: picklable inputs; ``make_settings(spec)`` runs once per worker (models load
    there); ``ingest(item, settings, writer) -> report entry`` must not raise.
    """
    beam = _beam()
    opts = pipeline_options(beam_args, ap)
    src, out = common.absolute(args.src), common.absolute(args.out)
    fn = _make_dofn()(make_settings, spec, ingest, out, stream, args.split,
                      args.records_per_shard)
    with beam.Pipeline(options=opts) as p:
        res = (p | "inputs" >> beam.Create(items, reshuffle=False)
               | "spread" >> beam.Reshuffle()
               | "ingest" >> beam.ParDo(fn).with_outputs("shards", main="entries"))
        _ = (p | "once" >> beam.Create([None])
             | "finalize" >> beam.Map(finalize, beam.pvalue.AsList(res.entries),
                                      beam.pvalue.AsList(res.shards), tool=tool, src=src,
                                      out=out, stream=stream, split=args.split,
                                      settings=settings, identities=identities))
    report = common.read_report(out)
    if not args.quiet:
        print(common.Report.summary_of(report))
    if report["counts"]["records"] == 0:
        print(f"{tool}: no usable input under {src} (see the report)", file=sys.stderr)
        return 1
    return 0
