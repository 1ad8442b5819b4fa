"""Grain pipelines: per-stream batches, mixing, state, sharding, pose/flip, corrupt records.

Tiny records are made in-memory with the schema's own skeleton (``schema.empty_like_real``)
and serialiser (``schema.encode``); the video stream is written to a real ArrayRecord file
(read through ``grain.sources.ArrayRecordDataSource``), the multi-view stream is an
in-memory list of blobs.
"""
from __future__ import annotations

import math

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from configs.common import base_config
from data_pipelines import schema, sources
from data_pipelines import transforms as T
from data_pipelines.pipeline import STREAM_IDS, make_train_iterator, to_global_batch
from data_pipelines.synthetic import tfds_builder as tb

RES = 16
S = schema.SAMPLES_PER_FRAME


def make_record(kind: int, n: int, label: int, seed: int, res: int = RES) -> dict:
    r = np.random.default_rng(seed)
    x = schema.empty_like_real(r.integers(0, 256, (n, res, res, 3), dtype=np.uint8), kind)
    pose = np.concatenate([r.uniform(-0.4, 0.4, (n, 3)), r.uniform(-0.2, 0.2, (n, 2)),
                           r.uniform(0.8, 1.2, (n, 1))], 1).astype(np.float32)
    y0, x0 = r.uniform(0.5, 0.6, n), r.uniform(0.2, 0.4, n)
    box = np.stack([y0, x0, y0 + 0.2, x0 + 0.25], 1).astype(np.float32)
    x.update(key=f"test/{kind}/{label}", source="synthetic", pose=pose, pose_valid=True,
             viseme=r.integers(0, schema.NUM_VISEMES, n).astype(np.int32), mouth_box=box,
             id_vector=np.full(schema.ID_DIM, label, np.float32), id_vector_valid=True,
             id_label=label)
    if kind == schema.KIND_VIDEO:  # audio of frame f is the constant (f + 1) / 100
        x["audio"] = np.repeat((np.arange(n, dtype=np.float32) + 1) / 100, S)
    return x


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    video = [schema.encode(make_record(0, 9 + i % 3, i, i)) for i in range(12)]
    path = sources.write_array_record(str(d / "video-train.array_record"), video)
    multiview = [schema.encode(make_record(1, 5, 100 + i, 1000 + i)) for i in range(6)]
    return {"video": path, "multiview": multiview}


def cfg(corpus, **kw):
    c = dict(base_config("micro").data.to_dict(), batch_size=2, num_frames=4, context_frames=1,
             num_views=4, resolution=RES, mixture={"video": 0.7, "multiview": 0.3}, hflip=True,
             audio_window=2, seed=3, sources=dict(corpus))
    c.update(kw)
    return c


def take(it, n):
    return [next(it) for _ in range(n)]


def test_batch_shapes_dtypes_per_stream(corpus):
    it = make_train_iterator(cfg(corpus), process_index=0, process_count=1)
    seen = set()
    w = 2
    for b in take(it, 20):
        s = int(b["stream"][0])
        assert (b["stream"] == s).all(), "a batch mixes streams"
        seen.add(s)
        t = 5 if s == STREAM_IDS["video"] else 4
        want = {"stream": ((2,), np.int32), "frames": ((2, t, RES, RES, 3), np.float32),
                "audio": ((2, (t + 2 * w) * S), np.float32), "has_audio": ((2,), np.bool_),
                "pose": ((2, t, 6), np.float32), "pose_valid": ((2,), np.bool_),
                "viseme": ((2, t), np.int32), "mouth_box": ((2, t, 4), np.float32),
                "expression": ((2, t, 4), np.float32), "expression_valid": ((2,), np.bool_),
                "identity": ((2, schema.ID_DIM), np.float32),
                "identity_is_embedding": ((2,), np.bool_),
                "id_vector": ((2, schema.ID_DIM), np.float32),
                "id_vector_valid": ((2,), np.bool_), "id_label": ((2,), np.int32),
                "window_start": ((2,), np.int32), "flipped": ((2,), np.bool_)}
        assert set(b) == set(want) == set(T.EXAMPLE_KEYS)
        for k, (shape, dtype) in want.items():
            assert b[k].shape == shape and b[k].dtype == dtype, (k, b[k].shape, b[k].dtype)
        assert b["frames"].min() >= -1 and b["frames"].max() <= 1
        if s == STREAM_IDS["multiview"]:
            assert not b["has_audio"].any() and (b["audio"] == 0).all()
            assert (b["viseme"] == -1).all() and (b["window_start"] == -1).all()
        else:
            assert b["has_audio"].all() and (b["viseme"] >= 0).all()
    assert seen == {0, 1}
    assert it.skipped == {"video": {}, "multiview": {}}


