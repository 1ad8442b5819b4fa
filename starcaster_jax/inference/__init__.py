"""Inference (DESIGN §4): autoregressive chunked generation of talking videos, view
trajectories, multi-view stills (``generate``, CLI ``launch/generate.py`` =
``starcaster-generate``); export to a params-only artefact with serialized compiled functions
(``export``, CLI ``launch/export.py``) and a serving module that runs it with JAX alone
(``serve``).

Names are imported lazily, so ``starcaster_jax.inference.serve`` imports no Flax."""
import importlib

_GENERATE = ("Chunk", "GenerationError", "Generator", "Parts", "SamplingSettings", "check_speech",
             "chunk_audio", "chunk_audio_windows", "load_embedding", "load_parts", "load_speech",
             "normalize_embedding", "num_output_frames", "plan_chunks", "random_module", "random_parts",
             "reference_crop", "schedule_from_config")
_MODULES = ("chunking", "export", "generate", "serve", "views")

__all__ = list(_GENERATE) + list(_MODULES)


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"starcaster_jax.inference.{name}")
    if name in _GENERATE:
        return getattr(importlib.import_module("starcaster_jax.inference.generate"), name)
    raise AttributeError(f"module 'starcaster_jax.inference' has no attribute {name!r}")
