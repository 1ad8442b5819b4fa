"""The one record schema shared by the built-in corpus and ingested real data.

Two record kinds share every field; the frame axis ``F`` carries **time** (a monocular
talking clip, stream (a)) or **views** (a multi-view set of one frozen instant, stream (b)),
exactly as the denoiser's frame axis does (DESIGN.md §2-§3).

Fields (``F`` frames or views, ``H x W`` image, ``S = 640`` audio samples per frame)::

    name              dtype    shape        meaning
    kind              int      ()           KIND_VIDEO (0) or KIND_MULTIVIEW (1)
    key               str      ()           unique record id, e.g. "synthetic/s0/video/id0007/c003"
    source            str      ()           "synthetic" or "ingest:<relative path>"
    frames            uint8    [F,H,W,3]    RGB frames (video: 25 fps) or views
    audio             float32  [F*S]        16 kHz mono in [-1,1], frame f <-> audio[f*S:(f+1)*S];
                                            shape [0] for multi-view records
    pose              float32  [F,6]        absolute head-in-camera pose per frame/view:
                                            (yaw, pitch, roll) radians, (tx, ty, scale)
    pose_valid        bool     ()           False when no pose could be estimated
    viseme            int32    [F]          viseme class per frame (visemes.VISEMES), -1 unknown;
                                            multi-view: the frozen instant's viseme per view
    mouth_box         float32  [F,4]        (y0, x0, y1, x1), normalised to [0,1], y down
    expression        float32  [F,4]        (mouth open, width, rounding, eyelid closure) in [0,1]
    expression_valid  bool     ()           False for real data
    id_vector         float32  [ID_DIM]     ground-truth identity vector (L2-normalised);
                                            zeros for real data
    id_vector_valid   bool     ()           False for real data
    id_embedding      float32  [E]          precomputed face-recognition embedding (E=512 for
                                            ArcFace); shape [0] when absent (synthetic)
    id_label          int64    ()           identity index, unique within a dataset
    voice             str      ()           TTS voice (synthetic) or "" (real)
    text              str      ()           spoken sentence, "" if unknown
    fps               int      ()           25
    sample_rate       int      ()           16000

Pose convention (the 6-d view signal, DESIGN.md §2): the rotation is the head's orientation
in the camera frame, R = Ry(yaw) @ Rx(-pitch) @ Rz(roll) with camera x right, y up, z towards
the viewer; yaw > 0 turns the face towards image right, pitch > 0 tilts it up, roll > 0 turns
it counter-clockwise in the image. (tx, ty) is the projected head centre in units of the
image half-size (x right, y down, 0 = centre); scale is the apparent head size relative to
the nominal framing. Loaders compute the pose relative to the window's first frame; a
horizontal flip maps (yaw, pitch, roll, tx, ty, s) -> (-yaw, pitch, -roll, -tx, ty, s) and
(y0, x0, y1, x1) -> (y0, 1-x1, y1, 1-x0).

Storage: ``encode`` gives one self-describing, deterministic blob (magic, JSON header,
raw or zlib array payloads). TFDS stores it as the single feature ``record`` (a one-key
tf.Example, so the bytes stay deterministic: multi-key tf.Example maps serialise in an
unspecified order) and ingestion may write the same blobs straight to ArrayRecord.
``decode`` accepts the blob, a TFDS example dict ``{"record": blob}``, or a raw entry of a
TFDS ArrayRecord shard (e.g. from ``grain.sources.ArrayRecordDataSource``). Decoded arrays are
read-only views into the blob: copy before writing in place.
"""
from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

KIND_VIDEO = 0
KIND_MULTIVIEW = 1
KINDS = {KIND_VIDEO: "video", KIND_MULTIVIEW: "multiview"}
FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
ID_DIM = 48  # length of the synthetic ground-truth identity vector (heads.py fills it)
POSE_DIM = 6
NUM_VISEMES = 15  # visemes.VISEMES; kept here so readers need not import the generator

# name -> (dtype, trailing shape after the frame axis, or None for non-frame arrays)
ARRAY_FIELDS: dict[str, tuple[np.dtype, tuple[int, ...] | None]] = {
    "frames": (np.dtype(np.uint8), None),  # [F,H,W,3], checked separately
    "audio": (np.dtype(np.float32), None),  # [F*640] or [0]
    "pose": (np.dtype(np.float32), (POSE_DIM,)),
    "viseme": (np.dtype(np.int32), ()),
    "mouth_box": (np.dtype(np.float32), (4,)),
    "expression": (np.dtype(np.float32), (4,)),
    "id_vector": (np.dtype(np.float32), None),  # [ID_DIM]
    "id_embedding": (np.dtype(np.float32), None),  # [E] or [0]
}
SCALAR_FIELDS: dict[str, type] = {
    "kind": int, "key": str, "source": str, "pose_valid": bool, "expression_valid": bool,
    "id_vector_valid": bool, "id_label": int, "voice": str, "text": str, "fps": int,
    "sample_rate": int,
}
FIELDS = tuple(ARRAY_FIELDS) + tuple(SCALAR_FIELDS)

