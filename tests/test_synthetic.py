"""Built-in synthetic corpus: schema, determinism, speech/viseme agreement, rendering, TFDS."""
import glob
import os

import grain
import numpy as np
import pytest

from data_pipelines import schema
from data_pipelines.synthetic import corpus, heads, speech, tfds_builder, visemes

RES = 32


@pytest.fixture(scope="module")
def person():
    return corpus.make_person(0, 3, speech.VOICES_TRAIN)


@pytest.fixture(scope="module")
def video_record(person):
    return corpus.make_video_record(0, person, 0, RES, clip_seconds=(1.2, 1.6), ss=1)


def test_same_seed_same_bytes(person, video_record):
    again = corpus.make_video_record(0, corpus.make_person(0, 3, speech.VOICES_TRAIN), 0, RES,
                                     clip_seconds=(1.2, 1.6), ss=1)
    assert schema.encode(video_record) == schema.encode(again)
    other = corpus.make_video_record(1, corpus.make_person(1, 3, speech.VOICES_TRAIN), 0, RES,
                                     clip_seconds=(1.2, 1.6), ss=1)
    assert schema.encode(other) != schema.encode(video_record)
    mv = [schema.encode(corpus.make_multiview_record(0, person, 0, RES, 4, ss=1))
          for _ in range(2)]
    assert mv[0] == mv[1]


def test_encode_decode_roundtrip(video_record):
    back = schema.decode(schema.encode(video_record))
    assert set(back) == set(schema.FIELDS)
    for k, v in video_record.items():
        if isinstance(v, np.ndarray):
            assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
        else:
            assert back[k] == v, k
    schema.validate(back)
    assert schema.decode({"record": schema.encode(video_record)})["key"] == video_record["key"]
    # The skeleton ingestion starts from is valid, with every unknown field flagged.
    real = schema.empty_like_real(video_record["frames"])
    schema.validate(real)
    assert not (real["pose_valid"] or real["id_vector_valid"] or real["expression_valid"])


@pytest.mark.parametrize("field,bad,expect", [
    ("audio", lambda r: r["audio"][:-5], "audio"),
    ("frames", lambda r: r["frames"].astype(np.float32), "frames"),
    ("mouth_box", lambda r: r["mouth_box"] + 2.0, "mouth_box"),
    ("viseme", lambda r: np.full_like(r["viseme"], 99), "viseme"),
    ("pose", lambda r: r["pose"][:, :5], "pose"),
    ("id_vector", lambda r: r["id_vector"][:3], "id_vector"),
    ("id_label", lambda r: "seven", "id_label"),
    ("fps", lambda r: 30, "fps"),
    ("kind", lambda r: 7, "kind"),
])
def test_validate_names_the_bad_field(video_record, field, bad, expect):
    rec = dict(video_record)
    rec[field] = bad(rec)
    with pytest.raises(ValueError, match=f"'{expect}'"):
        schema.validate(rec)
    missing = {k: v for k, v in video_record.items() if k != field}
    with pytest.raises(ValueError, match=f"'{field}'.*missing"):
        schema.validate(missing)
    with pytest.raises(ValueError, match="magic"):
        schema.decode(b"not a record")


def test_relative_pose():
    rng = np.random.default_rng(0)
    pose = np.concatenate([rng.uniform(-0.6, 0.6, (5, 3)), rng.uniform(-0.2, 0.2, (5, 2)),
                           rng.uniform(0.9, 1.1, (5, 1))], -1).astype(np.float32)
    back = schema.matrix_to_pose(schema.pose_to_matrix(pose[:, :3]))
    np.testing.assert_allclose(back, pose[:, :3], atol=1e-5)
    rel = schema.relative_pose(pose)
    np.testing.assert_allclose(rel[0], [0, 0, 0, 0, 0, 1], atol=1e-6)
    # Composition: R_0 @ R_rel reproduces every frame's absolute rotation.
    comp = schema.pose_to_matrix(pose[:1, :3]) @ schema.pose_to_matrix(rel[:, :3])
    np.testing.assert_allclose(comp, schema.pose_to_matrix(pose[:, :3]), atol=1e-5)


