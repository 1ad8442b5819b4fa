"""What the denoiser is conditioned on: the ``Conditioning`` pytree, and the embeddings of the
per-frame scalars (timestep and view)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx, struct

from starcaster_jax.models.layers import Dense, LayerNorm, timestep_embedding


@struct.dataclass
class Conditioning:
    """Every input of STARCaster besides ``x`` and ``t``, as one pytree: guidance tiles and
    concatenates it per branch (``jax.tree.map``), ``jit`` traces it, training and generation
    build the same object. ``None`` = the condition is absent (an empty subtree)."""
    id_emb: jax.Array | None = None         # [B, 512] unit identity embedding
    audio_windows: jax.Array | None = None  # [B, F, 2w+1, L, D] encoder features per frame
    view: jax.Array | None = None           # [B, F, 6] relative head pose
    context_mask: jax.Array | None = None   # [B, F] True on clean context slots
    drop_id: jax.Array | None = None        # [B] bool: use the null identity (CFG)
    drop_audio: jax.Array | None = None     # [B] bool: use the null audio (CFG)
    drop_view: jax.Array | None = None      # [B] bool: no view signal (invent the motion)

    def kwargs(self) -> dict:
        """The keyword arguments of ``STARCaster.__call__``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class TimestepEmbedding(nnx.Module):
    """diffusers ``TimestepEmbedding``: linear_1 -> SiLU -> linear_2 on the sinusoidal features."""

    def __init__(self, in_dim: int, dim: int, *, rngs: nnx.Rngs, dtype=None):
        self.in_dim = in_dim
        self.linear_1 = Dense(in_dim, dim, names=("cond", "embed"), rngs=rngs, dtype=dtype)
        self.linear_2 = Dense(dim, dim, names=("embed", "embed_out"), rngs=rngs, dtype=dtype)

    def __call__(self, t):
        """``t: [...]`` model time (0..1000) -> ``[..., dim]``."""
        feats = timestep_embedding(t, self.in_dim, flip_sin_to_cos=True, downscale_freq_shift=0.0)
        return self.linear_2(jax.nn.silu(self.linear_1(feats.astype(self.linear_1.kernel.dtype))))


class ViewEmbedding(nnx.Module):
    """Per-frame relative pose ``(yaw, pitch, roll, tx, ty, scale)`` -> view features.

    Angles and offsets are small numbers; sinusoidal features at a few frequencies make the
    MLP's job easy (a NeRF-style encoding) while staying smooth in the pose.
    """

    def __init__(self, dim: int, *, pose_dim: int = 6, num_freqs: int = 4, rngs: nnx.Rngs, dtype=None):
        self.num_freqs = num_freqs
        in_dim = pose_dim * (1 + 2 * num_freqs)
        self.linear_1 = Dense(in_dim, dim, names=("cond", "embed"), rngs=rngs, dtype=dtype)
        self.linear_2 = Dense(dim, dim, names=("embed", "embed_out"), rngs=rngs, dtype=dtype)

    def __call__(self, view):
        """``view: [B, F, 6]`` -> ``[B, F, dim]``."""
        freqs = 2.0 ** jnp.arange(self.num_freqs, dtype=jnp.float32)        # [K]
        ang = view[..., None].astype(jnp.float32) * freqs                    # [B, F, 6, K]
        feats = jnp.concatenate([view[..., None], jnp.sin(ang), jnp.cos(ang)], -1)
        feats = feats.reshape(*view.shape[:-1], -1).astype(self.linear_1.kernel.dtype)
        return self.linear_2(jax.nn.silu(self.linear_1(feats)))


class IdentityProjector(nnx.Module):
    """The soft identity constraint: a face-recognition embedding -> ``N_id`` cross-attention tokens.

    The embedding is L2-normalised first (ArcFace embeddings live on the sphere; their norm
    carries image quality, not identity), then an MLP maps it to ``num_tokens x dim`` and a
    LayerNorm per token keeps the tokens at the scale the cross-attention expects
    (IP-Adapter / Arc2Face-style projection).
    """

    def __init__(self, *, embed_dim: int = 512, num_tokens: int = 4, dim: int = 768,
                 hidden_dim: int | None = None, rngs: nnx.Rngs, dtype=None):
        hidden_dim = hidden_dim or 2 * dim
        self.num_tokens, self.dim = num_tokens, dim
        self.linear_1 = Dense(embed_dim, hidden_dim, names=("cond", "mlp"), rngs=rngs, dtype=dtype)
        self.linear_2 = Dense(hidden_dim, num_tokens * dim, names=("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.norm = LayerNorm(dim, rngs=rngs, dtype=dtype)

    def __call__(self, emb):
        """``emb: [B, E]`` -> ``[B, N_id, D]``."""
        emb = emb.astype(jnp.float32)
        emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-6)
        h = self.linear_2(jax.nn.gelu(self.linear_1(emb.astype(self.linear_1.kernel.dtype))))
        return self.norm(h.reshape(emb.shape[0], self.num_tokens, self.dim))


def _pose_to_matrix(ypr):
    """(yaw, pitch, roll) [...,3] -> R = Ry(yaw) Rx(-pitch) Rz(roll) (data_pipelines.schema)."""
    y, p, r = ypr[..., 0], -ypr[..., 1], ypr[..., 2]
    cy, sy, cp, sp, cr, sr = jnp.cos(y), jnp.sin(y), jnp.cos(p), jnp.sin(p), jnp.cos(r), jnp.sin(r)
    one, zero = jnp.ones_like(y), jnp.zeros_like(y)
    ry = jnp.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*y.shape, 3, 3)
    rx = jnp.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*y.shape, 3, 3)
    rz = jnp.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*y.shape, 3, 3)
    return ry @ rx @ rz


def _matrix_to_pose(rot):
    q = jnp.arcsin(jnp.clip(-rot[..., 1, 2], -1.0, 1.0))
    yaw = jnp.arctan2(rot[..., 0, 2], rot[..., 2, 2])
    roll = jnp.arctan2(rot[..., 1, 0], rot[..., 1, 1])
    return jnp.stack([yaw, -q, roll], -1)


def rebase_view(view, ref: int):
    """Re-express per-frame poses ``[B, F, 6]`` relative to frame ``ref`` (jit-friendly twin of
    ``data_pipelines.schema.relative_pose``). Composition makes this exact for poses that are
    already relative to some earlier frame: R_ref^T R_f does not depend on the old origin.
    Used wherever a chunk does not start at the clip's first frame (self-forcing, long videos)."""
    view = view.astype(jnp.float32)
    rot = _pose_to_matrix(view[..., :3])                                   # [B, F, 3, 3]
    rel = jnp.einsum("bji,bfjk->bfik", rot[:, ref], rot)
    txy = view[..., 3:5] - view[:, ref:ref + 1, 3:5]
    scale = view[..., 5:6] / view[:, ref:ref + 1, 5:6]
    return jnp.concatenate([_matrix_to_pose(rel), txy, scale], -1)
