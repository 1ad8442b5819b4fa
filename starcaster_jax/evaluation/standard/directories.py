"""Evaluate a directory of generated videos against a directory of real ones (``launch/evaluate_videos``).

Pairing: videos are matched by file name without extension (``clip01.mp4`` <-> ``clip01.mkv``);
``--audio DIR`` matches audio files the same way. A name on one side only, a missing or empty
directory, or a file that is not video at all on every pair is a usage error (:class:`InputError`,
one line). A video that exists but cannot be decoded is skipped, pair and all (both sides of a
set-level metric come from the same names), and counted in the report.

Audio for LSE: the ``--audio`` file when given (the speech that drove the generator), else the
generated video's own audio track (what Wav2Lip's scores do); the real video's own track gives
the ceiling. Both are decoded to 16 kHz mono by libswresample.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from starcaster_jax.evaluation.standard.metrics import Skips, StandardMetrics
from starcaster_jax.media.video import VIDEO_EXTENSIONS, MediaError, read_audio_from_video, read_video

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus") + VIDEO_EXTENSIONS


class InputError(ValueError):
    """A usage problem with the directories (one ``error:`` line, exit 2)."""


def list_media(directory: str, flag: str, extensions=VIDEO_EXTENSIONS) -> dict[str, str]:
    """``{name without extension: path}`` of the media files directly in ``directory``."""
    if not directory or not os.path.isdir(directory):
        raise InputError(f"{flag} {directory}: no such directory")
    out: dict[str, str] = {}
    for f in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(f)
        if ext.lower() in extensions and os.path.isfile(os.path.join(directory, f)):
            if stem in out:
                raise InputError(f"{flag} {directory}: two files named {stem!r} ({os.path.basename(out[stem])}, {f})")
            out[stem] = os.path.join(directory, f)
    if not out:
        raise InputError(f"{flag} {directory}: no files with extension {', '.join(extensions[:6])} ...")
    return out


def _names(xs) -> str:
    xs = sorted(xs)
    return ", ".join(xs[:3]) + (f" and {len(xs) - 3} more" if len(xs) > 3 else "")


def pair_directories(generated: str, real: str, audio: str | None = None) -> list[tuple[str, str, str, str | None]]:
    """``[(name, generated path, real path, audio path or None)]`` sorted by name."""
    g, r = list_media(generated, "--generated"), list_media(real, "--real")
    if set(g) != set(r):
        only_g, only_r = set(g) - set(r), set(r) - set(g)
        what = f"only in --generated: {_names(only_g)}" if only_g else f"only in --real: {_names(only_r)}"
        raise InputError(f"--generated has {len(g)} videos and --real {len(r)}, not the same names ({what})")
    a = list_media(audio, "--audio", AUDIO_EXTENSIONS) if audio else {}
    if audio and set(g) - set(a):
        raise InputError(f"--audio {audio}: no audio file for {_names(set(g) - set(a))}")
    return [(n, g[n], r[n], a.get(n)) for n in sorted(g)]


def _audio(path: str) -> np.ndarray | None:
    try:
        return read_audio_from_video(path, 16000)
    except MediaError:
        return None


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0]
    return text.split(": ", 1)[1] if ": " in text else text


def evaluate_directories(generated: str, real: str, metrics: StandardMetrics, *, audio: str | None = None,
                         progress: Callable[[str], None] | None = None) -> dict:
    """Every pair through ``metrics`` -> its ``result()`` plus the directories and pair counts."""
    pairs = pair_directories(generated, real, audio)
    skips: Skips = metrics.skips
    scored = 0
    for i, (name, gpath, rpath, apath) in enumerate(pairs):
        try:
            gen, gfps = read_video(gpath)
        except MediaError as e:
            skips.add(name, "all", f"unreadable generated video ({_reason(e)})")
            continue
        try:
            ref, rfps = read_video(rpath)
        except MediaError as e:
            skips.add(name, "all", f"unreadable real video ({_reason(e)})")
            continue
        drive = None
        if metrics.lse is not None:
            drive = _audio(apath) if apath else _audio(gpath)
            if apath and drive is None:
                skips.add(name, "lse", f"unreadable audio file {os.path.basename(apath)}")
        metrics.add(name, gen, ref, audio=drive, real_audio=_audio(rpath) if metrics.lse is not None else None,
                    fps=gfps, real_fps=rfps)
        scored += 1
        if progress:
            progress(f"{i + 1}/{len(pairs)} {name}")
    if not scored:
        raise InputError(f"none of the {len(pairs)} video pairs could be read "
                         f"(first: {next(iter(skips.videos.values()))['all']})")
    out = metrics.result()
    out.update(generated=os.path.abspath(generated), real=os.path.abspath(real),
               audio=os.path.abspath(audio) if audio else None, pairs=len(pairs), scored_pairs=scored)
    return out
