"""Head pose from landmarks (ingest/pose.py), proven on the built-in corpus: the renderer's
3-D landmarks of a head turning in front of the corpus camera are projected, and solvePnP
recovers the corpus's own ground-truth pose (schema convention)."""
from __future__ import annotations

import numpy as np

from data_pipelines import schema
from data_pipelines.ingest import pose
from data_pipelines.synthetic import corpus, heads, landmarks, motion
from data_pipelines.synthetic.render import project

N = 40


def _clip(rng, k):
    """-> (true landmarks [K,3], projected [N,K,2], true pose [N,6]) of one random head."""
    lm = landmarks.head_landmarks(heads.HeadModel(heads.sample_identity(rng)))
    traj = motion.head_trajectory(rng, N)
    t = np.arange(N)
    traj["yaw"] = np.radians(35) * np.sin(t / 8 + k)
    traj["pitch"] = np.radians(15) * np.sin(t / 11 + k)
    traj["roll"] = np.radians(8) * np.cos(t / 9)
    cam, ypr = corpus.video_camera(traj)
    truth, _ = corpus._pose_and_box(cam, np.zeros((N, 8, 3), np.float32), ypr)
    pc = np.einsum("fij,kj->fki", cam.head_rot.astype(np.float64), lm) + cam.head_pos[:, None]
    return lm, project(pc, corpus.TAN_HALF_FOV), truth


def test_exact_model_recovers_the_corpus_pose():
    """The head's own 3-D landmarks, no noise: the convention and the math, to 1e-3 deg."""
    rng = np.random.default_rng(0)
    for k in range(3):
        lm, xy, truth = _clip(rng, k)
        tr = pose.estimate(xy, lm, sigma=0)
        assert tr.fit_ok.all()
        assert np.degrees(np.abs(tr.pose[:, :3] - truth[:, :3])).max() < 1e-3
        np.testing.assert_allclose(tr.pose[:, 3:], truth[:, 3:], atol=1e-4)


def test_canonical_face_with_noise_recovers_the_pose_within_bounds():
    """The generic canonical face (mean head) for other heads, 0.5 px landmark noise at
    256 px: the errors a real landmark track would see from shape mismatch alone."""
    rng = np.random.default_rng(1)
    own, canon = [], []
    for k in range(4):
        lm, xy, truth = _clip(rng, k)
        xy = xy + rng.normal(0, 0.5 / 256, xy.shape)
        own.append(np.degrees(np.abs(pose.estimate(xy, lm).pose[:, :3] - truth[:, :3])))
        tr = pose.estimate(xy)
        assert tr.fit_ok.all()
        canon.append(np.degrees(np.abs(tr.pose[:, :3] - truth[:, :3])))
    own, canon = np.concatenate(own), np.concatenate(canon)
    assert own.mean() < 0.5 and own.max() < 3.0, (own.mean(0), own.max(0))
    assert (canon.mean(0) < [6, 10, 3]).all() and canon.max() < 20, (canon.mean(0), canon.max(0))


def test_failed_frames_are_marked_and_interpolated():
    rng = np.random.default_rng(2)
    lm, xy, truth = _clip(rng, 0)
    xy = xy.copy()
    xy[10] = np.nan  # the detector lost the face
    xy[20, :, 0] = rng.uniform(0, 1, xy.shape[1])  # garbage points: high reprojection error
    tr = pose.estimate(xy, lm, sigma=0)
    assert list(np.flatnonzero(~tr.fit_ok)) == [10, 20]
    for f in (10, 20):
        np.testing.assert_allclose(tr.pose[f, :3], (tr.pose[f - 1, :3] + tr.pose[f + 1, :3]) / 2,
                                   atol=1e-5)


def test_mediapipe_indices_map_to_named_points():
    mesh = np.zeros((478, 3))
    for i, name in enumerate(landmarks.NAMES):
        for j in pose.MEDIAPIPE_POINTS[name]:
            mesh[j, :2] = (i / 10, 1 - i / 10)
    np.testing.assert_allclose(pose.from_mediapipe(mesh),
                               [(i / 10, 1 - i / 10) for i in range(len(landmarks.NAMES))])
    assert schema.POSE_DIM == 6
