"""Real speech with phoneme timings from libespeak-ng (via ctypes, see espeak_server.py).

espeak-ng speaks at 22.05 kHz; the corpus wants 16 kHz mono float32, so utterances are
resampled with a polyphase filter (320/441) and every phoneme event's sample position is
mapped to the new rate. Voices are espeak "<accent>+<variant>" names; only variants whose
output is bit-identical across processes are listed (breath-noise variants such as f2, f3,
f5, whisper are not: their noise is seeded outside our control).
"""
from __future__ import annotations

import atexit
import json
import os
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

from data_pipelines.schema import SAMPLE_RATE
from data_pipelines.synthetic import words as W

ESPEAK_RATE = 22050
# Training voices (accent x variant); test identities draw half their voices from HELDOUT.
VOICES_TRAIN = (
    "en-us+m1", "en-us+m3", "en-us+f1", "en-us+f4", "en+m2", "en+f4", "en-gb-x-rp+m4",
    "en-gb-x-rp+f1", "en-029+m5", "en-us-nyc+linda", "en+belinda", "en-us+david",
    "en-gb-scotland+m7", "en-us+steph", "en+john", "en-us+klatt2",
)
VOICES_HELDOUT = (
    "en-gb-scotland+f4", "en-029+aunty", "en-us+klatt3", "en-us-nyc+m6", "en+grandma",
    "en-us+rob",
)


@dataclass
class Utterance:
    """One synthesised sentence at 16 kHz.

    audio: float32 [N]; phonemes: list of (start, end, mnemonic) in 16 kHz samples, covering
    the utterance from its first to its last phoneme (pauses are "_"-phonemes).
    """
    audio: np.ndarray
    phonemes: list[tuple[int, int, str]]
    text: str
    voice: str


class EspeakClient:
    """Talks to one espeak_server.py subprocess (started lazily, one per Python process)."""

    def __init__(self):
        self._proc = None
        self._pid = None
        self._lock = threading.Lock()

    def _start(self):
        server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "espeak_server.py")
        self._proc = subprocess.Popen([sys.executable, server], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE)
        self._pid = os.getpid()
        atexit.register(self.close)

    def close(self):
        if self._proc is not None and self._pid == os.getpid():
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=5)
            except Exception:  # pragma: no cover - best effort at interpreter exit
                self._proc.kill()
            self._proc = None

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._proc.stdout.read(n - len(buf))
            if not chunk:
                raise RuntimeError("espeak server died")
            buf += chunk
        return bytes(buf)

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int):
        """-> (int16 [N] at 22.05 kHz, events [[type, sample, text_pos, ident], ...])."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's pipes are not ours to share
                self._proc = None
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            req = {"text": text, "voice": voice, "rate": rate, "pitch": pitch,
                   "range": pitch_range}
            self._proc.stdin.write((json.dumps(req) + "\n").encode())
            self._proc.stdin.flush()
            n, m = struct.unpack("<II", self._read(8))
            pcm = np.frombuffer(self._read(2 * n), np.int16)
            meta = json.loads(self._read(m))
        if isinstance(meta, dict):
            raise RuntimeError(f"espeak: {meta['error']}")
        return pcm, meta


_CLIENT = EspeakClient()


def synthesize(text: str, voice: str, rate: int = 170, pitch: int = 50,
               pitch_range: int = 50) -> Utterance:
    """Speak ``text``; rate in words/minute (80-450), pitch and range 0-100."""
    pcm, events = _CLIENT.synth(text, voice, rate, pitch, pitch_range)
    audio = resample_poly(pcm.astype(np.float64) / 32768.0, SAMPLE_RATE, ESPEAK_RATE)
    audio = audio.astype(np.float32)
    n = audio.shape[0]
    to16 = SAMPLE_RATE / ESPEAK_RATE
    starts = [(round(e[1] * to16), e[3]) for e in events if e[0] == 7]
    ends = [round(e[1] * to16) for e in events if e[0] == 5]
    stop = min(ends[-1] if ends else n, n)
    phonemes = []
    for i, (s, ph) in enumerate(starts):
        e = starts[i + 1][0] if i + 1 < len(starts) else stop
        s, e = min(s, n), min(max(e, s), n)
        if e > s:
            phonemes.append((s, e, ph.lstrip("',%=")))
    return Utterance(audio=audio, phonemes=phonemes, text=text, voice=voice)


_DANGLING = set(W.DETERMINERS + W.PREPOSITIONS + W.CONJUNCTIONS)


def random_sentence(rng: np.random.Generator, n_words: int) -> str:
    """A grammatical-looking random sentence of about ``n_words`` words.

    Clauses are "det adj noun verb det noun [prep det noun]" joined by a comma and a
    conjunction, so longer sentences contain a real pause (a silence in the audio).
    """
    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    def clause():
        out = [pick(W.DETERMINERS)]
        if rng.random() < 0.6:
            out.append(pick(W.ADJECTIVES))
        out += [pick(W.NOUNS), pick(W.VERBS), pick(W.DETERMINERS), pick(W.NOUNS)]
        if rng.random() < 0.5:
            out += [pick(W.PREPOSITIONS), pick(W.DETERMINERS), pick(W.NOUNS)]
        if rng.random() < 0.3:
            out.append(pick(W.ADVERBS))
        return out

    words = clause()
    while len(words) < n_words:
        words[-1] += ","
        words += [pick(W.CONJUNCTIONS)] + clause()
    words = words[:max(n_words, 3)]
    while words[-1].rstrip(",") in _DANGLING:  # do not end on "the", "with", "and"...
        words.pop()
    text = " ".join(words).rstrip(",")
    return text[0].upper() + text[1:] + "."
