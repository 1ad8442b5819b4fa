"""Video and image files: H.264 + AAC mp4 writing (streamed), reading frames and audio back,
image loading, side-by-side grids.

Why PyAV: it links libavcodec/libavformat directly (no ``ffmpeg`` binary is needed, and none
is installed here), so one dependency writes a standard mp4 with the speech muxed in.

Streaming: :class:`VideoWriter` encodes frames as they arrive and interleaves the audio that
belongs to the frames written so far, so a generator can write a 60 s video chunk by chunk
without ever holding it (peak memory independent of length). :func:`write_mp4` is the
one-shot form.

Duration contract: ``T`` frames at ``fps`` give a ``T / fps`` s video track; the audio track
holds exactly the given samples (AAC priming and padding are trimmed by the mp4 edit list, so
decoders such as PyAV/ffmpeg return the original length to within one AAC frame's rounding).

Audio keeps the user's format: :func:`read_audio_native` returns a file's first audio track at its
own sample rate and channel layout (44.1 kHz stereo stays 44.1 kHz stereo), and the writer
encodes ``[S]`` mono or ``[S, C]`` audio at any rate AAC has (``AAC_RATES``; another rate is
resampled by libswresample to the nearest one above it, so nothing is lost in band). Tracks of
more than 7 channels (7.1 and up) are read downmixed to stereo: PyAV cannot hand 8 planes to
the encoder.
"""
from __future__ import annotations