def test_splits_have_disjoint_identities_and_unseen_test_voices():
    cfg = tfds_builder.make_config("demo")
    labels = {s: {lab for _, lab, _ in tfds_builder.split_tasks(cfg, s)} for s in tfds_builder.SPLITS}
    train = labels["train_video"] | labels["train_multiview"]
    test = labels["test_video"] | labels["test_multiview"]
    assert train and test and not train & test
    assert len(train) == cfg.n_train_ids and len(test) == cfg.n_test_ids
    test_voices = {corpus.make_person(0, lab, tfds_builder.voices_for(lab, cfg.n_train_ids)).voice
                   for lab in test}
    train_voices = {corpus.make_person(0, lab, tfds_builder.voices_for(lab, cfg.n_train_ids)).voice
                    for lab in train}
    assert test_voices - train_voices, "test voices must include unseen ones"
    assert not set(speech.VOICES_HELDOUT) & set(speech.VOICES_TRAIN)
    vecs = np.stack([corpus.make_person(0, lab, speech.VOICES_TRAIN).ident.vector()
                     for lab in sorted(train | test)])
    assert vecs.shape[1] == schema.ID_DIM
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    gram = vecs @ vecs.T - 2 * np.eye(len(vecs))
    assert gram.max() < 0.9, "identities should not be near-duplicates"


def test_visemes_agree_with_audio_energy():
    """Over many clips and voices, silence-labelled frames are far quieter than speech."""
    sil, talk = [], []
    for lab in range(4):
        p = corpus.make_person(0, lab, speech.VOICES_TRAIN + speech.VOICES_HELDOUT)
        for clip in range(3):
            audio, segs, _, n = corpus._clip_audio(corpus._rng(0, 99, lab, clip), p, (2.5, 3.0))
            labels = visemes.frame_labels(segs, n)
            rms = np.sqrt((audio.reshape(n, -1) ** 2).mean(-1))
            sil.append(rms[labels == visemes.SIL])
            talk.append(rms[labels != visemes.SIL])
    sil, talk = np.concatenate(sil), np.concatenate(talk)
    assert len(sil) > 50 and len(talk) > 150
    assert talk.mean() > 10 * sil.mean()
    assert np.median(talk) > 10 * np.median(sil)
    assert len(visemes.PHONEME_TO_VISEME) > 60  # the documented espeak-ng -> viseme table


def test_mouth_opening_follows_visemes(video_record):
    vis, expr = video_record["viseme"], video_record["expression"]
    assert expr[vis == visemes.SIL, 0].mean() < 0.5 * expr[vis != visemes.SIL, 0].mean()


def _render(person, expr, ypr, res=64, video=False):
    n = len(ypr)
    if video:  # the head turns on the neck, the camera stays
        ypr = np.asarray(ypr, np.float32)
        zero = np.zeros(n, np.float32)
        cam, _ = corpus.video_camera(dict(yaw=ypr[:, 0], pitch=ypr[:, 1], roll=ypr[:, 2],
                                          body_dx=zero + 0.05, body_dy=zero, body_scale=zero + 1))
    else:
        cam = corpus.view_camera(np.asarray(ypr, np.float32))
    light = np.einsum("fij,j->fi", cam.head_rot, np.array([0, 0.5, 0.87], np.float32))
    bg = np.full((n, res, res, 3), 0.5, np.float32)
    gaze = np.zeros((n, 2), np.float32)
    frames, pts, ids = corpus.render_frames(person, np.asarray(expr, np.float32), gaze, cam,
                                            light.astype(np.float32), bg,
                                            np.array([0.2, 0.3, 0.6], np.float32), res, ss=1,
                                            return_ids=True)
    return frames, pts, ids, cam


def test_same_instant_and_camera_render_identically(person):
    expr = [[0.5, 0.6, 0.1, 0.0]] * 3
    ypr = [[0.3, 0.1, 0.0], [0.3, 0.1, 0.0], [-0.6, -0.2, 0.05]]
    frames, _, _, _ = _render(person, expr, ypr)
    again, _, _, _ = _render(person, expr[:1], ypr[:1])
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(frames[0], again[0])
    diff = np.abs(frames[0].astype(int) - frames[2].astype(int)).mean()
    assert diff > 5, diff


