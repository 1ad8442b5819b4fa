"""A small analytic ray caster (vectorised NumPy) for scenes of ellipsoids.

Why analytic ellipsoids: every ray/primitive test is a closed-form quadratic, so a whole
clip (F frames x H*W rays) is intersected with one primitive in a handful of array ops,
and the render is a true perspective 3D image (occlusion, silhouettes, self-shading) from
any camera. Features the ray caster understands:

* primitives live in a *group* ("head" or "body"), each group has its own rigid transform
  per frame (group -> camera), so the head turns on a fixed neck/torso;
* per-frame primitive parameters (a mouth that opens, a jaw that drops, eyelids);
* a clip plane per primitive (hair lines, eyelids) that rejects hits on one side;
* one "cavity" ellipsoid subtracted (CSG) from the primitives marked ``carve``: the open
  mouth; rays entering a carved surface inside the cavity land on its back wall;
* "blend" tags: shading normals of touching primitives (skull, jaw) mix smoothly, so the
  union shows no crease.

Speed: each primitive is only tested on the pixel rectangle its bounding sphere can cover
over the clip, so small features (eyes, lips, teeth) cost a few percent of a full frame.

Camera: pinhole at the origin looking down -z, x right, y up; image row 0 is the top.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

INF = np.float32(1e9)


@dataclass
class Prim:
    """An ellipsoid. Arrays may carry a leading frame axis F (per-frame animation)."""
    centre: np.ndarray  # [3] or [F,3], group space
    radii: np.ndarray  # [3] or [F,3]
    material: int
    rot: np.ndarray | None = None  # [3,3]; columns are the local axes in group space
    clip_normal: np.ndarray | None = None  # [3]: keep hits with p . n > clip_offset
    clip_offset: np.ndarray | float = 0.0  # scalar or [F]
    carve: bool = False  # subtract the scene's cavity from this primitive
    group: str = "head"
    blend: int = 0  # >0: normals blend smoothly with same-tag primitives (no crease)


@dataclass
class Camera:
    """Per-frame group->camera transforms: p_cam = R @ p_group + t."""
    head_rot: np.ndarray  # [F,3,3]
    head_pos: np.ndarray  # [F,3]
    body_rot: np.ndarray  # [F,3,3]
    body_pos: np.ndarray  # [F,3]
    tan_half_fov: float = 0.25


def _per_frame(x, n_frames: int) -> np.ndarray:
    """[3] or [F,3] -> float32 [F,3]."""
    x = np.asarray(x, np.float32)
    return np.broadcast_to(x, (n_frames, 3)) if x.ndim == 1 else x


def camera_rays(height: int, width: int, tan_half_fov: float, ss: int = 1) -> np.ndarray:
    """Unit ray directions [H*ss, W*ss, 3] through pixel (sub-)centres, row 0 = top."""
    h, w = height * ss, width * ss
    ys = (1.0 - (np.arange(h) + 0.5) * 2.0 / h) * tan_half_fov * (height / max(height, width))
    xs = ((np.arange(w) + 0.5) * 2.0 / w - 1.0) * tan_half_fov * (width / max(height, width))
    d = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], -np.ones((h, w))), -1)
    return (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)


def project(points_cam: np.ndarray, tan_half_fov: float) -> np.ndarray:
    """Camera-space points [...,3] -> normalised image coords [...,2] (x, y) in [0,1], y down."""
    z = -points_cam[..., 2]
    x = points_cam[..., 0] / (z * tan_half_fov)
    y = points_cam[..., 1] / (z * tan_half_fov)
    return np.stack([(x + 1) / 2, (1 - y) / 2], -1)


def _screen_rect(centre_cam: np.ndarray, radius: float, h: int, w: int, tan: float):
    """Conservative pixel rectangle (r0, r1, c0, c1) covering a sphere in every frame."""
    depth = -centre_cam[:, 2]
    if (depth - radius <= 1e-3).any():
        return 0, h, 0, w
    lo, hi = [], []
    for k in (0, 1):
        v = centre_cam[:, k]
        ends = np.stack([(v - radius) / (depth - radius), (v - radius) / (depth + radius),
                         (v + radius) / (depth - radius), (v + radius) / (depth + radius)])
        lo.append(ends.min() / tan)
        hi.append(ends.max() / tan)
    c0 = int(np.floor((lo[0] + 1) * w / 2 - 0.5)) - 1
    c1 = int(np.ceil((hi[0] + 1) * w / 2 - 0.5)) + 2
    r0 = int(np.floor((1 - hi[1]) * h / 2 - 0.5)) - 1
    r1 = int(np.ceil((1 - lo[1]) * h / 2 - 0.5)) + 2
    return max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)


class _Group:
    """Rays of one group (head or body) in that group's frame: o [F,3], d [F,h,w,3]."""

    def __init__(self, rot, pos, rays):
        self.rot = rot.astype(np.float32)  # [F,3,3]
        self.pos = pos.astype(np.float32)  # [F,3]
        self.o = np.einsum("fji,fj->fi", self.rot, -self.pos)  # R^T (0 - t)
        r = self.rot[:, :, :, None, None]  # R^T d, components first: 3 x [F,h,w]
        self.d = tuple(rays[..., 0] * r[:, 0, i] + rays[..., 1] * r[:, 1, i]
                       + rays[..., 2] * r[:, 2, i] for i in range(3))


