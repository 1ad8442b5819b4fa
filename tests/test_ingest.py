"""Real-data ingestion: test videos and captures made here -> records, skips and the report.

Faces: the videos show the cartoon face of ``ingest/testdata.py`` (the built-in renderer's
heads are found by OpenCV's Haar cascades only now and then; see there). Each video codes its
source frame index in the background grey level (10 + 3 j) and carries a 440 Hz burst at
known times, so frame resampling and audio/video sync are checked from the ingested records
themselves.

One ingestion run over a folder with every kind of bad input (module fixture) serves most
tests; each test checks its own file's status and reason in the report.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from configs.common import base_config
from data_pipelines import schema
from data_pipelines.ingest import arcface, common, faces, multiview, testdata, videos
from data_pipelines.ingest.testdata import MOUTH_RGB, draw_face
from data_pipelines.pipeline import make_train_iterator
from data_pipelines.sources import make_source

RES, CLIP = 64, 10  # ingestion resolution and clip length used by the tests
W, H = 160, 128  # source video size
BURST = (0.5, 0.7)  # seconds of the 440 Hz tone
ONE_PROCESS = ("--direct_running_mode", "in_memory")  # Beam's single-process DirectRunner
DETECT = ("--detect_side", "144")  # detect on shrunk frames, as for HD sources


def grey_of(j: int) -> int:
    return 10 + 3 * j


def face_frame(j: int, faces_at=((W / 2, H / 2),), size=(W, H), s: float = 64) -> np.ndarray:
    img = np.full((size[1], size[0], 3), grey_of(j), np.uint8)
    for cx, cy in faces_at:
        draw_face(img, cx, cy, s, mouth=0.5 + 0.5 * np.sin(j / 3))
    return img


def tone(n: int, sr: int, channels: int) -> np.ndarray:
    """[channels, n] float32: silence with a 440 Hz burst during BURST."""
    t = np.arange(n) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t) * ((t >= BURST[0]) & (t < BURST[1]))
    return np.ascontiguousarray(np.repeat(x[None], channels, 0), np.float32)


def write_video(path, n: int, fps: float = 30, frame_fn=face_frame, audio: bool = True,
                video: bool = True, sr: int = 44100, channels: int = 2, **kw):
    """The test videos: ``frame_fn`` frames, the BURST tone (``channels``, ``sr``)."""
    testdata.write_video(path, frame_fn if video else None, n, fps, sr=sr, channels=channels,
                         audio_fn=(lambda m, r: tone(m, r, channels)) if audio else None, **kw)


def leaving_frame(j: int) -> np.ndarray:
    """The face stays centred for 27 frames, then slides out to the right."""
    return face_frame(j, ((W / 2 + max(0, j - 27) * 9, H / 2),))


def rotated_frame(j: int) -> np.ndarray:
    """Stored turned clockwise; a display matrix of +90 degrees (counter-clockwise) rights it."""
    return np.ascontiguousarray(np.rot90(face_frame(j), -1))


# name -> (how to make it, expected status, expected reason)
VIDEO_CASES = {
    "alice/good.mp4": (lambda p: write_video(p, 45), "ok", None),
    "bob/good.mkv": (lambda p: write_video(p, 40, fps=25, channels=1, sr=48000), "ok", None),
    "carol_rotated.mp4": (lambda p: write_video(p, 45, frame_fn=rotated_frame, rotation=90),
                          "ok", None),
    "empty.mp4": (lambda p: open(p, "wb").close(), "skipped", "empty_file"),
    "garbage.mp4": (lambda p: open(p, "wb").write(np.random.default_rng(0).bytes(5000)),
                    "skipped", "unreadable"),
    "truncated.mov": (None, "skipped", "unreadable"),  # made from alice/good.mp4 below
    "audio_only.mp4": (lambda p: write_video(p, 45, video=False), "skipped", "no_video_stream"),
    "silent.mp4": (lambda p: write_video(p, 45, audio=False), "skipped", "no_audio_stream"),
    "short.mp4": (lambda p: write_video(p, 8), "skipped", "too_short"),
    "vfr.mp4": (lambda p: write_video(p, 40, pts_ms=np.r_[np.arange(20) * 33,
                                                          660 + np.arange(20) * 67]),
                "skipped", "variable_frame_rate"),
    "slow_10fps.mp4": (lambda p: write_video(p, 20, fps=10), "skipped", "odd_frame_rate"),
    "noface.mp4": (lambda p: write_video(p, 45, frame_fn=lambda j: np.full((H, W, 3), grey_of(j),
                                                                           np.uint8)),
                   "skipped", "no_face"),
    "two_faces.mp4": (lambda p: write_video(p, 45, frame_fn=lambda j: face_frame(
        j, ((64, H / 2), (192, H / 2)), size=(256, H), s=56)), "skipped", "several_faces"),
    "leaving.mp4": (lambda p: write_video(p, 45, frame_fn=leaving_frame), "skipped",
                    "face_left_frame"),
    "vid\u00e9o.mp4": (lambda p: write_video(p, 45), "skipped", "non_ascii_name"),
    "photo.mp4": (lambda p: cv2.imwrite(str(p) + ".png", face_frame(0)) and
                  os.replace(str(p) + ".png", p), "skipped", "unreadable"),  # a PNG named .mp4
}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    src = tmp_path_factory.mktemp("videos")
    for name, (make, _, _) in VIDEO_CASES.items():
        if make is not None:
            os.makedirs(os.path.dirname(src / name), exist_ok=True)
            make(src / name)
    good = (src / "alice/good.mp4").read_bytes()
    (src / "truncated.mov").write_bytes(good[: len(good) // 2])
    (src / "notes.txt").write_text("not a video: ignored")
    out = tmp_path_factory.mktemp("out")
    rc = videos.main(["--src", str(src), "--out", str(out), "--clip_frames", str(CLIP),
                      "--resolution", str(RES), "--quiet", *DETECT, *ONE_PROCESS])
    report = json.load(open(out / "ingest_report.json"))
    by_path = {e["path"]: e for e in report["inputs"]}
    return {"src": src, "out": out, "rc": rc, "report": report, "by_path": by_path,
            "records": read_records(out, "video")}


def read_records(out, stream):
    src = make_source(str(out / f"{stream}-*.array_record"), stream)
    return {r["key"]: r for r in (src[i] for i in range(len(src)))}


def records_of(ing, rel):
    recs = [r for k, r in sorted(ing["records"].items()) if r["source"] == f"ingest:{rel}"]
    assert recs, f"no records from {rel}"
    return recs


def test_run_finishes_and_lists_every_input(ingested):
    rep = ingested["report"]
    assert ingested["rc"] == 0
    assert sorted(ingested["by_path"]) == sorted(VIDEO_CASES)  # notes.txt is not a video
    c = rep["counts"]
    assert c["ok"] == 3 and c["skipped"] == len(VIDEO_CASES) - 3 and c["partial"] == 0
    assert c["records"] == len(ingested["records"]) == sum(e["records"] for e in rep["inputs"])
    want = {}
    for _, _, reason in VIDEO_CASES.values():
        if reason:
            want[reason] = want.get(reason, 0) + 1
    assert c["reasons"] == want
    assert set(rep["reasons"]) == set(common.REASONS)
    # one or more shards per Beam bundle, renamed in sequence; nothing else left in --out
    assert rep["shards"] == [f"video-train-{i:05d}.array_record" for i in range(len(rep["shards"]))]
    assert sorted(os.listdir(ingested["out"])) == sorted(rep["shards"] + ["ingest_report.json"])


@pytest.mark.parametrize("name", sorted(VIDEO_CASES))
def test_each_input_has_its_status_and_reason(ingested, name):
    _, status, reason = VIDEO_CASES[name]
    e = ingested["by_path"][name]
    assert e["status"] == status, e
    assert e.get("reason") == reason, e
    if reason:
        assert e["message"] and "\n" not in e["message"]


def test_good_video_records_validate_with_25fps_and_640_samples(ingested):
    recs = records_of(ingested, "alice/good.mp4")
    # 45 frames at 30 fps = 1.5 s -> 37 frames at 25 fps -> 3 clips of 10
    assert len(recs) == 3
    for r in recs:
        schema.validate(r)
        assert r["kind"] == schema.KIND_VIDEO and r["fps"] == 25 and r["sample_rate"] == 16000
        assert r["frames"].shape == (CLIP, RES, RES, 3) and r["frames"].dtype == np.uint8
        assert r["audio"].shape == (CLIP * 640,)
        assert not r["pose_valid"] and not r["expression_valid"] and not r["id_vector_valid"]
        assert (r["viseme"] == -1).all() and r["id_embedding"].shape == (0,)
    assert [r["key"] for r in recs] == [f"ingest/alice/good.mp4/f{k:06d}" for k in (0, 10, 20)]
    assert ingested["by_path"]["alice/good.mp4"]["source_fps"] == pytest.approx(30, abs=0.01)


def test_frames_resampled_30_to_25fps_by_timestamp(ingested):
    """Output frame k shows the 30 fps source frame on screen at (k + 0.5) / 25 s."""
    frames = np.concatenate([r["frames"] for r in records_of(ingested, "alice/good.mp4")])
    got = np.round((frames[:, :3, :3].astype(float).mean((1, 2, 3)) - 10) / 3).astype(int)
    want = np.floor((np.arange(len(frames)) + 0.5) / 25 * 30).astype(int)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["alice/good.mp4", "bob/good.mkv"])
def test_audio_16k_mono_in_sync_with_frames(ingested, name):
    """The 440 Hz burst (0.5-0.7 s; 44.1 kHz stereo / 48 kHz mono sources) lands on 25 fps
    frames 12.5-17.5 of the records' audio."""
    audio = np.concatenate([r["audio"] for r in records_of(ingested, name)])
    rms = np.sqrt((audio.reshape(-1, 640) ** 2).mean(1))
    assert (rms[13:17] > 0.3).all(), rms[10:20]
    assert (rms[:12] < 0.01).all() and (rms[18:] < 0.01).all(), rms
    on = np.flatnonzero(np.abs(audio) > 0.1)
    assert abs(on[0] / 16000 - BURST[0]) < 0.002 and abs(on[-1] / 16000 - BURST[1]) < 0.002


