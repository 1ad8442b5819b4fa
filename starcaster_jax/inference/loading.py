"""What a ``Generator`` is built from, loaded from a training workdir: the model (EMA weights by
default), the frozen VAE, audio and identity encoders its config names, and the check that an
explicit ``--config`` describes the checkpoint's architecture.

Problems raise ``GenerationError`` with one line, so a launcher prints it and exits 2.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from flax import nnx

from starcaster_jax.inference.chunking import GenerationError
from starcaster_jax.models import builtin_encoders
from starcaster_jax.models.audio.encoder import build_audio_encoder
from starcaster_jax.models.identity import resolve as identity_resolve
from starcaster_jax.training.checkpoint import load_for_inference
from starcaster_jax.weights.vae import load_vae, vae_path_from_config


@dataclasses.dataclass
class Parts:
    """What a :class:`~starcaster_jax.inference.generate.Generator` is built from."""
    model: nnx.Module
    vae: nnx.Module
    audio_encoder: object
    config: object
    identity_fn: Callable | None = None


# Fields that change no parameter shape (runtime choices, paths): ignored when an explicit
# --config is checked against the checkpoint's own config.
_RUNTIME_FIELDS = {"dtype", "remat_policy", "encoder_checkpoint", "wav2vec2_path", "attention_impl",
                   "encode_chunk", "decode_chunk", "source", "encoders_dir", "vae_checkpoint", "pretrained",
                   "sequence_parallel_axis"}


def config_mismatch(stored, given, prefix: str = "model") -> str | None:
    """First architecture field where two ``model`` config sections differ, as one line, or None."""
    a = stored.to_dict() if hasattr(stored, "to_dict") else dict(stored)
    b = given.to_dict() if hasattr(given, "to_dict") else dict(given)
    for key in sorted(set(a) | set(b)):
        if key in _RUNTIME_FIELDS:
            continue
        # plain dicts here (to_dict above), where an absent key is the difference reported
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = config_mismatch(va, vb, f"{prefix}.{key}")
            if sub:
                return sub
        elif _norm(va) != _norm(vb):
            return f"{prefix}.{key} is {_norm(va)} in the checkpoint but {_norm(vb)} in the given config"
    return None


def _norm(v):
    """Lists and tuples compare equal (a config round-trip through JSON turns one into the other)."""
    return tuple(_norm(x) for x in v) if isinstance(v, (list, tuple)) else v


def resolve_dir(d: str, workdir: str) -> str:
    """A config path as given, or below ``workdir`` when only that exists (configs store paths
    relative to the training run)."""
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
    enc_dir = resolve_dir(mc.encoders_dir, base_dir)

    def builtin(name):
        if not enc_dir:
            return None
        try:
            return builtin_encoders.load(enc_dir, name)
        except (ValueError, FileNotFoundError, OSError) as e:
            raise GenerationError(f"encoders_dir {enc_dir}: cannot load {name!r} ({str(e).splitlines()[0]})") from None

    vae_path = vae_path_from_config(mc)
    if vae_path:
        vae = load_vae(resolve_dir(vae_path, base_dir))[0]
    else:
        vae = builtin("vae")
    if vae is None:
        raise GenerationError("config.model.encoders_dir (or model.vae_checkpoint) is empty: no VAE to decode with")
    audio = None
    if mc.unet.audio_dim:
        if mc.audio.encoder == "wav2vec2" and mc.audio.wav2vec2_path:
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


__all__ = ["Parts", "config_mismatch", "encoder_parts", "identity_fn_from_config", "load_parts",
           "resolve_dir"]
