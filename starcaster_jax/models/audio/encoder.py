"""The one audio-encoder interface and the config switch ``audio.encoder``.

Both encoders (the wav2vec2 port with imported weights, and the built-in log-mel encoder)
produce multi-layer hidden states at 50 Hz, so everything downstream (alignment, windows,
``AudioProjector``, the denoiser's audio cross-attention) is the same code.

Config section ``audio`` (ml_collections ConfigDict or a plain dict):
    encoder:        "wav2vec2" | "builtin"
    wav2vec2_path:  HF checkpoint dir (None with encoder="wav2vec2": random init from
                    ``wav2vec2`` = dict of Wav2Vec2Config fields; for tests/shape checks)
    builtin:        dict of BuiltinAudioConfig fields
    layers:         hidden-state indices fed to the projector (None = all)
    window:         w, frames each side (window of 2w+1)
    num_tokens:     N_a tokens per frame
    token_dim:      token width (the denoiser's audio_dim)
    proj_hidden:    projector MLP width
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
from flax import nnx

from starcaster_jax.models.audio.alignment import AudioProjector
from starcaster_jax.models.audio.builtin import BuiltinAudioConfig, BuiltinAudioEncoder
from starcaster_jax.models.audio.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model
from starcaster_jax.models.rngs import InitRngs

ENCODERS = ("wav2vec2", "builtin")


@runtime_checkable
class AudioEncoder(Protocol):
    """``encode(audio [B, S] f32 at sample_rate) -> hidden [B, T, num_hidden_states, hidden_size]``
    with ``T`` at ``frame_rate`` Hz (50)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def frame_rate(self) -> float: ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def num_hidden_states(self) -> int: ...

    def encode(self, audio: jax.Array) -> jax.Array: ...


def _get(cfg: Any, name: str):
    """A field of the ``model.audio`` section (ConfigDict or mapping); every one is declared in
    configs/common.py, so a missing one is an error, never a silent default."""
    try:
        return cfg[name]
    except (KeyError, TypeError):
        raise ValueError(f"model.audio.{name}: missing (declared in configs/common.py)") from None


def _as_dict(x) -> dict:
    if x is None:
        return {}
    return dict(x.to_dict() if hasattr(x, "to_dict") else x)


def build_audio_encoder(cfg: Any, *, rngs: nnx.Rngs | None = None) -> AudioEncoder:
    """An encoder from the ``audio`` config section (see module docstring)."""
    kind = _get(cfg, "encoder")
    if kind not in ENCODERS:
        raise ValueError(f"audio.encoder: expected one of {ENCODERS}, got {kind!r}")
    rngs = rngs if rngs is not None else InitRngs(0)
    if kind == "wav2vec2":
        path = _get(cfg, "wav2vec2_path")
        if path:
            # models/ never imports weights/ at module level (tests/test_layering.py): the
            # importer is reached only when a user names a wav2vec2 directory.
            from starcaster_jax.weights.wav2vec2 import load_wav2vec2  # noqa: PLC0415 (layering: weights/ imports models/)
            return load_wav2vec2(path)[0]
        return Wav2Vec2Model(Wav2Vec2Config(**{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in _as_dict(_get(cfg, "wav2vec2")).items()}),
                             rngs=rngs)
    return BuiltinAudioEncoder(BuiltinAudioConfig.from_dict(_as_dict(_get(cfg, "builtin"))), rngs=rngs)


def build_audio_projector(cfg: Any, encoder: AudioEncoder, out_dim: int, *, rngs: nnx.Rngs) -> AudioProjector:
    """``AudioProjector`` sized for ``encoder`` and the ``audio`` config section, making tokens
    of width ``out_dim`` (the denoiser's ``model.unet.audio_dim``)."""
    layers = _get(cfg, "layers")
    num_layers = len(layers) if layers is not None else encoder.num_hidden_states
    return AudioProjector(window=int(_get(cfg, "window")), num_layers=num_layers,
                          in_dim=encoder.hidden_size, out_dim=int(out_dim),
                          num_tokens=int(_get(cfg, "num_tokens")),
                          hidden_dim=int(_get(cfg, "proj_hidden")), rngs=rngs)
