"""LSE-D / LSE-C: SyncNet distances between a video's mouth motion and its audio, searched over
+-15 frames of offset, exactly as Wav2Lip's ``evaluation/scores_LSE`` (``SyncNetInstance_calc_scores``).

Protocol (the reference's, step by step):
    audio   16 kHz mono, 16-bit PCM scale (``ffmpeg -ac 1 -ar 16000 -acodec pcm_s16le`` there;
            libswresample + rounding to int16 here), MFCC by ``python_speech_features.mfcc``'s
            defaults (:func:`mfcc`: 25 ms frames every 10 ms, 512-point FFT, 26 mel filters,
            13 cepstra, lifter 22, c0 replaced by the log frame energy) -> 100 MFCC frames / s
    video   25 fps, every frame resized to 224 x 224 (``cv2.resize``, bilinear), BGR, 0..255.
            The whole frame is the face crop: talking-portrait outputs are face crops already
            (the reference's LRS protocol); for wider shots crop the face first.
    windows ``min_len = min(frames, samples // 640)``; for ``v in range(min_len - 5)``: lips =
            frames ``v..v+4``, audio = MFCC frames ``4v..4v+19`` (both 0.2 s)
    search  ``dist[v, j] = ||lip[v] - aud[v + j - 15] + 1e-6||`` (audio embeddings zero-padded
            by 15 at both ends, torch ``pairwise_distance``); ``mean_dist[j]`` over ``v``;
            LSE-D = ``min_j mean_dist``, LSE-C = ``median(mean_dist) - LSE-D``, offset =
            ``15 - argmin`` (frames; > 0: the audio leads the video)
Differences from the reference, stated: frames are not round-tripped through JPEG (ffmpeg's
``%06d.jpg`` extraction there), and no S3FD face tracking is run. A video scores the mean over
its windows; a set of videos the plain mean of the per-video numbers (``calculate_scores_LRS``).
"""
from __future__ import annotations

import numpy as np
from flax import nnx
from scipy.fft import dct

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS     # 640
LIP_FRAMES = 5
MFCC_PER_FRAME = 4
MFCC_WINDOW = 20
VSHIFT = 15
SIZE = 224
PAIRWISE_EPS = 1e-6                        # torch.nn.functional.pairwise_distance's eps
PROTOCOL = ("SyncNet (syncnet_python S, syncnet_v2.model) scored as Wav2Lip scores_LSE: 16 kHz "
            "mono int16-scale audio, python_speech_features MFCC (13 x 20 frames per window), "
            "25 fps frames resized to 224x224 BGR 0..255 (whole frame = face crop, no JPEG "
            "round trip, no S3FD tracking), 5-frame windows, offsets -15..15, LSE-D = min mean "
            "distance, LSE-C = median - min; per-video numbers averaged over videos")


# ----------------------------------------------------------------------------- MFCC

