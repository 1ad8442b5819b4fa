"""The field's standard metrics (evaluation/standard): FID / FVD / LSE / CSIM against independent
computations, SyncNet against syncnet_python's PyTorch class, and the evaluate_videos CLI.

Every network is a small random-weight model made here (ONNX graphs through onnx.helper, the
SyncNet oracle from tests/reference), so the tests need no downloads; each compares our numbers
with a computation that does not share our code (scipy's sqrtm, onnxruntime run directly,
python_speech_features' own functions, torch).
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
import scipy.linalg
import soundfile
from flax import nnx

from launch import evaluate_videos
from starcaster_jax.evaluation.standard import frechet, lse
from starcaster_jax.evaluation.standard.directories import evaluate_directories
from starcaster_jax.evaluation.standard.metrics import StandardMetrics
from starcaster_jax.evaluation.standard.synthetic import SyntheticStandard, markdown_lines
from starcaster_jax.media.video import read_video, write_mp4
from tests.reference import python_speech_features_mfcc as psf

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


# ----------------------------------------------------------------------------- Fréchet

def _fid_sqrtm(a, b):
    """pytorch-fid's calculate_frechet_distance, written out with scipy.linalg.sqrtm."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) + 0.7
    ours, ref = frechet.frechet_from_features(a, b), _fid_sqrtm(a, b)
    print(f"frechet vs sqrtm rel err {abs(ours - ref) / ref:.2e} (d = {ref:.3f})")
    assert ref > 1.0 and abs(ours - ref) <= 1e-8 * ref
    assert frechet.frechet_from_features(a, a) < 1e-8                  # same set: 0
    shift = np.arange(12) * 0.1                                       # a pure mean shift: ||shift||^2
    assert frechet.frechet_from_features(a, a + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-9)
    with pytest.raises(ValueError, match="N >= 2"):
        frechet.frechet_from_features(a[:1], b)


# ----------------------------------------------------------------------------- SyncNet

