"""Serve an exported artefact (``inference/export.py``): talking videos from JAX, NumPy and
safetensors alone — no Flax, Optax, Orbax, Grain or model code is imported.

    server = Server("export/")                      # manifest + params + deserialized functions
    for frames in server.video(audio, reference=img):   # uint8 [n, R, R, 3] per chunk
        ...

    python -m starcaster_jax.inference.serve --artefact export/ --audio speech.wav \
        (--reference face.png | --identity id.npy) [--views orbit] [--seed 0] --out out.mp4

The chunk loop is the one of :class:`~starcaster_jax.inference.generate.Generator`
(``chunking.run_chunks``: same planning, audio spans, view inputs, context carry-over and
per-chunk seeds), so an f32 artefact reproduces the checkpoint's generation.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.flax import load_file

from starcaster_jax.inference import chunking as C
from starcaster_jax.inference import views as views_lib
from starcaster_jax.media.video import MediaError, VideoWriter, load_image

FORMAT = "starcaster-jax-export/1"


class Server:
    """An artefact, loaded: ``video`` (animate / synthesize, optional view trajectory) and
    ``identity_from_image``. Problems with the artefact or the inputs raise ``GenerationError``."""

    def __init__(self, path: str, *, device=None):
        path = os.fspath(path)
        mpath = os.path.join(path, "manifest.json")
        if not os.path.isfile(mpath):
            raise C.GenerationError(f"--artefact {path}: no manifest.json (not an exported artefact)")
        try:
            with open(mpath) as f:
                self.manifest = m = json.load(f)
        except (OSError, ValueError) as e:
            raise C.GenerationError(f"{mpath}: unreadable ({type(e).__name__})") from None
        if m.get("format") != FORMAT:
            raise C.GenerationError(f"{mpath}: format {m.get('format')!r}, expected {FORMAT!r}")
        platform = jax.default_backend()
        if platform not in m["platforms"]:
            raise C.GenerationError(f"{path}: exported for {m['platforms']}, this machine runs {platform!r} "
                                    f"(re-export with --platforms {platform})")
        try:
            flat = load_file(os.path.join(path, m["params_file"]))
        except (OSError, ValueError) as e:
            raise C.GenerationError(f"{path}/{m['params_file']}: unreadable ({str(e).splitlines()[0]})") from None
        self.params: dict = {}
        for key, value in flat.items():
            group, name = key.split("/", 1)
            self.params.setdefault(group, {})[name] = value if device is None else jax.device_put(value, device)
        self.fns = {}
        for name in m["functions"]:
            fpath = os.path.join(path, f"{name}.jaxexport")
            try:
                with open(fpath, "rb") as f:
                    self.fns[name] = jax.export.deserialize(bytearray(f.read()))
            except Exception as e:  # noqa: BLE001 - flatbuffers raises struct.error, IndexError, ...
                raise C.GenerationError(f"{fpath}: cannot deserialize ({type(e).__name__})") from None
        self.resolution = int(m["resolution"])
        self.slots, self.context = int(m["chunk_frames"]), int(m["context_frames"])
        self.window = int(m["audio_window"])
        self.latent_shape = tuple(m["latent_shape"])

    def _call(self, name, *args):
        spec = self.manifest["functions"][name]
        return self.fns[name].call({g: self.params[g] for g in spec["params"]}, *args)

    @property
    def has_identity_encoder(self) -> bool:
        return "identity" in self.fns

    def identity_from_image(self, image: np.ndarray) -> np.ndarray:
        if not self.has_identity_encoder:
            info = self.manifest.get("identity_encoder") or {}
            if info.get("kind") == "onnx_arcface":   # runs on the host: not in the artefact
                raise C.GenerationError(f"this artefact's identity encoder is the ONNX ArcFace "
                                        f"{info.get('path')} (model.identity.encoder), which is not "
                                        f"exported: embed the reference with it and pass --identity EMB.npy")
            raise C.GenerationError("this artefact has no identity encoder; pass an identity embedding (.npy)")
        x = jnp.asarray(C.prepare_image(image, self.resolution)[None])
        return C.normalize_embedding(np.asarray(self._call("identity", x))[0], "identity encoder output")

    def decode(self, latents) -> np.ndarray:
        return C.decode_in_groups(lambda z: self._call("decode", jnp.asarray(z)), latents,
                                  self.slots - self.context)

    def video(self, audio: np.ndarray, *, reference: np.ndarray | None = None,
              id_emb: np.ndarray | None = None, poses: np.ndarray | None = None, seed: int = 0,
              view_reference: str | None = None) -> Iterator[np.ndarray]:
        """``Generator.video`` on the artefact: uint8 frames ``[n, R, R, 3]`` per chunk."""
        audio = C.check_speech(audio)
        view_reference = view_reference or self.manifest["view_reference"]
        animate = reference is not None
        if id_emb is not None:
            id_vec = C.normalize_embedding(id_emb)
        elif animate:
            id_vec = self.identity_from_image(reference)
        else:
            id_vec = None
        n = C.num_output_frames(audio.size)
        if poses is not None:
            poses = C.check_poses(poses, n)
        chunks = C.plan_chunks(n, self.slots, self.context, animate=animate)

        def sample(ch, span, context, mask, view, drop_view):
            args = [span, context, mask, view, drop_view]
            if id_vec is not None:
                return self._call("chunk", *args, jnp.asarray(id_vec)[None], jnp.int32(seed), jnp.int32(ch.index))
            return self._call("chunk_noid", *args, jnp.int32(seed), jnp.int32(ch.index))

        def encode_reference():   # [1, 1, h, w, c]
            return self._call("encode", jnp.asarray(C.prepare_image(reference, self.resolution))[None, None])

        return C.run_chunks(sample, self.decode, audio, chunks, slots=self.slots, context=self.context,
                            window=self.window, latent_shape=self.latent_shape,
                            encode_reference=encode_reference if animate else None, poses=poses,
                            view_reference=view_reference)


def read_speech(path: str) -> np.ndarray:
    """A WAV/FLAC/OGG file -> float32 mono 16 kHz (downmixed, resampled), checked."""
    import soundfile  # noqa: PLC0415 (the media extra)
    from scipy.signal import resample_poly  # noqa: PLC0415 (the media extra)
    if not os.path.isfile(path):
        raise C.GenerationError(f"{path}: no such audio file")
    try:
        audio, sr = soundfile.read(path, dtype="float32", always_2d=True)
    except RuntimeError as e:
        raise C.GenerationError(f"{path}: unreadable audio ({str(e).splitlines()[0]})") from None
    audio = audio.mean(axis=1)
    if sr != C.SAMPLE_RATE:
        g = np.gcd(int(sr), C.SAMPLE_RATE)
        audio = resample_poly(audio, C.SAMPLE_RATE // g, int(sr) // g).astype(np.float32)
    return C.check_speech(audio, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m starcaster_jax.inference.serve",
                                 description="Talking video from an exported STARCaster artefact.")
    ap.add_argument("--artefact", required=True)
    ap.add_argument("--audio", required=True, help="WAV/FLAC (16 kHz mono or any rate/channels)")
    ap.add_argument("--reference", help="face image to animate")
    ap.add_argument("--identity", help=".npy identity embedding (synthesize)")
    ap.add_argument("--views", default="none", help="none | static | orbit | FILE.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if (a.reference is None) == (a.identity is None):
        ap.error("give exactly one of --reference or --identity")
    try:
        server = Server(a.artefact)
        audio = read_speech(a.audio)
        ref = load_image(a.reference) if a.reference else None
        emb = None
        if a.identity:
            try:
                emb = np.load(a.identity, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise C.GenerationError(f"{a.identity}: not a .npy array ({type(e).__name__})") from None
        n = C.num_output_frames(len(audio))
        poses = {"none": lambda: None, "static": lambda: views_lib.static(n),
                 "orbit": lambda: views_lib.orbit(n)}.get(a.views, lambda: views_lib.from_json(a.views, n))()
        with VideoWriter(a.out, fps=C.FPS, audio=audio, sample_rate=C.SAMPLE_RATE) as writer:
            for frames in server.video(audio, reference=ref, id_emb=emb, poses=poses, seed=a.seed):
                writer.write(frames)
    except (C.GenerationError, MediaError, OSError, ValueError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(a.out)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