def _intersect(prim: Prim, grp: _Group, sl, n_frames):
    """Entry/exit distances [F,h',w'] (INF on a miss) inside the pixel slice ``sl``."""
    c = _per_frame(prim.centre, n_frames)
    r = _per_frame(prim.radii, n_frames)
    oc = grp.o - c  # [F,3]
    dx, dy, dz = (d[sl] for d in grp.d)
    if prim.rot is not None:
        m = np.asarray(prim.rot, np.float32)
        oc = oc @ m
        dx, dy, dz = (dx * m[0, j] + dy * m[1, j] + dz * m[2, j] for j in range(3))
    inv = 1.0 / r
    ocs = (oc * inv)[:, :, None, None]  # [F,3,1,1]
    dx, dy, dz = dx * inv[:, 0, None, None], dy * inv[:, 1, None, None], dz * inv[:, 2, None, None]
    a = dx * dx + dy * dy + dz * dz
    b = ocs[:, 0] * dx + ocs[:, 1] * dy + ocs[:, 2] * dz
    cc = (ocs * ocs).sum(1) - 1.0
    disc = b * b - a * cc
    hit = disc > 0
    sq = np.sqrt(np.maximum(disc, 0.0))
    inv_a = 1.0 / a
    t1 = np.where(hit, (sq - b) * inv_a, INF)
    t0 = np.where(hit & (t1 > 0), (-b - sq) * inv_a, INF)
    return t0, t1


def _normal(prim: Prim, p, frame_idx):
    """Outward unit normals [N,3] (group space) at surface points p [N,3]."""
    c = np.asarray(prim.centre, np.float32)
    r = np.asarray(prim.radii, np.float32)
    c = c[frame_idx] if c.ndim == 2 else c
    r = r[frame_idx] if r.ndim == 2 else r
    q = p - c
    if prim.rot is not None:
        q = q @ np.asarray(prim.rot, np.float32)
    n = q / (r * r)
    if prim.rot is not None:
        n = n @ np.asarray(prim.rot, np.float32).T
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def _blend_normal(prims, prim, p, fi, n, sharpness=10.0):
    """Smooth-union shading: mix in the normals of same-tag primitives near p."""
    acc = n.copy()
    for other in prims:
        if other is prim or other.blend != prim.blend:
            continue
        c = np.asarray(other.centre, np.float32)
        r = np.asarray(other.radii, np.float32)
        q = p - (c[fi] if c.ndim == 2 else c)
        if other.rot is not None:
            q = q @ np.asarray(other.rot, np.float32)
        f = np.linalg.norm(q / (r[fi] if r.ndim == 2 else r), axis=-1) - 1.0
        acc += np.exp(-sharpness * np.maximum(f, 0.0))[:, None] * _normal(other, p, fi)
    return acc / np.maximum(np.linalg.norm(acc, axis=-1, keepdims=True), 1e-12)