@pytest.fixture(scope="module")
def torch_syncnet(tmp_path_factory):
    from tests.reference.syncnet_model import S  # noqa: PLC0415 (torch oracle: only these tests)
    torch.manual_seed(0)
    net = S()
    with torch.no_grad():                  # BatchNorm statistics far from identity
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    path = str(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model")
    torch.save(net.state_dict(), path)      # what syncnet_python's download_model.sh gives
    return net, path


def test_syncnet_parity_with_the_reference(torch_syncnet):
    from starcaster_jax.evaluation.standard.syncnet import load_syncnet  # noqa: PLC0415 (reads a torch pickle)
    net, path = torch_syncnet
    model = load_syncnet(path)
    rng = np.random.default_rng(0)
    lips = rng.uniform(0, 255, (2, 3, 5, 224, 224)).astype(np.float32)   # torch NCTHW, BGR 0..255
    mfcc = rng.normal(0, 8, (2, 1, 13, 20)).astype(np.float32)          # torch NCHW
    with torch.no_grad():
        ref_l = net.forward_lip(torch.tensor(lips)).numpy()
        ref_a = net.forward_aud(torch.tensor(mfcc)).numpy()
    out_l = np.asarray(model.lips(np.transpose(lips, (0, 2, 3, 4, 1))))
    out_a = np.asarray(model.audio(np.transpose(mfcc, (0, 2, 3, 1))))
    for name, ours, ref in (("lip", out_l, ref_l), ("audio", out_a, ref_a)):
        err = float(np.abs(ours - ref).max() / np.abs(ref).max())
        print(f"syncnet {name} tower parity: rel err {err:.2e} (f32, random weights)")
        assert ours.shape == ref.shape == (2, 1024) and err <= 1e-4


def test_syncnet_importer_rejects_a_mismatching_state_dict(torch_syncnet):
    from starcaster_jax.evaluation.standard import syncnet as S  # noqa: PLC0415 (reads a torch pickle)
    from starcaster_jax.weights.common import WeightImportError  # noqa: PLC0415 (same)
    sd = {k: v.numpy() for k, v in torch_syncnet[0].state_dict().items()}
    model = nnx.eval_shape(lambda: S.SyncNet(rngs=nnx.Rngs(0)))
    missing = {k: v for k, v in sd.items() if k != "netcnnlip.5.running_var"}
    with pytest.raises(WeightImportError, match=r"lip\.bns\.1\.var"):
        S.import_state_dict(model, missing)
    wrong = dict(sd, **{"netfcaud.0.weight": np.zeros((512, 256), np.float32)})
    with pytest.raises(WeightImportError, match="netfcaud.0.weight"):
        S.import_state_dict(model, wrong)
    with pytest.raises(WeightImportError, match="not a syncnet_python"):
        S.import_state_dict(model, dict(sd, **{"fc.weight": np.zeros(3, np.float32)}))


# ----------------------------------------------------------------------------- LSE

def test_mfcc_matches_python_speech_features():
    rng = np.random.default_rng(1)
    for n in (399, 401, 16000, 16337):
        pcm = np.round(rng.normal(0, 3000, n)).clip(-32768, 32767).astype(np.int16)
        np.testing.assert_allclose(lse.mfcc(pcm, 16000), psf.mfcc(pcm, 16000), rtol=0, atol=1e-9)


@pytest.mark.parametrize("k", [0, 4, -9, 15])
def test_offset_search_recovers_a_shift(k):
    """Audio embeddings = lip embeddings k frames ahead (+ noise): offset k, LSE-D ~ the noise,
    a clear LSE-C; unrelated embeddings give almost no confidence."""
    rng = np.random.default_rng(2)
    e = rng.normal(size=(160, 32))
    lip = e[20:140]
    aud = e[20 + k:140 + k] + rng.normal(0, 0.05, (120, 32))        # aud[t] = lip[t + k]: audio leads
    s = lse.sync_scores(lip, aud)
    assert s["offset"] == k and s["windows"] == 120
    assert s["lse_d"] < 0.5 * np.sqrt(2 * 32) and s["lse_c"] > 2.0
    assert lse.sync_scores(lip, rng.normal(size=(120, 32)))["lse_c"] < 0.5


class ToySync(nnx.Module):
    """A SyncNet stand-in that can be right: lips = the 5 frames' brightness, audio = the 5 video
    frames' mean log energy (MFCC c0), each z-scored over its window, so in-sync windows match."""

    @staticmethod
    def _z(v):
        return (v - v.mean(-1, keepdims=True)) / (v.std(-1, keepdims=True) + 1e-6)

    def lips(self, x):                                   # [N, 5, 224, 224, 3]
        return self._z(x.mean(axis=(2, 3, 4)))

    def audio(self, m):                                  # [N, 13, 20, 1]
        return self._z(m[:, 0, :, 0].reshape(m.shape[0], 5, 4).mean(-1))


def _talking(gains_db, size=16, seed=0):
    """Frames whose brightness and audio whose loudness follow the same per-frame gains."""
    rng = np.random.default_rng(seed)
    g = np.asarray(gains_db)
    frames = np.broadcast_to((30 + 6 * (g + 30))[:, None, None, None], (len(g), size, size, 3)).astype(np.uint8)
    audio = 0.3 * rng.normal(size=len(g) * 640) * np.repeat(10 ** (g / 20), 640)
    return np.ascontiguousarray(frames), np.clip(audio, -1, 1).astype(np.float32)


def test_lse_through_windows_and_mfcc_recovers_the_offset(tmp_path):
    """Real MFCCs, real windowing, the directory pipeline: generated videos scored with --audio
    shifted by k frames report offset k; the real videos' own (in-sync) tracks report 0."""
    rng = np.random.default_rng(3)
    gdir, rdir, adir = (str(tmp_path / d) for d in ("gen", "real", "audio"))
    shifts = {"a": 3, "b": -5}
    for name, k in shifts.items():
        gains = rng.uniform(-30, 0, 80)
        frames, _ = _talking(gains[10:70])
        _, real_audio = _talking(gains[10:70], seed=1)
        _, drive = _talking(gains[10 + k:70 + k], seed=2)             # drive[t] = sound of frame t + k
        write_mp4(os.path.join(gdir, f"{name}.mp4"), frames)
        write_mp4(os.path.join(rdir, f"{name}.mp4"), frames, audio=real_audio)
        os.makedirs(adir, exist_ok=True)
        soundfile.write(os.path.join(adir, f"{name}.wav"), drive, 16000)
    metrics = StandardMetrics(lse=lse.LSEScorer(ToySync(), batch_size=16))
    res = evaluate_directories(gdir, rdir, metrics, audio=adir)
    offsets = {r["video"]: r["offset"] for r in res["lse"]["per_video"]}
    assert offsets == shifts
    assert [r["offset"] for r in res["lse"]["per_video_real"]] == [0, 0]
    assert res["lse"]["lse_c_real"] > 1.0 and res["skipped"]["count"] == 0


# ----------------------------------------------------------------------------- ONNX metrics

def _onnx(path, in_shape, weights, nodes, out_dim):
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415 (optional ONNX dependency)
    inits = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
    graph = helper.make_graph([helper.make_node(*n[:3], **(n[3] if len(n) > 3 else {})) for n in nodes], "toy",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_dim])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    d, rng = tmp_path_factory.mktemp("onnx"), np.random.default_rng(4)
    pool = [("Tanh", ["c"], ["r"]), ("GlobalAveragePool", ["r"], ["p"]), ("Flatten", ["p"], ["y"])]
    inception = _onnx(d / "inception.onnx", ["N", 3, 32, 32], {"w": rng.normal(0, 0.3, (8, 3, 5, 5))},
                      [("Conv", ["x", "w"], ["c"], {"strides": [3, 3]})] + pool, 8)
    i3d = _onnx(d / "i3d.onnx", ["N", 3, 8, 32, 32], {"w": rng.normal(0, 0.3, (6, 3, 3, 5, 5))},
                [("Conv", ["x", "w"], ["c"], {"strides": [2, 3, 3]})] + pool, 6)
    arcface = _onnx(d / "arcface.onnx", ["N", 3, 112, 112],
                    {"w": rng.normal(0, 0.1, (16, 3, 8, 8)), "g": rng.normal(0, 0.1, (16 * 49, 32))},
                    [("Conv", ["x", "w"], ["c"], {"strides": [16, 16]}), ("Relu", ["c"], ["r"]),
                     ("Flatten", ["r"], ["f"]), ("MatMul", ["f", "g"], ["y"])], 32)
    return {"inception": inception, "i3d": i3d, "arcface": arcface}


