"""Make schema records of the built-in corpus from (identity, seed).

Every random choice comes from a numpy Generator keyed by (seed, purpose, id_label, index)
through SeedSequence spawn keys, so any record can be regenerated alone, in any process,
in any order, bit for bit (speech included: see espeak_server.py).

Camera: pinhole at the origin looking down -z; the head centre sits NOMINAL_DISTANCE away,
HEAD_Y above the optical axis. Video clips: a static camera, the torso drifts slightly and
the head turns on the neck (key light fixed to the camera). Multi-view sets: the camera
orbits the head centre of a frozen instant (key light fixed to the head, as in a capture
rig).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_pipelines import schema
from data_pipelines.schema import SAMPLES_PER_FRAME, pose_to_matrix
from data_pipelines.synthetic import heads, motion, speech, visemes
from data_pipelines.synthetic.render import Camera, project, render

NOMINAL_DISTANCE = 8.0
TAN_HALF_FOV = 0.14
HEAD_Y = -0.1
_IDENTITY, _VIDEO, _MULTIVIEW, _NOVEL = 1, 2, 3, 4
SUPERSAMPLE = 2  # per-axis anti-aliasing factor


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


@dataclass
class Person:
    """An identity plus its voice (voice, base rate, base pitch)."""
    label: int
    ident: heads.Identity
    voice: str
    rate: int
    pitch: int

    @property
    def head(self) -> heads.HeadModel:
        return heads.HeadModel(self.ident)


def make_person(seed: int, label: int, voices: tuple[str, ...]) -> Person:
    rng = _rng(seed, _IDENTITY, label)
    ident = heads.sample_identity(rng)
    voice = voices[int(rng.integers(len(voices)))]
    return Person(label, ident, voice, int(rng.integers(140, 190)), int(rng.integers(30, 70)))


def _background(rng, n, res) -> np.ndarray:
    """A per-sample colour or vertical/diagonal gradient -> float32 [n,res,res,3]."""
    c0 = rng.uniform(0.1, 0.9, 3)
    c1 = np.clip(c0 + rng.normal(0, 0.25, 3), 0, 1) if rng.random() < 0.7 else c0
    ang = rng.uniform(-0.6, 0.6)
    y, x = np.mgrid[0:res, 0:res] / max(res - 1, 1)
    w = np.clip(np.cos(ang) * y + np.sin(ang) * x, 0, 1)[..., None]
    bg = (c0 * (1 - w) + c1 * w).astype(np.float32)
    return np.broadcast_to(bg, (n, res, res, 3))


def _light(rng) -> tuple[np.ndarray, float]:
    d = np.array([rng.uniform(-0.7, 0.7), rng.uniform(0.2, 0.8), 1.0])
    return (d / np.linalg.norm(d)).astype(np.float32), float(rng.uniform(0.3, 0.45))


def _pose_and_box(cam: Camera, mouth_pts: np.ndarray, ypr: np.ndarray):
    """-> pose [F,6] (schema convention) and mouth_box [F,4] (y0,x0,y1,x1)."""
    p = cam.head_pos
    depth = -p[:, 2]
    pose = np.concatenate([ypr, (p[:, 0] / (depth * TAN_HALF_FOV))[:, None],
                           (-p[:, 1] / (depth * TAN_HALF_FOV))[:, None],
                           (NOMINAL_DISTANCE / depth)[:, None]], -1).astype(np.float32)
    pts = np.einsum("fij,fkj->fki", cam.head_rot, mouth_pts) + p[:, None, :]
    xy = project(pts, TAN_HALF_FOV)  # [F,8,2]
    box = np.stack([xy[..., 1].min(1), xy[..., 0].min(1), xy[..., 1].max(1), xy[..., 0].max(1)], -1)
    return pose, np.clip(box, 0.0, 1.0).astype(np.float32)


def render_frames(person: Person, expr, gaze, cam, light_cam, bg, cloth, res, ss=SUPERSAMPLE,
                  return_ids=False):
    """Render one identity for F frames; -> (frames uint8 [F,res,res,3], mouth points, ids)."""
    prims, cavity, albedo_fn, mouth_pts = person.head.scene(expr, gaze, cloth)
    out = render(prims, cavity, cam, res, res, albedo_fn, light_cam, bg, ambient=0.45, ss=ss,
                 return_ids=return_ids)
    frames, ids = out if return_ids else (out, None)
    return frames, mouth_pts, ids


def video_camera(traj: dict) -> tuple[Camera, np.ndarray]:
    """Head turning on the neck in front of a static camera -> (Camera, ypr [F,3])."""
    ypr = np.stack([traj["yaw"], traj["pitch"], traj["roll"]], -1)
    rot = pose_to_matrix(ypr).astype(np.float32)
    n = rot.shape[0]
    body_pos = np.stack([traj["body_dx"], HEAD_Y + traj["body_dy"],
                         -NOMINAL_DISTANCE / traj["body_scale"]], -1).astype(np.float32)
    pivot = heads.NECK_PIVOT
    head_pos = body_pos + pivot - np.einsum("fij,j->fi", rot, pivot)
    eye = np.broadcast_to(np.eye(3, dtype=np.float32), (n, 3, 3))
    return Camera(rot, head_pos.astype(np.float32), eye, body_pos, TAN_HALF_FOV), ypr


def view_camera(ypr: np.ndarray) -> Camera:
    """Cameras orbiting the head centre: the whole scene turns by the view rotation."""
    rot = pose_to_matrix(ypr).astype(np.float32)
    pos = np.broadcast_to(np.array([0.0, HEAD_Y, -NOMINAL_DISTANCE], np.float32),
                          (rot.shape[0], 3)).copy()
    return Camera(rot, pos, rot, pos, TAN_HALF_FOV)


def _clip_audio(rng, person: Person, clip_seconds: tuple[float, float]):
    """Speak a random sentence; -> (audio [F*640], viseme segments, text, n_frames)."""
    target = rng.uniform(*clip_seconds)
    rate = int(np.clip(person.rate + rng.integers(-15, 16), 120, 220))
    n_words = max(4, int(round((target - 0.6) * rate / 60 * 1.1)))
    text = speech.random_sentence(rng, n_words)
    utt = speech.synthesize(text, person.voice, rate, int(np.clip(person.pitch + rng.integers(-8, 9), 0, 99)),
                            int(rng.integers(30, 80)))
    lead = int(rng.uniform(0.15, 0.45) * schema.SAMPLE_RATE)
    trail = int(rng.uniform(0.2, 0.45) * schema.SAMPLE_RATE)
    total = lead + utt.audio.shape[0] + trail
    n_frames = int(np.clip(-(-total // SAMPLES_PER_FRAME), clip_seconds[0] * schema.FPS,
                           clip_seconds[1] * schema.FPS))
    audio = np.zeros(n_frames * SAMPLES_PER_FRAME, np.float32)
    seg = utt.audio[: max(0, audio.shape[0] - lead)]
    peak = rng.uniform(0.5, 0.95) / max(np.abs(utt.audio).max(), 1e-6)
    audio[lead:lead + seg.shape[0]] = seg * peak
    audio += rng.normal(0, 1e-3, audio.shape).astype(np.float32)  # -60 dBFS noise floor
    audio = np.clip(audio, -1.0, 1.0)
    segs = visemes.segments_from_phonemes(utt.phonemes, lead, audio.shape[0])
    return audio, segs, text, n_frames


def _video_scene(seed: int, person: Person, clip: int, res: int, clip_seconds) -> dict:
    """Everything of one talking clip but the camera: audio, expression, head trajectory,
    light, background, clothing (the draws of ``make_video_record``, in its order)."""
    rng = _rng(seed, _VIDEO, person.label, clip)
    audio, segs, text, n = _clip_audio(rng, person, clip_seconds)
    mouth = visemes.mouth_params(segs, n)  # [F,3]
    env = motion.speech_envelope(audio)
    traj = motion.head_trajectory(rng, n, env, liveliness=rng.uniform(0.5, 1.2))
    expr = np.concatenate([mouth, motion.blinks(rng, n, rng.uniform(2.5, 5.0))[:, None]], -1)
    gz = motion.gaze(rng, n, traj["yaw"])
    light, _ = _light(rng)
    bg = _background(rng, n, res)
    cloth = rng.uniform(0.05, 0.9, 3).astype(np.float32)
    return dict(audio=audio, segs=segs, text=text, n=n, traj=traj, expr=expr, gaze=gz,
                light=light, bg=bg, cloth=cloth)


def _render_video(sc: dict, person: Person, cam: Camera, ypr: np.ndarray, light_cam, key: str,
                  seed: int, res: int, ss: int) -> dict:
    frames, mouth_pts, _ = render_frames(person, sc["expr"], sc["gaze"], cam, light_cam, sc["bg"],
                                         sc["cloth"], res, ss)
    pose, box = _pose_and_box(cam, mouth_pts, ypr)
    return _record(schema.KIND_VIDEO, key, seed, person, frames, sc["audio"], pose,
                   visemes.frame_labels(sc["segs"], sc["n"]), box, sc["expr"], sc["text"])


def make_video_record(seed: int, person: Person, clip: int, res: int,
                      clip_seconds=(3.0, 4.0), ss: int = SUPERSAMPLE) -> dict:
    """Stream (a): a monocular talking clip with audio."""
    sc = _video_scene(seed, person, clip, res, clip_seconds)
    cam, ypr = video_camera(sc["traj"])
    light_cam = np.broadcast_to(sc["light"], (sc["n"], 3))
    return _render_video(sc, person, cam, ypr, light_cam, f"video/id{person.label:05d}/c{clip:03d}",
                         seed, res, ss)


def novel_camera_path(rng: np.random.Generator, n: int) -> np.ndarray:
    """A second camera's rotation about the head centre over a clip -> ypr [n,3] (radians):
    a yaw offset of 20-35 degrees to a random side plus a slow sweep, a small pitch offset.
    Smooth (motion.smooth_noise), like the head trajectories."""
    deg = np.pi / 180
    side = 1.0 if rng.random() < 0.5 else -1.0
    yaw = side * rng.uniform(20, 35) * deg + motion.smooth_noise(rng, n, 12 * deg, 0.1, 0.4)
    pitch = rng.uniform(-8, 8) * deg + motion.smooth_noise(rng, n, 4 * deg, 0.1, 0.4)
    roll = motion.smooth_noise(rng, n, 2 * deg, 0.1, 0.3)
    return np.stack([yaw, pitch, roll], -1).astype(np.float32)


def make_novel_view_record(seed: int, person: Person, clip: int, res: int,
                           clip_seconds=(3.0, 4.0), ss: int = SUPERSAMPLE) -> dict:
    """The clip ``make_video_record(seed, person, clip, ...)`` (same speech, expression, head
    motion, light and background) seen by a second camera that moves along
    ``novel_camera_path`` around the head centre: the free-viewpoint test's truth. Its key is
    the first camera's key + ``/novel``; its poses are the head relative to the second camera."""
    sc = _video_scene(seed, person, clip, res, clip_seconds)
    cam0, ypr0 = video_camera(sc["traj"])
    c = pose_to_matrix(novel_camera_path(_rng(seed, _NOVEL, person.label, clip), sc["n"])
                       ).astype(np.float32)                                   # [F,3,3]
    centre = np.array([0.0, HEAD_Y, -NOMINAL_DISTANCE], np.float32)

    def move(pos):   # world (first camera) -> second camera: rotate about the head centre
        return (np.einsum("fij,fj->fi", c, pos - centre) + centre).astype(np.float32)

    cam = Camera(np.einsum("fij,fjk->fik", c, cam0.head_rot).astype(np.float32), move(cam0.head_pos),
                 np.einsum("fij,fjk->fik", c, cam0.body_rot).astype(np.float32), move(cam0.body_pos),
                 TAN_HALF_FOV)
    ypr = schema.matrix_to_pose(cam.head_rot)
    light_cam = np.einsum("fij,j->fi", c, sc["light"]).astype(np.float32)   # the light stays in the world
    return _render_video(sc, person, cam, ypr, light_cam,
                         f"video/id{person.label:05d}/c{clip:03d}/novel", seed, res, ss)


