"""The Fréchet distance between two Gaussians fitted to feature sets: FID's and FVD's formula.

    d^2 = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2})

Why not ``scipy.linalg.sqrtm(S_1 @ S_2)`` (pytorch-fid's way): the product of two covariances is
not symmetric, and with fewer samples than feature dimensions (2048-d Inception features from a
few thousand frames, 400-d I3D features from a few hundred clips) it is singular, so ``sqrtm``
returns complex values that pytorch-fid patches with an ``eps * I`` offset. The trace only needs
the eigenvalues of ``S_1^{1/2} S_2 S_1^{1/2}``, which is symmetric positive semi-definite: two
``eigh`` calls, no complex arithmetic, the same number where both are defined (the tests compare
against ``sqrtm``). Covariances are unbiased (``ddof=1``), as in pytorch-fid and the FVD code.
"""
from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, D]`` features -> mean ``[D]`` and covariance ``[D, D]`` (float64, ddof=1)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"Fréchet distance: need [N >= 2, D] features, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``d^2`` between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (module docstring); >= 0."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"Fréchet distance: shapes {mu1.shape}, {s1.shape} vs {mu2.shape}, {s2.shape}")
    r = _psd_sqrt(s1)
    cross = np.linalg.eigvalsh(r @ s2 @ r)                                  # eig(S1^1/2 S2 S1^1/2)
    tr_covmean = float(np.sum(np.sqrt(np.clip(cross, 0.0, None))))
    d = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(d, 0.0)


def frechet_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of two ``[N, D]`` feature sets (N may differ)."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))
