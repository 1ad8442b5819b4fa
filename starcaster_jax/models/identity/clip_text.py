"""Flax NNX port of the CLIP *text* transformer and the Arc2Face identity encoder built on it.

Why: Arc2Face (Papantoniou et al. 2024) conditions SD-1.5 on a fine-tuned CLIP ViT-L/14 text
encoder fed the prompt ``"photo of a id person"`` in which the *input embedding* of the
placeholder token ``id`` is replaced by the (L2-normalised, zero-padded to 768) ArcFace
embedding; the encoder's ``last_hidden_state [B, 77, 768]`` are the identity tokens. Importing
those weights is the Arc2Face import option of DESIGN §2 ("identity").

Layout and numerics follow ``transformers.CLIPTextModel`` (token + learned position embeddings,
pre-LN encoder layers with biased q/k/v/out projections and a causal mask, ``quick_gelu`` MLP,
final LayerNorm). Parameter paths mirror the HF state dict except the attention projections,
which use the project's ``Attention`` (``to_q/to_k/to_v/to_out``); see
``starcaster_jax.weights.clip_text`` for the rename table and ``load_arc2face_encoder`` (loading
Arc2Face's ``encoder/`` directory; ``weights/`` imports ``models/``, never the reverse).

Token ids: we cannot ship a tokenizer, so the Arc2Face prompt's ``input_ids`` come from the
user's local tokenizer (Arc2Face uses the SD-1.5 one)::

    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained("<sd-1.5 dir>/tokenizer")   # or arc2face_prompt_ids(path)
    ids = tok("photo of a id person", padding="max_length", max_length=77,
              truncation=True).input_ids                            # 77 ints
    id_index = ids.index(tok.encode("id", add_special_tokens=False)[0])
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from starcaster_jax.models.attention import Attention
from starcaster_jax.models.layers import Dense, LayerNorm

ARC2FACE_PROMPT = "photo of a id person"
ARC2FACE_PLACEHOLDER = "id"
ARCFACE_DIM = 512

_ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Fields of a HF ``CLIPTextConfig`` that shape the forward pass. Defaults: ViT-L/14 (Arc2Face)."""
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"CLIP text config: unsupported hidden_act {self.hidden_act!r} "
                             f"(known: {sorted(_ACTIVATIONS)})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("CLIP text config: hidden_size is not divisible by num_attention_heads")

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> CLIPTextConfig:
        """From a parsed ``config.json`` of a ``CLIPTextModel`` (or a full ``CLIPModel``:
        its ``text_config`` is used). Unrelated HF keys are ignored."""
        if "text_config" in hf and isinstance(hf["text_config"], Mapping):
            hf = hf["text_config"]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in hf.items() if k in names})

    @classmethod
    def from_pretrained(cls, path: str) -> CLIPTextConfig:
        with open(os.path.join(path, "config.json")) as f:
            return cls.from_hf(json.load(f))


