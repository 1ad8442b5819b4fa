"""Media IO: mp4 round trips (frame count, audio duration and content, decoded with PyAV),
streamed writing, odd sizes, images and their errors, grids."""
from __future__ import annotations

import numpy as np
import pytest

from starcaster_jax.media import (
    MediaError,
    VideoWriter,
    grid,
    load_image,
    read_audio_from_video,
    read_video,
    save_image,
    write_mp4,
)

SR = 16000


def _tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _frames(n: int, h: int = 32, w: int = 32) -> np.ndarray:
    # a moving gradient, so frames differ and the codec has real content
    y, x = np.mgrid[:h, :w]
    return np.stack([np.stack([(x * 8 + 10 * i) % 256, (y * 8) % 256, np.full_like(x, 40 * (i % 6))], -1)
                     for i in range(n)]).astype(np.uint8)


@pytest.mark.parametrize("seconds", [1.0, 2.37])
def test_mp4_frames_and_audio_duration(tmp_path, seconds):
    audio = _tone(seconds)
    n = int(np.ceil(seconds * 25))
    path = write_mp4(str(tmp_path / "a.mp4"), _frames(n), fps=25, audio=audio, sample_rate=SR)
    frames, fps = read_video(path)
    assert frames.shape == (n, 32, 32, 3) and fps == 25.0
    import av  # noqa: PLC0415 (the media extra)
    with av.open(path) as c:  # what the container declares (players trust this)
        declared = float(c.streams.audio[0].duration * c.streams.audio[0].time_base)
        assert abs(float(c.streams.video[0].duration * c.streams.video[0].time_base) - n / 25) < 1e-6
    assert abs(declared - seconds) < 0.01, declared
    back = read_audio_from_video(path, SR)
    # AAC priming is skipped and the padded last frame trimmed: within 10 ms of the input
    assert abs(back.size - audio.size) <= SR // 100, (back.size, audio.size)
    m = min(back.size, audio.size)
    corr = np.corrcoef(back[1000:m - 1000], audio[1000:m - 1000])[0, 1]
    assert corr > 0.95, corr  # the same tone, not just the same length
    # decoded picture close to what was written (H.264 at crf 18 on smooth content)
    assert np.abs(frames.astype(float) - _frames(n).astype(float)).mean() < 12


def test_streamed_writer_matches_one_shot_and_interleaves(tmp_path):
    audio, frames = _tone(1.6, 300.0), _frames(40)
    with VideoWriter(str(tmp_path / "s.mp4"), audio=audio) as w:
        for i in range(0, 40, 7):  # uneven pieces, like generator chunks
            w.write(frames[i:i + 7])
        assert w.num_frames == 40
    a, _ = read_video(str(tmp_path / "s.mp4"))
    assert a.shape[0] == 40
    assert abs(read_audio_from_video(str(tmp_path / "s.mp4")).size - audio.size) <= SR // 100


def test_odd_size_and_no_audio(tmp_path):
    path = write_mp4(str(tmp_path / "odd.mp4"), _frames(5, 33, 31))
    frames, _ = read_video(path)
    assert frames.shape == (5, 34, 32, 3)  # padded to even for yuv420p
    with pytest.raises(MediaError, match="no audio track"):
        read_audio_from_video(path)


def test_bad_frames_and_files(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(str(tmp_path / "f.mp4"), np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(MediaError, match="no such file"):
        read_video(str(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(MediaError, match="not a readable media file"):
        read_video(str(junk))
    # a failed write leaves no partial file behind
    with pytest.raises(RuntimeError):
        with VideoWriter(str(tmp_path / "partial.mp4")) as w:
            w.write(_frames(2))
            raise RuntimeError("boom")
    assert not (tmp_path / "partial.mp4").exists()


def test_load_image_and_errors(tmp_path):
    img = _frames(1, 20, 30)[0]
    p = save_image(str(tmp_path / "x.png"), img)
    np.testing.assert_array_equal(load_image(p), img)  # png is lossless, RGB order preserved
    with pytest.raises(MediaError, match="no such image file"):
        load_image(str(tmp_path / "nope.png"))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(MediaError, match="not a readable image"):
        load_image(str(bad))


def test_grid():
    ref = np.full((16, 16, 3), 200, np.uint8)
    vid = _frames(3, 16, 24)
    g = grid([ref, vid], gap=2)
    assert g.shape == (3, 16, 16 + 2 + 24, 3)
    assert (g[:, :, :16] == 200).all() and (g[:, :, 16:18] == 0).all()
    np.testing.assert_array_equal(g[:, :, 18:], vid)
    # panels of another height are resized to the tallest
    assert grid([np.zeros((8, 8, 3), np.uint8), vid]).shape == (3, 16, 16 + 24, 3)