def test_audio_aligned_to_window_with_zero_padded_margin(corpus):
    it = make_train_iterator(cfg(corpus, mixture={"video": 1.0}), process_index=0,
                             process_count=1)
    w, t = 2, 5
    edges = 0
    for b in take(it, 30):
        for a, s, lab in zip(b["audio"], b["window_start"], b["id_label"]):
            n = 9 + int(lab) % 3
            per_frame = a.reshape(t + 2 * w, S)
            assert (per_frame == per_frame[:, :1]).all()
            for j in range(t + 2 * w):
                f = int(s) - w + j  # record frame of audio frame j
                want = (f + 1) / 100 if 0 <= f < n else 0.0
                edges += not 0 <= f < n
                np.testing.assert_allclose(per_frame[j, 0], want, rtol=1e-6)
    assert edges > 0  # some windows touched a clip edge: zero padding was exercised


def test_mixture_proportions(corpus):
    n, p = 200, 0.7
    it = make_train_iterator(cfg(corpus, hflip=False), process_index=0, process_count=1)
    k = sum(int(next(it)["stream"][0]) == STREAM_IDS["video"] for _ in range(n))
    tol = 4 * math.sqrt(n * p * (1 - p))  # 4 binomial std (~26 batches)
    assert abs(k - n * p) <= tol, (k, n * p, tol)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_state_round_trip(corpus):
    it = make_train_iterator(cfg(corpus), process_index=0, process_count=1)
    take(it, 7)
    state = it.get_state()
    ref = take(it, 6)
    it2 = make_train_iterator(cfg(corpus), process_index=0, process_count=1)
    it2.set_state(state)
    _assert_same(take(it2, 6), ref)


