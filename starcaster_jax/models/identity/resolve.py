"""``model.identity.encoder``: the one place that decides how a reference image becomes the
512-d identity embedding, for training, generation and export alike.

Why one function: the identity tokens the denoiser learns to read come from this embedding. If
training embedded the reference frame with one network and generation or a served artefact with
another, the model would be conditioned at inference on vectors it never saw. Training
(``training/frozen.py``), generation (``inference/loading.py:load_parts``) and export
(``inference/export.py:export_checkpoint``) all call :func:`resolve_identity_encoder` and embed
with :func:`embed_frames`, so they cannot disagree.

    builtin        the project's ``BuiltinIdentityEncoder`` (``launch.train_encoders``):
                   ``model.identity.encoder_checkpoint`` (an encoder directory, or a parent
                   holding ``identity_cond/``), else ``<model.encoders_dir>/identity_cond``
    onnx_arcface   a user's insightface ArcFace ``.onnx`` (``model.identity.encoder_checkpoint``),
                   run by onnxruntime on the host through ``jax.pure_callback``, so it works
                   inside the jitted training step too. Input: the face-cropped frame at the
                   model resolution (what training batches and ``Generator.prepare_image``
                   hold) resized to the network's input; there are no landmarks at that point,
                   so this is the crop's framing, not insightface's 5-point alignment
                   (ingestion, which has landmarks, aligns: ``data_pipelines/ingest/arcface.py``)
    arc2face       not implemented (NotImplementedError, see ``ARC2FACE_WHY``)

Frames are ``[B, H, W, 3]`` float in ``[-1, 1]``; embeddings ``[B, E]`` float32, L2-normalised.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.identity.onnx_arcface import OnnxArcFace

ENCODERS = ("builtin", "onnx_arcface", "arc2face")
ARC2FACE_WHY = ("model.identity.encoder='arc2face' is not implemented: Arc2Face's CLIP encoder "
                "(models/identity/clip_text.py) maps an ArcFace embedding to 77 prompt tokens, but "
                "STARCaster's denoiser reads IdentityProjector tokens and nothing wires the CLIP "
                "tokens in; use 'onnx_arcface' with Arc2Face's ArcFace (antelopev2 glintr100.onnx)")


def encoder_choice(identity_cfg) -> str:
    """``model.identity.encoder``, checked (one-line ValueError naming the field and choices)."""
    name = str(identity_cfg.encoder)
    if name not in ENCODERS:
        raise ValueError(f"model.identity.encoder={name!r}: expected one of {'|'.join(ENCODERS)}")
    return name


class OnnxIdentityEncoder(nnx.Module):
    """An ONNX ArcFace as a (parameter-free) module, so the frozen-network plumbing (split /
    merge / pass to jit) treats it like the built-in encoder. The onnxruntime session is a
    static attribute; ``__call__`` runs it on the host through ``jax.pure_callback``."""

    def __init__(self, runner):
        self.runner = runner                       # identity.onnx_arcface.OnnxArcFace
        self.embed_dim = int(runner.embed_dim)
        self.path = str(runner.model_path)

    def _host(self, frames: np.ndarray) -> np.ndarray:
        """float ``[B, H, W, 3]`` in [-1, 1] -> ``[B, E]`` float32 (numpy, on the host)."""
        import cv2  # noqa: PLC0415 (the media extra)
        x = np.clip((np.asarray(frames, np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
        s = self.runner.input_size
        crops = np.stack([im if im.shape[:2] == (s, s) else
                          cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA if im.shape[0] > s
                                     else cv2.INTER_LINEAR) for im in x])
        return self.runner.embed_crops(crops).astype(np.float32)

    def __call__(self, frames: jax.Array) -> jax.Array:
        out = jax.ShapeDtypeStruct((frames.shape[0], self.embed_dim), jnp.float32)
        return jax.pure_callback(self._host, out, frames.astype(jnp.float32))


def _load_builtin(path: str):
    """A built-in identity encoder from ``path`` (its own directory, or a parent holding
    ``identity_cond/``)."""
    if os.path.isdir(os.path.join(path, "identity_cond")):
        return be.load(path, "identity_cond")
    parent, base = os.path.split(os.path.normpath(path))
    return be.load(parent, base)


def _resolve_path(p: str, base_dir: str) -> str:
    """A relative path that does not exist from here is tried relative to ``base_dir`` (a
    training workdir: its stored config's paths may be relative to it)."""
    if not p or os.path.isabs(p) or os.path.exists(p) or not base_dir:
        return p
    alt = os.path.join(base_dir, p)
    return alt if os.path.exists(alt) else p


def resolve_identity_encoder(model_cfg, *, base_dir: str = "") -> nnx.Module | None:
    """The identity encoder ``model_cfg`` (a config's ``model`` section) names, loaded; None
    when it names none that exists (``builtin`` with neither ``identity.encoder_checkpoint``
    nor ``<encoders_dir>/identity_cond``): callers that need one say so in their own words.

    ``onnx_arcface`` without ``encoder_checkpoint`` is a ValueError; ``arc2face`` raises
    NotImplementedError; a named path that does not exist, FileNotFoundError."""
    ident = model_cfg.identity
    kind = encoder_choice(ident)
    path = _resolve_path(str(ident.encoder_checkpoint or ""), base_dir)
    if kind == "arc2face":
        raise NotImplementedError(ARC2FACE_WHY)
    if kind == "onnx_arcface":
        if not path:
            raise ValueError("model.identity.encoder='onnx_arcface' needs "
                             "model.identity.encoder_checkpoint (the ArcFace .onnx file)")
        enc = OnnxIdentityEncoder(OnnxArcFace(path))
        if enc.embed_dim != int(ident.embed_dim):
            raise ValueError(f"model.identity.encoder_checkpoint={path!r} gives {enc.embed_dim}-d "
                             f"embeddings, model.identity.embed_dim is {int(ident.embed_dim)}")
        return enc
    if path:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model.identity.encoder_checkpoint={path!r}: no such encoder directory")
        return _load_builtin(path)
    root = _resolve_path(str(model_cfg.encoders_dir or ""), base_dir)
    if root and os.path.isdir(os.path.join(root, "identity_cond")):
        return be.load(root, "identity_cond")
    return None


def has_identity_encoder(model_cfg) -> bool:
    """Whether :func:`resolve_identity_encoder` would find an encoder, without loading it
    (``model.identity.source='auto'`` picks the encoder source when it would)."""
    ident = model_cfg.identity
    if encoder_choice(ident) != "builtin":
        return True
    root = str(model_cfg.encoders_dir or "")
    return bool(ident.encoder_checkpoint) or bool(root and os.path.isdir(os.path.join(root, "identity_cond")))


def embed_frames(encoder: nnx.Module, frames: jax.Array) -> jax.Array:
    """``frames [B, H, W, 3]`` in [-1, 1] -> unit ``[B, E]`` with any encoder the resolver
    gives; pure JAX (jit-able), the frozen encoder's weights get no gradient."""
    if isinstance(encoder, OnnxIdentityEncoder):
        e = encoder(frames)
        return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return be.identity_embedding(encoder, frames)
