"""Parametric 3D heads: an identity (48 attributes) -> ellipsoid scene + albedo shader.

Why so many attributes: identity must be learnable but not trivial, i.e. no single cue
(skin colour, hair colour) should give it away. Each identity combines head/jaw shape,
skin tone, hair colour/style/volume/hairline/parting, eye size/spacing/height/tilt/iris,
brows, nose, ears, mouth/lips, beard and blush. The ground-truth identity vector is the
normalised attribute vector (schema.ID_DIM = 48 entries).

Head frame: origin at the head centre, x to the subject's left (image right when frontal),
y up, z out of the face; one unit ~ half a head width. The body frame (neck, torso) shares
its origin with the head frame in the neutral pose; the head turns about NECK_PIVOT.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_pipelines.schema import ID_DIM
from data_pipelines.synthetic.render import Prim

# Materials (ids in the rendered id map; MOUTH_MATERIALS make the mouth mask).
SKIN, LIPS, MOUTH_IN, TEETH, TONGUE, EYE, HAIR, BROW, CLOTH, NECK = range(10)
MOUTH_MATERIALS = (LIPS, MOUTH_IN, TEETH, TONGUE)
NECK_PIVOT = np.array([0.0, -0.65, -0.1], np.float32)

CONTINUOUS = (
    "head_width", "head_height", "head_depth", "head_taper", "jaw_width", "jaw_length",
    "chin_forward", "cheek_fullness", "skin_tone", "skin_warmth", "hair_volume", "hairline",
    "hair_part", "hair_length", "eye_size", "eye_spacing", "eye_height", "eye_tilt",
    "iris_size", "lid_droop", "brow_thickness", "brow_tilt", "brow_height", "brow_length",
    "nose_length", "nose_width", "nose_protrusion", "nose_tip", "ear_size", "ear_angle",
    "mouth_width", "lip_thickness", "lip_ratio", "lip_tint", "mouth_height", "beard", "blush",
)  # 37 unit attributes + 3 hair rgb + 3 iris rgb + 5 hair styles = 48
HAIR_STYLES = ("bald", "short", "fringe", "long", "bun")
HAIR_PALETTE = np.array([
    [0.05, 0.04, 0.04], [0.20, 0.12, 0.07], [0.40, 0.25, 0.13], [0.55, 0.23, 0.10],
    [0.85, 0.68, 0.40], [0.62, 0.60, 0.58], [0.90, 0.89, 0.86], [0.25, 0.30, 0.70],
    [0.75, 0.30, 0.55],
], np.float32)
HAIR_WEIGHTS = np.array([0.2, 0.2, 0.15, 0.1, 0.12, 0.08, 0.05, 0.05, 0.05])
IRIS_PALETTE = np.array([
    [0.30, 0.17, 0.08], [0.45, 0.32, 0.15], [0.30, 0.45, 0.25], [0.25, 0.45, 0.75],
    [0.50, 0.55, 0.60], [0.12, 0.08, 0.06],
], np.float32)
SKIN_RAMP = np.array([[1.0, 0.87, 0.78], [0.96, 0.76, 0.62], [0.82, 0.58, 0.42],
                      [0.62, 0.41, 0.28], [0.42, 0.27, 0.18]], np.float32)


@dataclass
class Identity:
    """A sampled identity: unit attributes (dict name -> [0,1]), colours and hair style."""
    u: dict
    hair_rgb: np.ndarray  # [3]
    iris_rgb: np.ndarray  # [3]
    hair_style: int

    @property
    def skin_rgb(self) -> np.ndarray:
        t = self.u["skin_tone"] * (len(SKIN_RAMP) - 1)
        i = min(int(t), len(SKIN_RAMP) - 2)
        rgb = SKIN_RAMP[i] * (1 - (t - i)) + SKIN_RAMP[i + 1] * (t - i)
        warm = (self.u["skin_warmth"] - 0.5) * 0.12
        return np.clip(rgb + np.array([warm, 0.0, -warm], np.float32), 0, 1)

    def vector(self) -> np.ndarray:
        """Ground-truth identity vector [ID_DIM], centred per attribute, L2-normalised."""
        v = np.concatenate([
            2 * np.array([self.u[k] for k in CONTINUOUS], np.float32) - 1,
            2 * self.hair_rgb - 1, 2 * self.iris_rgb - 1,
            2 * np.eye(len(HAIR_STYLES), dtype=np.float32)[self.hair_style] - 1,
        ]).astype(np.float32)
        assert v.shape == (ID_DIM,), v.shape
        return v / np.linalg.norm(v)


def sample_identity(rng: np.random.Generator) -> Identity:
    u = {k: float(rng.random()) for k in CONTINUOUS}
    hair = HAIR_PALETTE[rng.choice(len(HAIR_PALETTE), p=HAIR_WEIGHTS / HAIR_WEIGHTS.sum())]
    hair = np.clip(hair + rng.normal(0, 0.04, 3), 0, 1).astype(np.float32)
    iris = IRIS_PALETTE[rng.integers(len(IRIS_PALETTE))]
    iris = np.clip(iris + rng.normal(0, 0.05, 3), 0, 1).astype(np.float32)
    return Identity(u=u, hair_rgb=hair, iris_rgb=iris,
                    hair_style=int(rng.choice(len(HAIR_STYLES), p=[0.12, 0.3, 0.2, 0.23, 0.15])))


def _rot(ax: str, a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    m = {"x": [[1, 0, 0], [0, c, -s], [0, s, c]], "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
         "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]]}[ax]
    return np.array(m, np.float32)


def _lerp(u: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * u


class HeadModel:
    """Geometry of one identity; ``scene(expr, gaze)`` poses it for F frames."""

    def __init__(self, ident: Identity):
        self.ident = ident
        u = ident.u
        self.cranium_c = np.array([0.0, 0.1, 0.0], np.float32)
        self.cranium_r = np.array([_lerp(u["head_width"], 0.64, 0.78),
                                   _lerp(u["head_height"], 0.86, 1.0),
                                   _lerp(u["head_depth"], 0.8, 0.92)], np.float32)
        jl = _lerp(u["jaw_length"], 0.85, 1.15)
        self.jaw_c = np.array([0.0, -0.36 * jl, _lerp(u["chin_forward"], 0.06, 0.16)], np.float32)
        cheek = _lerp(u["cheek_fullness"], 0.95, 1.05)
        self.jaw_r = np.array([self.cranium_r[0] * _lerp(u["jaw_width"], 0.7, 0.92) * cheek,
                               0.5 * jl, 0.68 * cheek], np.float32)
        self.eye_y = _lerp(u["eye_height"], 0.02, 0.14)
        self.eye_x = _lerp(u["eye_spacing"], 0.2, 0.29)
        self.eye_r = _lerp(u["eye_size"], 0.075, 0.105)
        self.mouth_y = _lerp(u["mouth_height"], -0.46, -0.38)
        self.mouth_z = self.surface_z(0.0, self.mouth_y)

    def surface_z(self, x: float, y: float) -> float:
        """Front surface depth of the skull+jaw union at (x, y)."""
        zs = []
        for c, r in ((self.cranium_c, self.cranium_r), (self.jaw_c, self.jaw_r)):
            q = 1 - ((x - c[0]) / r[0]) ** 2 - ((y - c[1]) / r[1]) ** 2
            zs.append(c[2] + r[2] * np.sqrt(max(q, 0.0)) if q > 0 else -9.0)
        return float(max(zs))

    def mouth_geometry(self, expr: np.ndarray):
        """expr [F,4] (open, width, round, blink) -> per-frame mouth primitive params."""
        u = self.ident.u
        op, wd, rd = expr[:, 0], expr[:, 1], expr[:, 2]
        half_w = _lerp(u["mouth_width"], 0.13, 0.18) * (0.75 + 0.45 * wd) * (1 - 0.35 * rd)
        half_o = 0.13 * op + 1e-3
        lip = _lerp(u["lip_thickness"], 0.022, 0.04) * (1 + 0.25 * rd)
        ratio = _lerp(u["lip_ratio"], 0.75, 1.25)
        fwd = 0.035 * rd
        return half_w.astype(np.float32), half_o.astype(np.float32), lip.astype(np.float32), \
            ratio, fwd.astype(np.float32)

    def scene(self, expr: np.ndarray, gaze: np.ndarray, cloth_rgb: np.ndarray):
        """-> (prims, cavity, albedo_fn, mouth_box_points [F,8,3] in head frame).

        expr [F,4]: mouth open, width, rounding, eyelid closure, all in [0,1];
        gaze [F,2]: eye yaw/pitch (radians) in the head frame.
        """
        u, ident = self.ident.u, self.ident
        n = expr.shape[0]
        z0 = np.zeros(n, np.float32)

        def vec(x, y, z):
            return np.stack(np.broadcast_arrays(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                                np.asarray(z, np.float32)), -1)

        prims: list[Prim] = []
        add = prims.append
        # Skull (with a tapering crown) and jaw (drops as the mouth opens).
        add(Prim(self.cranium_c, self.cranium_r, SKIN, carve=True, blend=1))
        taper = _lerp(u["head_taper"], 0.0, 0.15)
        add(Prim(self.cranium_c + [0, 0.12, -0.04], self.cranium_r * [1 - taper, 0.9, 0.95],
                 SKIN, carve=True, blend=1))
        add(Prim(vec(0, self.jaw_c[1] - 0.05 * expr[:, 0], self.jaw_c[2]), self.jaw_r, SKIN,
                 carve=True, blend=1))
        # Mouth: cavity (subtracted), lips, teeth, tongue.
        half_w, half_o, lip, ratio, fwd = self.mouth_geometry(expr)
        my, mz = self.mouth_y, self.mouth_z
        cavity = Prim(vec(0, my, mz - 0.02), vec(half_w * 0.92, half_o, 0.13 + z0), MOUTH_IN)
        add(Prim(vec(0, my + half_o + lip * ratio * 0.45, mz - 0.04 + fwd),
                 vec(half_w * 1.04, lip * ratio, 0.065 + z0), LIPS))
        add(Prim(vec(0, my - half_o - lip * 0.55, mz - 0.045 + fwd),
                 vec(half_w * 0.96, lip * 1.1, 0.065 + z0), LIPS))
        add(Prim(vec(0, my + 0.62 * half_o + 0.01, mz - 0.075),
                 vec(half_w * 0.72, 0.3 * half_o + 0.012, 0.05 + z0), TEETH))
        add(Prim(vec(0, my - 0.75 * half_o, mz - 0.09),
                 vec(half_w * 0.62, 0.018 + z0, 0.045 + z0), TEETH))
        add(Prim(vec(0, my - 0.55 * half_o - 0.01, mz - 0.12),
                 vec(half_w * 0.6, 0.05 + z0, 0.08 + z0), TONGUE))
        # Nose: bridge ellipsoid tilted out at the bottom, plus a tip ball.
        nl, nw = _lerp(u["nose_length"], 0.12, 0.18), _lerp(u["nose_width"], 0.05, 0.085)
        npz = _lerp(u["nose_protrusion"], 0.07, 0.12)
        ny = (self.eye_y + self.mouth_y) / 2 + 0.03
        nz = self.surface_z(0, ny) - 0.03
        add(Prim([0, ny, nz], [nw, nl, npz], SKIN, rot=_rot("x", -0.35)))
        tip = _lerp(u["nose_tip"], -0.02, 0.03)
        add(Prim([0, ny - 0.75 * nl + tip, nz + npz * 0.75], [nw * 1.1, nw * 0.9, nw], SKIN))
        # Eyes, lids, brows, ears (mirrored pairs; s = -1 is the subject's right).
        ex, ey, er = self.eye_x, self.eye_y, self.eye_r
        tilt = _lerp(u["eye_tilt"], -0.2, 0.2)
        droop = _lerp(u["lid_droop"], 0.45, 0.15)
        eyes = []
        for s in (-1, 1):
            c = np.array([s * ex, ey, self.surface_z(s * ex, ey) - 0.45 * er], np.float32)
            eyes.append(c)
            add(Prim(c, [er] * 3, EYE))
            ln = np.array([-s * np.sin(tilt), np.cos(tilt), 0.0], np.float32)
            level = er * 1.18 * (droop - 1.45 * expr[:, 3])
            add(Prim(c, [er * 1.18] * 3, SKIN, clip_normal=ln, clip_offset=c @ ln + level))
            add(Prim(c, [er * 1.12] * 3, SKIN, clip_normal=np.array([0, -1, 0], np.float32),
                     clip_offset=-(c[1] - 0.62 * er * 1.12)))
            by = ey + er + _lerp(u["brow_height"], 0.06, 0.13)
            bx = s * (ex + 0.01)
            brow_rot = _rot("y", s * 0.45) @ _rot("z", s * _lerp(u["brow_tilt"], -0.25, 0.25))
            add(Prim([bx, by, self.surface_z(bx, by) - 0.025],
                     [_lerp(u["brow_length"], 0.1, 0.15), _lerp(u["brow_thickness"], 0.018, 0.04),
                      0.045], BROW, rot=brow_rot))
            es = _lerp(u["ear_size"], 0.85, 1.15)
            add(Prim([s * (self.cranium_r[0] - 0.03), ey - 0.1, -0.08], [0.05, 0.17 * es, 0.11 * es],
                     SKIN, rot=_rot("y", s * _lerp(u["ear_angle"], 0.1, 0.6))))
        # Hair.
        style = HAIR_STYLES[ident.hair_style]
        if style != "bald":
            vol = _lerp(u["hair_volume"], 1.04, 1.12)
            part = _lerp(u["hair_part"], -0.35, 0.35)
            front = 0.55 if style == "fringe" else -0.3
            n_hair = np.array([part, 1.0, front], np.float32)
            n_hair /= np.linalg.norm(n_hair)
            line_y = ey + (0.2 if style == "fringe" else 0.33 + 0.15 * u["hairline"])
            line_z = self.surface_z(0.0, line_y)
            off = np.dot(n_hair, [0.0, line_y, line_z])
            add(Prim(self.cranium_c + [0, 0.03, -0.02], self.cranium_r * [vol, vol, vol], HAIR,
                     clip_normal=n_hair, clip_offset=off))
            if style == "long":
                ln_ = _lerp(u["hair_length"], 0.2, 0.55)
                add(Prim([0, -0.2 - ln_ * 0.5, -0.3], [self.cranium_r[0] * vol * 1.1, 0.8 + ln_,
                                                        0.6], HAIR,
                         clip_normal=np.array([0, 0, -1], np.float32), clip_offset=0.1))
                for s in (-1, 1):  # curtains framing the face
                    add(Prim([s * self.cranium_r[0] * 0.85 * vol, -0.2 - ln_ * 0.5, -0.08],
                             [0.24, 0.8 + ln_, 0.6], HAIR,
                             clip_normal=np.array([s, 0, 0], np.float32),
                             clip_offset=self.cranium_r[0] * 0.78))
            if style == "bun":
                add(Prim([0, 0.62, -0.58], [0.26 * vol] * 3, HAIR))
        # Neck and torso (body group).
        add(Prim([0, -0.95, -0.12], [0.36, 0.55, 0.34], NECK, group="body"))
        add(Prim([0, -1.75, -0.22], [1.3, 0.6, 0.56], CLOTH, group="body"))

        mouth_pts = self._mouth_box_points(half_w, half_o, lip, ratio, fwd)
        colors = self._colors(cloth_rgb)
        gaze_dir = np.stack([np.sin(gaze[:, 0]) * np.cos(gaze[:, 1]), np.sin(gaze[:, 1]),
                             np.cos(gaze[:, 0]) * np.cos(gaze[:, 1])], -1).astype(np.float32)
        iris_cos = np.cos(_lerp(u["iris_size"], 0.5, 0.68))
        beard = float(np.clip((u["beard"] - 0.7) / 0.2, 0.0, 1.0))
        blush = max(0.0, (u["blush"] - 0.5) / 0.5) * 0.25

        def albedo_fn(hits, prims_, cavity_):
            prim_mat = np.array([p.material for p in prims_] + [MOUTH_IN], np.int16)
            mats = np.where(hits["prim"] >= 0, prim_mat[hits["prim"]], -1)
            alb = colors[np.maximum(mats, 0)]
            spec = np.full(mats.shape, 0.04, np.float32)
            p = hits["p_group"]
            eye = mats == EYE
            if eye.any():
                sel = np.nonzero(eye)
                fi, q = sel[0], p[sel]
                side = (q[:, 0] > 0).astype(int)
                v = q - np.stack(eyes)[side]
                v /= np.linalg.norm(v, axis=-1, keepdims=True)
                cs = np.einsum("ni,ni->n", v, gaze_dir[fi])
                col = np.where((cs > iris_cos)[:, None], ident.iris_rgb, colors[EYE])
                col = np.where((cs > 0.975)[:, None], 0.03, col)
                alb[sel] = col
                spec[sel] = 0.5
            skin = mats == SKIN
            if beard > 0 or blush > 0:
                y, z, x = p[..., 1], p[..., 2], p[..., 0]
                if beard > 0:  # soft-edged beard on the lower face, moustache included
                    yb = self.mouth_y + 0.04 + 0.06 * np.exp(-(x / 0.16) ** 2)
                    m = skin * np.clip((yb - y) / 0.07, 0, 1) * np.clip((z - 0.05) / 0.2, 0, 1)
                    m = (m * beard)[..., None]
                    alb = alb * (1 - 0.8 * m) + ident.hair_rgb * 0.8 * m
                if blush > 0:
                    d2 = (np.abs(x) - 0.33) ** 2 + (y - self.mouth_y - 0.2) ** 2
                    w = (skin & (z > 0.2)) * np.exp(-d2 / 0.012) * blush
                    alb = alb * (1 - w[..., None]) + np.array([0.85, 0.3, 0.3], np.float32) * w[..., None]
            spec = np.where(mats == LIPS, 0.12, spec)
            spec = np.where(mats == TEETH, 0.15, spec)
            return alb.astype(np.float32), spec.astype(np.float32), mats

        return prims, cavity, albedo_fn, mouth_pts

    def _colors(self, cloth_rgb):
        ident, skin = self.ident, self.ident.skin_rgb
        lip_tint = _lerp(ident.u["lip_tint"], 0.0, 1.0)
        lips = skin * np.array([0.8, 0.5, 0.5]) * (1 - 0.3 * lip_tint) + \
            np.array([0.6, 0.15, 0.2]) * 0.3 * lip_tint
        table = np.zeros((10, 3), np.float32)
        table[SKIN], table[NECK] = skin, skin * 0.92
        table[LIPS] = lips
        table[MOUTH_IN] = [0.22, 0.04, 0.05]
        table[TEETH] = [0.93, 0.91, 0.85]
        table[TONGUE] = [0.75, 0.32, 0.35]
        table[EYE] = [0.95, 0.95, 0.93]
        table[HAIR] = ident.hair_rgb
        table[BROW] = ident.hair_rgb * 0.6 if ident.hair_rgb.mean() < 0.7 else [0.45, 0.42, 0.4]
        table[CLOTH] = cloth_rgb
        return table

    def _mouth_box_points(self, half_w, half_o, lip, ratio, fwd) -> np.ndarray:
        """Corners [F,8,3] of a head-frame box enclosing every mouth primitive."""
        my, mz = self.mouth_y, self.mouth_z
        x1 = half_w * 1.04
        y1 = my + half_o + lip * ratio * 1.45
        y0 = my - half_o - lip * 1.65
        z1 = mz + 0.03 + fwd
        z0 = np.full_like(x1, mz - 0.2)
        corners = [np.stack([sx * x1, yy, zz], -1)
                   for sx in (-1, 1) for yy in (y0, y1) for zz in (z0, z1)]
        return np.stack(corners, 1).astype(np.float32)
