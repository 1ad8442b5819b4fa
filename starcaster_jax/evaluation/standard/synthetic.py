"""The standard metrics inside the synthetic evaluation (``evaluation/synthetic.evaluate(standard=...)``).

Why optional: the built-in corpus has no Inception, I3D, SyncNet or ArcFace weights (they cannot
be downloaded here), so these columns exist only when the user gives the networks' paths; the
corpus's own evaluators (``evaluators.py``) stay the default numbers.

What applies where: modes with audio over time (animate, synthesize, free-viewpoint, long
horizon) get FID, FVD, LSE and CSIM; multi-view stills (views, not time; no audio) FID and CSIM;
motion none (it has no truth to compare the frames with). Each system (ground truth,
copy-reference, untrained, model) is scored against the mode's true frames; CSIM's reference is
the system's reference frame (copy-reference's frames are that frame), LSE uses the record's
16 kHz speech, and ground truth's LSE is the ceiling. The corpus renders 32-64 px faces: FID /
FVD upsample them to the networks' 299 / 224 px and run on a handful of records, so the numbers
rank systems but are not comparable with papers' (the report says how many samples each used).
"""
from __future__ import annotations

from starcaster_jax.evaluation.standard.metrics import StandardMetrics

MODE_METRICS = {"animate": ("fid", "fvd", "lse", "csim"), "synthesize": ("fid", "fvd", "lse", "csim"),
                "novel_view": ("fid", "fvd", "lse", "csim"), "long_horizon": ("fid", "fvd", "lse", "csim"),
                "multiview": ("fid", "csim")}
SYSTEMS = ("ground_truth", "copy_reference", "untrained", "model")
ROWS = (("FID", "fid", "value", ".2f"), ("FVD", "fvd", "value", ".2f"), ("LSE-D", "lse", "lse_d", ".3f"),
        ("LSE-C", "lse", "lse_c", ".3f"), ("CSIM", "csim", "value", ".3f"))


class SyntheticStandard:
    """One :class:`StandardMetrics` per (mode, system), sharing the networks of ``base``."""

    def __init__(self, base: StandardMetrics):
        self.base = base
        self._acc: dict[str, dict[str, StandardMetrics]] = {}

    @classmethod
    def from_paths(cls, **paths) -> SyntheticStandard | None:
        """``inception=``, ``i3d=``, ``syncnet=``, ``arcface=`` paths (empty: not computed); None
        when no path is given (the synthetic evaluation then has no standard columns)."""
        if not any(paths.values()):
            return None
        return cls(StandardMetrics.from_paths(**paths))

    def add(self, mode: str, scored, item) -> None:
        """One record of a mode: ``scored`` is ``modes.Scored``, ``item`` the record (novel view:
        the ``(first camera, novel camera)`` pair)."""
        metrics = MODE_METRICS.get(mode)
        if not metrics:
            return
        record = item[1] if isinstance(item, tuple) else item
        audio = record.get("audio") if "lse" in metrics else None
        key = str(record.get("key", len(self._acc.get(mode, {}))))
        ref = scored.frames["copy_reference"][0]
        accs = self._acc.setdefault(mode, {})
        for system in SYSTEMS:
            if system not in scored.frames:
                continue
            acc = accs.setdefault(system, self.base.spawn(metrics, real_lse=False))
            acc.add(key, scored.frames[system], scored.truth, audio=audio, reference=ref)

    def result(self, mode: str) -> dict | None:
        """``{system: StandardMetrics.result()}`` of a mode, or None when it does not apply."""
        if mode not in self._acc:
            return None
        return {s: acc.result() for s, acc in self._acc[mode].items()}


def markdown_lines(section: dict) -> list[str]:
    """A table: one row per computed metric, one column per system."""
    systems = [s for s in SYSTEMS if s in section]
    lines = ["Standard metrics (user-provided networks): ", "",
             "| metric | " + " | ".join(s.replace("_", " ") for s in systems) + " |",
             "|" + "|".join(["---"] * (len(systems) + 1)) + "|"]
    for label, metric, key, fmt in ROWS:
        secs = [section[s][metric] for s in systems]
        if not any(sec.get("computed") for sec in secs):
            continue
        cells = ["—" if sec.get(key) is None else format(sec[key], fmt) for sec in secs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]
