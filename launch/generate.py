"""Generate talking-portrait videos from a trained STARCaster workdir.

    python -m launch.generate --checkpoint WORKDIR --reference face.png --audio speech.wav --out out.mp4
    python -m launch.generate --checkpoint WORKDIR --identity id.npy --audio speech.wav --views orbit
    python -m launch.generate --checkpoint WORKDIR --reference face.png --multiview 8 --grid

Modes: ``--reference IMG`` animates a portrait (the image is the first context frame and gives
the identity embedding); ``--identity EMB.npy`` / ``--identity_from IMG`` synthesize a new
talking sequence from the embedding alone. ``--views`` chooses the camera/view trajectory
(``none``: the model moves the head itself; ``static``; ``orbit``; or a JSON file, format in
``starcaster_jax/inference/views.py``). ``--multiview N`` writes N views of one instant.

The video is as long as the audio (``ceil(seconds * 25)`` frames), generated chunk by chunk
with constant memory, and written as H.264 mp4 with the user's audio muxed at its own sample
rate and channels (the model itself hears it as 16 kHz mono). Bad inputs
print a one-line ``error: ...`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from launch import cli

_DEG = np.pi / 180.0


def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(prog="starcaster-generate", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--checkpoint", required=True, help="training workdir (latest step is used)")
    ap.add_argument("--config", default=None,
                    help="config file[:arg] replacing the stored one (must describe the same model)")
    ap.add_argument("--no_ema", action="store_true", help="use the raw weights instead of the EMA ones")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--reference", help="portrait image to animate (context frame + identity)")
    who.add_argument("--identity", help="identity embedding .npy (512 floats): synthesize")
    who.add_argument("--identity_from", help="image to take the identity embedding from: synthesize")
    ap.add_argument("--audio", help="speech: WAV/FLAC/MP3 or a video file's audio track")
    ap.add_argument("--views", default=None,
                    help="none | static | orbit | FILE.json (default: none; orbit for --multiview)")
    ap.add_argument("--orbit_yaw_deg", type=float, default=20.0, help="orbit / multi-view yaw amplitude")
    ap.add_argument("--orbit_pitch_deg", type=float, default=0.0, help="orbit pitch amplitude")
    ap.add_argument("--orbit_period_s", type=float, default=4.0, help="orbit period in seconds")
    ap.add_argument("--static_yaw_deg", type=float, default=0.0, help="static view: yaw from the reference")
    ap.add_argument("--static_pitch_deg", type=float, default=0.0, help="static view: pitch from the reference")
    ap.add_argument("--multiview", type=int, default=0, metavar="N", help="N views of one instant (no audio)")
    ap.add_argument("--multiview_fps", type=float, default=2.0, help="frame rate of the multi-view mp4")
    ap.add_argument("--sampler", default=None, help="ddim | euler | dpmpp_2m (default: config)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: config)")
    ap.add_argument("--audio_cfg", type=float, default=None, help="audio guidance scale (default: config)")
    ap.add_argument("--id_cfg", type=float, default=None, help="identity guidance scale (default: config)")
    ap.add_argument("--eta", type=float, default=None, help="DDIM eta (default 0: deterministic)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--view_reference", choices=("chunk", "video"), default="chunk",
                    help="poses given to the model are relative to each chunk's first frame (as the "
                         "training windows) or to the video's first frame")
    ap.add_argument("--face_check", choices=("auto", "on", "off"), default="auto",
                    help="detect and crop the face of reference images (auto: only for images "
                         "larger than the model resolution)")
    ap.add_argument("--no_face_check", dest="face_check", action="store_const", const="off",
                    help="same as --face_check off")
    ap.add_argument("--grid", action="store_true",
                    help="write reference | generated side by side (multi-view: also a PNG of all views)")
    ap.add_argument("--upscale", type=int, default=1, help="integer upscaling of the written frames")
    ap.add_argument("--out", default="out.mp4", help="output .mp4 path")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def load_config_file(spec: str):
    """``path/to/config.py[:arg]`` -> ``get_config(arg)``."""
    from starcaster_jax.inference.chunking import GenerationError  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise GenerationError(f"--config {path}: no such config file")
    try:
        mod_spec = importlib.util.spec_from_file_location("_starcaster_generate_config", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        return mod.get_config(arg or None)
    except Exception as e:  # noqa: BLE001 - any failure of a user's config file is an input error
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise GenerationError(f"--config {spec}: {type(e).__name__}: {first_line}") from None


def build_generator(args, *, need_identity: bool):
    """The :class:`Generator` for ``--checkpoint`` (and ``--config``); tests replace this."""
    from starcaster_jax.inference.generate import Generator  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    config = load_config_file(args.config) if args.config else None
    return Generator.from_checkpoint(args.checkpoint, config=config, use_ema=not args.no_ema,
                                     need_identity=need_identity, view_reference=args.view_reference)


def _trajectory(args, num_frames: int, *, multiview: bool) -> np.ndarray | None:
    from starcaster_jax.inference import views  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    kind = args.views or ("orbit" if multiview else "none")
    if kind == "none":
        if multiview:
            from starcaster_jax.inference.chunking import GenerationError  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
            raise GenerationError("--multiview needs views: use --views orbit, static or a JSON file")
        return None
    if kind == "static":
        return views.static(num_frames, views.degrees_to_pose([args.static_yaw_deg, args.static_pitch_deg]))
    if kind == "orbit":
        if multiview:  # cameras spread over [-A, A]
            return views.spread(num_frames, args.orbit_yaw_deg * _DEG, args.orbit_pitch_deg * _DEG)
        return views.orbit(num_frames, args.orbit_yaw_deg * _DEG, args.orbit_period_s * 25.0,
                           args.orbit_pitch_deg * _DEG)
    try:
        return views.from_json(kind, num_frames)
    except ValueError as e:
        from starcaster_jax.inference.chunking import GenerationError  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
        raise GenerationError(f"--views {e}") from None


def _upscale(frames: np.ndarray, k: int) -> np.ndarray:
    return frames if k <= 1 else np.repeat(np.repeat(frames, k, axis=-3), k, axis=-2)


def generate(args) -> list[str]:
    """Run one generation; returns the written paths. Input problems raise GenerationError."""
    from starcaster_jax import inference as G  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax import media  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)

    # 1. cheap input checks first: a typo should not cost a model load
    if not args.out.lower().endswith(".mp4"):
        raise G.GenerationError(f"--out {args.out}: the output must be an .mp4 file")
    problem = cli.output_problem(args.out)   # e.g. a file where its directory should be
    if problem:
        raise G.GenerationError(problem)
    if args.multiview < 0:
        raise G.GenerationError(f"--multiview {args.multiview}: must be positive")
    if args.upscale < 1:
        raise G.GenerationError(f"--upscale {args.upscale}: must be >= 1")
    if args.views not in (None, "none", "static", "orbit"):
        if not os.path.isfile(args.views):
            raise G.GenerationError(f"--views {args.views}: not none|static|orbit nor an existing JSON file")
        _trajectory(args, 1, multiview=False)  # parse errors now, not after loading the model
    audio = None
    if args.multiview:
        if args.audio:
            print("note: --multiview renders one instant; --audio is ignored", file=sys.stderr)
    elif not args.audio:
        raise G.GenerationError("--audio is required (speech to drive the video)")
    else:
        audio = G.load_speech(args.audio)
    image_path = args.reference or args.identity_from
    image = None
    if image_path:
        try:
            image = media.load_image(image_path)
        except media.MediaError as e:
            raise G.GenerationError(str(e)) from None
    id_emb = G.load_embedding(args.identity) if args.identity else None
    settings_kw = dict(sampler=args.sampler, steps=args.steps, audio_cfg=args.audio_cfg,
                       id_cfg=args.id_cfg, eta=args.eta)
    G.SamplingSettings(**{k: v for k, v in settings_kw.items() if v is not None})  # flag errors now

    # 2. model (a mismatching checkpoint/config fails here)
    gen = build_generator(args, need_identity=image_path is not None)
    settings = G.SamplingSettings.from_config(gen.config, **settings_kw)
    if image is not None:
        image = G.reference_crop(image, gen.resolution, face_check=args.face_check, name=image_path)
        if args.identity_from:
            id_emb = gen.identity_from_image(image)
    reference = image if args.reference else None
    ref_panel = None
    if image is not None:
        ref_panel = np.round((gen.prepare_image(image) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)

    # 3. generate + write
    out = os.path.abspath(args.out)
    if args.multiview:
        poses = _trajectory(args, args.multiview, multiview=True)
        frames = gen.multiview(poses, reference=reference, id_emb=id_emb, settings=settings, seed=args.seed)
        written = [media.write_mp4(out, _upscale(frames, args.upscale), fps=args.multiview_fps)]
        if args.grid:
            panels = ([ref_panel] if ref_panel is not None else []) + list(frames)
            written.append(media.save_image(os.path.splitext(out)[0] + ".png",
                                            _upscale(media.grid(panels, gap=2)[0], args.upscale)))
        return written
    n = G.num_output_frames(audio.size)
    poses = _trajectory(args, n, multiview=False)
    chunks = gen.plan(audio.size, animate=reference is not None)
    if args.grid and ref_panel is None:
        print("note: --grid has no reference image to show next to an --identity embedding", file=sys.stderr)
    bar = tqdm(total=len(chunks), unit="chunk", desc=f"{n} frames", disable=args.quiet, file=sys.stderr)
    try:   # the mp4 carries the user's audio as given: its own rate and channels (issue 14 §5)
        track = media.read_audio_native(args.audio)
    except media.MediaError:   # a file only libsndfile reads: the 16 kHz mono speech the model heard
        track = media.NativeAudio(audio[:, None], G.SAMPLE_RATE, "mono")
    with media.VideoWriter(out, fps=G.FPS, audio=track.samples, sample_rate=track.sample_rate,
                           layout=track.layout) as writer:
        for frames in gen.video(audio, reference=reference, id_emb=id_emb, poses=poses,
                                settings=settings, seed=args.seed):
            if args.grid and ref_panel is not None:
                frames = media.grid([ref_panel, frames], gap=2)
            writer.write(_upscale(frames, args.upscale))
            bar.update(1)
    bar.close()
    return [out]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from starcaster_jax.inference.chunking import GenerationError  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    try:
        paths = generate(args)
    except GenerationError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


def run() -> None:
    """Console-script entry point (``starcaster-generate``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
