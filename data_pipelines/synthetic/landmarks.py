"""Named 3-D facial landmarks of the built-in heads (head frame, heads.py units).

Why: head pose from 2-D landmarks (ingest/pose.py) needs a canonical 3-D face, and its math
is proven on the corpus by projecting these points with the renderer's camera and recovering
the known pose. The canonical face is the mean identity's landmarks (every unit attribute
0.5); real heads differ from it as the corpus heads do from each other.

Head frame: x to the subject's left (image right when frontal), y up, z out of the face;
one unit ~ half a head width. The points sit on the rendered surfaces, neutral mouth.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.synthetic import heads

# Order of the points; FIVE is the insightface / ArcFace 5-point subset (image-left eye first).
NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left", "right_brow",
         "left_brow", "chin", "nose_bridge")
FIVE = (0, 1, 2, 3, 4)


def head_landmarks(head: heads.HeadModel) -> np.ndarray:
    """One head's landmarks [len(NAMES), 3] (float64, head frame), neutral expression."""
    u = head.ident.u
    lerp = heads._lerp
    ex, ey, er = head.eye_x, head.eye_y, head.eye_r
    pts = {}
    for side, s in (("right", -1.0), ("left", 1.0)):
        cz = head.surface_z(s * ex, ey) - 0.45 * er  # eye-ball centre; the point: its front
        pts[f"{side}_eye"] = (s * ex, ey, cz + er)
        by = ey + er + lerp(u["brow_height"], 0.06, 0.13)
        bx = s * (ex + 0.01)
        pts[f"{side}_brow"] = (bx, by, head.surface_z(bx, by) - 0.025 + 0.045)
    half_w, _, _, _, _ = head.mouth_geometry(np.zeros((1, 4), np.float32))
    mw = float(half_w[0])
    for side, s in (("right", -1.0), ("left", 1.0)):
        pts[f"mouth_{side}"] = (s * mw, head.mouth_y, head.surface_z(s * mw, head.mouth_y))
    nl, nw = lerp(u["nose_length"], 0.12, 0.18), lerp(u["nose_width"], 0.05, 0.085)
    npz = lerp(u["nose_protrusion"], 0.07, 0.12)
    ny = (ey + head.mouth_y) / 2 + 0.03
    nz = head.surface_z(0, ny) - 0.03
    tip = lerp(u["nose_tip"], -0.02, 0.03)
    pts["nose_tip"] = (0.0, ny - 0.75 * nl + tip, nz + npz * 0.75 + nw)
    pts["nose_bridge"] = (0.0, ey, head.surface_z(0.0, ey))
    chin_y = head.jaw_c[1] - 0.85 * head.jaw_r[1]
    pts["chin"] = (0.0, chin_y, head.surface_z(0.0, chin_y))
    return np.array([pts[n] for n in NAMES], np.float64)


def canonical_face() -> np.ndarray:
    """The mean identity's landmarks [len(NAMES), 3]: the canonical 3-D face of pose.py."""
    u = {k: 0.5 for k in heads.CONTINUOUS}
    ident = heads.Identity(u=u, hair_rgb=np.zeros(3, np.float32),
                           iris_rgb=np.zeros(3, np.float32), hair_style=0)
    return head_landmarks(heads.HeadModel(ident))