_MAGIC = b"SCR1"
# Arrays that compress well are deflated; float signals are stored raw (zlib gains ~10%).
_ZLIB_FIELDS = {"frames": 3, "viseme": 6}


def _fail(field: str, expect: str, got: Any) -> None:
    raise ValueError(f"record field '{field}': expected {expect}, got {got}")


def validate(record: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first field that breaks the schema."""
    for name in FIELDS:
        if name not in record:
            _fail(name, "present", "missing")
    for name, typ in SCALAR_FIELDS.items():
        v = record[name]
        ok = isinstance(v, (bool, np.bool_)) if typ is bool else (
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
            if typ is int else isinstance(v, str))
        if not ok:
            _fail(name, typ.__name__, f"{type(v).__name__} {v!r}")
    kind = int(record["kind"])
    if kind not in KINDS:
        _fail("kind", f"one of {sorted(KINDS)}", kind)
    if record["fps"] != FPS:
        _fail("fps", str(FPS), record["fps"])
    if record["sample_rate"] != SAMPLE_RATE:
        _fail("sample_rate", str(SAMPLE_RATE), record["sample_rate"])
    for name, (dtype, _) in ARRAY_FIELDS.items():
        a = record[name]
        if not isinstance(a, np.ndarray):
            _fail(name, f"numpy array of {dtype}", type(a).__name__)
        if a.dtype != dtype:
            _fail(name, f"dtype {dtype}", a.dtype)
    fr = record["frames"]
    if fr.ndim != 4 or fr.shape[-1] != 3 or min(fr.shape) < 1:
        _fail("frames", "shape [F,H,W,3] with F,H,W >= 1", fr.shape)
    n = fr.shape[0]
    for name, (_, trail) in ARRAY_FIELDS.items():
        if trail is not None and record[name].shape != (n, *trail):
            _fail(name, f"shape {(n, *trail)}", record[name].shape)
    audio = record["audio"]
    want_audio = (n * SAMPLES_PER_FRAME,) if kind == KIND_VIDEO else (0,)
    if audio.shape != want_audio:
        _fail("audio", f"shape {want_audio} for a {KINDS[kind]} record", audio.shape)
    if audio.size and not (np.isfinite(audio).all() and np.abs(audio).max() <= 1.0):
        _fail("audio", "finite samples in [-1, 1]", f"max |x| {np.abs(audio).max()}")
    if record["id_vector"].shape != (ID_DIM,):
        _fail("id_vector", f"shape ({ID_DIM},)", record["id_vector"].shape)
    if record["id_embedding"].ndim != 1:
        _fail("id_embedding", "shape [E] (E may be 0)", record["id_embedding"].shape)
    if not np.isfinite(record["pose"]).all():
        _fail("pose", "finite values", "non-finite")
    v = record["viseme"]
    if v.size and (v.min() < -1 or v.max() >= NUM_VISEMES):
        _fail("viseme", f"values in [-1, {NUM_VISEMES})", f"[{v.min()}, {v.max()}]")
    box = record["mouth_box"]
    if box.size and (not np.isfinite(box).all() or box.min() < 0 or box.max() > 1
                     or (box[:, 2] < box[:, 0]).any() or (box[:, 3] < box[:, 1]).any()):
        _fail("mouth_box", "(y0,x0,y1,x1) in [0,1] with y0<=y1, x0<=x1", "out of range")
    if record["id_label"] < 0:
        _fail("id_label", ">= 0", record["id_label"])


def encode(record: Mapping[str, Any], check: bool = True) -> bytes:
    """Record dict -> deterministic bytes (same record -> same bytes, on any machine)."""
    if check:
        validate(record)
    header: dict[str, Any] = {"scalars": {}, "arrays": []}
    for name, typ in SCALAR_FIELDS.items():
        header["scalars"][name] = typ(record[name])
    chunks = []
    for name in ARRAY_FIELDS:
        a = np.ascontiguousarray(record[name])
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        codec = "zlib" if name in _ZLIB_FIELDS else "raw"
        data = zlib.compress(raw, _ZLIB_FIELDS[name]) if codec == "zlib" else raw
        header["arrays"].append([name, a.dtype.newbyteorder("<").str, list(a.shape), codec,
                                 len(data)])
        chunks.append(data)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"".join([_MAGIC, struct.pack("<I", len(head)), head, *chunks])


def decode(blob: bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Bytes (or a TFDS example ``{"record": bytes}``) -> record dict of numpy arrays."""
    if isinstance(blob, Mapping):
        blob = blob["record"]
    blob = bytes(blob) if not isinstance(blob, bytes) else blob
    if blob[:4] != _MAGIC and blob[:1] == b"\n":  # a raw TFDS shard entry (tf.Example)
        blob = _unwrap_tf_example(blob)
    if len(blob) < 8 or blob[:4] != _MAGIC:
        raise ValueError("record blob: bad magic (not a STARCaster record)")
    (hlen,) = struct.unpack_from("<I", blob, 4)
    try:
        header = json.loads(blob[8:8 + hlen])
    except ValueError as e:
        raise ValueError(f"record blob: corrupt header ({e})") from None
    out: dict[str, Any] = dict(header["scalars"])
    pos = 8 + hlen
    for name, dtype, shape, codec, nbytes in header["arrays"]:
        data = memoryview(blob)[pos:pos + nbytes]
        if len(data) != nbytes:
            raise ValueError(f"record blob: field '{name}' truncated")
        pos += nbytes
        if codec == "zlib":
            data = zlib.decompress(data)
        arr = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
        out[name] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    return out


_FEATURES = None


def _unwrap_tf_example(raw: bytes) -> bytes:
    """A serialized tf.Example {"record": blob} (TFDS shard entry) -> blob; b"" if not."""
    global _FEATURES
    try:
        if _FEATURES is None:
            _FEATURES = tfds_features()
        return _FEATURES.deserialize_example_np(raw)["record"]
    except Exception:  # not a TFDS example: reported as bad magic by the caller
        return b""


def tfds_features():
    """The TFDS FeaturesDict for builders: one deterministic bytes blob per example."""
    import tensorflow_datasets as tfds  # local: readers of raw ArrayRecord need no TFDS  # noqa: PLC0415 (TensorFlow loads only where TFDS is read)

    return tfds.features.FeaturesDict(
        {"record": tfds.features.Tensor(shape=(), dtype=np.object_)})


def empty_like_real(frames: np.ndarray, kind: int = KIND_VIDEO) -> dict[str, Any]:
    """A schema-valid record skeleton with every 'unknown' field marked as such.

    Ingestion fills frames/audio/pose/mouth_box and flips the flags it can support.
    """
    n = frames.shape[0]
    return {
        "kind": kind, "key": "", "source": "", "frames": frames,
        "audio": np.zeros(n * SAMPLES_PER_FRAME if kind == KIND_VIDEO else 0, np.float32),
        "pose": np.zeros((n, POSE_DIM), np.float32), "pose_valid": False,
        "viseme": np.full((n,), -1, np.int32), "mouth_box": np.zeros((n, 4), np.float32),
        "expression": np.zeros((n, 4), np.float32), "expression_valid": False,
        "id_vector": np.zeros((ID_DIM,), np.float32), "id_vector_valid": False,
        "id_embedding": np.zeros((0,), np.float32), "id_label": 0, "voice": "", "text": "",
        "fps": FPS, "sample_rate": SAMPLE_RATE,
    }


def relative_pose(pose: np.ndarray, ref: int = 0) -> np.ndarray:
    """Absolute poses [F,6] -> poses relative to frame ``ref`` [F,6] (the view signal).

    Rotation: R_rel = R_ref^T R_f re-expressed as (yaw, pitch, roll); translation and scale:
    differences (tx, ty) and ratio (scale), so the reference frame maps to (0,0,0,0,0,1).
    """
    rot = pose_to_matrix(pose[:, :3])  # [F,3,3]
    rel = np.einsum("ji,fjk->fik", rot[ref], rot)
    out = np.empty_like(pose, dtype=np.float32)
    out[:, :3] = matrix_to_pose(rel)
    out[:, 3:5] = pose[:, 3:5] - pose[ref, 3:5]
    out[:, 5] = pose[:, 5] / pose[ref, 5]
    return out


def pose_to_matrix(ypr: np.ndarray) -> np.ndarray:
    """(yaw, pitch, roll) [...,3] -> R = Ry(yaw) Rx(-pitch) Rz(roll) [...,3,3]."""
    y, p, r = (np.asarray(ypr, np.float64)[..., i] for i in range(3))
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(-p), np.sin(-p), np.cos(r), np.sin(r)
    one, zero = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*y.shape, 3, 3)
    rx = np.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*y.shape, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*y.shape, 3, 3)
    return ry @ rx @ rz


def matrix_to_pose(rot: np.ndarray) -> np.ndarray:
    """Inverse of pose_to_matrix for |pitch| < 90 degrees: [...,3,3] -> [...,3]."""
    rot = np.asarray(rot, np.float64)
    # R = Ry(y) Rx(q) Rz(r) with q = -pitch: R[1,2] = -sin q, R[0,2] = sin y cos q,
    # R[2,2] = cos y cos q, R[1,0] = cos q sin r, R[1,1] = cos q cos r.
    q = np.arcsin(np.clip(-rot[..., 1, 2], -1.0, 1.0))
    yaw = np.arctan2(rot[..., 0, 2], rot[..., 2, 2])
    roll = np.arctan2(rot[..., 1, 0], rot[..., 1, 1])
    return np.stack([yaw, -q, roll], -1).astype(np.float32)
