"""The evaluation's extra truth: the novel-view split is the same clip seen by another camera,
long clips are as long as asked and new, and the frame metrics behave as their names say."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import schema
from data_pipelines.synthetic import corpus, speech
from starcaster_jax.evaluation import metrics as M


@pytest.fixture(scope="module")
def person():
    return corpus.make_person(0, 7, speech.VOICES_TRAIN)


def test_novel_view_is_the_same_clip_from_a_rotated_camera(person):
    first = corpus.make_video_record(0, person, 1, 32, (1.2, 1.6), ss=1)
    nv = corpus.make_novel_view_record(0, person, 1, 32, (1.2, 1.6), ss=1)
    assert nv["key"] == first["key"] + "/novel"
    for k in ("audio", "viseme", "expression", "id_vector"):
        np.testing.assert_array_equal(nv[k], first[k])
    # head rotation seen by camera 2 = camera path @ head rotation seen by camera 1
    cam = corpus.novel_camera_path(corpus._rng(0, corpus._NOVEL, person.label, 1), len(first["pose"]))
    want = schema.pose_to_matrix(cam) @ schema.pose_to_matrix(first["pose"][:, :3])
    np.testing.assert_allclose(schema.pose_to_matrix(nv["pose"][:, :3]), want, atol=1e-4)
    assert np.degrees(np.abs(cam[:, 0])).min() > 5          # a view never seen by camera 1's clips
    assert np.abs(nv["frames"].astype(int) - first["frames"]).mean() > 5


def test_long_clip_has_the_asked_length_and_is_not_a_corpus_clip(person):
    rec = corpus.make_long_video_record(0, person, 6.0, 32, ss=1)
    assert rec["frames"].shape[0] == 150 and rec["audio"].shape[0] == 150 * schema.SAMPLES_PER_FRAME
    assert (rec["viseme"] != 0).mean() > 0.3                 # mostly speech, not silence
    short = corpus.make_video_record(0, person, 0, 32, (1.2, 1.6), ss=1)
    assert rec["text"] != short["text"]


def test_frame_metrics():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert M.image_metrics(img, img) == {"psnr": M.PSNR_CAP, "ssim": pytest.approx(1.0, abs=1e-5)}
    flat = np.full_like(img, 90)
    assert M.sharpness(flat) == 0.0
    dot = np.zeros((1, 16, 16, 3), np.uint8)
    dot[0, 8, 8] = 255                                       # Laplacian: -4*255 there, +255 at 4 neighbours
    assert M.sharpness(dot) == pytest.approx(20 * 255 ** 2 / 256)
    blurred = np.repeat(np.repeat(img[:, ::4, ::4], 4, 1), 4, 2)
    assert M.sharpness(blurred) < 0.5 * M.sharpness(img)
    assert M.pose_std_deg(np.tile([[0.1, 0.2, 0.3]], (10, 1))) == pytest.approx(0.0, abs=1e-9)
    ypr = np.zeros((2, 3))
    ypr[1] = np.radians(2.0)                                 # +-1 degree around the mean on each axis
    assert M.pose_std_deg(ypr) == pytest.approx(1.0)
    assert M.majority_fraction(np.array([1, 1, 2, -1])) == pytest.approx(2 / 3)
    assert M.segments(10, 4) == [(0, 4), (4, 8), (8, 10)] and M.segments(9, 4) == [(0, 4), (4, 8)]
