"""Identity: CLIP text port parity + importer, the Arc2Face substitution, the ONNX ArcFace runner
(pre-processing and 5-point alignment) against torch, the built-in ArcFace-margin encoders, the
verification metrics and the one-line errors on bad inputs."""
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import starcaster_jax  # noqa: F401  (disables eager sharding)
from starcaster_jax.models.identity import (
    ARCFACE_TEMPLATE,
    Arc2FaceIdentityEncoder,
    ArcFaceHead,
    ArcFaceModel,
    BuiltinIdentityConfig,
    BuiltinIdentityEncoder,
    CLIPTextConfig,
    CLIPTextModel,
    FaceNotFoundError,
    IdentityEncoder,
    ImageReadError,
    OnnxArcFace,
    align_face,
    arc2face_prompt_ids,
    arcface_loss,
    face_crops,
    load_image,
    make_optimizer,
    similarity_transform,
    substitute_token,
    tar_at_far,
    train_step,
    verification_metrics,
)
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.weights.clip_text import import_clip_text_state, load_arc2face_encoder, load_clip_text
from starcaster_jax.weights.common import WeightImportError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# small CLIP text config; vocab/eos inside the vocab so transformers does not complain
HF_SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, bos_token_id=62,
                eos_token_id=63, pad_token_id=63)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _randomise(m, seed=0):
    """Non-trivial LayerNorm affines and biases (the defaults 1/0 would hide layout bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def hf_clip():
    torch.manual_seed(0)
    return _randomise(transformers.CLIPTextModel(transformers.CLIPTextConfig(**HF_SMALL)).eval())


def _ours_from_torch(m, cfg):
    ours = nnx.eval_shape(lambda: CLIPTextModel(cfg, rngs=InitRngs(0)))
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    import_clip_text_state(ours, sd, source="in-memory")
    nnx.update(ours, jax.tree.map(jnp.asarray, nnx.state(ours)))
    return ours


_apply = nnx.jit(lambda m, ids, mask: m(ids, attention_mask=mask))


# ----------------------------------------------------------------------------- CLIP text

def test_clip_text_parity(hf_clip):
    cfg = CLIPTextConfig.from_hf(hf_clip.config.to_dict())
    ours = _ours_from_torch(hf_clip, cfg)
    ids = np.random.default_rng(0).integers(0, 62, (3, 16))
    mask = np.ones((3, 16), np.int64)
    mask[1, 11:] = 0                       # right padding (a padded batch)
    with torch.no_grad():
        ref = hf_clip(torch.tensor(ids)).last_hidden_state.numpy()
        ref_m = hf_clip(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    e = rel(_apply(ours, jnp.asarray(ids), None), ref)
    e_m = rel(_apply(ours, jnp.asarray(ids), jnp.asarray(mask)), ref_m)
    print(f"\nclip_text parity rel err {e:.2e} (with padding mask {e_m:.2e})")
    assert e <= 1e-4 and e_m <= 1e-4
    # the parity is not vacuous: a different model is far away
    other = _ours_from_torch(_randomise(transformers.CLIPTextModel(hf_clip.config).eval(), 1), cfg)
    assert rel(_apply(other, jnp.asarray(ids), None), ref) > 0.1


def test_clip_text_importer_roundtrip(hf_clip, tmp_path):
    """save_pretrained -> load_clip_text (safetensors), and a full CLIPModel dir (text_model. prefix)."""
    d = tmp_path / "clip_text"
    hf_clip.save_pretrained(d)
    ours, cfg = load_clip_text(str(d))
    assert cfg.hidden_size == 32 and cfg.num_hidden_layers == 2
    ids = np.random.default_rng(1).integers(0, 62, (2, 16))
    with torch.no_grad():
        ref = hf_clip(torch.tensor(ids)).last_hidden_state.numpy()
    assert rel(_apply(ours, jnp.asarray(ids), None), ref) <= 1e-4
    # every parameter carries logical axis names
    for path, v in nnx.to_flat_state(nnx.state(ours, nnx.Param)):
        names = v.get_metadata().get("out_sharding")
        assert names is not None and len(names) == v.get_value().ndim, path

    # Arc2Face's encoder/ directory -> the identity encoder on the imported text model
    emb = jnp.asarray(np.random.default_rng(2).normal(size=(2, 24)), jnp.float32)
    arc = load_arc2face_encoder(str(d), ids[0], 3)
    want = Arc2FaceIdentityEncoder(ours, ids[0], 3)(emb)
    np.testing.assert_allclose(np.asarray(arc(emb)), np.asarray(want), rtol=1e-6, atol=1e-6)

    # a full CLIPModel checkpoint (vision tower, projections, logit_scale are skipped)
    full_cfg = transformers.CLIPConfig(
        text_config=HF_SMALL, vision_config=dict(hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1, num_attention_heads=4,
                                                 image_size=32, patch_size=16),
        projection_dim=16)
    torch.manual_seed(3)
    full = _randomise(transformers.CLIPModel(full_cfg).eval(), 3)
    full.save_pretrained(tmp_path / "clip_full")
    ours_full, _ = load_clip_text(str(tmp_path / "clip_full"))
    with torch.no_grad():
        ref_full = full.text_model(torch.tensor(ids)).last_hidden_state.numpy()
    assert rel(_apply(ours_full, jnp.asarray(ids), None), ref_full) <= 1e-4


def test_clip_text_import_errors(hf_clip, tmp_path):
    d = tmp_path / "bad"
    hf_clip.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = 3                       # config says 3 layers, weights have 2
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightImportError, match="no weight in the checkpoint") as e:
        load_clip_text(str(d))
    assert "\n" not in str(e.value)
    cfg["num_hidden_layers"], cfg["hidden_size"] = 2, 48
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightImportError, match="shape"):
        load_clip_text(str(d))
    with pytest.raises(WeightImportError, match="expected a Hugging Face"):
        load_clip_text(str(tmp_path / "missing"))
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(WeightImportError, match="config.json"):
        load_clip_text(str(tmp_path / "nocfg"))


# ----------------------------------------------------------------------------- Arc2Face

def _write_tiny_clip_tokenizer(path):
    """A real ``CLIPTokenizer`` whose BPE knows the words of the Arc2Face prompt."""
    words = ["photo", "of", "a", "id", "person"]
    vocab, merges = {}, []

    def add(tok):
        vocab.setdefault(tok, len(vocab))

    chars = sorted({c for w in words for c in w})
    for c in chars:
        add(c)
        add(c + "</w>")
    for w in words:
        pieces = list(w[:-1]) + [w[-1] + "</w>"]
        cur = pieces[0]
        for p in pieces[1:]:
            merges.append(f"{cur} {p}")
            cur = cur + p
            add(cur)
    add("<|startoftext|>")
    add("<|endoftext|>")
    path.mkdir()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return vocab


@pytest.fixture(scope="module")
def hf_clip768():
    """Arc2Face's geometry (hidden 768 = 512 ArcFace + 256 zero pad, 77 positions), 1 layer."""
    torch.manual_seed(2)
    cfg = transformers.CLIPTextConfig(vocab_size=64, hidden_size=768, intermediate_size=256,
                                      num_hidden_layers=1, num_attention_heads=12,
                                      max_position_embeddings=77, bos_token_id=62,
                                      eos_token_id=63, pad_token_id=63)
    return _randomise(transformers.CLIPTextModel(cfg).eval(), 2)