@pytest.mark.parametrize("video", [False, True])
def test_mouth_box_contains_the_mouth(person, video):
    rng = np.random.default_rng(int(video))
    n = 12
    expr = np.concatenate([rng.uniform(0, 1, (n, 3)), np.zeros((n, 1))], -1)
    expr[0, 0], expr[1, 0] = 0.0, 1.0
    ypr = np.stack([rng.uniform(-0.8, 0.8, n), rng.uniform(-0.3, 0.3, n),
                    rng.uniform(-0.1, 0.1, n)], -1)
    ypr[:2] = 0.0
    res = 64
    frames, pts, ids, cam = _render(person, expr, ypr, res, video)
    _, box = corpus._pose_and_box(cam, pts, ypr.astype(np.float32))
    mouth = np.isin(ids, heads.MOUTH_MATERIALS)
    inner = np.isin(ids, (heads.MOUTH_IN, heads.TEETH, heads.TONGUE))
    assert inner[1].sum() > inner[0].sum() + 10, "an open mouth shows its inside"
    centres = (np.arange(res) + 0.5) / res
    for f in range(n):
        ys, xs = np.nonzero(mouth[f])
        if f < 2:  # frontal: closed lips are a thin line, an open mouth a clear blob
            assert len(ys) > (8, 30)[f], (f, len(ys))
        y0, x0, y1, x1 = box[f]
        tol = 0.5 / res
        assert (centres[ys] >= y0 - tol).all() and (centres[ys] <= y1 + tol).all(), f
        assert (centres[xs] >= x0 - tol).all() and (centres[xs] <= x1 + tol).all(), f
        assert (y1 - y0) * (x1 - x0) < 0.15, "the box is about the mouth, not the face"


def test_video_record_fields(video_record):
    r = video_record
    n = r["frames"].shape[0]
    assert r["frames"].shape == (n, RES, RES, 3) and r["audio"].shape == (n * 640,)
    assert r["kind"] == schema.KIND_VIDEO and r["text"] and r["voice"]
    assert 30 <= n <= 40
    assert np.abs(np.diff(r["pose"][:, 0])).max() < 0.1, "head motion is smooth"
    assert r["frames"].std(axis=0).mean() > 1.0, "the clip moves"


def test_tfds_builder_writes_array_record_and_reads_back(tmp_path):
    cfg = tfds_builder.make_config("tiny")
    builder = tfds_builder.build(str(tmp_path / "a"), cfg, workers=1)
    shards = sorted(glob.glob(os.path.join(str(builder.data_dir), "*.array_record-*")))
    assert len(shards) == len(tfds_builder.SPLITS)
    import tensorflow_datasets as tfds  # noqa: PLC0415 (TensorFlow loads only where TFDS is read)

    reader = tfds.builder_from_directory(str(builder.data_dir))
    seen = {}
    for split in tfds_builder.SPLITS:
        src = reader.as_data_source(split)
        assert len(src) == len(tfds_builder.split_tasks(cfg, split))
        recs = [schema.decode(src[i]) for i in range(len(src))]
        for r in recs:
            schema.validate(r)
            assert r["frames"].shape[1:] == (cfg.resolution, cfg.resolution, 3)
            assert r["kind"] == (schema.KIND_VIDEO if split.endswith("video")
                                 else schema.KIND_MULTIVIEW)
        seen[split] = {r["id_label"] for r in recs}
    assert not (seen["train_video"] | seen["train_multiview"]) & (seen["test_video"] | seen["test_multiview"])
    # Raw shard entries (what Grain's ArrayRecordDataSource returns) decode too.

    raw = grain.sources.ArrayRecordDataSource([s for s in shards if "-train_video." in s])
    assert schema.decode(raw[0])["kind"] == schema.KIND_VIDEO
    # Same seed -> the same shard bytes.
    again = tfds_builder.build(str(tmp_path / "b"), cfg, workers=1)
    for s in shards:
        other = os.path.join(str(again.data_dir), os.path.basename(s))
        with open(s, "rb") as f, open(other, "rb") as g:
            assert f.read() == g.read(), s