LONG_CLIP_INDEX = 10_000   # clip indices of long clips: far above any preset's clips_per_id


def make_long_video_record(seed: int, person: Person, seconds: float, res: int, index: int = 0,
                           ss: int = SUPERSAMPLE) -> dict:
    """A held-out clip of exactly ``seconds`` (one long sentence, silence after it if it ends
    early) for the long-horizon test: ``make_video_record`` at clip ``LONG_CLIP_INDEX + index``,
    so it never repeats a corpus clip."""
    return make_video_record(seed, person, LONG_CLIP_INDEX + index, res, (seconds, seconds), ss)


def make_multiview_record(seed: int, person: Person, index: int, res: int, views: int = 8,
                          ss: int = SUPERSAMPLE) -> dict:
    """Stream (b): one frozen instant from `views` cameras (yaw +-60 deg, pitch +-20 deg)."""
    rng = _rng(seed, _MULTIVIEW, person.label, index)
    deg = np.pi / 180
    edges = np.linspace(-60, 60, views + 1)
    yaw = rng.uniform(edges[:-1], edges[1:]) * deg  # stratified, then shuffled
    ypr = np.stack([rng.permutation(yaw), rng.uniform(-20, 20, views) * deg,
                    rng.uniform(-4, 4, views) * deg], -1).astype(np.float32)
    vis = int(rng.integers(visemes.NUM_VISEMES)) if rng.random() < 0.7 else visemes.SIL
    mouth = np.clip(visemes.TARGETS[vis] + rng.normal(0, 0.05, 3), 0, 1)
    blink = 0.0 if rng.random() < 0.85 else rng.uniform(0.2, 0.6)
    expr = np.broadcast_to(np.append(mouth, blink).astype(np.float32), (views, 4)).copy()
    gz = np.broadcast_to(np.array([rng.normal(0, 0.1), rng.normal(0, 0.06)], np.float32),
                         (views, 2))
    cam = view_camera(ypr)
    light, _ = _light(rng)
    light_cam = np.einsum("fij,j->fi", cam.head_rot, light).astype(np.float32)
    bg = _background(rng, views, res)
    cloth = rng.uniform(0.05, 0.9, 3).astype(np.float32)
    frames, mouth_pts, _ = render_frames(person, expr, gz, cam, light_cam, bg, cloth, res, ss)
    pose, box = _pose_and_box(cam, mouth_pts, ypr)
    return _record(schema.KIND_MULTIVIEW, f"multiview/id{person.label:05d}/s{index:03d}", seed,
                   person, frames, np.zeros(0, np.float32), pose,
                   np.full(views, vis, np.int32), box, expr, "")


def _record(kind, key, seed, person, frames, audio, pose, vis, box, expr, text) -> dict:
    rec = {
        "kind": kind, "key": f"synthetic/s{seed}/{key}", "source": "synthetic",
        "frames": frames, "audio": audio.astype(np.float32), "pose": pose, "pose_valid": True,
        "viseme": vis.astype(np.int32), "mouth_box": box, "expression": expr.astype(np.float32),
        "expression_valid": True, "id_vector": person.ident.vector(), "id_vector_valid": True,
        "id_embedding": np.zeros(0, np.float32), "id_label": int(person.label),
        "voice": person.voice if kind == schema.KIND_VIDEO else "", "text": text,
        "fps": schema.FPS, "sample_rate": schema.SAMPLE_RATE,
    }
    schema.validate(rec)
    return rec
