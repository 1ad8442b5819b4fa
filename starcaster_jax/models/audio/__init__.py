"""Audio conditioning: encoders (wav2vec2 port, built-in log-mel encoder), 50 Hz -> 25 fps
alignment, per-frame windows and the ``AudioProjector`` (DESIGN §2, "audio")."""
from starcaster_jax.models.audio.alignment import (
                                                   AudioProjector,
                                                   audio_tokens,
                                                   features_to_frames,
                                                   frame_windows,
                                                   interpolation_weights,
                                                   num_video_frames,
                                                   select_layers,
)
from starcaster_jax.models.audio.builtin import (
                                                   BuiltinAudioConfig,
                                                   BuiltinAudioEncoder,
                                                   eval_step,
                                                   log_mel,
                                                   make_pretrain_optimizer,
                                                   mel_spectrogram,
                                                   pretrain_step,
                                                   viseme_loss,
)
from starcaster_jax.models.audio.encoder import ENCODERS, AudioEncoder, build_audio_encoder, build_audio_projector
from starcaster_jax.models.audio.io import check_audio_batch, load_audio, resample
from starcaster_jax.models.audio.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model, feature_attention_mask

__all__ = [
    "AudioEncoder", "AudioProjector", "BuiltinAudioConfig", "BuiltinAudioEncoder", "ENCODERS",
    "Wav2Vec2Config", "Wav2Vec2Model", "audio_tokens", "build_audio_encoder",
    "build_audio_projector", "check_audio_batch", "eval_step", "feature_attention_mask", "features_to_frames",
    "frame_windows", "interpolation_weights", "load_audio", "log_mel", "make_pretrain_optimizer",
    "mel_spectrogram", "num_video_frames", "pretrain_step", "resample", "select_layers",
    "viseme_loss",
]
