"""Real-data ingestion: a user's talking videos and multi-view captures -> schema records.

    python -m data_pipelines.ingest.videos --src DIR --out DIR      (stream (a): clips + audio)
    python -m data_pipelines.ingest.multiview --src DIR --out DIR   (stream (b): view sets)

Both write ArrayRecord shards of the one record schema (data_pipelines/schema.py) that the
built-in corpus uses, so the Grain pipelines read real and synthetic data alike, and an
``ingest_report.json`` listing every input with its status and, when skipped, a reason code
(common.REASONS). Modules: common (skip/report/shard/CLI machinery), faces (detection,
tracking, crops, mouth boxes, pose), videos, multiview, testdata (drawn-face test videos).
"""