def _torch_arc2face(m, ids, id_index, emb):
    """Arc2Face's ``project_face_embs`` by hand on transformers' inputs_embeds path:
    token embeddings, the ``id`` token's embedding replaced by the normalised, zero-padded
    ArcFace vector, then embeddings(inputs_embeds=) -> causal encoder -> final LayerNorm."""
    with torch.no_grad():
        ids_t = torch.tensor(ids)[None].repeat(len(emb), 1)
        tok = m.text_model.embeddings.token_embedding(ids_t) if hasattr(m, "text_model") else \
            m.embeddings.token_embedding(ids_t)
        e = torch.tensor(emb)
        e = e / torch.norm(e, dim=1, keepdim=True)
        tok[ids_t == ids[id_index]] = torch.nn.functional.pad(e, (0, tok.shape[-1] - e.shape[-1]))
        h = m.embeddings(inputs_embeds=tok)
        n = h.shape[1]
        causal = torch.full((n, n), float("-inf")).triu(1)[None, None]
        h = m.encoder(inputs_embeds=h, attention_mask=causal).last_hidden_state
        return m.final_layer_norm(h).numpy()


def test_arc2face_substitution_matches_by_hand(hf_clip768, tmp_path):
    vocab = _write_tiny_clip_tokenizer(tmp_path / "tokenizer")
    tok = transformers.CLIPTokenizer(str(tmp_path / "tokenizer" / "vocab.json"),
                                     str(tmp_path / "tokenizer" / "merges.txt"))
    ids, id_index = arc2face_prompt_ids(tok)
    assert ids.shape == (77,) and ids[id_index] == vocab["id</w>"]
    assert list(ids[:7]) == [vocab[t] for t in ("<|startoftext|>", "photo</w>", "of</w>", "a</w>",
                                                "id</w>", "person</w>", "<|endoftext|>")]
    ids2, idx2 = arc2face_prompt_ids(str(tmp_path / "tokenizer"))   # from a directory too
    assert idx2 == id_index and (ids2 == ids).all()
    with pytest.raises(ValueError, match="not a single token"):
        arc2face_prompt_ids(tok, placeholder="zz")

    # the by-hand oracle reproduces the plain forward when nothing is substituted
    with torch.no_grad():
        plain = hf_clip768(torch.tensor(ids)[None]).last_hidden_state.numpy()
        tok_e = hf_clip768.embeddings.token_embedding(torch.tensor(ids)[None])
        h = hf_clip768.embeddings(inputs_embeds=tok_e)
        causal = torch.full((77, 77), float("-inf")).triu(1)[None, None]
        manual = hf_clip768.final_layer_norm(
            hf_clip768.encoder(inputs_embeds=h, attention_mask=causal).last_hidden_state).numpy()
    assert rel(manual, plain) < 1e-6

    cfg = CLIPTextConfig.from_hf(hf_clip768.config.to_dict())
    enc = Arc2FaceIdentityEncoder(_ours_from_torch(hf_clip768, cfg), ids, id_index)
    emb = np.random.default_rng(0).normal(size=(2, 512)).astype(np.float32) * 3.0  # unnormalised
    ref = _torch_arc2face(hf_clip768, ids, id_index, emb)
    out = nnx.jit(lambda e_, x: e_(x))(enc, jnp.asarray(emb))
    e = rel(out, ref)
    print(f"\narc2face substitution vs transformers by hand: rel err {e:.2e}")
    assert out.shape == (2, 77, 768) and e <= 1e-4
    # the embedding matters (changes the tokens after the id position, not before: causal)
    out2 = np.asarray(nnx.jit(lambda e_, x: e_(x))(enc, jnp.asarray(emb[::-1].copy())))
    np.testing.assert_allclose(out2[0, :id_index], np.asarray(out)[1, :id_index], atol=1e-5)
    assert np.abs(out2[0, id_index:] - np.asarray(out)[0, id_index:]).max() > 1e-2