def _hz2mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel2hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(nfilt: int = 26, nfft: int = 512, samplerate: int = SAMPLE_RATE) -> np.ndarray:
    """``[nfilt, nfft // 2 + 1]`` triangles on FFT bins floored as python_speech_features does
    (``floor((nfft + 1) * hz / sr)``; not librosa's Slaney/HTK filters, whose MFCCs differ)."""
    bins = np.floor((nfft + 1) * _mel2hz(np.linspace(_hz2mel(0.0), _hz2mel(samplerate / 2), nfilt + 2))
                    / samplerate)
    k = np.arange(nfft // 2 + 1)[None, :]                                  # [1, K]
    lo, mid, hi = bins[:-2, None], bins[1:-1, None], bins[2:, None]       # [nfilt, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        up = np.where((k >= lo) & (k < mid), (k - lo) / (mid - lo), 0.0)
        down = np.where((k >= mid) & (k < hi), (hi - k) / (hi - mid), 0.0)
    return up + down


def mfcc(signal: np.ndarray, samplerate: int = SAMPLE_RATE, *, numcep: int = 13, nfilt: int = 26,
         winlen: float = 0.025, winstep: float = 0.01, preemph: float = 0.97, ceplifter: int = 22,
         ) -> np.ndarray:
    """``python_speech_features.mfcc(signal, samplerate)`` with its defaults -> ``[T, numcep]``:
    ``T = 1 + ceil((S - 400) / 160)`` frames (the last zero-padded), rectangular window."""
    sig = np.asarray(signal, np.float64).reshape(-1)
    sig = np.append(sig[:1], sig[1:] - preemph * sig[:-1])
    flen, fstep = int(np.floor(winlen * samplerate + 0.5)), int(np.floor(winstep * samplerate + 0.5))
    nfft = 1 << int(np.ceil(np.log2(winlen * samplerate)))                # 512 at 16 kHz
    n = 1 if len(sig) <= flen else 1 + int(np.ceil((len(sig) - flen) / fstep))
    sig = np.concatenate([sig, np.zeros((n - 1) * fstep + flen - len(sig))])
    frames = sig[np.arange(n)[:, None] * fstep + np.arange(flen)[None, :]]  # [T, 400]
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft                   # [T, 257]
    eps = np.finfo(float).eps
    energy = np.sum(pspec, 1)
    energy = np.where(energy == 0, eps, energy)
    feat = pspec @ mel_filterbank(nfilt, nfft, samplerate).T                # [T, nfilt]
    feat = np.where(feat == 0, eps, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    cep = cep * (1.0 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter))
    cep[:, 0] = np.log(energy)
    return cep


def pcm16(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> the int16 values the reference's ``wavfile.read`` returns (float64)."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767)


# ----------------------------------------------------------------------------- offset search

def distance_table(lip: np.ndarray, aud: np.ndarray, vshift: int = VSHIFT) -> np.ndarray:
    """``[N, D]`` lip and audio embeddings -> ``dist [N, 2 * vshift + 1]`` (reference ``calc_pdist``)."""
    lip, aud = np.asarray(lip, np.float64), np.asarray(aud, np.float64)
    padded = np.pad(aud, ((vshift, vshift), (0, 0)))                         # [N + 2v, D]
    idx = np.arange(len(lip))[:, None] + np.arange(2 * vshift + 1)[None, :]  # [N, 2v + 1]
    return np.linalg.norm(lip[:, None, :] - padded[idx] + PAIRWISE_EPS, axis=-1)


def sync_scores(lip: np.ndarray, aud: np.ndarray, vshift: int = VSHIFT) -> dict:
    """``{"lse_d", "lse_c", "offset", "windows"}`` of one video from its window embeddings."""
    if len(lip) < 1 or len(lip) != len(aud):
        raise ValueError(f"sync_scores: {len(lip)} lip vs {len(aud)} audio windows")
    mean = distance_table(lip, aud, vshift).mean(0)                         # [2v + 1]
    j = int(np.argmin(mean))
    median = float(np.sort(mean)[(len(mean) - 1) // 2])                     # torch.median: lower
    return {"lse_d": float(mean[j]), "lse_c": median - float(mean[j]), "offset": vshift - j,
            "windows": int(len(lip))}


# ----------------------------------------------------------------------------- scorer

class TooShort(ValueError):
    """A clip with no complete 5-frame window (shorter than 0.24 s): not scored."""


class LSEScorer:
    """Embeds a clip's windows with a :class:`~.syncnet.SyncNet` (anything with ``lips`` and
    ``audio``) in fixed batches (one compiled shape), then :func:`sync_scores`."""

    def __init__(self, model, *, batch_size: int = 20, vshift: int = VSHIFT):
        self.model, self.batch_size, self.vshift = model, int(batch_size), int(vshift)
        self._lips = nnx.jit(lambda m, x: m.lips(x))
        self._audio = nnx.jit(lambda m, x: m.audio(x))

    @staticmethod
    def prepare_frames(frames: np.ndarray) -> np.ndarray:
        """RGB ``uint8 [F, H, W, 3]`` -> BGR ``uint8 [F, 224, 224, 3]`` (the reference's input)."""
        import cv2  # noqa: PLC0415 (the media extra)
        out = [f if f.shape[:2] == (SIZE, SIZE) else cv2.resize(np.ascontiguousarray(f), (SIZE, SIZE))
               for f in np.asarray(frames, np.uint8)]
        return np.ascontiguousarray(np.stack(out)[..., ::-1])

    def _batched(self, fn, make, n: int) -> np.ndarray:
        outs = []
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, min(n, start + self.batch_size))
            x = make(np.concatenate([idx, np.full(self.batch_size - len(idx), idx[-1])]))
            outs.append(np.asarray(fn(self.model, x))[:len(idx)])
        return np.concatenate(outs)

    def embeddings(self, frames_bgr: np.ndarray, cep: np.ndarray, num_samples: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        """224 BGR frames ``[F, 224, 224, 3]`` + MFCC ``[T, 13]`` of ``num_samples`` at 16 kHz ->
        lip and audio window embeddings ``[N, D]``, ``N = min(F, num_samples // 640) - 5``."""
        min_len = min(len(frames_bgr), int(num_samples) // SAMPLES_PER_FRAME)
        n = min_len - LIP_FRAMES                                            # the reference's lastframe
        if n < 1:
            raise TooShort(f"{min_len} frames: no complete {LIP_FRAMES}-frame SyncNet window")
        frames = np.asarray(frames_bgr)
        cep = np.asarray(cep, np.float32)
        lips = self._batched(self._lips, lambda v: frames[v[:, None] + np.arange(LIP_FRAMES)].astype(np.float32), n)
        aud = self._batched(self._audio, lambda v: cep[MFCC_PER_FRAME * v[:, None] + np.arange(MFCC_WINDOW)]
                            .transpose(0, 2, 1)[..., None], n)              # [B, 13, 20, 1]
        return lips, aud

    def score(self, frames: np.ndarray, audio16k: np.ndarray) -> dict:
        """RGB ``uint8 [F, H, W, 3]`` at 25 fps + float mono 16 kHz audio -> :func:`sync_scores`."""
        audio16k = np.asarray(audio16k).reshape(-1)
        f = np.asarray(frames)[:len(audio16k) // SAMPLES_PER_FRAME]          # frames past the audio never count
        if len(f) <= LIP_FRAMES:
            raise TooShort(f"{len(f)} frames with audio: no complete {LIP_FRAMES}-frame SyncNet window")
        lips, aud = self.embeddings(self.prepare_frames(f), mfcc(pcm16(audio16k)), len(audio16k))
        return sync_scores(lips, aud, self.vshift)
