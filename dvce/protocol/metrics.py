"""Pure metric math of the published counterfactual protocol (no network loading, no files).

Every function takes arrays that a network already produced (features, embeddings, oracle
probabilities, classifier logits) and returns the number the reference scripts print. The
reference scripts are those of the ACE repository (``compute_FID.sh``, ``compute_sFID.sh``,
``compute_FVA.py``, ``compute_MNAC.py``, ``compute_CD.py``, ``compute_COUT.py`` with
``eval_utils/cout_metrics.py``), which DiME, FastDiME and MaskDiME use and LDCE's
``evaluate_celeb_all.py`` calls. Where a script departs from its paper, or leaves something
open, the docstring says what is done here.

Which pairs each metric uses (as in the scripts): FID/sFID compare *all* originals with the
*successful* counterfactuals; FVA, FS, MNAC and CD use successful pairs; COUT uses every pair.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


# ------------------------------------------------------------------------------------- FR
def flip_rate(logit_after, target) -> float:
    """FR: share of counterfactuals the explained classifier assigns the target label.

    ``logit_after``: the classifier's logit for the attribute on each counterfactual;
    ``target``: 0/1 per counterfactual. A logit > 0 is label 1 (sigmoid > 0.5). LDCE computes
    ``mean(target == out_pred)`` the same way.
    """
    la, t = np.asarray(logit_after, float), np.asarray(target).astype(bool)
    if la.size == 0:
        return float("nan")
    return float(np.mean((la > 0) == t))


# ------------------------------------------------------------------------------- FID / sFID
def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):
    ``|mu1 - mu2|² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})``.

    The trace of the matrix square root is the sum of the square roots of the eigenvalues of
    ``sigma1 @ sigma2`` (real and non-negative for covariance matrices), as torchmetrics computes
    it; pytorch-fid uses ``scipy.linalg.sqrtm`` instead (same value up to round-off; it adds
    1e-6 to the diagonals when the product is singular, which changes singular cases slightly).
    """
    from torchmetrics.image.fid import _compute_fid  # heavy: torchmetrics (~3 s), only FID
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    return float(_compute_fid(t(mu1), t(sigma1), t(mu2), t(sigma2)))


class _GivenFeatures(nn.Module):
    """torchmetrics' FID with features computed elsewhere (cached): its ``feature`` module is
    the identity. A custom module keeps torchmetrics from needing torch-fidelity, and its
    eigenvalue formula needs no scipy."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x):
        return x


def fid(real_features, fake_features) -> float:
    """FID: Fréchet distance of Gaussians fitted to two feature sets (n × d each, n ≥ 2).

    Uses ``torchmetrics.image.fid.FrechetInceptionDistance`` (unbiased covariances, float64 sums)
    with the features handed in. In the protocol the real set is every original and the fake set
    every *successful* counterfactual (``compute_FID.sh`` copies ``Original/Correct``,
    ``Original/Incorrect`` and the ``CCF`` counterfactuals).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance  # heavy, as above
    real = torch.as_tensor(np.asarray(real_features, dtype=np.float64))
    fake = torch.as_tensor(np.asarray(fake_features, dtype=np.float64))
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"FID needs two (n, d) feature sets of one width, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    m = FrechetInceptionDistance(feature=_GivenFeatures(real.shape[1]), reset_real_features=True)
    m.update(real, real=True)
    m.update(fake, real=False)
    return float(m.compute())


def sfid_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The two halves of sFID: a seeded shuffle of ``range(n)``; half A is the last ``n // 2``
    of the shuffle, half B the first ``n // 2`` (``compute_sFID.sh``: ``shuf``, ``tail``/``head``;
    with odd ``n`` one image is in neither half)."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n - n // 2:]), np.sort(perm[:n // 2])


def sfid(original_features, counterfactual_features, success, seed: int = 0) -> dict:
    """sFID: FID(originals of half A, successful counterfactuals of half B) and the reverse,
    averaged, so no counterfactual is compared with its own original.

    ``compute_sFID.sh`` shuffles with an unseeded ``shuf`` and prints the two FIDs, leaving the
    averaging to the user; here the split is seeded (``seed``) and the mean is returned with both
    halves' values.
    """
    of = np.asarray(original_features, dtype=np.float64)
    cf = np.asarray(counterfactual_features, dtype=np.float64)
    ok = np.asarray(success, dtype=bool)
    a, b = sfid_split(len(of), seed)
    values = [fid(of[a], cf[b][ok[b]]), fid(of[b], cf[a][ok[a]])]
    return {"value": float(np.mean(values)), "halves": values, "seed": seed,
            "n_half": int(len(a))}


