"""CLI: folders of multi-view captures -> multi-view records (stream (b)).

    python -m data_pipelines.ingest.multiview --src DIR --out DIR [--resolution 256]
        [--min_views 2] [--split train] [--overwrite] [--quiet]

Layout: every folder under ``--src`` (recursive) that holds a ``cameras.json`` or image files
(``.png .jpg .jpeg .bmp .webp``) is one capture: the views of ONE frozen instant of one
person seen by several cameras. Output: ``<out>/multiview-<split>-NNNNN.array_record``
(readable as ``data.sources.multiview = "<out>/*.array_record"``) and
``<out>/ingest_report.json``.

``cameras.json`` (one per capture folder)::

    {
      "identity": "subject_017",            optional: captures naming the same identity share
                                            an id_label (default: the folder's path)
      "views": {                            required, at least --min_views entries
        "cam00.png": {"yaw": 0.0, "pitch": 0.0, "roll": 0.0},
        "cam01.png": {"yaw": 35.0, "pitch": -10.0, "roll": 2.0,
                      "tx": 0.05, "ty": -0.02, "scale": 1.1,      optional, default 0, 0, 1
                      "crop": [x0, y0, side]}                     optional, pixels
      }
    }

Keys of ``views`` are image file names in the capture folder (images not listed are
ignored). yaw/pitch/roll are DEGREES: the head's orientation as this camera sees it, in the
schema convention (yaw > 0: the face turns towards image right; pitch > 0: it tilts up; roll
> 0: it turns counter-clockwise in the image; |pitch| < 90). tx, ty: head centre in units of
the image half-size (x right, y down); scale: apparent head size relative to the nominal
framing (> 0). ``crop``: a square in the source image (must lie inside it); default: the
centred square of the shorter side. Crops are resized to ``--resolution``.

Every view must be readable and all views of a capture the same size (a rig that mixes
cameras would get differently framed crops). Records: frames [V,R,R,3] in sorted file-name
order, pose [V,6] (radians, ``pose_valid=True``), audio [0], viseme -1, mouth_box zeros
(unknown: multi-view examples carry no lip objective), id_vector/expression marked invalid.
``key`` is ``ingest/<capture path>``.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import cv2
import numpy as np

from data_pipelines import schema
from data_pipelines.ingest import beam, common
from data_pipelines.ingest.common import Skip

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CAMERAS = "cameras.json"


def list_captures(src: str) -> list[str]:
    """Capture folders (relative to ``src``, sorted): sub-folders with cameras.json or images."""
    out = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        if os.path.samefile(root, src):
            continue  # captures are sub-folders
        if CAMERAS in files or any(f.lower().endswith(IMAGE_EXTS) for f in files):
            out.append(os.path.relpath(root, src))
    return out


def _num(v: Any, what: str, cap: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: {what}: expected a finite number, "
                                        f"got {v!r}")
    return float(v)


def read_cameras(folder: str, cap: str) -> dict[str, Any]:
    """Parse and check ``cameras.json`` -> {"identity": str|None, "views": {name: {...}}}."""
    path = os.path.join(folder, CAMERAS)
    if not os.path.isfile(path):
        raise Skip("missing_cameras", f"{cap}: expected {CAMERAS} next to the images")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("views"), dict) or not doc["views"]:
        raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: expected an object with a non-empty "
                                        f"'views' object")
    ident = doc.get("identity")
    if ident is not None and (not isinstance(ident, str) or not ident):
        raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: identity: expected a non-empty string")
    views = {}
    for name, v in sorted(doc["views"].items()):
        common.check_ascii(f"{cap}/{name}")
        where = f"views[{name!r}]"
        if not isinstance(v, dict):
            raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: {where}: expected an object")
        for k in ("yaw", "pitch", "roll"):
            if k not in v:
                raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: {where}: missing '{k}'")
        pose = [_num(v[k], f"{where}.{k}", cap) for k in ("yaw", "pitch", "roll")]
        pose += [_num(v.get(k, d), f"{where}.{k}", cap) for k, d in (("tx", 0), ("ty", 0),
                                                                      ("scale", 1))]
        if abs(pose[1]) >= 90:
            raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: {where}.pitch: expected |pitch| "
                                            f"< 90 degrees, got {pose[1]}")
        if pose[5] <= 0:
            raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: {where}.scale: expected > 0")
        crop = v.get("crop")
        if crop is not None:
            if not isinstance(crop, list) or len(crop) != 3:
                raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: {where}.crop: expected "
                                                f"[x0, y0, side]")
            crop = [_num(c, f"{where}.crop", cap) for c in crop]
        if not os.path.isfile(os.path.join(folder, name)):
            raise Skip("malformed_cameras", f"{cap}/{CAMERAS}: {where}: no such image file")
        views[name] = {"pose": pose, "crop": crop}
    return {"identity": ident, "views": views}


def _square(img: np.ndarray, crop: list[float] | None, name: str, res: int) -> np.ndarray:
    h, w = img.shape[:2]
    if crop is None:
        s = min(h, w)
        x0, y0 = (w - s) // 2, (h - s) // 2
    else:
        x0, y0, s = (int(round(c)) for c in crop)
        if s < 1 or x0 < 0 or y0 < 0 or x0 + s > w or y0 + s > h:
            raise Skip("malformed_cameras", f"{name}: crop {crop}: expected a square inside the "
                                            f"{w}x{h} image")
    patch = img[y0:y0 + s, x0:x0 + s]
    interp = cv2.INTER_AREA if s >= res else cv2.INTER_CUBIC
    return cv2.resize(patch, (res, res), interpolation=interp)


def ingest_capture(folder: str, cap: str, cams: dict[str, Any], label: int, res: int,
                   min_views: int) -> dict[str, Any]:
    """One capture (cameras already parsed) -> a schema record. Raises Skip."""
    views = cams["views"]
    if len(views) < min_views:
        raise Skip("too_few_views", f"{cap}: {len(views)} view(s); expected at least {min_views}")
    frames, poses, size = [], [], None
    for name, v in views.items():
        path = os.path.join(folder, name)
        img = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.getsize(path) else None
        if img is None:
            raise Skip("unreadable", f"{cap}/{name}: expected a readable image")
        if size is None:
            size = img.shape[:2]
        elif img.shape[:2] != size:
            raise Skip("view_size_mismatch", f"{cap}/{name}: {img.shape[1]}x{img.shape[0]}; "
                                             f"expected {size[1]}x{size[0]} like the first view")
        frames.append(_square(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), v["crop"], f"{cap}/{name}",
                              res))
        p = v["pose"]
        poses.append([math.radians(p[0]), math.radians(p[1]), math.radians(p[2]), *p[3:]])
    rec = schema.empty_like_real(np.stack(frames), schema.KIND_MULTIVIEW)  # [V,R,R,3]
    key = cap.replace(os.sep, "/")
    rec.update(key=f"ingest/{key}", source=f"ingest:{key}",
               pose=np.asarray(poses, np.float32), pose_valid=True, id_label=int(label))
    return rec


def identity_of(cap: str, cams: dict[str, Any] | None) -> str:
    return (cams or {}).get("identity") or cap.replace(os.sep, "/")


def build_parser() -> common.OneLineParser:
    ap = common.OneLineParser(prog="python -m data_pipelines.ingest.multiview",
                              description=__doc__.split("\n")[0])
    common.add_common_args(ap)
    ap.add_argument("--min_views", type=int, default=2, help="fewest views a capture needs")
    return ap


def make_settings(spec: dict[str, Any]) -> dict[str, Any]:
    return spec


def ingest_item(item: tuple, cfg: dict[str, Any], writer) -> dict[str, Any]:
    """(src, cap, parsed cameras or (reason, message), label) -> report entry. Never raises."""
    src, cap, cams, label = item
    try:
        if isinstance(cams, tuple):
            raise Skip(*cams)
        rec = ingest_capture(os.path.join(src, cap), cap, cams, label, cfg["resolution"],
                             cfg["min_views"])
        writer.write(rec)
    except Skip as err:
        return common.skip_entry(cap, err)
    except Exception as e:  # noqa: BLE001 - one odd capture must not end a long run
        print(f"warning: {cap}: {type(e).__name__}: {e}", file=sys.stderr)
        return common.skip_entry(cap, Skip("internal_error", f"{cap}: {type(e).__name__}: {e}"))
    return common.ok_entry(cap, 1, views=int(rec["frames"].shape[0]),
                           identity=identity_of(cap, cams), id_label=label)


def main(argv: list[str] | None = None) -> int:
    """Parse cameras.json files (labels need them all), then run the pipeline (beam.py)."""
    ap = build_parser()
    args, beam_args = ap.parse_known_args(argv)
    if args.min_views < 1:
        ap.error(f"--min_views {args.min_views}: expected at least 1")
    if common.is_remote(args.src):
        ap.error(f"--src {args.src}: expected a local folder (multi-view captures are read "
                 "from local disk; --out may be gs://)")
    common.check_args(ap, args, "multiview")

    caps = list_captures(args.src)
    parsed: dict[str, Any] = {}
    for cap in caps:  # parse every cameras.json first: labels come from all identities
        try:
            common.check_ascii(cap)
            parsed[cap] = read_cameras(os.path.join(args.src, cap), cap)
        except Skip as err:
            parsed[cap] = (err.reason, err.message)
    ok = {c: p for c, p in parsed.items() if not isinstance(p, tuple)}
    labels = common.identity_labels(identity_of(c, p) for c, p in ok.items())
    src = os.path.abspath(args.src)
    items = [(src, c, p, labels[identity_of(c, p)] if c in ok else 0)
             for c, p in parsed.items()]
    spec = {k: getattr(args, k) for k in ("resolution", "min_views")}
    return beam.run(tool="multiview", stream="multiview", items=items,
                    make_settings=make_settings, spec=spec, ingest=ingest_item, args=args,
                    beam_args=beam_args, ap=ap, settings=dict(spec, split=args.split),
                    identities=labels)


if __name__ == "__main__":
    raise SystemExit(main())
