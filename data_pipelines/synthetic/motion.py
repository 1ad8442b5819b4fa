"""Head motion, blinks and gaze: smooth random trajectories at 25 fps.

Why sums of sinusoids: they are smooth (no jerks a video model would have to learn), band-
limited to the slow rates of real head motion (0.1-0.8 Hz), and exactly reproducible from
a seed. Speech-correlated nods add a pitch dip that follows the smoothed speech envelope,
so the head moves more while talking, as in real talking-head footage.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.schema import FPS, SAMPLES_PER_FRAME


def smooth_noise(rng: np.random.Generator, n: int, amp: float, fmin=0.1, fmax=0.8, k=3):
    """Sum of k random sinusoids with total amplitude ~amp -> float32 [n]."""
    t = np.arange(n) / FPS
    f = rng.uniform(fmin, fmax, k)
    ph = rng.uniform(0, 2 * np.pi, k)
    w = rng.dirichlet(np.ones(k))
    return (amp * (w[:, None] * np.sin(2 * np.pi * f[:, None] * t + ph[:, None])).sum(0)
            ).astype(np.float32)


def speech_envelope(audio: np.ndarray) -> np.ndarray:
    """Per-frame RMS [F] of 16 kHz audio, smoothed over ~0.2 s, scaled to [0,1]."""
    rms = np.sqrt((audio.reshape(-1, SAMPLES_PER_FRAME).astype(np.float64) ** 2).mean(-1))
    k = np.hanning(7)
    env = np.convolve(rms, k / k.sum(), mode="same")
    return (env / max(env.max(), 1e-9)).astype(np.float32)


def head_trajectory(rng: np.random.Generator, n: int, envelope: np.ndarray | None = None,
                    liveliness: float = 1.0) -> dict:
    """Relative head rotation and body drift for a clip.

    Returns yaw/pitch/roll [n] (radians, head relative to the torso), body_dx/body_dy
    [n] (head units), body_scale [n] (1 = nominal distance).
    """
    deg = np.pi / 180
    yaw = rng.uniform(-18, 18) * deg + smooth_noise(rng, n, 14 * deg * liveliness)
    pitch = rng.uniform(-6, 6) * deg + smooth_noise(rng, n, 6 * deg * liveliness)
    roll = rng.uniform(-4, 4) * deg + smooth_noise(rng, n, 4 * deg * liveliness, 0.1, 0.4)
    if envelope is not None:
        nod = rng.uniform(2, 5) * deg
        pitch = pitch - nod * (envelope - envelope.mean())
    return {
        "yaw": yaw.astype(np.float32), "pitch": pitch.astype(np.float32),
        "roll": roll.astype(np.float32),
        "body_dx": (rng.uniform(-0.08, 0.08) + smooth_noise(rng, n, 0.05, 0.05, 0.3)),
        "body_dy": (rng.uniform(-0.05, 0.05) + smooth_noise(rng, n, 0.03, 0.05, 0.3)),
        "body_scale": (rng.uniform(0.93, 1.07) + smooth_noise(rng, n, 0.03, 0.05, 0.2)),
    }


BLINK_PROFILE = np.array([0.45, 1.0, 0.85, 0.45, 0.15], np.float32)


def blinks(rng: np.random.Generator, n: int, mean_interval_s: float = 3.5) -> np.ndarray:
    """Eyelid closure [n] in [0,1]: Poisson blinks (close fast, open slower)."""
    out = np.zeros(n, np.float32)
    t = rng.exponential(mean_interval_s * 0.5)
    while True:
        f = int(t * FPS)
        if f >= n:
            break
        seg = BLINK_PROFILE[: n - f]
        out[f:f + len(seg)] = np.maximum(out[f:f + len(seg)], seg)
        t += 0.4 + rng.exponential(mean_interval_s)
    return out


def gaze(rng: np.random.Generator, n: int, head_yaw: np.ndarray | None = None) -> np.ndarray:
    """Eye yaw/pitch [n,2]: fixations (0.4-2 s) with 2-frame saccades; eyes partly
    counter-rotate the head yaw so they keep looking near the camera."""
    out = np.zeros((n, 2), np.float32)
    f, cur = 0, np.zeros(2, np.float32)
    while f < n:
        nxt = np.array([rng.normal(0, 0.12), rng.normal(0, 0.07)], np.float32)
        dur = int(rng.uniform(0.4, 2.0) * FPS)
        out[f:f + dur] = nxt
        if f > 0:
            out[f] = (cur + nxt) / 2
        cur, f = nxt, f + dur
    if head_yaw is not None:
        out[:, 0] -= 0.5 * head_yaw
    return np.clip(out, -0.45, 0.45)
