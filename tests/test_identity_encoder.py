"""``model.identity.encoder`` (issue 11, fix 4): one resolver decides how a reference image
becomes the identity embedding, and training, generation and export all call it.

The ONNX ArcFace here is a toy graph written with ``onnx.helper`` (no download): 16x16 average
pooling of the 112x112 input, then a fixed random projection to 512.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_fixtures import micro_config, write_checkpoint, write_encoders

from configs import stage2_audio
from starcaster_jax import inference as G
from starcaster_jax.inference import chunking as C
from starcaster_jax.inference import export as E
from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.identity import resolve
from starcaster_jax.models.identity.builtin import BuiltinIdentityConfig
from starcaster_jax.models.identity.onnx_arcface import OnnxArcFace
from starcaster_jax.training import frozen
from starcaster_jax.training import losses as L


def _config(**identity):
    c = stage2_audio.get_config("micro")
    c.mesh.update(data=1, fsdp=1, tensor=1)
    c.model.identity.update(**identity)
    return c


def _frames(b=2, r=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (b, r, r, 3)), jnp.float32)


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory):
    import onnx  # noqa: PLC0415 (optional ONNX dependency)
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415 (optional ONNX dependency)
    w = np.random.default_rng(0).normal(size=(3 * 7 * 7, 512)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["input.1"], ["p"], kernel_shape=[16, 16], strides=[16, 16]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "w"], ["embedding"])],
        "toy_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 512])],
        [numpy_helper.from_array(w, "w")])
    path = str(tmp_path_factory.mktemp("onnx") / "toy_arcface.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture(scope="module")
def sentinel():
    """A small built-in identity encoder: what the patched resolver hands out."""
    return be.init_params(be.abstract_module("builtin_identity", BuiltinIdentityConfig(
        image_size=16, widths=(8, 16), norm_groups=4)), seed=3)


def test_unknown_encoder_is_one_line_naming_the_field_and_the_choices():
    c = _config(encoder="facenet")
    for call in (lambda: resolve.resolve_identity_encoder(c.model),     # the resolver
                 lambda: L.LossConfig.from_config(c),                    # training (source auto)
                 lambda: frozen.identity_source(c)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and "model.identity.encoder='facenet'" in msg, msg
        assert all(k in msg for k in resolve.ENCODERS), msg
    with pytest.raises(C.GenerationError, match=r"model.identity.encoder='facenet'.*builtin\|onnx_arcface\|arc2face"):
        G.identity_fn_from_config(c.model)                               # generation


def test_arc2face_raises_not_implemented_saying_why():
    with pytest.raises(NotImplementedError) as e:
        resolve.resolve_identity_encoder(_config(encoder="arc2face").model)
    assert "\n" not in str(e.value) and "arc2face" in str(e.value) and "IdentityProjector" in str(e.value)


def test_training_generation_and_export_get_the_resolved_encoder(monkeypatch, tmp_path, sentinel):
    """Patch the one resolver: the training step's identity net, the Generator's identity
    function and the exported identity encoder are all what it returned."""
    calls = []

    def fake(model_cfg, *, base_dir=""):
        calls.append(base_dir)
        return sentinel

    monkeypatch.setattr(resolve, "resolve_identity_encoder", fake)
    # training: the frozen identity net and the embedding the loss conditions on
    c = _config(source="encoder")
    nets = frozen.build_frozen(c)
    assert nets["identity"] is sentinel
    lc = L.LossConfig.from_config(c)
    frames = _frames()
    batch = {"frames": jnp.stack([frames, -frames], axis=1)}               # [B, 2, R, R, 3]
    got = jax.jit(lambda b: L.identity_embedding(nets, b, lc))(batch)
    np.testing.assert_allclose(np.asarray(got), np.asarray(be.identity_embedding(sentinel, frames)), atol=1e-6)
    # generation: load_parts of a workdir
    enc = write_encoders(micro_config("", str(tmp_path / "enc")), str(tmp_path / "enc"))
    wcfg = micro_config("", enc)
    wd = write_checkpoint(wcfg, str(tmp_path / "wd"), noise=0.0)
    parts = G.load_parts(wd, need_identity=True)       # (wd's encoders_dir has its own identity_cond)
    np.testing.assert_allclose(np.asarray(parts.identity_fn(frames)),
                               np.asarray(be.identity_embedding(sentinel, frames)), atol=1e-6)
    assert calls[-1] == wd
    # export: the artefact's identity encoder
    seen = {}
    monkeypatch.setattr(E, "export_generator", lambda gen, out, **kw: seen.update(kw) or {})
    E.export_checkpoint(wd, str(tmp_path / "art"))
    assert seen["identity_encoder"] is sentinel and calls[-1] == wd


def test_onnx_arcface_embeds_alike_in_the_training_step_and_in_generation(toy_onnx):
    import cv2  # noqa: PLC0415 (the media extra)

    c = _config(encoder="onnx_arcface", encoder_checkpoint=toy_onnx)
    assert frozen.identity_source(c) == "encoder"                        # auto: the encoder exists
    nets = frozen.build_frozen(c)
    assert isinstance(nets["identity"], resolve.OnnxIdentityEncoder)
    graphdefs, states = frozen.split_frozen(nets)
    lc = L.LossConfig.from_config(c)
    frames = _frames(r=32)
    batch = {"frames": frames[:, None]}

    @jax.jit
    def step_embedding(states, batch):   # as the training step: frozen nets are arguments
        return L.identity_embedding(frozen.merge_frozen(graphdefs, states), batch, lc)

    train_emb = np.asarray(step_embedding(states, batch))
    gen_emb = np.asarray(G.identity_fn_from_config(c.model)(frames))
    u8 = np.clip((np.asarray(frames) + 1) * 127.5, 0, 255).round().astype(np.uint8)
    crops = np.stack([cv2.resize(im, (112, 112), interpolation=cv2.INTER_LINEAR) for im in u8])
    want = OnnxArcFace(toy_onnx).embed_crops(crops)
    np.testing.assert_allclose(train_emb, want, atol=1e-5)
    np.testing.assert_allclose(gen_emb, want, atol=1e-5)
    assert abs(float(train_emb[0] @ train_emb[1])) < 0.99                # not a constant
    with pytest.raises(ValueError, match="needs model.identity.encoder_checkpoint"):
        resolve.resolve_identity_encoder(_config(encoder="onnx_arcface").model)
