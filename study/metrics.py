"""Heatmap vs human-heatmap metrics (definitions as in Quantus / CLEVR-XAI / Harmonization).

Every metric takes a *heatmap* (scores, higher = more relevant; signed LRP relevance is used as
is) and a *mask* (bool ground truth: a thresholded HRH or one participant's polygons), both at
the same resolution; :func:`resize_map` brings a model heatmap to the HRH grid first.

Ties
----
Integer maps (HRHs, leave-one-out HRHs) are full of ties, so every "top-k" and "argmax" is
defined tie-aware: ties at the boundary are broken uniformly at random and the metric reports
the *expected* overlap. For a continuous heatmap with distinct values this is exactly the usual
definition; for a constant map it is the chance level instead of an artefact of pixel order.
AUC and Spearman use average ranks.

An undefined value (empty mask, no positive relevance, constant map) is ``nan``; aggregates use
``nanmean`` and report how many values were defined.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

#: Fraction of pixels in a "top region" (IoU/Dice of the top 10 %).
TOP_FRACTION = 0.1
#: The two binarisations of a graded HRH that are always reported.
THRESHOLDS = ("ge1", "ge50")
#: Binary-mask metrics, in report order.
MASK_METRICS = ("mass_accuracy", "rank_accuracy", "pointing_game", "auc", "iou_top10", "dice_top10")


# ------------------------------------------------------------------------------- helpers


def _flat(a) -> np.ndarray:
    return np.asarray(a).reshape(-1)


def _check(heatmap, mask):
    h = _flat(heatmap).astype(np.float64)
    m = _flat(mask).astype(bool)
    if h.shape != m.shape:
        raise ValueError(f"heatmap and mask differ in size: {np.shape(heatmap)} vs {np.shape(mask)}")
    return h, m


def average_ranks(x) -> np.ndarray:
    """1-based ranks of the flattened ``x``, tied values sharing their average rank."""
    x = _flat(x)
    n = x.size
    if n == 0:
        return np.zeros(0)
    if np.issubdtype(x.dtype, np.integer) and n > 0 and int(x.max()) - int(x.min()) < 4 * n:
        # Counting sort for small-range integer maps (HRHs): O(n) instead of a sort.
        off = x.astype(np.int64) - int(x.min())
        counts = np.bincount(off)
        ends = np.cumsum(counts)
        avg = ends - (counts - 1) / 2.0  # average of ranks (ends-counts+1 .. ends)
        return avg[off]
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # Boundaries of runs of equal values in sorted order.
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    run_avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(n)
    ranks[order] = np.repeat(run_avg, ends - starts)
    return ranks


def expected_top_k_hits(scores, mask, k: int) -> float:
    """Expected ``|top-k(scores) ∩ mask|`` when ties at the k-th value are broken at random."""
    h, m = _check(scores, mask)
    n = h.size
    k = int(k)
    if k <= 0:
        return 0.0
    if k >= n:
        return float(m.sum())
    t = np.partition(h, n - k)[n - k]  # the k-th largest value
    above = h > t
    tie = h == t
    need = k - int(above.sum())  # how many of the tied pixels make it into the top k
    return float((m & above).sum()) + need * float((m & tie).sum()) / float(tie.sum())


def top_k_count(n: int, fraction: float = TOP_FRACTION) -> int:
    """Number of pixels in the top ``fraction`` region (at least one)."""
    return max(1, int(math.ceil(fraction * n - 1e-9)))


# ------------------------------------------------------------------------------- metrics


def relevance_mass_accuracy(heatmap, mask) -> float:
    """Share of the positive relevance that falls inside the mask: Σ₊R·M / Σ₊R (Arras et al.)."""
    h, m = _check(heatmap, mask)
    pos = np.clip(h, 0, None)
    total = pos.sum()
    if total <= 0:
        return float("nan")
    return float(pos[m].sum() / total)


def decision_relevance_mass(heatmap, logit: float, mask) -> float:
    """:func:`relevance_mass_accuracy` of the relevance for the decision taken: the map times
    sign(logit). With the logit as start relevance a "no" decision's map is mostly negative; the
    sign turns it into evidence for that "no". ``nan`` for logit 0 (no decision)."""
    return relevance_mass_accuracy(np.sign(float(logit)) * np.asarray(heatmap, dtype=np.float64),
                                   mask)


def relevance_rank_accuracy(heatmap, mask) -> float:
    """|top-K(heatmap) ∩ mask| / K with K = |mask| (Arras et al.); ties broken in expectation."""
    h, m = _check(heatmap, mask)
    k = int(m.sum())
    if k == 0:
        return float("nan")
    return expected_top_k_hits(h, m, k) / k


def pointing_game(heatmap, mask) -> float:
    """1 if the heatmap's maximum lies in the mask, else 0 (Zhang et al.).

    With several pixels at the maximum it is the fraction of them inside the mask (the hit rate
    of a random pick among them).
    """
    h, m = _check(heatmap, mask)
    if not m.any() or h.size == 0:
        return float("nan")
    top = h == h.max()
    return float((top & m).sum() / top.sum())


def auc(heatmap, mask) -> float:
    """ROC AUC with the mask as labels and the heatmap as scores (Mann–Whitney, average ranks).

    AUC = (Σ ranks of positives − n₁(n₁+1)/2) / (n₁ n₀); ties count one half.
    """
    h, m = _check(heatmap, mask)
    n1 = int(m.sum())
    n0 = m.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = average_ranks(h)
    return float((r[m].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def spearman(a, b) -> float:
    """Spearman rank correlation of two maps (Pearson correlation of their average ranks)."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.shape != rb.shape:
        raise ValueError(f"maps differ in size: {np.shape(a)} vs {np.shape(b)}")
    ra = ra - ra.mean()
    rb = rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if den == 0:
        return float("nan")
    return float((ra * rb).sum() / den)


