"""Inference (DESIGN §4): autoregressive chunked generation of talking videos, view
trajectories, multi-view stills (``generate``, CLI ``launch/generate.py`` =
``starcaster-generate``); export to a params-only artefact with serialized compiled functions
(``export``, CLI ``launch/export.py``) and a serving module that runs it with JAX alone
(``serve``).

One job per module: ``chunking`` (chunk layout and the chunk loop, shared with serving),
``inputs`` (speech, face crop, identity embedding files), ``loading`` (a training workdir's
model and encoders, config diffing), ``generate`` (the ``Generator``), ``random_init``
(random parts of real shapes, for benchmarks and tests).

Names are imported lazily, so ``starcaster_jax.inference.serve`` imports no Flax."""
import importlib

_NAMES = {
    "chunking": ("FPS", "MIN_AUDIO_SECONDS", "SAMPLE_RATE", "SAMPLES_PER_FRAME", "Chunk", "GenerationError",
                 "check_speech", "chunk_audio", "normalize_embedding", "num_output_frames", "plan_chunks",
                 "run_chunks"),
    "inputs": ("load_embedding", "load_speech", "reference_crop"),
    "loading": ("Parts", "config_mismatch", "encoder_parts", "identity_fn_from_config", "load_parts"),
    "generate": ("Generator", "SamplingSettings", "to_uint8"),
    "random_init": ("random_module", "random_parts"),
}
_HOME = {name: module for module, names in _NAMES.items() for name in names}
_MODULES = ("chunking", "export", "generate", "inputs", "loading", "random_init", "serve", "views")

__all__ = sorted(_HOME) + list(_MODULES)


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"starcaster_jax.inference.{name}")
    if name in _HOME:
        return getattr(importlib.import_module(f"starcaster_jax.inference.{_HOME[name]}"), name)
    raise AttributeError(f"module 'starcaster_jax.inference' has no attribute {name!r}")