def raycast(prims: list[Prim], cavity: Prim | None, cam: Camera, rays: np.ndarray):
    """Nearest hit per ray. rays [h,w,3] camera space.

    Each primitive is only tested on the pixel rectangle its bounding sphere can cover in
    the clip (union over frames), which makes eyes, lips, teeth ~20x cheaper than the
    full frame. Returns dict: t [F,h,w], prim [F,h,w] (index into prims, -1 miss,
    len(prims) = cavity wall), normal_cam [F,h,w,3], p_group [F,h,w,3].
    """
    n_frames = cam.head_rot.shape[0]
    h, w = rays.shape[:2]
    groups = {"head": _Group(cam.head_rot, cam.head_pos, rays),
              "body": _Group(cam.body_rot, cam.body_pos, rays)}
    shape = (n_frames, h, w)
    t_best = np.full(shape, INF, np.float32)
    id_best = np.full(shape, -1, np.int16)

    def rect(prim):
        g = groups[prim.group]
        c = _per_frame(prim.centre, n_frames)
        c_cam = np.einsum("fij,fj->fi", g.rot, c) + g.pos
        r0, r1, c0, c1 = _screen_rect(c_cam, float(np.max(prim.radii)) * 1.001, h, w,
                                      cam.tan_half_fov)
        return (slice(None), slice(r0, max(r0, r1)), slice(c0, max(c0, c1)))

    cav0 = np.full(shape, INF, np.float32)
    cav1 = np.full(shape, -INF, np.float32)
    if cavity is not None:
        sl = rect(cavity)
        cav0[sl], cav1[sl] = _intersect(cavity, groups[cavity.group], sl, n_frames)
    for idx, prim in enumerate(prims):
        grp = groups[prim.group]
        sl = rect(prim)
        if sl[1].stop <= sl[1].start or sl[2].stop <= sl[2].start:
            continue
        t0, t1 = _intersect(prim, grp, sl, n_frames)
        tb, ib = t_best[sl], id_best[sl]
        if prim.clip_normal is not None:
            nrm = np.asarray(prim.clip_normal, np.float32)
            off = np.broadcast_to(np.asarray(prim.clip_offset, np.float32), (n_frames,))
            dn = sum(d[sl] * nrm[k] for k, d in enumerate(grp.d))
            on = grp.o @ nrm
            keep = on[:, None, None] + np.where(t0 < INF, t0, 0.0) * dn > off[:, None, None]
            t0 = np.where(keep, t0, INF)
        if prim.carve and cavity is not None:
            c0, c1 = cav0[sl], cav1[sl]
            inside = (t0 >= c0) & (t0 <= c1)
            wall = inside & (c1 < t1) & (c1 < tb)
            tb[...] = np.where(wall, c1, tb)
            ib[...] = np.where(wall, len(prims), ib)
            t0 = np.where(inside, INF, t0)
        upd = t0 < tb
        tb[...] = np.where(upd, t0, tb)
        ib[...] = np.where(upd, idx, ib)
    normal = np.zeros((t_best.size, 3), np.float32)
    p_group = np.zeros((t_best.size, 3), np.float32)
    flat = id_best.ravel()
    order = np.argsort(flat, kind="stable")  # pixels grouped by winning primitive
    counts = np.bincount(flat.astype(np.int64) + 1, minlength=len(prims) + 2)
    ends = np.cumsum(counts)
    for idx in range(len(prims) + 1):
        sel = order[ends[idx + 1] - counts[idx + 1]:ends[idx + 1]]
        if sel.size == 0:
            continue
        prim = cavity if idx == len(prims) else prims[idx]
        g = groups[prim.group]
        fi = sel // (h * w)
        d = np.stack([c.ravel()[sel] for c in g.d], -1)
        p = g.o[fi] + t_best.ravel()[sel, None] * d
        n = _normal(prim, p, fi)
        if idx == len(prims):
            n = -n  # the inside of the cavity faces inwards
        elif prim.blend:
            n = _blend_normal(prims, prim, p, fi, n)
        normal[sel] = np.einsum("nij,nj->ni", g.rot[fi], n)
        p_group[sel] = p
    normal = normal.reshape(*shape, 3)
    p_group = p_group.reshape(*shape, 3)
    return {"t": t_best, "prim": id_best, "normal_cam": normal, "p_group": p_group}


def shade(hits, rays, albedo: np.ndarray, light_cam: np.ndarray, ambient: float,
          specular: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Lambert + ambient + Blinn-Phong highlight. albedo [F,h,w,3], light_cam [F,3] (unit,
    towards the light), specular [F,h,w], background [F,h,w,3]. -> [F,h,w,3] in [0,1]."""
    n = hits["normal_cam"]
    lam = np.clip(np.einsum("fhwi,fi->fhw", n, light_cam), 0.0, 1.0)
    half = light_cam[:, None, None, :] - rays[None]
    ndh = np.einsum("fhwi,fhwi->fhw", n, half) / np.sqrt(np.einsum("fhwi,fhwi->fhw", half, half))
    spec = np.clip(ndh, 0.0, 1.0) ** 24 * specular
    # A soft "sky" term keeps faces turned away from the key light readable.
    sky = 0.5 + 0.5 * n[..., 1]
    col = albedo * (ambient * (0.7 + 0.3 * sky) + (1.0 - ambient) * lam)[..., None]
    col = col + spec[..., None]
    hit = hits["prim"] >= 0
    return np.where(hit[..., None], np.clip(col, 0.0, 1.0), background)


def render(prims: list[Prim], cavity: Prim | None, cam: Camera, height: int, width: int,
           albedo_fn: Callable, light_cam: np.ndarray, background: np.ndarray,
           ambient: float = 0.35, ss: int = 1, return_ids: bool = False):
    """Render F frames -> uint8 [F,H,W,3] (and material ids [F,H*ss,W*ss] if asked).

    albedo_fn(hits, prims, cavity) -> (albedo [F,h,w,3], specular [F,h,w], material [F,h,w]).
    background: [F,H,W,3] float in [0,1]; ss: supersampling factor per axis (box filter).
    """
    rays = camera_rays(height, width, cam.tan_half_fov, ss)
    hits = raycast(prims, cavity, cam, rays)
    albedo, spec, mats = albedo_fn(hits, prims, cavity)
    n_frames = cam.head_rot.shape[0]
    bg = background
    if ss > 1:
        bg = np.repeat(np.repeat(bg, ss, axis=1), ss, axis=2)
    img = shade(hits, rays, albedo, light_cam, ambient, spec, bg.astype(np.float32))
    if ss > 1:  # box filter; strided adds are much faster than a strided mean
        img = sum(img[:, i::ss, j::ss] for i in range(ss) for j in range(ss)) / (ss * ss)
    out = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    if return_ids:
        return out, mats.reshape(n_frames, height * ss, width * ss)
    return out