# -------------------------------------------------------------------------------- FVA / FS
def cosine_similarity(a, b) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) arrays (features flattened per row)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def same_person(a, b, metric: str = "cosine", threshold: float = 0.5) -> np.ndarray:
    """Face verification per row: ``cosine > threshold`` or ``euclidean < threshold``.

    The rule belongs to the face model: the protocol's VGGFace2 ResNet-50 uses cosine > 0.5
    (``compute_FVA.py``); dlib's ResNet uses Euclidean distance < 0.6 (its documented rule).
    """
    if metric == "cosine":
        return cosine_similarity(a, b) > threshold
    if metric == "euclidean":
        a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
        b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
        return np.linalg.norm(a - b, axis=1) < threshold
    raise ValueError(f"unknown face-verification metric {metric!r} (cosine or euclidean)")


def fva_fs(emb_original, emb_counterfactual, metric: str = "cosine",
           threshold: float = 0.5) -> dict:
    """FVA: share of (original, counterfactual) pairs the face model calls the same person;
    FS: mean cosine similarity of the pairs' embeddings (``compute_FVA.py`` prints both:
    ``mean(dist > 0.5)`` and ``mean(dist)`` with ``dist`` the cosine)."""
    if len(emb_original) == 0:
        return {"fva": float("nan"), "fs": float("nan"), "n": 0}
    same = same_person(emb_original, emb_counterfactual, metric, threshold)
    cos = cosine_similarity(emb_original, emb_counterfactual)
    out = {"fva": float(same.mean()), "fs": float(cos.mean()), "n": int(len(same)),
           "rule": f"{metric} {'>' if metric == 'cosine' else '<'} {threshold}"}
    if metric == "euclidean":
        a = np.asarray(emb_original, dtype=np.float64).reshape(len(same), -1)
        b = np.asarray(emb_counterfactual, dtype=np.float64).reshape(len(same), -1)
        out["mean_distance"] = float(np.linalg.norm(a - b, axis=1).mean())
    return out


# ------------------------------------------------------------------------------------ MNAC
def attributes_changed(p_before, p_after, query: int, valid=None,
                       include_query: bool = False) -> np.ndarray:
    """Per pair, the number of oracle attributes whose decision (probability > 0.5) changed.

    The query attribute is excluded (the definition: attributes changed *besides* the one
    explained). ``compute_MNAC.py`` sums over all 40 including the query
    (``((d_cl > 0.5) != (d_cf > 0.5)).sum(dim=1)``), i.e. up to one more per pair where the
    oracle sees the query flip; ``include_query=True`` reproduces that count. ``valid``: a
    boolean mask (or index list) of the attributes that count (default: all).
    """
    pb, pa = np.asarray(p_before, dtype=np.float64), np.asarray(p_after, dtype=np.float64)
    changed = (pb > 0.5) != (pa > 0.5)
    keep = _attribute_mask(valid, changed.shape[1])
    if not include_query:
        keep[query] = False
    return (changed & keep[None]).sum(1)


def mnac(p_before, p_after, query: int, valid=None) -> dict:
    """MNAC: mean of :func:`attributes_changed` over successful pairs, with the script's count
    (query included) beside it."""
    if len(p_before) == 0:
        return {"value": float("nan"), "with_query": float("nan"), "n": 0}
    return {"value": float(attributes_changed(p_before, p_after, query, valid).mean()),
            "with_query": float(attributes_changed(p_before, p_after, query, valid, True).mean()),
            "n": int(len(p_before))}


def _attribute_mask(valid, n: int) -> np.ndarray:
    if valid is None:
        return np.ones(n, dtype=bool)
    v = np.asarray(valid)
    if v.dtype == bool:
        return v.copy()
    m = np.zeros(n, dtype=bool)
    m[v.astype(int)] = True
    return m


# -------------------------------------------------------------------------------------- CD
def _corr(a, b) -> float:
    """Pearson correlation, 0 where it is undefined (a constant column), as compute_CD.py."""
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(np.asarray(a, float), np.asarray(b, float))
    return 0.0 if np.any(np.isnan(c)) else float(c[0, 1])


def label_correlations(labels, query: int) -> np.ndarray:
    """Correlation of each attribute's label with the query's over the training split.

    ``labels``: (N, 40) in {-1, 1} or {0, 1} (``compute_CD.py`` maps -1 to 0; correlation is
    unchanged by it). An attribute constant in the split has no correlation: the script's
    ``np.corrcoef`` gives NaN there and the CD sum becomes NaN; here it is 0 (the counterfactual
    side of such an attribute is then 0 too unless the oracle changes it).
    """
    y = (np.asarray(labels) > 0).astype(np.float64)
    return np.array([_corr(y[:, query], y[:, i]) for i in range(y.shape[1])])


