"""Issue 14 §5: launch.generate's mp4 carries the user's own audio (rate, channels), not the 16 kHz
mono the model hears. A stand-in generator replaces the checkpoint (the audio path is what is
tested); the input is a 44.1 kHz stereo mp3 with different content in each channel."""
from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from configs import stage2_audio
from launch import generate as gen_cli
from starcaster_jax.media import read_audio_native, read_video, write_mp4

SR = 44100


class StandIn:
    """What launch.generate needs of a Generator: frames for ``ceil(seconds * 25)`` time steps."""
    resolution = 16

    def __init__(self):
        self.config = stage2_audio.get_config("tiny")

    def plan(self, num_samples, *, animate):
        return [0, 1]

    def video(self, audio, **kw):
        n = -(-audio.size // 640)
        frames = np.zeros((n, 16, 16, 3), np.uint8)
        yield frames[: n // 2]
        yield frames[n // 2:]


def _stereo(seconds):
    t = np.arange(int(round(seconds * SR))) / SR
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)            # speech-like loudness changes
    return np.stack([0.4 * envelope * np.sin(2 * np.pi * 300 * t),
                     0.3 * (1 - envelope) * np.sin(2 * np.pi * 520 * t)], -1).astype(np.float32)


def _mp3(path, audio):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libmp3lame", rate=SR)
        s.layout = "stereo"
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio.T), format="fltp", layout="stereo")
        f.sample_rate, f.pts, f.time_base = SR, 0, fractions.Fraction(1, SR)
        for p in list(s.encode(f)) + list(s.encode(None)):
            c.mux(p)
    return str(path)


def test_generate_keeps_a_44k_stereo_mp3(tmp_path, monkeypatch, capsys):
    if "libmp3lame" not in av.codecs_available:
        pytest.skip("this libav has no mp3 encoder to make the input")
    seconds = 1.37
    src = _stereo(seconds)
    mp3 = _mp3(tmp_path / "speech.mp3", src)
    emb = tmp_path / "id.npy"
    np.save(emb, np.random.default_rng(0).normal(size=512).astype(np.float32))
    monkeypatch.setattr(gen_cli, "build_generator", lambda args, need_identity: StandIn())
    out = str(tmp_path / "out.mp4")
    assert gen_cli.main(["--checkpoint", str(tmp_path), "--identity", str(emb), "--audio", mp3,
                         "--out", out, "--quiet"]) == 0
    with av.open(out) as c:
        a = c.streams.audio[0]
        assert (a.rate, a.layout.name, a.codec_context.name) == (SR, "stereo", "aac")
    back = read_audio_native(out)
    frames, fps = read_video(out)
    assert back.sample_rate == SR and back.samples.shape[1] == 2
    assert abs(back.seconds - seconds) < 1 / 25                      # same duration within a frame
    assert abs(len(frames) / fps - seconds) < 1 / 25
    n = min(len(back.samples), len(src))                              # each channel is its own input channel
    corr = [np.corrcoef(back.samples[:n, ch], src[:n, ch])[0, 1] for ch in (0, 1)]
    assert min(corr) > 0.95, corr
    assert abs(np.corrcoef(back.samples[:n, 0], src[:n, 1])[0, 1]) < 0.3


def test_writer_takes_any_rate_and_mono_still_works(tmp_path):
    """A rate AAC has no entry for (37.8 kHz) goes to the next one up; 1-D audio stays mono 16 kHz."""
    frames = np.zeros((10, 16, 16, 3), np.uint8)
    odd = _stereo(0.4)[: int(0.4 * 37800)]
    write_mp4(str(tmp_path / "odd.mp4"), frames, audio=odd, sample_rate=37800)
    back = read_audio_native(str(tmp_path / "odd.mp4"))
    assert (back.sample_rate, back.layout) == (44100, "stereo") and abs(back.seconds - 0.4) < 1 / 25
    write_mp4(str(tmp_path / "mono.mp4"), frames, audio=odd[:, 0], sample_rate=16000)
    mono = read_audio_native(str(tmp_path / "mono.mp4"))
    assert (mono.sample_rate, mono.layout, mono.samples.shape[1]) == (16000, "mono", 1)
