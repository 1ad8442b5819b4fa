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
cut into per-slot windows of ±w (``models/audio/alignment.encode_windows``, the function
the training objective calls too): the layout of the training
transform ``VideoWindow`` (``data_pipelines/transforms.py``), so the encoder sees the same
amount of context (and the built-in encoder's per-clip level normalisation the same span) as
in training.

The loop over chunks is :func:`~starcaster_jax.inference.chunking.run_chunks`, shared with the
served artefact (``serve.py``). Inputs are read by ``inputs.py``, checkpoints by ``loading.py``.

Views: a trajectory ``[N, 6]`` (``inference/views.py``) in the frame of the first frame the
model sees (the reference image, or the first generated frame). The model gets, per chunk, the
poses relative to the chunk's slot 0 (``view_reference="chunk"``: the training transform
``RelativePose`` is relative to the window's first frame) or to the video's first frame
(``"video"``). Both describe the same trajectory; the reading is a constructor argument.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.diffusion.chunk import chunk_noise, sample_chunk
from starcaster_jax.diffusion.samplers import SAMPLERS
from starcaster_jax.diffusion.schedules import schedule_from_config
from starcaster_jax.inference import chunking
from starcaster_jax.inference import views as views_lib
from starcaster_jax.inference.chunking import (
    Chunk,
    GenerationError,
    check_speech,
    normalize_embedding,
    num_output_frames,
    plan_chunks,
)
from starcaster_jax.inference.loading import load_parts
from starcaster_jax.models.audio.alignment import encode_windows

__all__ = ["Generator", "SamplingSettings", "to_uint8"]


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
        try:
            self.schedule = schedule_from_config(config.diffusion)
        except ValueError as e:   # a launcher reports GenerationError as one line
            raise GenerationError(str(e)) from None
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
        states = self._states()
        id_in = None if id_vec is None else jnp.asarray(id_vec)[None]        # [1, 512]
        base = jax.random.key(seed)

        def sample(ch, span, context, mask, view, drop_view):
            return fn(states, span, context, mask, view, drop_view, id_in, jax.random.fold_in(base, ch.index))

        # inputs are checked above, now; the chunks are produced when iterated
        return chunking.run_chunks(
            sample, self.decode, audio, chunks, slots=self.chunk_frames, context=self.context_frames,
            window=self.audio_window, latent_shape=self.latent_shape,
            encode_reference=(lambda: self.encode_reference(reference)) if animate else None,
            poses=poses, view_reference=view_reference, latent_hook=latent_hook)

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