class CLIPTextEmbeddings(nnx.Module):
    """Token table ``[V, D]`` and learned absolute positions ``[P, D]``."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=None):
        init = nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed"))
        self.token_embedding = nnx.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init,
                                         dtype=dtype, rngs=rngs)
        pinit = nnx.with_partitioning(nnx.initializers.normal(0.01), ("length", "embed"))
        self.position_embedding = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                            embedding_init=pinit, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids=None, *, inputs_embeds=None):
        """``input_ids [B, L]`` or ``inputs_embeds [B, L, D]`` (token embeddings) -> ``[B, L, D]``."""
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding(input_ids)
        length = inputs_embeds.shape[1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(f"CLIP text: sequence length {length} exceeds max_position_embeddings "
                             f"{self.position_embedding.num_embeddings}")
        return inputs_embeds + self.position_embedding(jnp.arange(length))[None]


class CLIPMLP(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=None):
        self.act = cfg.hidden_act
        self.fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, names=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, names=("mlp", "embed"), rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return self.fc2(_ACTIVATIONS[self.act](self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-LN block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=None):
        d = cfg.hidden_size
        self.layer_norm1 = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs, dtype=dtype)
        self.self_attn = Attention(d, heads=cfg.num_attention_heads, qkv_bias=True, out_bias=True,
                                   rngs=rngs, dtype=dtype)
        self.layer_norm2 = LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs, dtype=dtype)
        self.mlp = CLIPMLP(cfg, rngs=rngs, dtype=dtype)

    def __call__(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask=mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=None):
        self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs=rngs, dtype=dtype)
                                for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask):
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPTextModel(nnx.Module):
    """``transformers.CLIPTextModel`` -> ``last_hidden_state`` (the pooled output is not needed:
    SD / Arc2Face cross-attend to every token)."""

    def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs, dtype=None):
        self.config = cfg
        self.embeddings = CLIPTextEmbeddings(cfg, rngs=rngs, dtype=dtype)
        self.encoder = CLIPEncoder(cfg, rngs=rngs, dtype=dtype)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps, rngs=rngs, dtype=dtype)

    def token_embeddings(self, input_ids):
        """``[B, L]`` int -> ``[B, L, D]`` input embeddings *before* positions are added."""
        return self.embeddings.token_embedding(input_ids)

    def __call__(self, input_ids=None, *, inputs_embeds=None, attention_mask=None):
        """``input_ids [B, L]`` or token ``inputs_embeds [B, L, D]``; ``attention_mask [B, L]``
        (1 = real token, optional: CLIP prompts are usually padded to 77 with no mask).
        Returns ``last_hidden_state [B, L, D]``."""
        h = self.embeddings(input_ids, inputs_embeds=inputs_embeds)          # [B, L, D]
        length = h.shape[1]
        mask = jnp.tril(jnp.ones((length, length), bool))[None, None]        # [1, 1, L, L]
        if attention_mask is not None:
            mask = mask & attention_mask.astype(bool)[:, None, None, :]      # [B, 1, L, L]
        return self.final_layer_norm(self.encoder(h, mask))


def substitute_token(token_embs, index: int, emb):
    """Replace the input embedding at ``index`` with ``emb`` zero-padded to ``D``.

    ``token_embs [B, L, D]``, ``emb [B, E]`` (E <= D) -> ``[B, L, D]``. This is Arc2Face's
    ``token_embs[input_ids == id_token] = F.pad(face_embs, (0, D - 512))``.
    """
    b, _, d = token_embs.shape
    e = emb.shape[-1]
    if e > d:
        raise ValueError(f"identity embedding of size {e} does not fit the hidden size {d}")
    padded = jnp.pad(emb.astype(token_embs.dtype), ((0, 0), (0, d - e)))   # [B, D]
    return token_embs.at[:, index].set(padded)


def l2_normalize(x, eps: float = 1e-12):
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class Arc2FaceIdentityEncoder(nnx.Module):
    """ArcFace embedding ``[B, 512]`` -> Arc2Face identity tokens ``[B, L=77, D=768]``.

    ``input_ids`` (``L`` ints) are the tokenised ``"photo of a id person"`` and ``id_index`` the
    position of the placeholder ``id`` in them (see the module docstring, or
    ``arc2face_prompt_ids``). The embedding is L2-normalised first, as Arc2Face does.
    """

    def __init__(self, text_model: CLIPTextModel, input_ids: Sequence[int], id_index: int,
                 *, normalize: bool = True):
        ids = tuple(int(i) for i in np.asarray(input_ids).reshape(-1))
        if not 0 <= id_index < len(ids):
            raise ValueError(f"id_index {id_index} is outside the prompt's {len(ids)} tokens")
        if len(ids) > text_model.config.max_position_embeddings:
            raise ValueError(f"prompt has {len(ids)} tokens, the text model takes at most "
                             f"{text_model.config.max_position_embeddings}")
        self.text_model = text_model
        self.input_ids, self.id_index, self.normalize = ids, int(id_index), normalize

    def __call__(self, emb):
        """``emb [B, E]`` -> ``[B, L, D]``."""
        emb = l2_normalize(emb) if self.normalize else emb
        ids = jnp.broadcast_to(jnp.asarray(self.input_ids, jnp.int32), (emb.shape[0], len(self.input_ids)))
        tok = self.text_model.token_embeddings(ids)                          # [B, L, D]
        tok = substitute_token(tok, self.id_index, emb)
        return self.text_model(inputs_embeds=tok)


def arc2face_prompt_ids(tokenizer, prompt: str = ARC2FACE_PROMPT,
                        placeholder: str = ARC2FACE_PLACEHOLDER, max_length: int = 77
                        ) -> tuple[np.ndarray, int]:
    """``(input_ids [max_length] int32, id_index)`` from a ``CLIPTokenizer`` or a local tokenizer
    directory (Arc2Face: the SD-1.5 ``tokenizer/`` folder). Needs transformers; no download."""
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import CLIPTokenizer  # noqa: PLC0415 (the torch extra, parity oracle only)
        if not os.path.isdir(tokenizer):
            raise FileNotFoundError(f"{tokenizer}: not a tokenizer directory (vocab.json + merges.txt)")
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    ids = list(tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True).input_ids)
    ph = tokenizer.encode(placeholder, add_special_tokens=False)
    if len(ph) != 1 or ph[0] not in ids:
        raise ValueError(f"placeholder {placeholder!r} is not a single token of {prompt!r} for this tokenizer")
    return np.asarray(ids, np.int32), ids.index(ph[0])