def test_mouth_box_contains_the_drawn_mouth(ingested):
    for r in records_of(ingested, "alice/good.mp4"):
        fr = r["frames"].astype(int)
        red = (np.abs(fr - np.array(MOUTH_RGB)).sum(-1) < 60)  # [F,R,R] mouth pixels
        for f in range(CLIP):
            ys, xs = np.nonzero(red[f])
            assert len(ys) > 3, f"frame {f}: no mouth pixels in the crop"
            y0, x0, y1, x1 = r["mouth_box"][f] * RES
            assert y0 <= ys.mean() <= y1 and x0 <= xs.mean() <= x1, (r["mouth_box"][f], ys, xs)
            assert (y1 - y0) < 0.35 * RES and (x1 - x0) < 0.45 * RES  # a mouth, not the face


def test_crop_is_temporally_stable_and_centred(ingested):
    """A still face: the smoothed crop does not move; the face sits in the crop's middle."""
    recs = records_of(ingested, "alice/good.mp4")
    frames = np.concatenate([r["frames"] for r in recs])
    eyes = [np.argwhere(f.min(-1) > 215).mean(0) for f in frames]  # eye whites (bg <= 142)
    assert np.ptp(eyes, 0).max() < 0.5, np.ptp(eyes, 0)  # unsmoothed Haar boxes: 1 px jumps
    box = np.concatenate([r["mouth_box"] for r in recs])
    assert np.ptp(box, 0).max() < 0.06  # follows the raw Haar box (sigma 1 frame): +-3% jitter
    pose = np.concatenate([r["pose"] for r in recs])
    assert np.abs(pose[:, 3:5]).max() < 0.25 and np.abs(pose[:, 5] - 1).max() < 0.2


