"""Export for serving (DESIGN §4): a params-only checkpoint + the compiled sampler, serialized.

An artefact is a directory::

    manifest.json          format, sampling settings, chunk layout, shapes, and for every
                           function the parameter groups it takes and its input signature
    params.safetensors     every weight under ``<group>/<path>`` (groups: model, audio, vae,
                           identity), floats in the export dtype (bfloat16 by default: half the
                           bytes of f32; upcast to each weight's own dtype inside the functions)
    chunk.jaxexport        one autoregressive chunk: audio encoder + guided sampler (with identity)
    chunk_noid.jaxexport   the same chunk without an identity condition
    encode.jaxexport       reference frame [1, 1, R, R, 3] in [-1, 1] -> latent [1, 1, h, w, c]
    decode.jaxexport       F latents [1, F, h, w, c] -> uint8 frames [F, R, R, 3]
    identity.jaxexport     face crop [1, R, R, 3] -> [1, 512] (only with a built-in identity
                           encoder; the manifest's ``identity_encoder`` says which encoder the
                           model was trained with, ``model.identity.encoder``)

Each ``.jaxexport`` holds ``jax.export.Exported.serialize()``: StableHLO plus its calling
convention, for the platforms asked (``cpu``, ``cuda``, ``tpu``; lowering for a platform does
not need its hardware). Weights are *inputs* of the functions, never baked-in constants, so one
artefact's functions serve any weights of the same architecture and the file stays small.
:mod:`starcaster_jax.inference.serve` runs an artefact with JAX, NumPy and safetensors alone.

What is fixed at export time (static in the compiled program): batch 1, the chunk layout
(``F + K`` slots, ``K`` context), the resolution, sampler, steps, eta and the two CFG scales.
Seeds, audio, reference, identity and view trajectory are run-time inputs.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.flax import save_file

from starcaster_jax.inference.chunking import SAMPLES_PER_FRAME, GenerationError
from starcaster_jax.inference.generate import Generator, SamplingSettings
from starcaster_jax.inference.loading import load_parts
from starcaster_jax.models.identity import resolve as identity_resolve

FORMAT = "starcaster-jax-export/1"
PARAMS_FILE = "params.safetensors"
MANIFEST_FILE = "manifest.json"
EXPORT_DTYPES = ("bfloat16", "float32")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def flatten_state(state) -> tuple[list[str], list[jax.Array], object]:
    """An nnx State -> (``a/b/c`` names, leaves, treedef)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in paths]
    if len(set(names)) != len(names):
        raise ValueError("parameter names collide after flattening")
    return names, [leaf for _, leaf in paths], treedef


class _Group:
    """One part's parameters: how to store them flat and rebuild the State inside a function."""

    def __init__(self, name: str, state, dtype):
        self.name = name
        self.names, leaves, self.treedef = flatten_state(state)
        self.dtypes = [jnp.dtype(x.dtype) for x in leaves]
        self.stored = {n: (x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x)
                       for n, x in zip(self.names, leaves)}

    def spec(self) -> dict:
        return {n: jax.ShapeDtypeStruct(x.shape, x.dtype) for n, x in self.stored.items()}

    def restore(self, flat: dict):
        return jax.tree_util.tree_unflatten(self.treedef, [flat[n].astype(d) for n, d in zip(self.names, self.dtypes)])


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(tuple(int(s) for s in shape), jnp.dtype(dtype))


def _signature(specs: Sequence) -> list:
    return [None if s is None else {"shape": list(s.shape), "dtype": str(s.dtype)} for s in specs]


