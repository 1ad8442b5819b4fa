"""Face-verification metrics of identity embeddings: TAR at fixed FAR, and rank-1 identification.

Why: the built-in encoders' quality (and identity consistency of generated videos) is reported
the way face recognition reports it (LFW/IJB style), computed over all pairs of a labelled set.
"""
from __future__ import annotations

import numpy as np


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
    """``(TAR, threshold)``: the lowest threshold ``t`` whose false-accept rate
    ``#(impostor > t) / #impostor`` is at most ``far``, and the fraction of genuine scores ``> t``."""
    genuine = np.asarray(genuine, np.float64).ravel()
    imp = np.sort(np.asarray(impostor, np.float64).ravel())[::-1]       # descending
    if not len(imp) or not len(genuine):
        raise ValueError("tar_at_far needs at least one genuine and one impostor score")
    k = int(np.floor(far * len(imp) + 1e-9))                            # impostors allowed above t
    t = imp[k] if k < len(imp) else -np.inf
    return float(np.mean(genuine > t)), float(t)


def verification_metrics(emb, labels, fars=(1e-2, 1e-3), groups=None
                         ) -> dict[str, float | int | None]:
    """All-pairs verification and leave-one-out rank-1 of embeddings ``[N, E]`` with ``labels [N]``.

    Scores are cosine similarities. ``"tar@far=<far>"`` is reported when there are at least
    ``1 / far`` impostor pairs (else ``None``: the FAR cannot be resolved). ``"rank1"``: the
    fraction of samples (among those whose identity occurs at least twice) whose nearest other
    sample has the same label; ``"rank1_chance"`` what a random neighbour scores (TAR at chance
    equals the FAR). Also returns ``num_genuine``, ``num_impostor``, ``threshold@far=..``.

    ``groups [N]`` (optional, e.g. the video clip each frame comes from): pairs within one group
    are left out of every metric (two frames of one clip share background, lighting and nearly
    the pose: matching them says little about identity), so genuine pairs are cross-group only
    and rank-1 searches the other groups.
    """
    e = np.asarray(emb, np.float64)
    labels = np.asarray(labels).ravel()
    if e.ndim != 2 or len(e) != len(labels):
        raise ValueError(f"emb [N, E] and labels [N] expected, got {e.shape} and {labels.shape}")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sim = e @ e.T                                                        # [N, N]
    same = labels[:, None] == labels[None, :]
    usable = ~np.eye(len(e), dtype=bool)
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if len(groups) != len(labels):
            raise ValueError(f"groups [N] expected, got {groups.shape} for {len(labels)} embeddings")
        usable &= groups[:, None] != groups[None, :]
    iu = np.triu_indices(len(e), k=1)
    keep = usable[iu]
    gen, imp = sim[iu][same[iu] & keep], sim[iu][~same[iu] & keep]
    out: dict[str, float | int | None] = {"num_genuine": int(len(gen)), "num_impostor": int(len(imp))}
    for far in fars:
        key = f"{far:g}"
        if len(gen) and len(imp) * far >= 1.0 - 1e-9:
            out[f"tar@far={key}"], out[f"threshold@far={key}"] = tar_at_far(gen, imp, far)
        else:
            out[f"tar@far={key}"] = out[f"threshold@far={key}"] = None
    sim = np.where(usable, sim, -np.inf)
    has_mate = (same & usable).any(1)
    nn = np.argmax(sim, axis=1)
    out["rank1"] = float(np.mean(labels[nn][has_mate] == labels[has_mate])) if has_mate.any() else None
    # chance: a random usable neighbour has the same label (TAR at chance is the FAR itself)
    frac = (same & usable).sum(1) / np.maximum(usable.sum(1), 1)
    out["rank1_chance"] = float(np.mean(frac[has_mate])) if has_mate.any() else None
    return out
