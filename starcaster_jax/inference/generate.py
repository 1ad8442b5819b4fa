"""Autoregressive generation: talking videos of any length, chunk by chunk; multi-view stills.

Chunk layout (the training window of ``data_pipelines/pipeline.py``: ``F + K`` frames of which
the first ``K`` are clean context)::

    slot:      0 .. K-1            K .. K+F-1
               context (t = 0)     new frames (sampled)

A chunk's slots are consecutive output frames. Chunk ``c + 1``'s context is chunk ``c``'s last
``K`` slots (its own latents, clean), so each chunk continues the previous one. The first
chunk's context is the reference image's latent repeated ``K`` times (animate mode; its frames
are not part of the output), or there is none (synthesize mode: ``context_mask`` all False
and all ``F + K`` slots of the first chunk are output frames).

Length follows the audio: ``ceil(seconds * 25)`` frames; the last chunk is padded (zero audio,
last pose) and its padding is dropped. Every chunk goes through ONE jitted function with
fixed shapes (``[1, F+K, h, w, c]`` latents, ``(F+K+2w) * 640`` audio samples) — it compiles
once whatever the length — and frames are decoded and handed out chunk by chunk, so peak memory
does not grow with the length of the video.

Audio per chunk: samples ``[(s-w)*640, (s+F+K+w)*640)`` around the chunk's slots (``s`` = the
output frame of slot 0; zero outside the clip), encoded, interpolated to ``F+K+2w`` frames and
cut into per-slot windows of ±w (:func:`chunk_audio_windows`): the layout of the training
transform ``VideoWindow`` (``data_pipelines/transforms.py``), so the encoder sees the same
amount of context (and the built-in encoder's per-clip level normalisation the same span) as
in training.

Views: a trajectory ``[N, 6]`` (``inference/views.py``) in the frame of the first frame the
model sees (the reference image, or the first generated frame). The model gets, per chunk, the
poses relative to the chunk's slot 0 (``view_reference="chunk"``: the training transform
``RelativePose`` is relative to the window's first frame) or to the video's first frame
(``"video"``). Both describe the same trajectory; the reading is a constructor argument.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.diffusion.chunk import chunk_noise, sample_chunk
from starcaster_jax.diffusion.samplers import SAMPLERS
from starcaster_jax.diffusion.schedules import make_schedule
from starcaster_jax.inference import chunking
from starcaster_jax.inference import views as views_lib
from starcaster_jax.inference.chunking import (
    FPS,
    MIN_AUDIO_SECONDS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    Chunk,
    GenerationError,
    check_speech,
    chunk_audio,
    normalize_embedding,
    num_output_frames,
    plan_chunks,
)
from starcaster_jax.models.audio.alignment import encode_windows
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.weights.vae import load_vae, vae_path_from_config

__all__ = ["FPS", "SAMPLE_RATE", "SAMPLES_PER_FRAME", "MIN_AUDIO_SECONDS", "GenerationError",
           "Chunk", "SamplingSettings", "Generator", "plan_chunks", "num_output_frames",
           "chunk_audio", "chunk_audio_windows", "check_speech", "schedule_from_config",
           "to_uint8", "load_speech", "reference_crop", "load_embedding", "normalize_embedding",
           "load_parts", "Parts", "config_mismatch", "random_module", "random_parts"]

# ----------------------------------------------------------------------------- audio

# The training objective calls the same function (training/losses.py): one span, one encoding.
chunk_audio_windows = encode_windows


def load_speech(path: str) -> np.ndarray:
    """Speech from an audio file (WAV/FLAC/MP3/...) or a video's audio track -> float32 mono
    16 kHz, checked by :func:`check_speech`. Other rates are resampled, stereo is downmixed."""
    from starcaster_jax.media.video import VIDEO_EXTENSIONS, MediaError, read_audio_from_video
    from starcaster_jax.models.audio.io import load_audio
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GenerationError(f"{path}: no such audio file")
    try:
        if path.lower().endswith(VIDEO_EXTENSIONS):
            raw = read_audio_from_video(path, SAMPLE_RATE)
            audio = load_audio(raw, SAMPLE_RATE)  # finiteness checks
        else:
            try:
                audio = load_audio(path, SAMPLE_RATE)
            except ValueError as first:  # a container libsndfile does not read: let libav try
                try:
                    audio = load_audio(read_audio_from_video(path, SAMPLE_RATE), SAMPLE_RATE)
                except MediaError:
                    raise GenerationError(str(first).splitlines()[0]) from None
    except MediaError as e:
        raise GenerationError(str(e)) from None
    except ValueError as e:
        if isinstance(e, GenerationError):
            raise
        raise GenerationError(f"{path}: {str(e).splitlines()[0]}") from None
    return check_speech(audio, path)


FACE_ENLARGE = 1.8   # talking-head framing: the crop side is 1.8x the detector's face box


def reference_crop(image: np.ndarray, resolution: int, *, face_check: str = "auto",
                   name: str = "reference image") -> np.ndarray:
    """Square crop of the face in a reference image, ``uint8 [S, S, 3]`` (resized to the model
    resolution later by :meth:`Generator.prepare_image`).

    ``face_check``: ``"on"`` runs OpenCV's face detector and crops around the largest face
    (no face -> ``GenerationError``); ``"off"`` takes the centre square as it is; ``"auto"``
    (default) treats an image no larger than the model resolution as an already-framed face
    crop (the built-in corpus's heads, too small for the detector) and checks anything larger
    (a photo).
    """
    if face_check not in ("auto", "on", "off"):
        raise ValueError(f"face_check: expected auto|on|off, got {face_check!r}")
    img = np.asarray(image)
    if face_check == "off" or (face_check == "auto" and max(img.shape[:2]) <= resolution):
        return chunking.resize_square(img, min(img.shape[:2]))
    from starcaster_jax.models.identity.faces import crop_box, detect_faces
    boxes = detect_faces(img)
    if not len(boxes):
        raise GenerationError(f"{name}: no face detected (OpenCV Haar cascade); give a photo with a "
                              f"visible frontal face, or a ready face crop with --face_check off")
    x, y, w, h = boxes[0]
    side = int(round(max(w, h) * FACE_ENLARGE))
    return crop_box(img, boxes[0], size=min(side, max(img.shape[:2])), enlarge=FACE_ENLARGE, shift=0.0)


# ----------------------------------------------------------------------------- settings

def schedule_from_config(diffusion_cfg):
    """The noise schedule a config's ``diffusion`` section trained with."""
    d = diffusion_cfg
    if d.schedule == "flow":
        return make_schedule({"type": "flow", "shift": float(d.flow_shift)})
    if d.schedule == "ddpm":
        return make_schedule({"type": "ddpm", "zero_terminal_snr": bool(d.zero_terminal_snr)})
    raise GenerationError(f"config diffusion.schedule: expected 'ddpm' or 'flow', got {d.schedule!r}")


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Static sampling choices (a change compiles a new chunk function)."""
    sampler: str = "ddim"
    steps: int = 10
    audio_cfg: float = 2.0
    id_cfg: float = 1.5
    eta: float = 0.0
    spacing: str = "trailing"   # DDPM timestep grid (diffusion.timestep_spacing)

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise GenerationError(f"sampler {self.sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if int(self.steps) < 1:
            raise GenerationError(f"steps must be at least 1, got {self.steps}")
        if self.eta < 0:
            raise GenerationError(f"eta must be >= 0, got {self.eta}")

    @classmethod
    def from_config(cls, config, **overrides) -> SamplingSettings:
        d = config.diffusion
        kw = dict(sampler=d.sampler, steps=int(d.sample_steps), audio_cfg=float(d.audio_cfg),
                  id_cfg=float(d.id_cfg), spacing=str(d.timestep_spacing))
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)


def to_uint8(x: jax.Array) -> jax.Array:
    """Frames in [-1, 1] -> uint8 [0, 255]."""
    return jnp.round((jnp.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


# ----------------------------------------------------------------------------- generator

class Generator:
    """Sampling with explicit parts: the trained ``model`` (STARCaster), the ``vae``
    (AutoencoderKL with scaled latents), the ``audio_encoder`` (``encode(audio [B, S])``) and
    optionally ``identity_fn(frames [B, H, W, 3] in [-1, 1]) -> [B, 512]`` (for reference images).

    ``trace_counts`` counts how often each jitted function was traced (a long video must not
    trace the chunk function more than once).
    """

    def __init__(self, model: nnx.Module, vae: nnx.Module, audio_encoder, config, *,
                 identity_fn: Callable | None = None, view_reference: str = "chunk"):
        if view_reference not in ("chunk", "video"):
            raise ValueError(f"view_reference: expected 'chunk' or 'video', got {view_reference!r}")
        self.config = config
        self.identity_fn = identity_fn
        self.strict_reference = bool(config.train.strict_reference)
        self.view_reference = view_reference
        self.resolution = int(config.data.resolution)
        self.context_frames = int(config.data.context_frames)              # K
        self.chunk_frames = int(config.data.num_frames) + self.context_frames  # F + K slots
        self.audio_window = int(config.model.audio.window)
        layers = config.model.audio.layers
        self.audio_layers = tuple(layers) if layers else None
        self.max_frames = int(config.model.unet.motion_max_seq_length)
        if self.chunk_frames > self.max_frames:
            raise GenerationError(f"config: a chunk of {self.chunk_frames} frames exceeds "
                                  f"model.unet.motion_max_seq_length={self.max_frames}")
        self.schedule = schedule_from_config(config.diffusion)
        self.objective = config.diffusion.objective
        f = vae.config.downsample_factor
        if self.resolution % f:
            raise GenerationError(f"config: resolution {self.resolution} is not a multiple of the VAE factor {f}")
        self.latent_shape = (self.resolution // f, self.resolution // f, vae.config.latent_channels)
        self.has_audio = audio_encoder is not None and getattr(model, "audio_proj", 1) is not None
        self._graph = {k: nnx.split(m) for k, m in
                       (("model", model), ("vae", vae), ("audio", audio_encoder)) if m is not None}
        self.trace_counts: collections.Counter = collections.Counter()
        self._chunk_fns: dict = {}
        self._encode_fn = jax.jit(self._encode_frames)
        self._decode_fn = jax.jit(self._decode_latents)

    # -- construction from a training workdir (lazy: the contract modules are optional)
    @classmethod
    def from_checkpoint(cls, path: str, *, config=None, use_ema: bool = True, need_identity: bool = False,
                        view_reference: str = "chunk") -> Generator:
        parts = load_parts(path, config=config, use_ema=use_ema, need_identity=need_identity)
        return cls(parts.model, parts.vae, parts.audio_encoder, parts.config,
                   identity_fn=parts.identity_fn, view_reference=view_reference)

    # -- jitted pieces
    def _merge(self, states, name):
        return nnx.merge(self._graph[name][0], states[name])

    def _states(self) -> dict:
        return {k: v[1] for k, v in self._graph.items()}

    def _encode_frames(self, states, frames):  # [B, F, H, W, 3] in [-1, 1] -> [B, F, h, w, c]
        self.trace_counts["encode"] += 1
        return self._merge(states, "vae").encode_video(frames)

    def _decode_latents(self, states, latents):  # [1, n, h, w, c] -> uint8 [n, H, W, 3]
        self.trace_counts["decode"] += 1
        return to_uint8(self._merge(states, "vae").decode_video(latents)[0])

    def _chunk_fn(self, settings: SamplingSettings, slots: int, with_audio: bool, with_id: bool):
        """The jitted sampler of one chunk, cached by its static choices."""
        if settings.sampler == "euler" and self.schedule.kind != "flow":
            raise GenerationError("sampler 'euler' integrates rectified flow; this model was trained "
                                  "with a DDPM schedule: use ddim or dpmpp_2m")
        if settings.eta > 0 and settings.sampler != "ddim":
            raise GenerationError(f"eta > 0 is for the ddim sampler, not {settings.sampler!r}")
        key = (settings, slots, with_audio, with_id)
        if key in self._chunk_fns:
            return self._chunk_fns[key]
        # Absent conditions make a guidance branch redundant; pick the scale that prunes it
        # (guidance.py evaluates only non-zero-weight branches).
        # No audio: s_audio = 0 -> weights (1 - s_id, s_id, 0). No identity: the identity branch
        # equals the unconditional one, so s_id = s_audio -> weights (1 - s_a, 0, s_a).
        s_audio = float(settings.audio_cfg) if with_audio else 0.0
        s_id = float(settings.id_cfg) if with_id else s_audio
        window, layers = self.audio_window, self.audio_layers

        def run(states, audio, context, context_mask, view, drop_view, id_emb, rng):
            # audio [1, (T+2w)*640] | None, context [1, T, h, w, c], context_mask [1, T] bool,
            # view [1, T, 6], drop_view [1] bool (True: no view condition, the trained null
            # view; one compiled function serves both), id_emb [1, 512] | None, rng: key
            self.trace_counts["chunk"] += 1
            windows = None
            if audio is not None:
                windows = encode_windows(self._merge(states, "audio"), audio, slots, window, layers)
            noise, k_eta = chunk_noise(rng, context.shape)
            return sample_chunk(self._merge(states, "model"), noise, context=context,
                                context_mask=context_mask, id_emb=id_emb, audio_windows=windows,
                                view=view, drop_view=drop_view, schedule=self.schedule,
                                objective=self.objective, sampler=settings.sampler,
                                steps=int(settings.steps), spacing=settings.spacing,
                                s_id=s_id, s_audio=s_audio, eta=float(settings.eta), rng=k_eta)

        fn = jax.jit(run)
        self._chunk_fns[key] = fn
        return fn

    # -- inputs
    def prepare_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``[H, W, 3]`` -> float32 ``[R, R, 3]`` in [-1, 1] (centre crop + resize)."""
        return chunking.prepare_image(image, self.resolution)

    def identity_from_image(self, image: np.ndarray) -> np.ndarray:
        """512-d L2-normalised identity embedding of a (face) image, via ``identity_fn``."""
        if self.identity_fn is None:
            raise GenerationError("no identity encoder is loaded (config.model.encoders_dir); "
                                  "pass an identity embedding (.npy) instead")
        x = jnp.asarray(self.prepare_image(image)[None])
        return normalize_embedding(np.asarray(self.identity_fn(x))[0], "identity encoder output")

    def encode_reference(self, image: np.ndarray) -> jax.Array:
        """Reference image -> its latent ``[1, 1, h, w, c]``."""
        x = jnp.asarray(self.prepare_image(image))[None, None]
        return self._encode_fn(self._states(), x)

    def decode(self, latents: jax.Array) -> np.ndarray:
        """Latents ``[1, n, h, w, c]`` -> uint8 frames ``[n, H, W, 3]``, in groups of ``F`` (one
        compiled shape whatever ``n``)."""
        return chunking.decode_in_groups(lambda z: self._decode_fn(self._states(), jnp.asarray(z)), latents,
                                         self.chunk_frames - self.context_frames)

    def _resolve_identity(self, reference, id_emb):
        if self.strict_reference:
            # The strict_reference ablation never trained identity tokens: the reference frame
            # (context) is its only identity signal, so no identity branch and no id_cfg.
            if reference is None:
                raise GenerationError("this checkpoint was trained with train.strict_reference "
                                      "(no identity tokens): give a --reference image")
            return None
        if id_emb is not None:
            return normalize_embedding(id_emb, "identity embedding")
        if reference is not None:
            return self.identity_from_image(reference)
        return None

    # -- generation
    def plan(self, num_samples: int, *, animate: bool) -> list[Chunk]:
        return plan_chunks(num_output_frames(num_samples), self.chunk_frames, self.context_frames,
                           animate=animate)

    def video(self, audio: np.ndarray, *, reference: np.ndarray | None = None,
              id_emb: np.ndarray | None = None, poses: np.ndarray | None = None,
              settings: SamplingSettings | None = None, seed: int = 0,
              latent_hook: Callable | None = None, view_reference: str | None = None
              ) -> Iterator[np.ndarray]:
        """Generate a talking video for ``audio`` (float32 mono 16 kHz): an iterator of uint8
        frames ``[n, H, W, 3]``, one item per chunk (``sum n == ceil(seconds * 25)``). Inputs
        are checked at the call (``GenerationError``); sampling happens as it is iterated.

        ``reference`` (uint8 image) -> animate mode (context + identity, unless ``id_emb`` is
        given too); otherwise synthesize from ``id_emb`` (``[512]``). ``poses [N, 6]`` is the
        view trajectory (None: no view condition, the model moves the head itself).
        ``latent_hook(chunk, latents [1, T, h, w, c]) -> latents`` sees (and may replace) each
        chunk's latents before they are decoded and carried into the next chunk.
        ``view_reference`` overrides the constructor's reading for this call.
        """
        view_reference = view_reference or self.view_reference
        if view_reference not in ("chunk", "video"):
            raise ValueError(f"view_reference: expected 'chunk' or 'video', got {view_reference!r}")
        audio = check_speech(audio)
        if not self.has_audio:
            raise GenerationError("this model has no audio conditioning (model.unet.audio_dim is 0)")
        settings = settings or SamplingSettings.from_config(self.config)
        animate = reference is not None
        id_vec = self._resolve_identity(reference, id_emb)
        chunks = self.plan(audio.size, animate=animate)
        n = num_output_frames(audio.size)
        if poses is not None:
            poses = chunking.check_poses(poses, n)
        fn = self._chunk_fn(settings, self.chunk_frames, True, id_vec is not None)
        # inputs are checked above, now; the chunks are produced when iterated
        return self._chunks(fn, audio, chunks, reference, id_vec, poses, seed, latent_hook, view_reference)

    def _chunks(self, fn, audio, chunks, reference, id_vec, poses, seed, latent_hook, view_reference):
        """The chunk loop (module docstring): only the last K latents live between chunks."""
        animate = reference is not None
        slots, k = self.chunk_frames, self.context_frames
        states = self._states()
        zeros = jnp.zeros((1, slots) + self.latent_shape, jnp.float32)
        ctx_lat = self.encode_reference(reference) if animate else None  # [1, 1, h, w, c]
        id_in = None if id_vec is None else jnp.asarray(id_vec)[None]
        no_view = jnp.asarray(views_lib.static(slots))[None]           # [1, T, 6], ignored when dropped
        drop_view = jnp.asarray([poses is None])                         # [1]
        base = jax.random.key(seed)
        for ch in chunks:
            mask, context = chunking.chunk_context(zeros, ctx_lat, ch, k)
            if poses is None:
                view = no_view
            else:
                view = jnp.asarray(chunking.slot_views(poses, ch.slot0, slots, animate, view_reference))[None]
            a = jnp.asarray(chunk_audio(audio, ch.slot0, slots, self.audio_window))[None]
            lat = fn(states, a, context, jnp.asarray(mask), view, drop_view, id_in,
                     jax.random.fold_in(base, ch.index))
            if latent_hook is not None:
                lat = latent_hook(ch, lat)
            ctx_lat = lat[:, slots - k:] if k else None   # [1, K, h, w, c] carried over
            yield self.decode(lat[:, ch.num_context:ch.num_context + ch.num_new])

    def multiview(self, poses: np.ndarray, *, reference: np.ndarray | None = None,
                  id_emb: np.ndarray | None = None, settings: SamplingSettings | None = None,
                  seed: int = 0) -> np.ndarray:
        """``N = len(poses)`` views of one instant (frame axis = views, no audio, one chunk) ->
        uint8 ``[N, H, W, 3]``. With a ``reference``, it is an extra clean context view (pose =
        identity) and ``poses`` are relative to it; without, they are relative to view 0."""
        poses = np.asarray(poses, np.float32).reshape(-1, 6)
        animate = reference is not None
        slots = len(poses) + int(animate)
        if slots > self.max_frames:
            raise GenerationError(f"--multiview {len(poses)}: at most {self.max_frames - int(animate)} views "
                                  f"(model.unet.motion_max_seq_length={self.max_frames})")
        settings = settings or SamplingSettings.from_config(self.config)
        id_vec = self._resolve_identity(reference, id_emb)
        fn = self._chunk_fn(settings, slots, False, id_vec is not None)
        mask = np.zeros((1, slots), bool)
        context = jnp.zeros((1, slots) + self.latent_shape, jnp.float32)
        if animate:
            mask[:, 0] = True
            context = context.at[:, :1].set(self.encode_reference(reference))
        slot_poses = np.concatenate([views_lib.IDENTITY_POSE[None], poses]) if animate else poses
        view = views_lib.relative_to(slot_poses, slot_poses[0])
        lat = fn(self._states(), None, context, jnp.asarray(mask), jnp.asarray(view)[None],
                 jnp.zeros((1,), bool), None if id_vec is None else jnp.asarray(id_vec)[None], jax.random.key(seed))
        return self.decode(lat[:, int(animate):])


def load_embedding(path: str, dim: int = 512) -> np.ndarray:
    """An identity embedding from a ``.npy`` file (``[dim]`` or ``[1, dim]``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise GenerationError(f"{path}: no such identity embedding file")
    try:
        e = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for bad files
        raise GenerationError(f"{path}: not a .npy array ({type(exc).__name__})") from None
    e = normalize_embedding(e, path)
    if e.shape != (dim,):
        raise GenerationError(f"{path}: expected a {dim}-d embedding, got shape {e.shape}")
    return e


# ----------------------------------------------------------------------------- loading

@dataclasses.dataclass
class Parts:
    """What a :class:`Generator` is built from."""
    model: nnx.Module
    vae: nnx.Module
    audio_encoder: object
    config: object
    identity_fn: Callable | None = None


# Fields that change no parameter shape (runtime choices, paths): ignored when an explicit
# --config is checked against the checkpoint's own config.
_RUNTIME_FIELDS = {"dtype", "remat_policy", "encoder_checkpoint", "wav2vec2_path", "attention_impl",
                   "encode_chunk", "decode_chunk", "source"}


def config_mismatch(stored, given, prefix: str = "model") -> str | None:
    """First architecture field where two ``model`` config sections differ, as one line, or None."""
    a = stored.to_dict() if hasattr(stored, "to_dict") else dict(stored)
    b = given.to_dict() if hasattr(given, "to_dict") else dict(given)
    for key in sorted(set(a) | set(b)):
        if key in _RUNTIME_FIELDS or key in ("encoders_dir", "vae_checkpoint", "pretrained"):
            continue
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = config_mismatch(va, vb, f"{prefix}.{key}")
            if sub:
                return sub
        elif _norm(va) != _norm(vb):
            return f"{prefix}.{key} is {_norm(va)} in the checkpoint but {_norm(vb)} in the given config"
    return None


def _norm(v):
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def _resolve_dir(d: str, workdir: str) -> str:
    if not d or os.path.isabs(d) or os.path.exists(d):
        return d
    alt = os.path.join(workdir, d)
    return alt if os.path.exists(alt) else d


def load_parts(path: str, *, config=None, use_ema: bool = True, need_identity: bool = False) -> Parts:
    """Model (EMA weights by default) + frozen encoders of a training workdir.

    The model comes from ``starcaster_jax.training.checkpoint.load_for_inference``; the VAE,
    audio and identity encoders from ``config.model.encoders_dir`` through
    ``starcaster_jax.models.builtin_encoders`` (an imported SD VAE / wav2vec2 when the config
    names one instead). ``config`` (optional) replaces the stored config for sampling; its
    ``model`` section must describe the same architecture. Problems raise ``GenerationError``.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise GenerationError(f"--checkpoint {path}: no such training workdir")
    try:
        from starcaster_jax.training.checkpoint import load_for_inference
    except ImportError as e:
        raise GenerationError(f"loading a training workdir needs starcaster_jax.training.checkpoint ({e})") from None
    try:
        model, stored = load_for_inference(path, use_ema=use_ema)
    except (ValueError, FileNotFoundError) as e:
        raise GenerationError(f"--checkpoint: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    cfg = stored
    if config is not None:
        why = config_mismatch(stored.model, config.model)
        if why:
            raise GenerationError(f"--checkpoint {path} does not match --config: {why}")
        cfg = config
    vae, audio, identity_fn = encoder_parts(cfg.model, path, need_identity=need_identity)
    return Parts(model, vae, audio, cfg, identity_fn)


def encoder_parts(mc, base_dir: str = "", *, need_identity: bool = False) -> tuple:
    """``(vae, audio_encoder, identity_fn)`` a generator of a model with config section
    ``mc`` samples with: the rule :func:`load_parts` (and the training loop's evaluation,
    ``training/periodic_eval.py``) use, relative paths also tried below ``base_dir``."""
    enc_dir = _resolve_dir(mc.encoders_dir, base_dir)

    def builtin(name):
        if not enc_dir:
            return None
        from starcaster_jax.models import builtin_encoders
        try:
            return builtin_encoders.load(enc_dir, name)
        except (ValueError, FileNotFoundError, OSError) as e:
            raise GenerationError(f"encoders_dir {enc_dir}: cannot load {name!r} ({str(e).splitlines()[0]})") from None

    vae_path = vae_path_from_config(mc)
    if vae_path:
        vae = load_vae(_resolve_dir(vae_path, base_dir))[0]
    else:
        vae = builtin("vae")
    if vae is None:
        raise GenerationError("config.model.encoders_dir (or model.vae_checkpoint) is empty: no VAE to decode with")
    audio = None
    if mc.unet.audio_dim:
        if mc.audio.encoder == "wav2vec2" and mc.audio.wav2vec2_path:
            from starcaster_jax.models.audio.encoder import build_audio_encoder
            audio = build_audio_encoder(mc.audio)
        else:
            audio = builtin("audio")
        if audio is None:
            raise GenerationError("config.model.encoders_dir is empty: no audio encoder")
    identity_fn = identity_fn_from_config(mc, base_dir) if need_identity else None
    return vae, audio, identity_fn


def identity_fn_from_config(model_cfg, base_dir: str = "") -> Callable:
    """``frames [B, H, W, 3]`` in [-1, 1] -> ``[B, 512]`` with the identity encoder
    ``model.identity.encoder`` names, resolved as training resolves it
    (``models/identity/resolve.py``); relative paths are also tried below ``base_dir`` (the
    training workdir). The function's ``encoder`` attribute is the resolved module."""
    from starcaster_jax.models.identity import resolve as identity_resolve
    try:
        ident = identity_resolve.resolve_identity_encoder(model_cfg, base_dir=base_dir)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise GenerationError(f"identity encoder: {str(e).splitlines()[0]}") from None
    if ident is None:
        raise GenerationError("config.model.encoders_dir is empty: no identity encoder for a "
                              "reference image; pass --identity EMB.npy")
    embed = nnx.jit(identity_resolve.embed_frames)

    def identity_fn(frames):  # [B, H, W, 3] in [-1, 1] -> [B, 512]
        return embed(ident, frames)
    identity_fn.encoder = ident
    return identity_fn


def random_module(ctor: Callable[[], nnx.Module], seed: int = 0) -> nnx.Module:
    """``ctor()`` with random parameters and no init compile: built abstractly
    (``nnx.eval_shape``), then every parameter filled with numpy noise (kernels with
    1/sqrt(fan_in) std, biases 0.02, norm scales 1). Every conditioning path is live (the
    real init zeroes some output projections), which is what tests and memory benchmarks want."""
    graphdef, state = nnx.split(nnx.eval_shape(ctor))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return jnp.ones(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else leaf.shape[0]
        std = 0.02 if "bias" in name else 1.0 / np.sqrt(max(fan_in, 1))
        return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def random_parts(config, seed: int = 0) -> Parts:
    """Untrained parts of the right shapes for ``config`` (tests, benchmarks, smoke runs)."""
    from starcaster_jax.models.audio.encoder import build_audio_encoder
    from starcaster_jax.models.starcaster import STARCaster
    from starcaster_jax.models.vae import AutoencoderKL, VAEConfig
    mc = config.model
    model = random_module(lambda: STARCaster(mc, rngs=InitRngs(0)), seed)
    vc = dict(mc.vae.to_dict(), block_out_channels=tuple(mc.vae.block_out_channels))
    vae = random_module(lambda: AutoencoderKL(VAEConfig(**vc), rngs=InitRngs(0)), seed + 1)
    audio = None
    if mc.unet.audio_dim:
        audio = random_module(lambda: build_audio_encoder(mc.audio, rngs=InitRngs(0)), seed + 2)
    proj = np.random.default_rng(seed + 3).normal(size=(3, int(mc.identity.embed_dim))).astype(np.float32)

    def identity_fn(frames):  # [B, H, W, 3] -> [B, E]: a fixed random projection of the mean colour
        return jnp.mean(frames, axis=(1, 2)) @ proj

    return Parts(model, vae, audio, config, identity_fn)