def _moving_texture(rng, n, size=48):
    small = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
    big = cv2.resize(small, (size * 2, size * 2), interpolation=cv2.INTER_CUBIC)
    return np.stack([np.clip(big[t:t + size, t // 2:t // 2 + size], 0, 255) for t in range(n)]).astype(np.uint8)


@pytest.fixture(scope="module")
def video_dirs(tmp_path_factory):
    rng, d = np.random.default_rng(5), tmp_path_factory.mktemp("videos")
    for side, n in (("gen", 24), ("real", 26)):
        for i in range(4):
            write_mp4(str(d / side / f"clip{i}.mp4"), _moving_texture(rng, n))
    good = write_mp4(str(d / "real" / "broken.mp4"), _moving_texture(rng, 24))
    data = open(good, "rb").read()                 # the generated one: its frame data overwritten
    (d / "gen" / "broken.mp4").write_bytes(data[:3000] + rng.bytes(len(data) // 3) + data[3000 + len(data) // 3:])
    return str(d / "gen"), str(d / "real")


def _ort(path, x):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0].astype(np.float64)


def _resize(frames, s):
    return np.stack([cv2.resize(f, (s, s), interpolation=cv2.INTER_LINEAR) for f in frames])


def test_fid_fvd_csim_equal_onnxruntime_run_directly(onnx_models, video_dirs, tmp_path, capsys):
    gdir, rdir = video_dirs
    out = str(tmp_path / "report.json")
    assert evaluate_videos.main(["--generated", gdir, "--real", rdir, "--inception", onnx_models["inception"],
                                 "--i3d", onnx_models["i3d"], "--arcface", onnx_models["arcface"],
                                 "--csim_crop", "whole", "--out", out, "--quiet"]) == 0
    assert "| FID |" in capsys.readouterr().out
    rep = json.load(open(out))
    # the same numbers, independently: frames decoded, resized, scaled and run through onnxruntime
    names = [f"clip{i}" for i in range(4)]
    vids = {s: [read_video(os.path.join(d, f"{n}.mp4"))[0] for n in names] for s, d in (("g", gdir), ("r", rdir))}
    feats = {s: np.concatenate([_ort(onnx_models["inception"], _resize(v, 32).transpose(0, 3, 1, 2) / 255.0)
                                for v in vids[s]]) for s in vids}
    def clip_feats(v):                     # non-overlapping 8-frame clips from frame 0, [-1, 1], NCTHW
        c = np.stack([_resize(v[t:t + 8], 32) for t in range(0, len(v) - 7, 8)])
        return _ort(onnx_models["i3d"], c.transpose(0, 4, 1, 2, 3) / 127.5 - 1.0)
    clips = {s: np.concatenate([clip_feats(v) for v in vids[s]]) for s in vids}
    assert rep["fid"]["generated_samples"] == 4 * 24 and rep["fid"]["real_samples"] == 4 * 26
    assert rep["fvd"]["generated_samples"] == rep["fvd"]["real_samples"] == 4 * 3
    assert rep["fid"]["value"] == pytest.approx(_fid_sqrtm(feats["g"], feats["r"]), rel=1e-6)
    assert rep["fvd"]["value"] == pytest.approx(_fid_sqrtm(clips["g"], clips["r"]), rel=1e-6)

    def emb(frames):                       # whole frame -> 112, insightface's (x - 127.5) / 127.5
        x = (_resize(frames, 112).astype(np.float32) - 127.5) / 127.5
        e = _ort(onnx_models["arcface"], x.transpose(0, 3, 1, 2))
        return e / np.linalg.norm(e, axis=1, keepdims=True)
    csim = np.mean([np.mean(emb(g) @ emb(r[:1])[0]) for g, r in zip(vids["g"], vids["r"])])
    assert rep["csim"]["value"] == pytest.approx(csim, abs=1e-5)
    # the corrupt video is skipped, pair and all, with its reason counted; protocols are recorded
    assert rep["scored_pairs"] == 4 and rep["skipped"]["count"] == 1
    assert list(rep["skipped"]["by_reason"]) == ["all: unreadable generated video"]
    assert rep["fvd"]["protocol"]["clip_frames"] == 8 and rep["fid"]["protocol"]["input_size"] == [32, 32]
    assert rep["lse"]["computed"] is False and "--syncnet" in rep["lse"]["why"]


def _fails(argv, capsys, match):
    with pytest.raises(SystemExit) as e:
        evaluate_videos.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and match in err[0], err


def test_cli_bad_inputs_are_one_line(onnx_models, video_dirs, tmp_path, capsys):
    gdir, rdir = video_dirs
    inc = ["--inception", onnx_models["inception"]]
    _fails(["--generated", str(tmp_path / "nope"), "--real", rdir] + inc, capsys, "no such directory")
    _fails(["--generated", gdir, "--real", rdir], capsys, "no metric to compute")
    _fails(["--generated", gdir, "--real", rdir, "--syncnet", str(tmp_path / "x.model")], capsys, "no such file")
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    os.link(os.path.join(rdir, "clip0.mp4"), fewer / "clip0.mp4")
    _fails(["--generated", gdir, "--real", str(fewer)] + inc, capsys, "not the same names")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "clip0.mp4").write_bytes(b"not a video")
    _fails(["--generated", str(junk), "--real", str(fewer)] + inc, capsys, "could be read")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    _fails(["--generated", gdir, "--real", rdir, "--inception", str(bad)], capsys, "not a loadable ONNX")
    _fails(["--generated", gdir, "--real", rdir, "--i3d", onnx_models["inception"]], capsys, "5-d clip input")


def test_synthetic_evaluation_gets_the_standard_columns(onnx_models):
    """``SyntheticStandard`` on a mode's scored frames: ground truth scores FID 0 and CSIM 1, the
    markdown table has the rows that were computed."""
    from starcaster_jax.evaluation.modes import Scored  # noqa: PLC0415 (imports JAX models: this test only)
    rng = np.random.default_rng(6)
    std = SyntheticStandard.from_paths(inception=onnx_models["inception"], arcface=onnx_models["arcface"])
    std.base.csim.crop = "whole"          # the corpus's frames are face crops
    for i in range(3):
        truth = _moving_texture(rng, 10, 32)
        frames = {"ground_truth": truth, "copy_reference": np.repeat(truth[:1], 10, 0),
                  "model": _moving_texture(rng, 10, 32)}
        std.add("animate", Scored(systems={}, frames=frames, truth=truth), {"key": f"r{i}", "audio": None})
    res = std.result("animate")
    assert res["ground_truth"]["fid"]["value"] < 1e-6 < res["model"]["fid"]["value"]
    assert res["copy_reference"]["csim"]["value"] == pytest.approx(1.0, abs=1e-5)   # its frames are the reference
    assert res["model"]["csim"]["value"] < res["copy_reference"]["csim"]["value"]
    table = "\n".join(markdown_lines(res))
    assert "| FID |" in table and "| CSIM |" in table and "FVD" not in table
    assert SyntheticStandard.from_paths(inception="", arcface="") is None
