"""Markdown tables of evaluation results (one section per mode, one column per system), the
comparison table over checkpoints, and the PNG strip of generated vs true frames."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from starcaster_jax.evaluation import modes as modes_lib
from starcaster_jax.evaluation.standard.synthetic import markdown_lines as standard_lines
from starcaster_jax.media.video import save_image

SYSTEM_LABELS = {"ground_truth": "ground truth", "copy_reference": "copy-reference",
                 "untrained": "untrained", "majority": "majority", "model": "model"}
BASELINES = ("ground_truth", "copy_reference", "majority")      # independent of the checkpoint
_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lip_acc": "lip sync (viseme acc.)",
           "id_cos": "identity cosine", "id_ver": "identity verified @FAR", "pose_std": "head-pose std (deg)",
           "sharpness": "sharpness (Laplacian var.)"}
_FMT = {"psnr": ".2f", "sharpness": ".1f", "pose_std": ".2f"}
_NOTES = {"seconds": "clip length (s)", "label_pose_std": "head-pose std of the true labels (deg)",
          "evaluator_mae_deg": "pose_eval error on the true frames (deg)"}
MODE_TITLES = {
    "animate": "animate (reference = first frame, true head poses)",
    "synthesize": "synthesize (identity embedding only, clip audio)",
    "novel_view": "free-viewpoint talking (first-camera reference, unseen camera path)",
    "multiview": "multi-view stills (view 0 = reference, true camera poses)",
    "long_horizon": "long horizon (autoregressive from one reference; per segment)",
    "motion": "motion diversity (no pose input; pose_eval evaluator)",
}


def metric_label(name: str, far: float | None = None) -> str:
    base, _, seg = name.partition("@")
    label = _LABELS.get(base, base)
    if base == "id_ver" and far is not None:
        label = f"identity verified @FAR={far:g}"
    return f"{label} {seg}" if seg else label


def fmt(name: str, value) -> str:
    if value is None:
        return "—"
    return format(float(value), _FMT.get(name.split("@")[0], ".3f"))


def _header(cols: Sequence[str]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]


def mode_lines(mode: str, sec: Mapping, far: float | None) -> list[str]:
    title = MODE_TITLES.get(mode, mode)
    if sec.get("skipped"):
        return [f"### {title}", "", f"skipped: {sec['skipped']}", ""]
    lines = [f"### {title} — {sec['n']} held-out record(s)", ""]
    lines += _header(["metric"] + [SYSTEM_LABELS[s] for s in modes_lib.SYSTEMS])
    for m in sec["metrics"]:
        cells = [fmt(m, sec["systems"].get(s, {}).get(m)) for s in modes_lib.SYSTEMS]
        lines.append("| " + " | ".join([metric_label(m, far)] + cells) + " |")
    if sec.get("note"):
        lines += ["", "Note: " + "; ".join(f"{_NOTES.get(k, k)} {fmt(k, v)}" for k, v in sec["note"].items())]
    if sec.get("standard"):   # FID / FVD / LSE / CSIM with the user's networks (standard/synthetic.py)
        lines += [""] + standard_lines(sec["standard"])[:-1]
    return lines + [""]


def format_markdown(result: Mapping) -> str:
    """Every mode's table (module docstring); ``result`` is ``synthetic.evaluate``'s."""
    cal = result.get("calibration", {})
    far = cal.get("far")
    lines = [f"## Evaluation of {result.get('checkpoint', '(generator)')} — seed {result.get('seed', 0)}", ""]
    if cal:
        lines += [f"Identity verifier (identity_eval) threshold {cal['threshold']:.3f} at FAR={far:g}, "
                  f"from {cal['impostor_pairs']} impostor pairs of {cal['identities']} held-out identities.", ""]
    for mode, sec in result["modes"].items():
        lines += mode_lines(mode, sec, far)
    return "\n".join(lines).rstrip() + "\n"


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(a)))


def compare_markdown(results: Sequence[Mapping], names: Sequence[str]) -> str:
    """One table over checkpoints evaluated at the same seed on the same records: the
    checkpoint-independent baselines once, then the first checkpoint's untrained baseline, then
    one column per checkpoint. Raises ValueError when seeds, records or baselines differ."""
    if not results:
        raise ValueError("--compare: no results")
    first = results[0]
    for r, n in zip(results[1:], names[1:]):
        if r.get("seed") != first.get("seed"):
            raise ValueError(f"--compare {n}: seed {r.get('seed')} differs from {names[0]}'s {first.get('seed')}")
        if r.get("keys") != first.get("keys"):
            raise ValueError(f"--compare {n}: evaluated on other records than {names[0]}")
    far = first.get("calibration", {}).get("far")
    cols = ["mode", "metric"] + [SYSTEM_LABELS[b] for b in BASELINES] + [f"untrained ({names[0]})"] + list(names)
    lines = [f"## Comparison — seed {first.get('seed', 0)}", ""] + _header(cols)
    for mode, sec in first["modes"].items():
        if sec.get("skipped"):
            continue
        for m in sec["metrics"]:
            base = [sec["systems"].get(b, {}).get(m) for b in BASELINES]
            vals = []
            for r, n in zip(results, names):
                other = r["modes"].get(mode, {})
                if other.get("skipped") or "systems" not in other:
                    vals.append("skipped")
                    continue
                for b, v in zip(BASELINES, base):
                    if not _same(other["systems"].get(b, {}).get(m), v):
                        raise ValueError(f"--compare {n}: {mode} {m} {b} differs from {names[0]}'s "
                                         "(not the same clips, seed or evaluators)")
                vals.append(fmt(m, other["systems"]["model"].get(m)))
            unt = sec["systems"].get("untrained", {}).get(m)
            lines.append("| " + " | ".join([mode, metric_label(m, far)] + [fmt(m, v) for v in base]
                                           + [fmt(m, unt)] + vals) + " |")
    return "\n".join(lines) + "\n"


def frames_strip(frames_by_mode: Mapping[str, Mapping[str, np.ndarray]], columns: int = 8,
                 systems: Sequence[str] = ("ground_truth", "model")) -> np.ndarray:
    """uint8 image: for each mode, one row per system (default: true frames above generated
    ones), ``columns`` frames evenly spaced over the clip. Rows are padded to one width."""
    rows = []
    for by_sys in frames_by_mode.values():
        for s in systems:
            f = np.asarray(by_sys[s], np.uint8)
            idx = np.linspace(0, len(f) - 1, min(columns, len(f))).astype(int)
            rows.append(np.concatenate(list(f[idx]), axis=1))
    if not rows:
        raise ValueError("frames_strip: no frames")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def save_strip(path: str, frames_by_mode, **kw) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    return save_image(path, frames_strip(frames_by_mode, **kw))