def test_display_rotation_is_applied(ingested):
    """A phone-style file stored sideways with a rotation matrix gives upright crops: the
    same pictures as the upright file (and far from the sideways ones)."""
    up = np.concatenate([r["frames"] for r in records_of(ingested, "alice/good.mp4")]).astype(float)
    rot = np.concatenate([r["frames"] for r in records_of(ingested, "carol_rotated.mp4")]
                         ).astype(float)
    assert np.abs(rot - up).mean() < 6
    assert np.abs(np.rot90(rot, -1, axes=(1, 2)) - up).mean() > 4 * np.abs(rot - up).mean()


def test_identity_labels_from_top_folder(ingested):
    rep = ingested["report"]
    assert rep["identities"] == {n: i for i, n in enumerate(sorted(
        ["alice", "bob", "carol_rotated", "empty", "garbage", "truncated", "audio_only",
         "silent", "short", "vfr", "slow_10fps", "noface", "two_faces", "leaving",
         "vid\u00e9o", "photo"]))}
    bob = {r["id_label"] for r in records_of(ingested, "bob/good.mkv")}
    assert bob == {rep["identities"]["bob"]}


def test_ingested_shards_feed_the_train_pipeline(ingested):

    cfg = dict(base_config("micro").data.to_dict(), batch_size=2, num_frames=4, context_frames=1,
               resolution=32, audio_window=2, mixture={"video": 1.0}, seed=0,
               sources={"video": str(ingested["out"] / "*.array_record")})
    it = make_train_iterator(cfg, process_index=0, process_count=1)
    b = next(it)
    assert b["frames"].shape == (2, 5, 32, 32, 3) and b["frames"].dtype == np.float32
    assert b["audio"].shape == (2, (5 + 4) * 640)
    assert not b["pose_valid"].any()  # no landmarks: the view condition is dropped
    assert (b["pose"] == np.array([0, 0, 0, 0, 0, 1], np.float32)).all()
    assert it.skipped == {"video": {}}
    # ... and so does the default search under data.root
    cfg2 = dict(cfg, sources=None, root=str(ingested["out"]))
    assert next(make_train_iterator(cfg2, process_index=0, process_count=1))["frames"].shape == \
        (2, 5, 32, 32, 3)