def test_substitute_token_and_errors():
    tok = jnp.zeros((2, 5, 8))
    out = substitute_token(tok, 3, jnp.ones((2, 6)))
    np.testing.assert_array_equal(out[:, 3], [[1, 1, 1, 1, 1, 1, 0, 0]] * 2)
    assert float(jnp.abs(out[:, [0, 1, 2, 4]]).max()) == 0
    with pytest.raises(ValueError, match="does not fit"):
        substitute_token(tok, 3, jnp.ones((2, 9)))
    m = nnx.eval_shape(lambda: CLIPTextModel(CLIPTextConfig(**{k: HF_SMALL[k] for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "max_position_embeddings")}), rngs=InitRngs(0)))
    with pytest.raises(ValueError, match="outside"):
        Arc2FaceIdentityEncoder(m, [1, 2, 3], 5)
    with pytest.raises(ValueError, match="at most 16"):
        Arc2FaceIdentityEncoder(m, list(range(20)), 1)
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig(hidden_act="swish")


# ----------------------------------------------------------------------------- ONNX ArcFace

class _TorchArcFace(torch.nn.Module if torch else object):
    """An ArcFace-shaped toy: NCHW [N,3,112,112] in (x-127.5)/127.5 -> 512 (conv/BN/PReLU/FC)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, 2, 1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.act = torch.nn.PReLU(8)
        self.c2 = torch.nn.Conv2d(8, 16, 3, 2, 1)
        self.c3 = torch.nn.Conv2d(16, 16, 3, 2, 1)
        self.fc = torch.nn.Linear(16 * 14 * 14, 512)
        self.bn2 = torch.nn.BatchNorm1d(512)

    def forward(self, x):
        x = self.act(self.bn1(self.c1(x)))
        x = torch.relu(self.c3(torch.relu(self.c2(x))))
        return self.bn2(self.fc(x.flatten(1)))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    torch.manual_seed(0)
    net = _TorchArcFace()
    with torch.no_grad():                        # non-trivial BN statistics
        for bn in (net.bn1, net.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    net.eval()
    path = str(tmp_path_factory.mktemp("onnx") / "arcface_toy.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3, 112, 112), path, input_names=["input.1"],
                          output_names=["embedding"], dynamic_axes={"input.1": {0: "N"}},
                          dynamo=False)
    return net, path


def _torch_embed(net, crops_uint8):
    x = torch.tensor(crops_uint8.astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        y = net((x - 127.5) / 127.5).numpy()
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def _smooth_texture(rng, size):
    """A smooth random RGB image (low-frequency: bilinear resampling barely changes it)."""
    import cv2  # noqa: PLC0415 (the media extra)
    small = rng.uniform(0, 255, (size // 8, size // 8, 3)).astype(np.float32)
    return np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def test_onnx_runner_matches_torch(onnx_model):
    net, path = onnx_model
    enc = OnnxArcFace(path)
    assert isinstance(enc, IdentityEncoder)
    assert (enc.input_size, enc.embed_dim, enc.normalize) == (112, 512, "arcface")
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    out = enc.embed(crops, aligned=True)
    ref = _torch_embed(net, crops)
    err = rel(out, ref)
    print(f"\nonnx arcface runner vs torch: rel err {err:.2e}")
    assert out.shape == (3, 512) and err < 1e-5
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # batching does not change results
    enc_b = OnnxArcFace(path, batch_size=2)
    np.testing.assert_allclose(enc_b.embed(crops, aligned=True), out, atol=1e-5)
    # normalisation folded into the graph: raw pixels are fed
    raw = OnnxArcFace(path, normalize="none")
    x = torch.tensor(crops.astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        y = net(x).numpy()
    np.testing.assert_allclose(raw.embed(crops, aligned=True),
                               y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-5)


def test_onnx_runner_with_alignment(onnx_model):
    """A face-like crop warped into a larger image by a known similarity: the runner, given the
    5 keypoints of the warped image, aligns it back and matches torch on the original crop."""
    import cv2  # noqa: PLC0415 (the media extra)
    net, path = onnx_model
    enc = OnnxArcFace(path)
    rng = np.random.default_rng(1)
    crop = _smooth_texture(rng, 112)
    ang, s, t = math.radians(17.0), 1.6, np.array([40.0, 25.0])
    m = np.array([[s * math.cos(ang), -s * math.sin(ang), t[0]],
                  [s * math.sin(ang), s * math.cos(ang), t[1]]])
    image = cv2.warpAffine(crop, m, (260, 240), flags=cv2.INTER_CUBIC, borderValue=0)
    kps = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]                # template -> image coordinates
    # the similarity estimate inverts the warp exactly
    np.testing.assert_allclose(similarity_transform(kps, ARCFACE_TEMPLATE),
                               cv2.invertAffineTransform(m), atol=1e-4)
    back = align_face(image, kps)
    inner = (slice(20, 92), slice(20, 92))                      # away from the rotated border
    assert np.abs(back[inner].astype(float) - crop[inner].astype(float)).mean() < 3.0
    out = enc.embed(image[None], kps[None])
    ref = _torch_embed(net, crop[None])
    cos = float((out * ref).sum())
    print(f"aligned-from-keypoints embedding vs torch on the true crop: cos {cos:.5f}")
    assert cos > 0.99
    # exactly torch's output on our aligned crop
    np.testing.assert_allclose(out, _torch_embed(net, back[None]), atol=1e-5)
    with pytest.raises(ValueError, match=r"keypoints: expected \[B, 5, 2\]"):
        enc.embed(image[None], kps[None, :4])


def test_bad_inputs_give_one_line_errors(onnx_model, tmp_path):
    _, path = onnx_model
    enc = OnnxArcFace(path)
    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not a readable image") as e:
        load_image(str(txt))
    assert str(txt) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImageReadError, match="no such image file"):
        load_image(str(tmp_path / "missing.jpg"))
    # a real image without a face, on the file path (Haar fallback)
    import cv2  # noqa: PLC0415 (the media extra)
    flat = tmp_path / "wall.png"
    cv2.imwrite(str(flat), _smooth_texture(np.random.default_rng(0), 160))
    with pytest.raises(FaceNotFoundError, match="no face detected") as e:
        enc.embed_files([str(flat)])
    assert str(flat) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImageReadError, match="not a readable image"):
        enc.embed_files([str(txt)])
    # not an ONNX model / not a file
    with pytest.raises(ValueError, match="not a loadable ONNX model") as e:
        OnnxArcFace(str(txt))
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="no such ONNX model"):
        OnnxArcFace(str(tmp_path / "none.onnx"))
    # wrong image arrays
    with pytest.raises(ValueError, match="uint8"):
        face_crops(np.zeros((1, 112, 112, 3), np.float32), aligned=True)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        face_crops(np.zeros((1, 112, 112), np.uint8), aligned=True)
    with pytest.raises(ValueError, match="112x112"):
        enc.embed(np.zeros((1, 100, 100, 3), np.uint8), aligned=True)


# ----------------------------------------------------------------------------- built-in encoder

MICRO = BuiltinIdentityConfig(image_size=16, widths=(8, 16), norm_groups=4, embed_dim=32)


def test_builtin_presets_differ_and_shapes():
    cond, ev = BuiltinIdentityConfig.for_conditioning(), BuiltinIdentityConfig.for_evaluation()
    assert cond != ev and (cond.widths, cond.pool) != (ev.widths, ev.pool)
    for c in (cond, ev):
        m = nnx.eval_shape(lambda c=c: BuiltinIdentityEncoder(c, rngs=InitRngs(0)))
        out = jax.eval_shape(lambda st, x: nnx.merge(nnx.graphdef(m), st)(x), nnx.state(m),
                             jax.ShapeDtypeStruct((3, 64, 64, 3), jnp.float32))
        assert out.shape == (3, 512)
    assert BuiltinIdentityConfig.from_dict({"widths": [8, 16], "pool": "avg"}).widths == (8, 16)
    with pytest.raises(ValueError, match="unknown field"):
        BuiltinIdentityConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="pool"):
        BuiltinIdentityConfig(pool="max")


def test_builtin_encoder_embeds_unit_vectors():
    enc = nnx.jit(lambda r: BuiltinIdentityEncoder(MICRO, rngs=r))(nnx.Rngs(0))
    assert isinstance(enc, IdentityEncoder)
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    e = enc.embed(u8, batch_size=2)                      # uint8, resized 24 -> 16, batched
    assert e.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    f = nnx.jit(lambda m, x: m(x))(enc, jnp.asarray(u8, jnp.float32) / 127.5 - 1.0)
    np.testing.assert_allclose(f, e, atol=1e-5)          # uint8 == the same pixels in [-1, 1]
    with pytest.raises(ValueError, match="uint8"):
        enc.embed(u8.astype(np.float32))


def test_arcface_margin_logits():
    head = nnx.eval_shape(lambda: ArcFaceHead(4, 3, scale=10.0, margin=0.5, rngs=InitRngs(0)))
    head.weight.set_value(jnp.asarray(np.eye(4, 3, dtype=np.float32)))
    th = np.array([0.3, 1.2, 2.9])                       # angle to the true class 0
    emb = np.stack([np.cos(th), np.sin(th), np.zeros(3), np.zeros(3)], 1).astype(np.float32)
    lg = np.asarray(head.logits(jnp.asarray(emb), jnp.zeros(3, jnp.int32)))
    m = 0.5
    want0 = np.where(th < math.pi - m, np.cos(th + m), np.cos(th) - math.sin(math.pi - m) * m)
    np.testing.assert_allclose(lg[:, 0], 10 * want0, atol=1e-5)
    np.testing.assert_allclose(lg[:, 1], 10 * np.sin(th), atol=1e-5)   # other classes: plain cos
    assert (np.diff(lg[:, 0]) < 0).all()                # monotonic in theta (the fallback branch)


def test_builtin_identity_training_separates_toy_classes():
    """4 'identities' = 4 colour blobs at random positions/brightness; a few steps of the ArcFace
    loss separate held-out samples (rank-1 and TAR on unseen images)."""
    rng = np.random.default_rng(0)
    cols = rng.uniform(-0.8, 0.8, (4, 3)).astype(np.float32)

    def sample(n):
        lab = rng.integers(0, 4, n)
        x = np.full((n, 16, 16, 3), -0.5, np.float32) + rng.normal(0, 0.1, (n, 16, 16, 3)).astype(np.float32)
        for i in range(n):
            y0, x0 = rng.integers(0, 8, 2)
            x[i, y0:y0 + 8, x0:x0 + 8] = cols[lab[i]] * rng.uniform(0.8, 1.2)
        return jnp.asarray(x), jnp.asarray(lab, jnp.int32)

    model = nnx.jit(lambda r: ArcFaceModel(MICRO, 4, rngs=r))(nnx.Rngs(1))
    opt = make_optimizer(model, learning_rate=3e-3)
    xt, yt = sample(64)
    before = verification_metrics(np.asarray(nnx.jit(lambda m, x: m.encoder(x))(model, xt)), yt)
    losses = []
    for _ in range(30):
        x, y = sample(32)
        losses.append(float(train_step(model, opt, x, y)["loss"]))
    after = verification_metrics(np.asarray(nnx.jit(lambda m, x: m.encoder(x))(model, xt)), yt)
    print(f"\ntoy ArcFace training: loss {losses[0]:.2f} -> {np.mean(losses[-5:]):.2f}, rank-1 "
          f"{before['rank1']:.2f} -> {after['rank1']:.2f}, TAR@FAR=1e-2 "
          f"{before['tar@far=0.01']:.2f} -> {after['tar@far=0.01']:.2f}")
    assert np.mean(losses[-5:]) < 0.7 * losses[0]
    assert after["rank1"] > 0.9 and after["tar@far=0.01"] > 0.8
    loss, aux = nnx.jit(arcface_loss)(model, xt, yt)
    assert float(aux["accuracy"]) > 0.9


# ----------------------------------------------------------------------------- metrics

def test_tar_at_far_brute_force():
    rng = np.random.default_rng(0)
    gen, imp = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 5000)
    for far in (1e-1, 1e-2, 1e-3):
        tar, t = tar_at_far(gen, imp, far)
        assert np.mean(imp > t) <= far                  # the FAR holds ...
        cands = np.sort(imp)                            # ... at the lowest such threshold
        lower = cands[cands < t]
        if len(lower):
            assert np.mean(imp > lower[-1]) > far
        assert tar == pytest.approx(np.mean(gen > t))


def test_verification_metrics_extremes():
    labels = np.repeat(np.arange(10), 5)
    perfect = np.eye(16)[labels] + 0.01 * np.random.default_rng(0).normal(size=(50, 16))
    m = verification_metrics(perfect, labels)
    assert m["rank1"] == 1.0 and m["tar@far=0.01"] == 1.0
    assert m["num_genuine"] == 10 * 10 and m["num_impostor"] == 50 * 49 // 2 - 100
    assert m["tar@far=0.001"] is not None             # 1125 impostor pairs resolve 1e-3
    rnd = verification_metrics(np.random.default_rng(1).normal(size=(400, 64)), np.repeat(np.arange(40), 10))
    assert rnd["tar@far=0.01"] < 0.05 and rnd["rank1"] < 0.1
    few = verification_metrics(perfect[:10], labels[:10])  # 25 impostor pairs cannot resolve 1e-2
    assert few["tar@far=0.01"] is None
    with pytest.raises(ValueError, match="emb"):
        verification_metrics(perfect, labels[:3])


def test_verification_metrics_groups_exclude_same_clip_pairs():
    """Frames of one clip are near-duplicates: with ``groups`` they neither count as genuine
    pairs nor as rank-1 neighbours, so an embedding that only recognises the clip scores chance."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 6)                 # 8 identities x (3 clips x 2 frames)
    groups = np.repeat(np.arange(24), 2)
    clip_emb = rng.normal(size=(24, 32))
    emb = clip_emb[groups] + 1e-3 * rng.normal(size=(48, 32))   # identifies the clip, not the person
    plain = verification_metrics(emb, labels)
    grouped = verification_metrics(emb, labels, groups=groups)
    assert plain["rank1"] == 1.0
    assert grouped["rank1"] < 0.5 and grouped["rank1_chance"] == pytest.approx(4 / 46)
    assert grouped["num_genuine"] == 8 * (6 * 5 // 2 - 3)      # cross-clip pairs only
    assert grouped["tar@far=0.01"] < 0.3
    with pytest.raises(ValueError, match="groups"):
        verification_metrics(emb, labels, groups=groups[:5])
