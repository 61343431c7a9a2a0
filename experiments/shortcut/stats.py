"""The shortcut test's statistic: how far an edit moved a classifier's decision."""
from __future__ import annotations

import numpy as np

from study.metrics import bootstrap_ci


def decision_shift(p_before, p_after, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """How a classifier's decision moved between originals and edited faces.

    Parameters
    ----------
    p_before, p_after : sequences of float
        The classifier's probability of the target class per face, before and after the edit.
    n_bootstrap, seed : resamples of the faces for the 95 % intervals (0: means only).

    Returns
    -------
    dict
        ``n``; ``flip_rate`` (share of faces whose decision, p > 0.5, changed) and
        ``mean_delta_p`` (mean of p_after − p_before), each ``{"mean", "ci"}`` with a percentile
        bootstrap interval over faces; ``to_positive`` / ``to_negative``: how many flips went to
        the target class and away from it.
    """
    b, a = np.asarray(p_before, np.float64), np.asarray(p_after, np.float64)
    if b.shape != a.shape or b.ndim != 1:
        raise ValueError(f"p_before and p_after must be equal-length 1-D, got {b.shape} and {a.shape}")
    flips = ((b > 0.5) != (a > 0.5)).astype(np.float64)

    def ci(values, k):  # every face its own group: faces are resampled
        r = bootstrap_ci([[v] for v in values], n_bootstrap=n_bootstrap, seed=seed + k)
        return {"mean": r["mean"], "ci": r["ci"]}

    return {"n": int(len(b)), "flip_rate": ci(flips, 0), "mean_delta_p": ci(a - b, 1),
            "to_positive": int(((b <= 0.5) & (a > 0.5)).sum()),
            "to_negative": int(((b > 0.5) & (a <= 0.5)).sum())}