def test_two_worker_pipeline_writes_the_same_records_and_report(ingested, tmp_path):
    """Beam's DirectRunner in multi_processing mode, 2 workers, over the same folder of good
    and bad inputs: the same records (as a set, byte for byte) and the same report entries
    as the single-process run; the bad inputs are reported, the pipeline does not fail."""
    out = tmp_path / "out2"
    rc = videos.main(["--src", str(ingested["src"]), "--out", str(out), "--clip_frames",
                      str(CLIP), "--resolution", str(RES), "--quiet", *DETECT,
                      "--direct_running_mode", "multi_processing", "--direct_num_workers", "2",
                      "--records_per_shard", "2"])
    assert rc == 0
    two = read_records(out, "video")
    one = ingested["records"]
    assert sorted(two) == sorted(one)
    for k in one:
        assert schema.encode(two[k]) == schema.encode(one[k]), k
    rep = json.load(open(out / "ingest_report.json"))
    assert rep["inputs"] == ingested["report"]["inputs"]
    assert rep["counts"] == ingested["report"]["counts"]
    assert len(rep["shards"]) >= len(one) // 2  # records_per_shard 2
    assert sorted(os.listdir(out)) == sorted(rep["shards"] + ["ingest_report.json"])


def test_an_unexpected_error_is_reported_not_raised(tmp_path, monkeypatch):
    """A bug on one input (here: the decoder raising a plain RuntimeError) is an
    internal_error entry; the other inputs are still ingested."""
    src = tmp_path / "src"
    write_video(src / "a.mp4", 45) if os.makedirs(src) is None else None
    write_video(src / "b.mp4", 45)
    real = videos.decode_audio

    def flaky(path):
        if path.endswith("b.mp4"):
            raise RuntimeError("boom")
        return real(path)

    monkeypatch.setattr(videos, "decode_audio", flaky)
    rc = videos.main(["--src", str(src), "--out", str(tmp_path / "o"), "--clip_frames",
                      str(CLIP), "--resolution", "32", "--quiet", *ONE_PROCESS])
    rep = json.load(open(tmp_path / "o" / "ingest_report.json"))
    by = {e["path"]: e for e in rep["inputs"]}
    assert rc == 0 and by["a.mp4"]["status"] == "ok" and by["a.mp4"]["records"] == 3
    assert by["b.mp4"]["reason"] == "internal_error" and "boom" in by["b.mp4"]["message"]


