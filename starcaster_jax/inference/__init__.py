"""Inference (DESIGN §4): autoregressive chunked generation of talking videos, view
trajectories, multi-view stills. The CLI is ``launch/generate.py`` (``starcaster-generate``)."""
from starcaster_jax.inference import views
from starcaster_jax.inference.generate import (Chunk, GenerationError, Generator, Parts, SamplingSettings,
                                               check_speech, chunk_audio, chunk_audio_windows,
                                               load_embedding, load_parts, load_speech, normalize_embedding,
                                               num_output_frames, plan_chunks, random_module, random_parts,
                                               reference_crop, schedule_from_config)

__all__ = ["Chunk", "GenerationError", "Generator", "Parts", "SamplingSettings", "check_speech",
           "chunk_audio", "chunk_audio_windows", "load_embedding", "load_parts", "load_speech",
           "normalize_embedding", "num_output_frames", "plan_chunks", "random_module", "random_parts",
           "reference_crop", "schedule_from_config", "views"]