def top_fraction_overlap(heatmap, mask, fraction: float = TOP_FRACTION) -> tuple[float, float]:
    """IoU and Dice between the heatmap's top ``fraction`` of pixels and the mask.

    The top region has exactly ``ceil(fraction·N)`` pixels; its expected intersection with the
    mask (ties at random) gives IoU = I / (k + |M| − I) and Dice = 2I / (k + |M|).
    """
    h, m = _check(heatmap, mask)
    if not m.any():
        return float("nan"), float("nan")
    k = top_k_count(h.size, fraction)
    inter = expected_top_k_hits(h, m, k)
    msum = float(m.sum())
    return float(inter / (k + msum - inter)), float(2 * inter / (k + msum))


def iou_top(heatmap, mask, fraction: float = TOP_FRACTION) -> float:
    """IoU of the top-``fraction`` region of the heatmap with the mask."""
    return top_fraction_overlap(heatmap, mask, fraction)[0]


def dice_top(heatmap, mask, fraction: float = TOP_FRACTION) -> float:
    """Dice of the top-``fraction`` region of the heatmap with the mask."""
    return top_fraction_overlap(heatmap, mask, fraction)[1]


class HeatmapScorer:
    """One heatmap scored against many masks (bootstrap, every annotator) without re-sorting.

    Computes the same values as the single-pair functions above (the tests check this) but
    ranks, sorts and finds the maximum of the heatmap once.
    """

    def __init__(self, heatmap, fraction: float = TOP_FRACTION):
        self.shape = np.shape(heatmap)
        self.h = _flat(heatmap).astype(np.float64)
        n = self.h.size
        self.ranks = average_ranks(self.h)
        self._rc = self.ranks - self.ranks.mean()
        self._rss = float((self._rc * self._rc).sum())
        self.pos = np.clip(self.h, 0, None)
        self.pos_total = float(self.pos.sum())
        self.top = self.h == self.h.max()
        self.n_top_max = float(self.top.sum())
        self.desc = np.sort(self.h)[::-1]
        self.k_top = top_k_count(n, fraction)
        self._cut = {}

    def _sets(self, k: int):
        # (pixels strictly above the k-th largest value, pixels tied with it, how many ties count)
        if k not in self._cut:
            t = self.desc[k - 1]
            above, tie = self.h > t, self.h == t
            self._cut[k] = (above, tie, k - int(above.sum()), float(tie.sum()))
            if len(self._cut) > 64:
                self._cut.pop(next(iter(self._cut)))
        return self._cut[k]

    def expected_hits(self, m: np.ndarray, k: int) -> float:
        if k <= 0:
            return 0.0
        if k >= self.h.size:
            return float(m.sum())
        above, tie, need, ntie = self._sets(k)
        return float((m & above).sum()) + need * float((m & tie).sum()) / ntie

    def score(self, mask) -> dict[str, float]:
        """All :data:`MASK_METRICS` against ``mask``."""
        m = _flat(mask).astype(bool)
        if m.size != self.h.size:
            raise ValueError(f"heatmap and mask differ in size: {self.shape} vs {np.shape(mask)}")
        n1 = int(m.sum())
        n0 = m.size - n1
        nan = float("nan")
        if n1 == 0:
            return {k: nan for k in MASK_METRICS}
        inter = self.expected_hits(m, self.k_top)
        return {
            "mass_accuracy": float(self.pos[m].sum() / self.pos_total) if self.pos_total > 0 else nan,
            "rank_accuracy": self.expected_hits(m, n1) / n1,
            "pointing_game": float((self.top & m).sum() / self.n_top_max),
            "auc": float((self.ranks[m].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0)) if n0 else nan,
            "iou_top10": float(inter / (self.k_top + n1 - inter)),
            "dice_top10": float(2 * inter / (self.k_top + n1)),
        }

    def spearman(self, other) -> float:
        """Spearman correlation of this heatmap with ``other`` (e.g. a graded HRH)."""
        rb = average_ranks(other)
        rb = rb - rb.mean()
        den = math.sqrt(self._rss * float((rb * rb).sum()))
        return float((self._rc * rb).sum() / den) if den > 0 else float("nan")

    def compare_with_hrh(self, hrh, n_annotators: int) -> dict:
        """As :func:`compare_with_hrh`."""
        out: dict = {name: self.score(m) for name, m in threshold_hrh(hrh, n_annotators).items()}
        out["spearman"] = self.spearman(hrh)
        return out