def export_generator(gen, out_dir: str, *, settings=None, identity_encoder=None, dtype: str = "bfloat16",
                     platforms: Sequence[str] | None = None, source: str = "") -> dict:
    """Write the artefact of a :class:`~starcaster_jax.inference.generate.Generator` to ``out_dir``;
    returns the manifest. ``identity_encoder``: what ``models/identity/resolve.py`` resolved
    (a built-in encoder is exported as ``identity`` so that a served reference image gives its
    own embedding; an ONNX ArcFace runs on the host, outside any exportable program, so it is
    named in the manifest and a served reference needs its embedding passed in)."""
    if dtype not in EXPORT_DTYPES:
        raise GenerationError(f"--dtype: expected one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    platforms = tuple(platforms or (jax.default_backend(),))
    bad = [p for p in platforms if p not in PLATFORMS]
    if bad:
        raise GenerationError(f"--platforms: unknown {bad}; expected some of {', '.join(PLATFORMS)}")
    if not gen.has_audio:
        raise GenerationError("export: this model has no audio conditioning; nothing to serve")
    settings = settings or SamplingSettings.from_config(gen.config)
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    wdtype = jnp.dtype(dtype)
    states = gen._states()
    groups = {k: _Group(k, states[k], wdtype) for k in ("model", "audio", "vae")}
    id_info = None
    if isinstance(identity_encoder, identity_resolve.OnnxIdentityEncoder):
        id_info = {"kind": "onnx_arcface", "path": identity_encoder.path, "exported": False}
        identity_encoder = None
    elif identity_encoder is not None:
        id_info = {"kind": "builtin", "exported": True}
    if identity_encoder is not None:
        groups["identity"] = _Group("identity", nnx.split(identity_encoder)[1], wdtype)
        id_graph = nnx.split(identity_encoder)[0]

    slots, k = gen.chunk_frames, gen.context_frames
    h, w, c = gen.latent_shape
    res = gen.resolution
    audio_len = (slots + 2 * gen.audio_window) * SAMPLES_PER_FRAME
    functions, manifest_fns = {}, {}

    def restore(flat, names):
        return {g: groups[g].restore(flat[g]) for g in names}

    def add(name, fn, group_names, inputs, input_names, outputs):
        params = {g: groups[g].spec() for g in group_names}
        exp = jax.export.export(jax.jit(fn), platforms=platforms)(params, *inputs)
        with open(os.path.join(out_dir, f"{name}.jaxexport"), "wb") as f:
            f.write(exp.serialize())
        functions[name] = exp
        manifest_fns[name] = {"params": list(group_names), "inputs": dict(zip(input_names, _signature(inputs))),
                              "outputs": outputs}

    def chunk_fn(with_id):
        run = gen._chunk_fn(settings, slots, True, with_id)

        def chunk(flat, audio, context, mask, view, drop_view, *rest):
            id_emb = rest[0] if with_id else None
            seed, index = rest[-2], rest[-1]
            rng = jax.random.fold_in(jax.random.key(seed), index)
            return run(restore(flat, ("model", "audio")), audio, context, mask, view, drop_view, id_emb, rng)
        return chunk

    common = [_sds((1, audio_len), jnp.float32), _sds((1, slots, h, w, c), jnp.float32),
              _sds((1, slots), bool), _sds((1, slots, 6), jnp.float32), _sds((1,), bool)]
    common_names = ["audio", "context", "context_mask", "view", "drop_view"]
    scalars = [_sds((), jnp.int32), _sds((), jnp.int32)]
    id_dim = int(gen.config.model.identity.embed_dim)
    latents_out = {"latents": {"shape": [1, slots, h, w, c], "dtype": "float32"}}
    add("chunk", chunk_fn(True), ("model", "audio"), common + [_sds((1, id_dim), jnp.float32)] + scalars,
        common_names + ["id_emb", "seed", "chunk_index"], latents_out)
    add("chunk_noid", chunk_fn(False), ("model", "audio"), common + scalars,
        common_names + ["seed", "chunk_index"], latents_out)
    add("encode", lambda flat, x: gen._encode_frames(restore(flat, ("vae",)), x), ("vae",),
        [_sds((1, 1, res, res, 3), jnp.float32)], ["frames"],
        {"latents": {"shape": [1, 1, h, w, c], "dtype": "float32"}})
    group = slots - k
    add("decode", lambda flat, z: gen._decode_latents(restore(flat, ("vae",)), z), ("vae",),
        [_sds((1, group, h, w, c), jnp.float32)], ["latents"],
        {"frames": {"shape": [group, res, res, 3], "dtype": "uint8"}})
    if identity_encoder is not None:
        def identity(flat, frames):
            return identity_resolve.embed_frames(nnx.merge(id_graph, groups["identity"].restore(flat["identity"])),
                                                 frames)
        add("identity", identity, ("identity",), [_sds((1, res, res, 3), jnp.float32)], ["frames"],
            {"embedding": {"shape": [1, id_dim], "dtype": "float32"}})

    flat = {f"{g}/{n}": x for g, grp in groups.items() for n, x in grp.stored.items()}
    save_file(flat, os.path.join(out_dir, PARAMS_FILE))
    manifest = {
        "format": FORMAT,
        "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "jax_version": jax.__version__,
        "platforms": list(platforms),
        "dtype": dtype,
        "params_file": PARAMS_FILE,
        "num_params": {g: int(sum(int(np.prod(x.shape)) for x in grp.stored.values())) for g, grp in groups.items()},
        "resolution": res,
        "latent_shape": [h, w, c],
        "chunk_frames": slots,
        "context_frames": k,
        "audio_window": gen.audio_window,
        "samples_per_frame": SAMPLES_PER_FRAME,
        "identity_dim": id_dim,
        "identity_encoder": id_info,
        "view_reference": gen.view_reference,
        "sampling": {"sampler": settings.sampler, "steps": int(settings.steps), "audio_cfg": float(settings.audio_cfg),
                     "id_cfg": float(settings.id_cfg), "eta": float(settings.eta)},
        "functions": manifest_fns,
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    with open(os.path.join(out_dir, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def export_checkpoint(checkpoint: str, out_dir: str, *, use_ema: bool = True, settings_overrides=None,
                      dtype: str = "bfloat16", platforms=None) -> dict:
    """A training workdir -> an artefact (``launch/export.py``)."""
    parts = load_parts(checkpoint, use_ema=use_ema, need_identity=False)
    try:   # the encoder training and generation resolve (None: the artefact takes embeddings only)
        ident = identity_resolve.resolve_identity_encoder(parts.config.model, base_dir=checkpoint)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise GenerationError(f"identity encoder: {str(e).splitlines()[0]}") from None
    gen = Generator(parts.model, parts.vae, parts.audio_encoder, parts.config)
    settings = SamplingSettings.from_config(parts.config, **(settings_overrides or {}))
    return export_generator(gen, out_dir, settings=settings, identity_encoder=ident, dtype=dtype,
                            platforms=platforms, source=os.path.abspath(checkpoint))
