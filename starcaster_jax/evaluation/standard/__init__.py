"""The field's standard metrics (FID, FVD, LSE-D / LSE-C, CSIM) with the user's own networks.

``metrics.StandardMetrics`` accumulates them video by video; ``directories`` pairs two video
directories for ``launch/evaluate_videos.py``; ``syncnet`` is the JAX port of syncnet_python's
SyncNet and its weight importer; ``lse`` Wav2Lip's scores_LSE protocol; ``frechet`` the distance
of FID and FVD; ``onnx_features`` the Inception / I3D runners; ``csim`` the ArcFace cosine.
"""
from starcaster_jax.evaluation.standard.frechet import feature_stats, frechet_distance, frechet_from_features
from starcaster_jax.evaluation.standard.metrics import METRICS, Settings, Skips, StandardMetrics, summary_lines

__all__ = ["METRICS", "Settings", "Skips", "StandardMetrics", "feature_stats", "frechet_distance",
           "frechet_from_features", "summary_lines"]