def mask_metrics(heatmap, mask, fraction: float = TOP_FRACTION) -> dict[str, float]:
    """All binary-mask metrics of :data:`MASK_METRICS` for one heatmap/mask pair."""
    iou, dice = top_fraction_overlap(heatmap, mask, fraction)
    return {
        "mass_accuracy": relevance_mass_accuracy(heatmap, mask),
        "rank_accuracy": relevance_rank_accuracy(heatmap, mask),
        "pointing_game": pointing_game(heatmap, mask),
        "auc": auc(heatmap, mask),
        "iou_top10": iou,
        "dice_top10": dice,
    }


# ------------------------------------------------------------------------------- HRHs


def threshold_hrh(hrh, n_annotators: int) -> dict[str, np.ndarray]:
    """Binarise a graded HRH two ways: ``ge1`` (anyone marked it) and ``ge50`` (≥ half did).

    ``ge50`` is ``hrh ≥ n_annotators / 2`` (so 2 of 4, 3 of 5), and never below 1.
    """
    hrh = np.asarray(hrh)
    half = max(1, int(math.ceil(n_annotators / 2.0)))
    return {"ge1": hrh >= 1, "ge50": hrh >= half}


def compare_with_hrh(heatmap, hrh, n_annotators: int, fraction: float = TOP_FRACTION) -> dict:
    """Heatmap vs a graded HRH: mask metrics at both thresholds plus Spearman with the graded map.

    Returns
    -------
    dict
        ``{"ge1": {metric: value}, "ge50": {...}, "spearman": float}``.
    """
    out: dict = {name: mask_metrics(heatmap, m, fraction) for name, m in threshold_hrh(hrh, n_annotators).items()}
    out["spearman"] = spearman(heatmap, hrh)
    return out


def resize_map(heatmap, size: int | tuple[int, int]) -> np.ndarray:
    """Bring a 2-D map to ``size`` (the HRH grid) for comparison.

    Integer up-scaling repeats each value over its block (nearest; relevance per pixel is kept,
    rankings unchanged); integer down-scaling averages each block (area rule; mass shares
    unchanged); any other ratio uses bilinear interpolation (PIL, float32). Sizes are (H, W).
    """
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim == 3:
        # (C, H, W) or (H, W, C) relevance: sum over the channel axis, as LRP heatmaps are shown.
        h = h.sum(axis=0) if h.shape[0] <= 4 else h.sum(axis=-1)
    if h.ndim != 2:
        raise ValueError(f"expected a 2-D map, got shape {h.shape}")
    H, W = (size, size) if isinstance(size, int) else size
    if h.shape == (H, W):
        return h
    fy, fx = H / h.shape[0], W / h.shape[1]
    if fy == fx and fy > 1 and float(fy).is_integer():
        f = int(fy)
        return np.repeat(np.repeat(h, f, axis=0), f, axis=1)
    if fy == fx and fy < 1 and float(1 / fy).is_integer() and h.shape[0] % H == 0 and h.shape[1] % W == 0:
        f = int(round(1 / fy))
        return h.reshape(H, f, W, f).mean(axis=(1, 3))
    im = Image.fromarray(h.astype(np.float32), mode="F").resize((W, H), Image.BILINEAR)
    return np.asarray(im, dtype=np.float64)


# ------------------------------------------------------------------------------- aggregation


def bootstrap_ci(
    groups: Mapping[str, Sequence[float]] | Sequence[Sequence[float]],
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Mean of per-participant values with a percentile bootstrap CI over participants.

    Parameters
    ----------
    groups : mapping or sequence
        For every participant the values they contribute (e.g. one per image). Participants, not
        values, are resampled, so correlated values of one person move together.
    n_bootstrap : int
        Resamples; 0 gives the mean only.
    seed : int
        Seed of ``numpy.random.default_rng``: the same inputs give the same interval.

    Returns
    -------
    dict
        ``{"mean", "ci": [lo, hi] or None, "n": number of defined values, "n_participants"}``.
    """
    vals = list(groups.values()) if isinstance(groups, Mapping) else list(groups)
    vals = [np.asarray(v, dtype=np.float64).reshape(-1) for v in vals]
    vals = [v[np.isfinite(v)] for v in vals]
    vals = [v for v in vals if v.size]
    if not vals:
        return {"mean": float("nan"), "ci": None, "n": 0, "n_participants": 0}
    sums = np.array([v.sum() for v in vals])
    cnts = np.array([v.size for v in vals], dtype=np.float64)
    mean = float(sums.sum() / cnts.sum())
    ci = None
    if n_bootstrap and len(vals) > 1:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(vals), size=(int(n_bootstrap), len(vals)))
        boot = sums[idx].sum(axis=1) / cnts[idx].sum(axis=1)
        a = (1 - level) / 2
        ci = [float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a))]
    return {"mean": mean, "ci": ci, "n": int(cnts.sum()), "n_participants": len(vals)}