def correlation_difference(p_before, p_after, query: int, train_correlations) -> dict:
    """CD: Σ_i |corr(Δ_i, Δ_query) − corr_train(y_i, y_query)| over the 40 attributes.

    Δ = oracle decision (p > 0.5) on the counterfactual − on the original, per successful pair;
    corr(Δ_i, Δ_query) is 0 where undefined (``compute_CD.py``). When every pair moves the query
    the same way (one target direction), Δ_query is constant, every correlation is undefined and
    CD is Σ|corr_train|: the metric needs runs that explain both directions, as the reference
    runs do.
    """
    pb, pa = np.asarray(p_before, dtype=np.float64), np.asarray(p_after, dtype=np.float64)
    corrs = np.asarray(train_correlations, dtype=np.float64)
    if len(pb) == 0:
        return {"value": float("nan"), "n": 0}
    deltas = (pa > 0.5).astype(float) - (pb > 0.5).astype(float)
    ours = np.array([_corr(deltas[:, i], deltas[:, query]) for i in range(deltas.shape[1])])
    return {"value": float(np.abs(ours - corrs).sum()), "n": int(len(pb)),
            "counterfactual_correlations": ours.tolist(),
            "query_delta_constant": bool(np.all(deltas[:, query] == deltas[0, query]))}


# ------------------------------------------------------------------------------------ COUT
def insertion_masks(x: torch.Tensor, cf: torch.Tensor) -> torch.Tensor:
    """(B, H·W) per-pixel Σ_channels |cf − x|, min-max normalised per image
    (``cout_metrics.gen_masks`` with ``mode='abs'``)."""
    m = (cf - x).abs().flatten(2).sum(1)
    m = m - m.min(1, keepdim=True)[0]
    return m / m.max(1, keepdim=True)[0].clamp_min(1e-12)


@torch.no_grad()
def cout(logit_fn, x: torch.Tensor, cf: torch.Tensor, steps: int = 50) -> dict:
    """COUT (Khorram & Fuxin, C3LT, CVPR 2022), binary version of ``cout_metrics.py``.

    Pixels of the counterfactual are inserted into the original in the order of
    Σ_channels|cf − x| (largest first), ``max(1, H·W // steps)`` pixels per step, until all are
    in. ``c`` is the classifier's probability of the original's predicted class
    (``sigmoid(±logit)``), ``c' = 1 − c``; per pair COUT = AUC(c') − AUC(c) with the script's
    trapezoid (``curve[0]/2 + Σ curve[1:-1] + curve[-1]/2``, each interval ``step / (H·W)``
    wide). With ``H·W`` not a multiple of the step the last interval is counted full width, as in
    the script (at 256² the abscissa runs to 1.02). Range [−1, 1]; higher is better.

    ``logit_fn``: images (B, 3, H, W) in the classifier's input range → (B,) logits of the
    explained attribute. ``x``, ``cf``: (B, 3, H, W) in that range (insertion is affine-invariant,
    so the range does not change the curve). Returns per-pair scores and the mean curves.
    """
    b, _, h, w = x.shape
    n_pix = h * w
    step = max(1, n_pix // steps)
    masks = insertion_masks(x, cf)
    order = torch.argsort(masks, dim=1, descending=True)
    logit0 = logit_fn(x).flatten().float()
    positive = logit0 > 0  # the original's predicted label

    def probs(z):
        c = torch.sigmoid(torch.where(positive, z, -z))
        return c, 1 - c

    c0, p0 = probs(logit0)
    c_curve, p_curve = [c0], [p0]
    cur = torch.zeros(b, n_pix, device=x.device, dtype=x.dtype)
    rows = torch.arange(b, device=x.device)[:, None]
    for start in range(0, n_pix, step):
        cur[rows, order[:, start:start + step]] = 1
        m = cur.view(b, 1, h, w)
        c, p = probs(logit_fn(cf * m + x * (1 - m)).flatten().float())
        c_curve.append(c)
        p_curve.append(p)
    width = step / n_pix
    auc = lambda cs: (cs[0] / 2 + sum(cs[1:-1]) + cs[-1] / 2) * width  # noqa: E731
    scores = auc(p_curve) - auc(c_curve)
    return {"per_pair": scores.cpu().numpy(), "c_curve": torch.stack(c_curve, 1).cpu().numpy(),
            "c_prime_curve": torch.stack(p_curve, 1).cpu().numpy(), "step": step}
