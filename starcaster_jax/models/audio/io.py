"""Bring any audio to what the encoders expect: mono float32 at 16 kHz, non-empty, finite.

Wrong sample rates are resampled (``scipy.signal.resample_poly``, an anti-aliased polyphase
filter), multi-channel audio is downmixed by averaging, integer PCM is scaled to [-1, 1).
Empty or non-finite audio raises ``ValueError`` with a one-line message.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

DEFAULT_SAMPLE_RATE = 16000


def _to_float(x: np.ndarray) -> np.ndarray:
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        scale = float(max(abs(info.min), info.max + 1))
        offset = 0.0 if info.min < 0 else scale / 2  # unsigned PCM (uint8) is offset
        return ((x.astype(np.float64) - offset) / (scale if info.min < 0 else scale / 2)).astype(np.float32)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    raise ValueError(f"audio: expected a numeric array, got dtype {x.dtype}")


def _downmix(x: np.ndarray, source: str) -> np.ndarray:
    """``[S]``, ``[S, C]`` (soundfile layout) or ``[C, S]`` (librosa layout) -> ``[S]``."""
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise ValueError(f"{source}: expected audio [samples] or [samples, channels], got shape {x.shape}")
    ch_axis = 1 if x.shape[1] <= x.shape[0] else 0  # channels are the short axis
    if x.shape[ch_axis] > 16:
        raise ValueError(f"{source}: shape {x.shape} does not look like audio (more than 16 channels)")
    return x.mean(axis=ch_axis)


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling ``[S] -> [round(S * target / orig)]`` (about)."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"audio: sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return x
    import scipy.signal  # noqa: PLC0415 (the media extra)
    g = math.gcd(int(orig_sr), int(target_sr))
    return scipy.signal.resample_poly(x, int(target_sr) // g, int(orig_sr) // g).astype(np.float32)


def _read_file(path: str) -> tuple[np.ndarray, int]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such audio file")
    try:
        import soundfile  # noqa: PLC0415 (the media extra)
        data, sr = soundfile.read(path, dtype="float32", always_2d=True)  # [S, C]
        return data, int(sr)
    except Exception as first:  # noqa: BLE001 - try a decoder for compressed/container formats
        try:
            import librosa  # noqa: PLC0415 (the media extra)
            with warnings.catch_warnings():  # librosa warns when falling back to audioread
                warnings.simplefilter("ignore")
                data, sr = librosa.load(path, sr=None, mono=False)  # [C, S] or [S]
            return np.asarray(data, np.float32), int(sr)
        except Exception:  # noqa: BLE001
            raise ValueError(f"{path}: not a readable audio file ({first})") from None


def load_audio(path_or_array, sr: int = DEFAULT_SAMPLE_RATE, *, orig_sr: int | None = None
               ) -> np.ndarray:
    """Mono float32 ``[S]`` at ``sr`` Hz from a file path or an array.

    For an array, ``orig_sr`` is its sample rate (None = already ``sr``); for a file it is
    read from the file. Stereo is averaged to mono; other rates are resampled.
    """
    if isinstance(path_or_array, (str, os.PathLike)):
        source = os.fspath(path_or_array)
        data, file_sr = _read_file(source)
        orig_sr = file_sr
    else:
        source = "audio array"
        data = np.asarray(path_or_array)
        orig_sr = sr if orig_sr is None else int(orig_sr)
    if data.size == 0:
        raise ValueError(f"{source}: empty audio (0 samples)")
    x = _downmix(_to_float(data), source)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{source}: audio contains NaN or Inf samples")
    x = resample(x, orig_sr, sr)
    if x.size == 0:
        raise ValueError(f"{source}: empty audio after resampling {orig_sr} -> {sr} Hz")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_audio_batch(audio, *, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """Validate an encoder input: ``[S]`` or ``[B, S]`` float, non-empty -> ``[B, S]``."""
    a = np.asarray(audio)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ValueError(f"audio batch: expected [B, S] samples at {sample_rate} Hz, got shape {a.shape}")
    if a.shape[-1] == 0:
        raise ValueError("audio batch: empty audio (0 samples)")
    return a