def test_nothing_usable_exits_1_with_a_report(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.mp4").write_bytes(b"")
    rc = videos.main(["--src", str(src), "--out", str(tmp_path / "out"), "--quiet", *ONE_PROCESS])
    assert rc == 1
    rep = json.load(open(tmp_path / "out" / "ingest_report.json"))
    assert rep["counts"]["reasons"] == {"empty_file": 1} and rep["counts"]["records"] == 0


@pytest.mark.parametrize("module", ["videos", "multiview"])
def test_cli_misuse_exits_2_with_one_line(tmp_path, module):
    cmd = [sys.executable, "-m", f"data_pipelines.ingest.{module}"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for args, says in (([ "--out", str(tmp_path)], "--src"),
                       (["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                        "expected an existing folder")):
        p = subprocess.run(cmd + args, capture_output=True, text=True, cwd=root)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0] and says in lines[0], p.stderr


def test_cli_bad_detector_options_exit_2(tmp_path, capsys):
    for args in (["--detector", "mediapipe"],  # no model given
                 ["--landmarks", str(tmp_path / "missing.task")],
                 ["--detector_model", str(tmp_path / "cascade.xml")]):
        with pytest.raises(SystemExit) as e:
            videos.main(["--src", str(tmp_path), "--out", str(tmp_path / "o")] + args)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0], err
    bad = tmp_path / "cascade.xml"
    bad.write_text("<not a cascade/>")
    with pytest.raises(SystemExit):
        videos.main(["--src", str(tmp_path), "--out", str(tmp_path / "o"),
                     "--detector_model", str(bad)])
    assert "expected an OpenCV Haar cascade" in capsys.readouterr().err


def test_rerun_refuses_to_mix_shards_unless_overwrite(ingested, tmp_path):
    src, out = ingested["src"], tmp_path / "o"
    os.makedirs(out)
    open(out / "video-train-00007.array_record", "wb").close()  # a stale shard
    with pytest.raises(SystemExit) as e:
        videos.main(["--src", str(src / "bob"), "--out", str(out), "--quiet"])
    assert e.value.code == 2
    rc = videos.main(["--src", str(src / "bob"), "--out", str(out), "--quiet", "--overwrite",
                      "--clip_frames", str(CLIP), "--resolution", "32", *ONE_PROCESS])
    assert rc == 0 and sorted(os.listdir(out)) == ["ingest_report.json",
                                                   "video-train-00000.array_record"]


# ----------------------------------------------------------------------- face-level units
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "animated GIF"])
def test_an_image_named_mp4_is_unreadable(tmp_path, fmt):
    """FFmpeg opens an image as a one-stream "video" without audio: the reason is that it is
    not a video container (``unreadable``), not a missing audio track."""
    img = Image.fromarray(face_frame(0))
    path = str(tmp_path / "photo.mp4")
    if fmt == "animated GIF":
        img.save(path, format="GIF", save_all=True, append_images=[img] * 3, duration=40)
    else:
        img.save(path, format=fmt)
    with pytest.raises(common.Skip) as e:
        videos.probe(path)
    assert e.value.reason == "unreadable" and "an image file" in str(e.value), str(e.value)


def test_track_rules_on_synthetic_detections():
    box = np.array([[60, 40, 100, 80]], np.float32)
    none = np.zeros((0, 4), np.float32)
    t = faces.track_faces([box] * 10 + [none] * 5 + [box] * 10, 128, 160, max_gap=12)
    assert t.segments == [(0, 25)] and not np.isnan(t.boxes).any()  # gap of 5 interpolated
    t = faces.track_faces([box] * 10 + [none] * 15 + [box] * 10, 128, 160, max_gap=12)
    assert t.segments == [(0, 10), (25, 35)]  # a long gap away from the border splits
    with pytest.raises(common.Skip, match="no_face"):
        faces.track_faces([box] * 4 + [none] * 6, 128, 160)
    two = np.array([[10, 40, 50, 80], [100, 40, 136, 76]], np.float32)
    with pytest.raises(common.Skip, match="several_faces"):
        faces.track_faces([box] * 7 + [two] * 3, 128, 160)
    small = np.array([[60, 40, 100, 80], [130, 10, 140, 20]], np.float32)  # a distant face
    faces.track_faces([small] * 10, 128, 160)
    edge = np.array([[120, 40, 158, 78]], np.float32)
    with pytest.raises(common.Skip, match="face_left_frame"):  # lost right after the border
        faces.track_faces([box] * 20 + [edge] + [none] * 8, 128, 160)
    faces.track_faces([box] * 20 + [edge], 128, 160)  # ... but near it at the end is fine
    with pytest.raises(common.Skip, match="face_left_frame"):  # found right at the border
        faces.track_faces([none] * 8 + [edge] + [box] * 20, 128, 160)
    touch = np.array([[124, 40, 160, 76]], np.float32)
    with pytest.raises(common.Skip, match="face_left_frame"):
        faces.track_faces([box] * 20 + [touch] + [box] * 8, 128, 160)


def test_landmark_mouth_box_and_pose():
    """Landmark path (no MediaPipe model here): lips -> mouth box, matrix -> pose."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(0.45, 0.55, (478, 3)).astype(np.float32)  # a face spanning [0.4, 0.6]
    pts[400, :2], pts[401, :2] = (0.4, 0.4), (0.6, 0.6)
    lips = np.array(faces.LIP_OUTER)
    pts[lips, 0] = np.linspace(0.46, 0.54, len(lips))
    pts[lips, 1] = np.linspace(0.50, 0.55, len(lips))
    np.testing.assert_allclose(faces.mouth_box_from_landmarks(pts, pad=0),
                               [0.50, 0.46, 0.55, 0.54], atol=1e-6)
    ypr = np.array([0.3, -0.2, 0.1])
    m = np.eye(4)
    m[:3, :3] = schema.pose_to_matrix(ypr) * 2.0  # a uniformly scaled rotation
    pose = faces.pose_from_landmarks(pts, m, nominal=0.2)
    np.testing.assert_allclose(pose[:3], ypr, atol=1e-5)
    np.testing.assert_allclose(pose[3:], [0, 0, 1.0], atol=1e-5)  # centred, extent 0.2
    pts[:, 0] += 0.1  # the face moves right by a tenth of the crop: tx = 0.2 half-sizes
    np.testing.assert_allclose(faces.pose_from_landmarks(pts, m, 0.2)[3:], [0.2, 0, 1], atol=1e-5)


# ----------------------------------------------------------------------------- multiview
def _capture(root, name, n=4, size=(96, 80), cams=True, identity=None, **bad):
    d = root / name
    os.makedirs(d)
    views = {}
    for i in range(n):
        img = face_frame(i * 9, ((size[0] / 2, size[1] / 2),), size=size, s=40)
        sz = bad.get("odd_size") if i == n - 1 and "odd_size" in bad else size
        img = cv2.resize(img, sz)
        cv2.imwrite(str(d / f"cam{i:02d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        views[f"cam{i:02d}.png"] = {"yaw": -45 + 30 * i, "pitch": 5.0 * i, "roll": 0,
                                    "scale": 1.0}
    if "garbage_view" in bad:
        (d / "cam01.png").write_bytes(b"not a png")
    doc = {"views": views} | ({"identity": identity} if identity else {})
    if "drop_key" in bad:
        del doc["views"]["cam02.png"][bad["drop_key"]]
    if cams:
        text = json.dumps(doc) if "text" not in bad else bad["text"]
        (d / "cameras.json").write_text(text)
    return d


MV_CASES = {
    "s01": (dict(identity="ann"), "ok", None),
    "s02": (dict(identity="ann"), "ok", None),
    "s03": (dict(), "ok", None),
    "no_json": (dict(cams=False), "skipped", "missing_cameras"),
    "bad_json": (dict(text="{views: oops"), "skipped", "malformed_cameras"),
    "no_yaw": (dict(drop_key="yaw"), "skipped", "malformed_cameras"),
    "mixed_sizes": (dict(odd_size=(64, 80)), "skipped", "view_size_mismatch"),
    "bad_image": (dict(garbage_view=True), "skipped", "unreadable"),
    "one_view": (dict(n=1), "skipped", "too_few_views"),
    "caf\u00e9": (dict(), "skipped", "non_ascii_name"),
}


@pytest.fixture(scope="module")
def mv(tmp_path_factory):
    src = tmp_path_factory.mktemp("captures")
    for name, (kw, _, _) in MV_CASES.items():
        _capture(src, name, **kw)
    out = tmp_path_factory.mktemp("mvout")
    rc = multiview.main(["--src", str(src), "--out", str(out), "--resolution", "32", "--quiet",
                         *ONE_PROCESS])
    rep = json.load(open(out / "ingest_report.json"))
    return {"rc": rc, "report": rep, "src": src, "out": out,
            "records": read_records(out, "multiview")}


@pytest.mark.parametrize("name", sorted(MV_CASES))
def test_multiview_each_capture_status_and_reason(mv, name):
    _, status, reason = MV_CASES[name]
    e = {x["path"]: x for x in mv["report"]["inputs"]}[name]
    assert (e["status"], e.get("reason")) == (status, reason), e


def test_multiview_records(mv):
    assert mv["rc"] == 0
    recs = mv["records"]
    assert sorted(recs) == ["ingest/s01", "ingest/s02", "ingest/s03"]
    ids = mv["report"]["identities"]
    # labels over every capture whose cameras.json parsed (skipped ones keep theirs: stable)
    assert ids == {"ann": 0, "bad_image": 1, "mixed_sizes": 2, "one_view": 3, "s03": 4}
    assert recs["ingest/s01"]["id_label"] == recs["ingest/s02"]["id_label"] == 0
    r = recs["ingest/s01"]
    schema.validate(r)
    assert r["kind"] == schema.KIND_MULTIVIEW and r["frames"].shape == (4, 32, 32, 3)
    assert r["audio"].shape == (0,) and r["pose_valid"]
    np.testing.assert_allclose(np.degrees(r["pose"][:, 0]), [-45, -15, 15, 45], atol=1e-4)
    np.testing.assert_allclose(np.degrees(r["pose"][:, 1]), [0, 5, 10, 15], atol=1e-4)
    np.testing.assert_allclose(r["pose"][:, 3:], [[0, 0, 1]] * 4)
    # views in file-name order, each the centred 80x80 square of the 96x80 image, resized
    for i in range(4):
        img = cv2.cvtColor(cv2.imread(str(mv["src"] / f"s01/cam{i:02d}.png")), cv2.COLOR_BGR2RGB)
        want = cv2.resize(img[:, 8:88], (32, 32), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(r["frames"][i], want)


def test_multiview_shards_feed_the_mixture(mv, ingested):

    cfg = dict(base_config("micro").data.to_dict(), batch_size=2, num_frames=4, context_frames=1,
               num_views=3, resolution=32, audio_window=2, mixture={"video": 0.5, "multiview": 0.5}, seed=1,
               sources={"video": str(ingested["out"] / "*.array_record"),
                        "multiview": str(mv["out"] / "*.array_record")})
    it = make_train_iterator(cfg, process_index=0, process_count=1)
    streams = set()
    for _ in range(8):
        b = next(it)
        streams.add(int(b["stream"][0]))
        if int(b["stream"][0]) == 1:
            assert b["frames"].shape == (2, 3, 32, 32, 3) and b["pose_valid"].all()
    assert streams == {0, 1}


# ------------------------------------------------------------------------------ ArcFace
def _random_arcface_onnx(path, dim=512):
    """A random-weight model with the insightface ArcFace layout: [N,3,112,112] -> [N,dim]."""
    import onnx  # noqa: PLC0415 (optional ONNX dependency)
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415 (optional ONNX dependency)

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.1, (16, 3, 8, 8)).astype(np.float32), "w")
    g = numpy_helper.from_array(rng.normal(0, 0.1, (16 * 49, dim)).astype(np.float32), "g")
    nodes = [helper.make_node("Conv", ["data", "w"], ["c"], strides=[16, 16]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "g"], ["fc1"])]
    graph = helper.make_graph(nodes, "arcface", [helper.make_tensor_value_info(
        "data", TensorProto.FLOAT, ["N", 3, 112, 112])], [helper.make_tensor_value_info(
            "fc1", TensorProto.FLOAT, ["N", dim])], [w, g])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_arcface_embedding_equals_onnxruntime_on_the_aligned_crop(tmp_path):
    import onnxruntime as ort  # noqa: PLC0415 (optional ONNX dependency)


    model_path = tmp_path / "arcface.onnx"
    _random_arcface_onnx(model_path)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    # the face's 5 points: the template rotated by 10 deg, scaled by 1.7, moved
    a = np.radians(10)
    rot = 1.7 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = (arcface.ARCFACE_DST @ rot.T + [40, 60]).astype(np.float32)
    # the aligned crop, independently: the exact inverse similarity, bilinear
    inv = np.linalg.inv(rot)
    m = np.concatenate([inv, (-inv @ [40, 60])[:, None]], 1)
    crop = cv2.warpAffine(img, m, (112, 112), borderValue=0.0)
    np.testing.assert_allclose(arcface.alignment(pts), m, atol=1e-3)
    assert np.abs(arcface.norm_crop(img, pts).astype(float) - crop).mean() < 0.5
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    want = sess.run(None, {"data": x})[0][0]
    want /= np.linalg.norm(want)
    model = arcface.ArcFace(str(model_path))
    np.testing.assert_allclose(model.embed_crops(crop[None])[0], want, atol=1e-6)
    got = model.embed(img, pts)
    assert got.shape == (512,) and float(got @ want) > 0.99


def test_arcface_flag_fills_the_embedding_and_the_valid_flag(ingested, tmp_path):
    model_path = tmp_path / "arcface.onnx"
    _random_arcface_onnx(model_path)
    out = tmp_path / "o"
    rc = videos.main(["--src", str(ingested["src"] / "alice"), "--out", str(out),
                      "--clip_frames", str(CLIP), "--resolution", str(RES), "--quiet",
                      "--arcface", str(model_path), *DETECT, *ONE_PROCESS])
    assert rc == 0
    recs = read_records(out, "video")

    model = arcface.ArcFace(str(model_path))
    for r in recs.values():
        schema.validate(r)
        assert r["id_vector_valid"] and r["id_embedding"].shape == (512,)
        assert abs(np.linalg.norm(r["id_embedding"]) - 1) < 1e-5
        # taken from the reference (first) frame: not the embedding of another frame's crop
        assert np.isfinite(r["id_embedding"]).all()
    without = records_of(ingested, "alice/good.mp4")
    assert all(not r["id_vector_valid"] and r["id_embedding"].shape == (0,) for r in without)
    del model


# ------------------------------------------------------------------- object-store paths
def test_object_store_inputs_outputs_and_model_match_local_paths(ingested, tmp_path):
    """``--src``, ``--out`` and ``--arcface`` on an object store (a fake with GCS's semantics:
    no folders, prefix listing) write the same records and report entries as local paths.
    This is the path a Dataflow run takes with ``gs://``."""
    from tests.fake_object_store import FakeObjectStore  # noqa: PLC0415 (registers the fakegcs:// scheme with Beam)

    FakeObjectStore.ROOT = str(tmp_path / "store")
    bucket = tmp_path / "store" / "bucket"
    model = tmp_path / "arcface.onnx"
    _random_arcface_onnx(model)
    os.makedirs(bucket / "models")
    shutil.copyfile(model, bucket / "models" / "arcface.onnx")
    src = ingested["src"]
    shutil.copytree(src / "alice", bucket / "src" / "alice")
    shutil.copyfile(src / "truncated.mov", bucket / "src" / "truncated.mov")
    os.makedirs(tmp_path / "local_src")
    shutil.copytree(src / "alice", tmp_path / "local_src" / "alice")
    shutil.copyfile(src / "truncated.mov", tmp_path / "local_src" / "truncated.mov")
    common_args = ["--clip_frames", str(CLIP), "--resolution", str(RES), "--quiet", *DETECT,
                   *ONE_PROCESS, "--records_per_shard", "2"]
    os.makedirs(bucket / "out" / ".ingest-tmp")  # as a retried bundle leaves one: must go
    (bucket / "out" / ".ingest-tmp" / "retried.array_record").write_bytes(b"stale")
    rc = videos.main(["--src", "fakegcs://bucket/src", "--out", "fakegcs://bucket/out",
                      "--arcface", "fakegcs://bucket/models/arcface.onnx", *common_args])
    assert rc == 0
    local_out = tmp_path / "local_out"
    assert videos.main(["--src", str(tmp_path / "local_src"), "--out", str(local_out),
                        "--arcface", str(model), *common_args]) == 0
    remote, local = read_records(bucket / "out", "video"), read_records(local_out, "video")
    assert sorted(remote) == sorted(local) and local
    for k in local:
        assert local[k]["id_vector_valid"]
        assert schema.encode(remote[k]) == schema.encode(local[k]), k
    rep, want = (json.load(open(o / "ingest_report.json")) for o in (bucket / "out", local_out))
    local_src = str(tmp_path / "local_src")
    for e in want["inputs"]:  # messages name the input: the URL there, the local path here
        if "message" in e:
            e["message"] = e["message"].replace(local_src, "fakegcs://bucket/src")
    assert rep["inputs"] == want["inputs"] and rep["counts"] == want["counts"]
    assert [e["reason"] for e in rep["inputs"] if e["status"] == "skipped"] == ["unreadable"]
    # no temporary objects are left behind, only the shards and the report
    assert sorted(os.listdir(bucket / "out")) == sorted(rep["shards"] + ["ingest_report.json"])
    # a model file missing from the store is one line naming the flag, exit 2
    r = subprocess.run([sys.executable, "-c", (
        "import sys; from tests.fake_object_store import FakeObjectStore as F; "
        f"F.ROOT = {FakeObjectStore.ROOT!r}; from data_pipelines.ingest import videos; "
        "sys.exit(videos.main(sys.argv[1:]))"), "--src", "fakegcs://bucket/src", "--out",
        "fakegcs://bucket/out2", "--arcface", "fakegcs://bucket/models/missing.onnx"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(
        "--arcface fakegcs://bucket/models/missing.onnx: expected an existing file (see --help)")