import dataclasses
import fractions
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["MediaError", "VideoWriter", "write_mp4", "read_video", "read_audio_from_video",
           "read_audio_native", "NativeAudio", "load_image", "save_image", "grid", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
# sample rates libavcodec's AAC encoder takes (the MPEG-4 sampling-frequency table)
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1"}
MAX_CHANNELS = 7   # PyAV's AudioFrame.from_ndarray takes at most 7 planes here (8 raises IndexError)


class MediaError(ValueError):
    """A media file is missing, unreadable or has no stream of the requested kind (one line)."""


def _av():
    try:
        import av  # noqa: PLC0415 (the media extra)
    except ImportError:  # pragma: no cover - av is in the `media` extra
        raise ImportError("video IO needs PyAV: pip install av") from None
    return av


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: replicate the last row/column when odd."""
    h, w = frames.shape[-3:-1]
    ph, pw = h % 2, w % 2
    if ph or pw:
        pad = [(0, 0)] * (frames.ndim - 3) + [(0, ph), (0, pw), (0, 0)]
        frames = np.pad(frames, pad, mode="edge")
    return frames


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: expected uint8 [T, H, W, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames: expected uint8, got {frames.dtype} (convert with to_uint8)")
    return frames


@dataclasses.dataclass(frozen=True)
class NativeAudio:
    """An audio track as the file has it: ``samples`` float32 ``[S, C]`` in [-1, 1]."""
    samples: np.ndarray
    sample_rate: int
    layout: str

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def _aac_rate(rate: int) -> int:
    return rate if rate in AAC_RATES else next((r for r in AAC_RATES if r >= rate), AAC_RATES[-1])


class VideoWriter:
    """Incremental H.264 (+ AAC) mp4 writer.

    ``audio`` (float32 mono ``[S]`` or ``[S, C]`` in [-1, 1] at ``sample_rate``; ``layout``
    defaults to mono / stereo / 5.1 ... by channel count) is known up front (it is the
    generator's input) and is muxed progressively: after ``n`` frames, the samples up to
    ``n / fps`` s have been encoded; :meth:`close` writes the remainder. Use as a context
    manager; the streams are created at the first :meth:`write` (when the frame size is known).
    """

    def __init__(self, path: str, *, fps: float = 25, audio: np.ndarray | None = None,
                 sample_rate: int = 16000, crf: int = 18, layout: str | None = None):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path, self.sample_rate, self.crf = os.fspath(path), int(sample_rate), crf
        self.fps = fractions.Fraction(fps).limit_denominator(1001)  # 25, 2, 30000/1001 ...
        self.audio = None if audio is None else _audio_2d(audio)     # [S, C]
        if self.audio is not None and self.audio.size == 0:
            self.audio = None
        if self.audio is not None:
            self.layout = layout or _LAYOUTS.get(self.audio.shape[1])
            if self.audio.shape[1] > MAX_CHANNELS:
                raise ValueError(f"audio: {self.audio.shape[1]} channels; at most {MAX_CHANNELS} can be encoded")
            if self.layout is None:
                raise ValueError(f"audio: {self.audio.shape[1]} channels; give the channel layout")
            if self.sample_rate not in AAC_RATES:         # AAC has a fixed table of rates
                self.audio = _resample(self.audio, self.sample_rate, _aac_rate(self.sample_rate), self.layout)
                self.sample_rate = _aac_rate(self.sample_rate)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        self._container = _av().open(self.path, mode="w")
        self._vstream = self._astream = None
        self._frames = 0          # video frames written
        self._samples = 0         # audio samples written
        self._size = None         # (H, W) after padding to even

    # -- streams
    def _open_streams(self, h: int, w: int):
        av = _av()
        vs = self._container.add_stream("libx264" if "libx264" in av.codecs_available else "h264",
                                        rate=self.fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": str(self.crf), "preset": "medium"}
        self._vstream = vs
        if self.audio is not None:
            a = self._container.add_stream("aac", rate=self.sample_rate)
            a.layout = self.layout
            self._astream = a
        self._size = (h, w)

    def _write_audio_until(self, end: int):
        av = _av()
        end = min(end, self.audio.shape[0])
        if end <= self._samples:
            return
        chunk = self.audio[self._samples:end]                               # [n, C]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.clip(chunk, -1.0, 1.0).T), format="fltp",
                                           layout=self.layout)
        frame.sample_rate = self.sample_rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        for packet in self._astream.encode(frame):
            self._container.mux(packet)
        self._samples = end

    # -- public
    def write(self, frames) -> None:
        """Append ``uint8 [T, H, W, 3]`` (or one ``[H, W, 3]``) frames."""
        frames = _even(_check_frames(frames))
        if self._vstream is None:
            self._open_streams(*frames.shape[1:3])
        if tuple(frames.shape[1:3]) != self._size:
            raise ValueError(f"frames: size {frames.shape[1:3]} differs from the first frames' {self._size}")
        av = _av()
        for img in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts = self._frames
            for packet in self._vstream.encode(vf):
                self._container.mux(packet)
            self._frames += 1
        if self._astream is not None:
            self._write_audio_until(int(round(self._frames * self.sample_rate / self.fps)))

    @property
    def num_frames(self) -> int:
        return self._frames

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._vstream is None:
                raise ValueError(f"{self.path}: no frames were written")
            if self._astream is not None:
                self._write_audio_until(self.audio.shape[0])
                for packet in self._astream.encode(None):
                    self._container.mux(packet)
            for packet in self._vstream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # do not mask the original error with a flush error; drop the partial file
            try:
                self._container.close()
            except Exception:  # noqa: BLE001
                pass
            self._container = None
            if os.path.exists(self.path):
                os.remove(self.path)
        return False


def write_mp4(path: str, frames, fps: float = 25, audio: np.ndarray | None = None,
              sample_rate: int = 16000, layout: str | None = None) -> str:
    """Write ``uint8 [T, H, W, 3]`` frames as H.264 (+ AAC ``audio`` f32 ``[S]`` or ``[S, C]``) mp4;
    returns ``path``."""
    with VideoWriter(path, fps=fps, audio=audio, sample_rate=sample_rate, layout=layout) as w:
        w.write(frames)
    return path


def _audio_2d(audio) -> np.ndarray:
    a = np.asarray(audio, np.float32)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"audio: expected [S] or [S, C] samples, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _resample(audio: np.ndarray, rate: int, new_rate: int, layout: str) -> np.ndarray:
    """``[S, C]`` float32 from ``rate`` to ``new_rate`` (libswresample), same channels."""
    av = _av()
    res = av.AudioResampler(format="fltp", layout=layout, rate=new_rate)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio.T), format="fltp", layout=layout)
    frame.sample_rate = rate
    out = [f.to_ndarray() for f in res.resample(frame)] + [f.to_ndarray() for f in res.resample(None)]
    return np.ascontiguousarray(np.concatenate(out, axis=1).T.astype(np.float32))


def _open_input(path: str):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such file")
    try:
        return _av().open(path)
    except Exception as e:  # noqa: BLE001 - av.error.* are many; one line is what a user needs
        raise MediaError(f"{path}: not a readable media file ({type(e).__name__})") from None


def read_video(path: str) -> tuple[np.ndarray, float]:
    """All frames ``uint8 [T, H, W, 3]`` and the frame rate of the first video stream."""
    with _open_input(path) as c:
        if not c.streams.video:
            raise MediaError(f"{path}: has no video stream")
        vs = c.streams.video[0]
        try:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(vs)]
        except _av().error.FFmpegError as e:   # a corrupt stream: one line, not libav's exception
            raise MediaError(f"{path}: corrupt video stream ({type(e).__name__})") from None
        fps = float(vs.average_rate) if vs.average_rate else 25.0
    if not frames:
        raise MediaError(f"{path}: video stream has no frames")
    return np.stack(frames), fps


def read_audio_from_video(path: str, sample_rate: int = 16000) -> np.ndarray:
    """The first audio track of any container PyAV reads (mp4, mkv, mp3, wav, ...) as float32
    mono ``[S]`` at ``sample_rate`` (downmixed and resampled by libswresample)."""
    av = _av()
    chunks = []
    with _open_input(path) as c:
        if not c.streams.audio:
            raise MediaError(f"{path}: has no audio track")
        stream = c.streams.audio[0]
        # libavcodec returns whole AAC frames (1024 samples); the container's duration says
        # where the real audio ends (the last packet is shorter), so trim to it like players do
        declared = (float(stream.duration * stream.time_base) if stream.duration else None)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=int(sample_rate))
        for frame in c.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if declared:
        audio = audio[:int(round(declared * sample_rate))]
    if audio.size == 0:
        raise MediaError(f"{path}: audio track is empty")
    return audio


def read_audio_native(path: str) -> NativeAudio:
    """The first audio track of any file PyAV reads, at its own sample rate and channel layout
    (only the sample format is converted, to float32), trimmed to the container's duration."""
    av = _av()
    chunks = []
    with _open_input(path) as c:
        if not c.streams.audio:
            raise MediaError(f"{path}: has no audio track")
        stream = c.streams.audio[0]
        rate, layout = int(stream.rate), stream.layout.name
        if layout.endswith("channels"):   # no channel mask (e.g. a WAV): the standard layout of that count
            layout = _LAYOUTS.get(stream.channels, layout)
        if stream.channels > MAX_CHANNELS:   # PyAV hands at most 7 float planes to an encoder
            layout = "stereo"
        declared = (float(stream.duration * stream.time_base) if stream.duration else None)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        for frame in c.decode(stream):
            chunks += [out.to_ndarray() for out in resampler.resample(frame)]     # [C, n]
        chunks += [out.to_ndarray() for out in resampler.resample(None)]
    if not chunks:
        raise MediaError(f"{path}: audio track is empty")
    samples = np.ascontiguousarray(np.concatenate(chunks, axis=1).T.astype(np.float32))   # [S, C]
    if declared:
        samples = samples[:int(round(declared * rate))]
    if samples.size == 0:
        raise MediaError(f"{path}: audio track is empty")
    return NativeAudio(samples, rate, layout)


def load_image(path: str) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` from an image file (grey expanded, alpha dropped); ``MediaError``
    naming the file when it is missing or not an image."""
    import cv2  # noqa: PLC0415 (the media extra)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MediaError(f"{path}: no such image file")
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise MediaError(f"{path}: not a readable image (unknown format or corrupt file)")
    return np.ascontiguousarray(img[..., ::-1])


def save_image(path: str, image: np.ndarray) -> str:
    """Write ``uint8 [H, W, 3]`` RGB (png/jpg by extension)."""
    import cv2  # noqa: PLC0415 (the media extra)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(os.fspath(path), np.ascontiguousarray(np.asarray(image, np.uint8)[..., ::-1])):
        raise MediaError(f"{path}: could not write the image (unsupported extension?)")
    return path


def grid(panels: Sequence[np.ndarray], *, gap: int = 0) -> np.ndarray:
    """Side by side along width: each panel ``uint8 [T, H, W_i, 3]`` or ``[H, W_i, 3]`` (a still,
    repeated over T) -> ``[T, H, sum W_i + gaps, 3]``. Panels with another height are resized.

    Used for ``reference | generated`` and for all views of a multi-view still next to each other.
    """
    import cv2  # noqa: PLC0415 (the media extra)
    arrs = [np.asarray(p, np.uint8) for p in panels]
    if not arrs:
        raise ValueError("grid: no panels")
    t = max(a.shape[0] if a.ndim == 4 else 1 for a in arrs)
    h = max(a.shape[-3] for a in arrs)
    out = []
    for a in arrs:
        a = a if a.ndim == 4 else np.broadcast_to(a, (t,) + a.shape)
        if a.shape[0] not in (1, t):
            raise ValueError(f"grid: panels have {a.shape[0]} and {t} frames")
        if a.shape[-3] != h:
            w = int(round(a.shape[-2] * h / a.shape[-3]))
            a = np.stack([cv2.resize(np.ascontiguousarray(f), (w, h), interpolation=cv2.INTER_LINEAR) for f in a])
        out.append(np.broadcast_to(a, (t,) + a.shape[1:]))
        if gap:
            out.append(np.zeros((t, h, gap, 3), np.uint8))
    if gap:
        out = out[:-1]
    return np.ascontiguousarray(np.concatenate(out, axis=2))
