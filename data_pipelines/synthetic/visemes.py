"""Phonemes -> visemes -> per-frame (25 fps) labels and smoothed mouth parameters.

Viseme classes: the 15-class set used by Oculus/MPEG-4 style lip-sync (silence + 14),
which is what a lip-reading classifier on a 64x64 mouth can plausibly tell apart.
espeak-ng English phoneme mnemonics map to them as documented in PHONEME_TO_VISEME;
stress marks are stripped beforehand; an unknown mnemonic keeps the previous viseme.

Mouth parameters per viseme are targets (open, width, rounding) in [0,1]. Real mouths
anticipate and carry over shapes (coarticulation), so frame values blend neighbouring
targets with Cohen-Massaro dominance functions: segment s with centre c_s, duration d_s
and dominance a_s contributes D_s(t) = a_s * exp(-|t - c_s| / tau_s), tau_s = max(d_s/2,
25 ms), and m(t) = sum_s D_s(t) T_s / sum_s D_s(t). Bilabials (PP) and labiodentals (FF)
get a high dominance so the lips really close/touch despite short durations.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.schema import FPS, NUM_VISEMES, SAMPLE_RATE

VISEMES = ("sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih",
           "oh", "ou")
assert len(VISEMES) == NUM_VISEMES
SIL = 0

_GROUPS = {
    "sil": "_ _: _! _| _^_ ||",
    "PP": "p b m",
    "FF": "f v",
    "TH": "T D",
    "DD": "t d t# t2 t[ d# d[",
    "kk": "k g N h x",
    "CH": "tS dZ S Z",
    "SS": "s z",
    "nn": "n l @L n- l- n#",
    "RR": "r r- 3 3: R",
    "aa": "a a# A: aa aI aI2 aI@ aI3 aU A@ V VR",
    "E": "E e@ eI @ @2 @5 e",
    "ih": "I I# I2 i i: i@ i@3 j IR ;",
    "oh": "0 O: O2 O@ OI o@ oU o",
    "ou": "u: U U@ w w# u",
}
PHONEME_TO_VISEME = {ph: VISEMES.index(v) for v, phs in _GROUPS.items() for ph in phs.split()}

# (open, width, rounding) targets and dominance per viseme.
TARGETS = np.array([
    [0.00, 0.45, 0.00],  # sil: relaxed, closed
    [0.00, 0.42, 0.10],  # PP: lips pressed
    [0.10, 0.50, 0.00],  # FF: lower lip to upper teeth
    [0.22, 0.52, 0.00],  # TH
    [0.25, 0.52, 0.00],  # DD
    [0.32, 0.50, 0.00],  # kk
    [0.25, 0.35, 0.70],  # CH: protruded
    [0.12, 0.65, 0.00],  # SS: teeth close, spread
    [0.22, 0.52, 0.00],  # nn
    [0.30, 0.38, 0.55],  # RR
    [0.95, 0.62, 0.00],  # aa
    [0.55, 0.72, 0.00],  # E
    [0.35, 0.82, 0.00],  # ih
    [0.70, 0.32, 0.80],  # oh
    [0.30, 0.22, 1.00],  # ou
], np.float32)
DOMINANCE = np.array([0.8, 4.0, 3.0, 1.0, 0.7, 0.6, 1.2, 1.0, 0.7, 1.0, 1.0, 1.0, 1.0, 1.0,
                      1.2], np.float32)


def phoneme_viseme(ph: str, prev: int = SIL) -> int:
    return PHONEME_TO_VISEME.get(ph, prev)


def segments_from_phonemes(phonemes, offset: int, total: int):
    """(start, end, mnemonic) in samples -> contiguous viseme segments covering [0, total).

    ``offset`` shifts the utterance inside the clip; gaps become silence.
    """
    segs, prev, pos = [], SIL, 0
    for s, e, ph in phonemes:
        s, e = s + offset, e + offset
        if s >= total:
            break
        e = min(e, total)
        if s > pos:
            segs.append((pos, s, SIL))
        prev = phoneme_viseme(ph, prev)
        segs.append((max(s, pos), e, prev))
        pos = e
    if pos < total:
        segs.append((pos, total, SIL))
    return [(s, e, v) for s, e, v in segs if e > s]


def frame_labels(segs, n_frames: int) -> np.ndarray:
    """Viseme at each frame's centre -> int32 [F]."""
    spf = SAMPLE_RATE // FPS
    centres = np.arange(n_frames) * spf + spf // 2
    starts = np.array([s for s, _, _ in segs])
    vis = np.array([v for _, _, v in segs], np.int32)
    idx = np.clip(np.searchsorted(starts, centres, side="right") - 1, 0, len(segs) - 1)
    return vis[idx]


def mouth_params(segs, n_frames: int) -> np.ndarray:
    """Coarticulated (open, width, rounding) at frame centres -> float32 [F,3]."""
    spf = SAMPLE_RATE // FPS
    t = (np.arange(n_frames) * spf + spf / 2)[:, None] / SAMPLE_RATE  # [F,1] seconds
    s = np.array([a for a, _, _ in segs], np.float64) / SAMPLE_RATE
    e = np.array([b for _, b, _ in segs], np.float64) / SAMPLE_RATE
    v = np.array([c for _, _, c in segs])
    centre, tau = (s + e) / 2, np.maximum((e - s) / 2, 0.025)
    # Long silences hold the rest shape across their whole span, not just near the centre.
    dist = np.where(v == SIL, np.maximum(np.maximum(s - t, t - e), 0.0), np.abs(t - centre))
    dom = DOMINANCE[v] * np.exp(-dist / tau)  # [F,S]
    out = dom @ TARGETS[v] / np.maximum(dom.sum(-1, keepdims=True), 1e-9)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
