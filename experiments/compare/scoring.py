"""Per-face scores of attribution maps and their summaries (mean, bootstrap 95 % interval over
faces).

Each metric has one owner: localisation and the HRH metrics are :mod:`study.metrics`'
(relevance mass/rank accuracy, pointing game, AUC, Spearman, the HRH thresholds and the
leave-one-out ceiling as ``ldvce study eval`` computes it), the deletion/insertion curves and the
randomised model :mod:`xai.faithfulness`'. Maps are evidence for the decision (see
:mod:`xai.attributions`), so the mass metrics read them as they are.
"""
from __future__ import annotations

import numpy as np

from study import metrics as M
from study.hrh import hrh_from_masks, leave_one_out_hrhs
from xai.faithfulness import aopc, curve_area, perturbation_curves

#: Localisation metrics against the ground-truth region (names as in ``study.metrics``).
LOCALISATION = {"mass_accuracy": M.relevance_mass_accuracy,
                "rank_accuracy": M.relevance_rank_accuracy,
                "pointing_game": M.pointing_game, "auc": M.auc}
#: Metrics against the HRHs: the mask metrics at the ≥ 50 % threshold, and Spearman.
HUMAN = ("mass_accuracy", "rank_accuracy", "pointing_game", "auc", "spearman")
#: Which way is better, for the table's arrows.
HIGHER_IS_BETTER = {"deletion_auc": False, "randomisation_similarity": False}


def localisation(maps: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per face: every :data:`LOCALISATION` metric of ``maps`` against ``masks``."""
    if masks is None:
        return {}
    return {name: np.array([fn(h, m) for h, m in zip(maps, masks)], dtype=np.float64)
            for name, fn in LOCALISATION.items()}


def faithfulness(model, images, attribute, maps, direction, steps: int) -> tuple[dict, dict]:
    """Per face: deletion and insertion area and AOPC (:mod:`xai.faithfulness`); and the mean
    curves (for the report)."""
    curves = perturbation_curves(model, images, attribute, maps, direction, steps)
    per = {"deletion_auc": curve_area(curves["deletion"]),
           "insertion_auc": curve_area(curves["insertion"]),
           "aopc": aopc(curves["deletion"])}
    return per, {k: v.mean(0).tolist() for k, v in curves.items()}


def randomisation_similarity(maps: np.ndarray, random_maps: np.ndarray) -> np.ndarray:
    """Per face: Spearman rank correlation of |map| for the trained and the randomised model
    (Adebayo et al. compare absolute maps; a map that does not depend on the weights stays
    near 1)."""
    return np.array([M.spearman(np.abs(a), np.abs(b)) for a, b in zip(maps, random_maps)])


def humans(maps: np.ndarray, people: dict, ids: list[str], size: int) -> dict[str, np.ndarray]:
    """Per face: ``maps`` against the HRH of the face's annotators (``people[id]``: (P, S, S)
    bool masks): the mask metrics at the ≥ 50 % threshold and Spearman with the graded HRH
    (:meth:`study.metrics.HeatmapScorer.compare_with_hrh`); maps brought to the HRH grid with
    :func:`study.metrics.resize_map`."""
    out = {k: [] for k in HUMAN}
    for h, fid in zip(maps, ids):
        masks = people[fid]
        if len(masks) == 0:
            for k in HUMAN:
                out[k].append(np.nan)
            continue
        res = M.HeatmapScorer(M.resize_map(h, masks.shape[-1])).compare_with_hrh(
            hrh_from_masks(masks), len(masks))
        for k in HUMAN:
            out[k].append(res["spearman"] if k == "spearman" else res["ge50"][k])
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def human_ceiling(people: dict, n_bootstrap: int, seed: int) -> dict:
    """The leave-one-out human ceiling, as ``ldvce study eval`` computes it: each annotator's own
    mask scored against the HRH of everybody else, mean over annotator × face, bootstrap over
    annotators."""
    scores: dict[int, list[dict]] = {}
    for masks in people.values():
        if len(masks) < 2:
            continue
        for i, loo, mask in leave_one_out_hrhs(masks):
            sc = M.HeatmapScorer(loo)
            s = sc.score(mask)
            s["spearman"] = sc.spearman(mask)
            scores.setdefault(i, []).append(s)
    if not scores:
        return {}
    return {k: summary_of_groups({p: [s[k] for s in v] for p, v in scores.items()},
                                 n_bootstrap, seed) for k in HUMAN}


def summary_of_groups(groups, n_bootstrap: int, seed: int) -> dict:
    """Mean and percentile-bootstrap 95 % interval (:func:`study.metrics.bootstrap_ci`)."""
    r = M.bootstrap_ci(groups, n_bootstrap, seed)
    return {"mean": r["mean"], "ci": r["ci"], "n": r["n"]}


def summarise(values, n_bootstrap: int, seed: int) -> dict:
    """Per-face values -> mean with a bootstrap 95 % interval over faces."""
    return summary_of_groups([[v] for v in np.asarray(values, dtype=np.float64)], n_bootstrap,
                             seed)