def test_state_round_trip_orbax(corpus, tmp_path):

    it = make_train_iterator(cfg(corpus), process_index=0, process_count=1)
    take(it, 5)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt",
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2))
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    ref = take(it, 6)
    it2 = make_train_iterator(cfg(corpus), process_index=0, process_count=1)
    mngr.restore(mngr.latest_step(),
                 args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    _assert_same(take(it2, 6), ref)
    mngr.close()


@pytest.mark.parametrize("pc", [1, 3])
def test_process_shards_disjoint_and_complete(corpus, pc):
    n = 12  # video records, id_label 0..11
    shards = []
    for pi in range(pc):
        c = cfg(corpus, mixture={"video": 1.0}, batch_size=pc, hflip=False)
        it = make_train_iterator(c, process_index=pi, process_count=pc)
        size = len(range(pi, n, pc))
        labels = [int(next(it)["id_label"][0]) for _ in range(size)]  # one epoch, batch 1
        assert len(set(labels)) == size, "an epoch repeated a record"
        shards.append(set(labels))
    for i in range(pc):
        for j in range(i + 1, pc):
            assert not shards[i] & shards[j]
    assert set().union(*shards) == set(range(n))


def _example(kind=0, seed=0):
    rec = schema.decode(schema.encode(make_record(kind, 9, 1, seed)))
    ex = T.VideoWindow(5, 2).random_map(rec, np.random.default_rng(0))
    return rec, ex


def test_flip_mirrors_pose_and_boxes():
    rec, ex = _example()
    rel = T.RelativePose().map(ex)
    kept = T.RandomHFlip(0.0).random_map(rel, np.random.default_rng(1))
    flip = T.RandomHFlip(1.0).random_map(rel, np.random.default_rng(1))
    assert not kept["flipped"] and flip["flipped"]
    np.testing.assert_array_equal(flip["frames"], rel["frames"][:, :, ::-1])
    p, q = rel["pose"], flip["pose"]
    np.testing.assert_allclose(q[:, [0, 2, 3]], -p[:, [0, 2, 3]])
    np.testing.assert_allclose(q[:, [1, 4, 5]], p[:, [1, 4, 5]])
    b, c = rel["mouth_box"], flip["mouth_box"]
    np.testing.assert_allclose(c, np.stack([b[:, 0], 1 - b[:, 3], b[:, 2], 1 - b[:, 1]], 1))
    assert (c[:, 1] <= c[:, 3]).all()
    # Mirroring commutes with the relative pose (both modes).
    for mode in ("compose", "subtract"):
        np.testing.assert_allclose(T.relative_pose(T.mirror_pose(ex["pose"]), mode),
                                   T.mirror_pose(T.relative_pose(ex["pose"], mode)), atol=1e-5)
    # Flip twice = identity; and normalisation maps uint8 to [-1, 1].
    np.testing.assert_array_equal(T.hflip(flip)["frames"], rel["frames"])
    out = T.Normalize(RES).map(flip)
    assert out["frames"].dtype == np.float32
    np.testing.assert_allclose(out["frames"], flip["frames"] / 127.5 - 1, atol=1e-6)


def test_relative_pose_first_frame_is_identity(corpus):
    for mode in ("compose", "subtract"):
        it = make_train_iterator(cfg(corpus, pose_mode=mode), process_index=0,
                                 process_count=1)
        for b in take(it, 10):
            assert b["pose_valid"].all()
            np.testing.assert_allclose(b["pose"][:, 0], np.tile([0, 0, 0, 0, 0, 1], (2, 1)),
                                       atol=1e-6)
            assert np.abs(b["pose"][:, 1:, :5]).max() > 1e-3  # not all identity
    # compose mode = schema.relative_pose of the window (first frame the reference)
    rec, ex = _example()
    s = int(ex["window_start"])
    np.testing.assert_allclose(T.RelativePose().map(ex)["pose"],
                               schema.relative_pose(rec["pose"][s:s + 5]), atol=1e-6)
    np.testing.assert_allclose(T.RelativePose("subtract").map(ex)["pose"][:, :3],
                               rec["pose"][s:s + 5, :3] - rec["pose"][s, :3], atol=1e-6)


def test_corrupt_records_skipped_and_counted(corpus, tmp_path):
    good = [schema.encode(make_record(0, 9, i, i)) for i in range(4)]
    bad_fields = make_record(0, 9, 50, 50)
    bad_fields["mouth_box"] = bad_fields["mouth_box"] + 5  # out of [0, 1]
    blobs = good + [
        b"not a record",                                          # decode_error (magic)
        good[0][:len(good[0]) // 2],                              # decode_error (truncated)
        schema.encode(bad_fields, check=False),                   # invalid_record
        schema.encode(make_record(0, 3, 51, 51)),                 # too_short (< F + K = 5)
        schema.encode(make_record(1, 5, 52, 52)),                 # other_kind
        schema.encode(make_record(0, 9, 53, 53, res=12)),         # bad_resolution
    ]
    path = sources.write_array_record(str(tmp_path / "video-bad.array_record"), blobs)
    c = cfg(corpus, mixture={"video": 1.0}, sources={"video": path}, hflip=False)
    it = make_train_iterator(c, process_index=0, process_count=1)
    labels = {int(x) for b in take(it, 12) for x in b["id_label"]}  # 3 epochs of 4 good
    assert labels == {0, 1, 2, 3}
    sk = it.skipped["video"]
    assert sk["decode_error"] >= 2 and sk["decode_error"] % 2 == 0
    for reason in ("invalid_record", "too_short", "other_kind", "bad_resolution"):
        assert sk[reason] >= 1, (reason, sk)
    # A source that raises on read is a skip too, never a crash.

    class Flaky:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            if i == 1:
                raise OSError("disk")
            return good[i]

    src = sources.RecordSource(Flaky(), "video", min_frames=5)
    assert src[1] is None and src[0] is not None and src.skipped == {"read_error": 1}


def test_resolution_downsample(corpus):
    rec = make_record(0, 9, 7, 7, res=2 * RES)
    c = cfg(corpus, mixture={"video": 1.0}, sources={"video": [schema.encode(rec)]},
            batch_size=1)
    b = next(make_train_iterator(c, process_index=0, process_count=1))
    assert b["frames"].shape == (1, 5, RES, RES, 3)


def test_to_global_batch(corpus):

    devs = np.array(jax.devices())
    nb = len(devs)
    it = make_train_iterator(cfg(corpus, batch_size=nb), process_index=0, process_count=1)
    b = next(it)
    sh = NamedSharding(Mesh(devs, ("data",)), P("data"))
    g = to_global_batch(b, sh)
    assert set(g) == set(b)
    for k in b:
        assert isinstance(g[k], jax.Array) and g[k].shape == b[k].shape
        assert g[k].sharding == sh
        np.testing.assert_array_equal(np.asarray(g[k]), b[k])


def test_multiprocess_prefetch_matches_in_process(corpus):

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    ref_it = make_train_iterator(cfg(corpus), process_index=0, process_count=1)
    ref = take(ref_it, 8)
    it = make_train_iterator(cfg(corpus, num_workers=1), process_index=0, process_count=1)
    try:
        got = take(it, 4)
        state = it.get_state()
        _assert_same(got, ref[:4])
    finally:
        it.close()
    it2 = make_train_iterator(cfg(corpus, num_workers=1), process_index=0, process_count=1)
    try:
        it2.set_state(state)
        _assert_same(take(it2, 4), ref[4:])
    finally:
        it2.close()


def test_builtin_corpus_tfds_builder(tmp_path):
    """The real thing: the built-in corpus' TFDS builder (tiny preset, ArrayRecord shards),
    found from ``data.root`` and read at splits ``train_video`` / ``train_multiview``."""
    builder = tb.build(str(tmp_path / "tfds"), tb.make_config("tiny"))
    res = builder.builder_config.resolution
    c = dict(base_config("micro").data.to_dict(), batch_size=2, num_frames=4, context_frames=1,
             num_views=4, resolution=res, mixture={"video": 0.5, "multiview": 0.5},
             root=str(tmp_path / "tfds"), seed=0, audio_window=2)
    it = make_train_iterator(c, process_index=0, process_count=1)
    seen = set()
    for b in take(it, 8):
        s = int(b["stream"][0])
        seen.add(s)
        t = 5 if s == 0 else 4
        assert b["frames"].shape == (2, t, res, res, 3) and b["frames"].dtype == np.float32
        assert b["audio"].shape == (2, (t + 4) * S)
        np.testing.assert_allclose(b["pose"][:, 0], np.tile([0, 0, 0, 0, 0, 1], (2, 1)),
                                   atol=1e-5)
        assert b["has_audio"].all() == (s == 0)
        if s == 0:
            rms = np.sqrt(np.mean(np.square(b["audio"]), axis=1))       # [B]: every clip speaks
            assert (rms > 1e-3).all(), rms
    assert seen == {0, 1}
    assert it.skipped == {"video": {}, "multiview": {}}
    # The same builder object as an explicit source spec.
    it2 = make_train_iterator(dict(c, root="", sources={"video": builder, "multiview": builder}),
                              process_index=0, process_count=1)
    _assert_same(take(it2, 3), take(make_train_iterator(c, process_index=0, process_count=1), 3))


def test_logical_shards_give_the_same_global_batches_on_any_process_count(corpus):
    """data.num_shards fixes the global data order: 1 process reading both shards yields the
    concatenation of what 2 processes read (the 2-process == 1-process training test needs it)."""
    c = cfg(corpus, batch_size=4, num_shards=2)
    one = take(make_train_iterator(c, process_index=0, process_count=1), 6)
    parts = [take(make_train_iterator(c, process_index=i, process_count=2), 6) for i in range(2)]
    for g, a, b in zip(one, *parts):
        assert len(set(g["stream"].tolist())) == 1            # still one stream per batch
        for k in g:
            np.testing.assert_array_equal(g[k], np.concatenate([a[k], b[k]]), err_msg=k)
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        make_train_iterator(cfg(corpus, batch_size=4, num_shards=3), process_index=0, process_count=2)
