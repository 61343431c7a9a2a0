"""Counterfactual quality metrics over a generation run folder.

- flip rate: share of counterfactuals whose decision reached the target;
- L1 / L2 / SSIM between counterfactual and original (images in [-1, 1]; SSIM on [0, 1]);
- MNAC (Mean Number of Attributes Changed): attributes other than the target whose *oracle*
  decision differs between original and counterfactual (the published protocol's oracle ResNet);
- localisation (toy world): share of Σ|Δ| inside the ground-truth region of the target attribute.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from classifier.attributes import ATTRIBUTES, attribute_index
from classifier.images import load_image
from dvce import runfolder
from dvce.runfolder import RunItem
from fileio import write_json


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Per-image mean SSIM (Wang et al. 2004) of (B, C, H, W) images in [0, 1], shape (B,).

    torchmetrics' implementation with a uniform ``window``×``window`` window (scikit-image's
    default; torchmetrics' own default is an 11-px Gaussian), K1 = 0.01, K2 = 0.03, data range 1.
    """
    # heavy: torchmetrics (~3 s), only SSIM needs it
    from torchmetrics.functional.image import structural_similarity_index_measure
    return structural_similarity_index_measure(b.float(), a.float(), gaussian_kernel=False,
                                               kernel_size=window, data_range=1.0,
                                               reduction="none")


def _region_like(region: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean (H, W) region resized (nearest) to ``shape`` when it differs."""
    region = np.asarray(region, bool)
    if region.shape != tuple(shape):
        region = F.interpolate(torch.from_numpy(region.astype(np.float32))[None, None],
                               size=tuple(shape), mode="nearest")[0, 0].numpy() > 0.5
    return region


def localization(delta: np.ndarray, region: np.ndarray) -> float:
    """Σ|Δ| inside ``region`` / Σ|Δ| (``delta``: (H, W) non-negative map; region resized)."""
    region = _region_like(region, delta.shape)
    total = float(delta.sum())
    return float(delta[region].sum()) / total if total > 0 else float("nan")


def region_shares(delta: np.ndarray, *regions: np.ndarray) -> tuple[float, ...]:
    """Each region's share of Σ|Δ| of one non-negative (H, W) change map (:func:`localization`
    per region); NaN for all when nothing changed."""
    return tuple(localization(delta, r) for r in regions)


def region_densities(delta: np.ndarray, *regions: np.ndarray) -> tuple[float, ...]:
    """Mean |Δ| per pixel inside each region: the change per unit area, which does not favour a
    larger region the way shares of Σ|Δ| do when a change is spread over the whole image. NaN
    for an empty region."""
    d = np.asarray(delta, dtype=np.float64)
    out = []
    for r in regions:
        m = _region_like(r, d.shape)
        out.append(float(d[m].mean()) if m.any() else float("nan"))
    return tuple(out)


def undo_region(original, counterfactual, region):
    """The counterfactual with the original's pixels restored inside ``region`` ((H, W) bool;
    images (3, H, W) or (B, 3, H, W) tensors or arrays): did the change there carry the flip?"""
    m = np.asarray(region, bool)
    if isinstance(counterfactual, torch.Tensor):
        return torch.where(torch.from_numpy(m).to(counterfactual.device), original, counterfactual)
    return np.where(m, original, counterfactual)


#: A pixel belongs to a counterfactual's change when its |Δ| (channels summed) is at least this
#: share of the largest |Δ| of that counterfactual.
CHANGE_REL = 0.2


def change_mask(delta: np.ndarray, rel: float = CHANGE_REL) -> np.ndarray:
    """(H, W) bool: where a counterfactual changed the image, from its (H, W) |Δ| map (channels
    summed): the pixels with at least ``rel`` × the largest change; empty when nothing changed.
    The diversity IoU of ``--num-cfs`` compares these masks (default ``rel``); its keep-out
    rule uses the same mask at ``dvce.diverse.KEEP_OUT_REL``."""
    d = np.asarray(delta, dtype=np.float64)
    peak = float(d.max()) if d.size else 0.0
    return d >= rel * peak if peak > 0 else np.zeros(d.shape, bool)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """|a ∧ b| / |a ∨ b| of two boolean masks; NaN when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else float("nan")


def mean_pairwise_iou(masks: list[np.ndarray]) -> float:
    """The mean :func:`mask_iou` over every pair of a face's change masks (NaN below two masks):
    0 when the counterfactuals change disjoint regions, 1 when they change the same one."""
    vals = [mask_iou(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    vals = [v for v in vals if not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def decision_flip_rates(before, after, indices: dict[str, int]) -> dict[str, float]:
    """How often a classifier's decision (logit > 0) on each named attribute changed between
    originals (``before``: (N, 40) logits) and counterfactuals (``after``), e.g. an oracle's
    ``{"hat": 35, "smile": 31}`` → ``{"hat": 0.9, "smile": 0.1}``."""
    changed = (np.asarray(before) > 0) != (np.asarray(after) > 0)
    return {name: float(changed[:, k].mean()) for name, k in indices.items()}


def mnac(oracle_logits_before: torch.Tensor, oracle_logits_after: torch.Tensor,
         target_index: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample number of attributes (≠ target) whose oracle decision changed."""
    return _changed(oracle_logits_before, oracle_logits_after, target_index, valid).sum(1).float()


def _changed(before: torch.Tensor, after: torch.Tensor, target_index: int,
             valid: torch.Tensor | None) -> torch.Tensor:
    """(N, C) bool: the oracle decisions (logit > 0) that changed, the query and attributes
    outside ``valid`` left out."""
    changed = (before > 0) != (after > 0)
    changed[:, target_index] = False
    if valid is not None:
        changed &= valid[None]
    return changed


def load_run(run_dir) -> list[RunItem]:
    """The finished items of a run folder (see :mod:`dvce.runfolder`); raises when there are none."""
    items = runfolder.list_items(run_dir)
    if not items:
        raise FileNotFoundError(f"no finished counterfactuals (*/result.json) in {run_dir}")
    return items


@torch.no_grad()
def evaluate_run(run_dir, oracle=None, masks: dict | None = None, attribute: str | None = None,
                 oracle_attributes: list[int] | None = None, batch_size: int = 32) -> dict:
    """Metrics of a run folder; writes nothing (see :func:`write_metrics`).

    ``oracle``: a classifier module; ``oracle_attributes``: indices MNAC counts (default: those the
    oracle was trained to see vary — all 40 for CelebA-HQ, the modelled ones for toyfaces).
    ``masks``: toyfaces masks (attribute -> (N, H, W)); image ids must be dataset rows.
    The top-level numbers are those of each image's (rank 1) counterfactual; a run made with
    ``--num-cfs`` also gets ``per_rank`` (the same numbers over the images that have a
    counterfactual of that rank) and ``diversity`` (:func:`diversity`).
    """
    items = load_run(run_dir)
    state = runfolder.run_state(run_dir)
    lost = [it.image_id for it in items if not it.original.is_file()
            or not all(c.counterfactual.is_file() for c in it.counterfactuals)]
    if lost:  # a result.json whose images are gone: reported with the unreadable ones
        items = [it for it in items if it.image_id not in lost]
        state["broken"] = sorted(state["broken"] + lost, key=runfolder.natural_key)
        if not items:
            raise FileNotFoundError(f"no item of {run_dir} has its original.png and "
                                    "counterfactual.png")
    attribute = attribute or items[0].result.get("attribute", "Smiling")
    t_idx = attribute_index(attribute)
    xs = torch.stack([load_image(it.original, _size(it)) for it in items])
    valid = None
    if oracle is not None and oracle_attributes is not None:
        valid = torch.zeros(len(ATTRIBUTES), dtype=torch.bool)
        valid[oracle_attributes] = True
    score = lambda sel, cfs: _scores([items[i] for i in sel], xs[sel], cfs, t_idx,  # noqa: E731
                                     oracle, valid, masks, attribute, batch_size)
    per, changed = score(list(range(len(items))), [it.counterfactuals[0] for it in items])
    metrics = _means(per)
    metrics["n"] = len(items)
    metrics["attribute"] = attribute
    metrics["run"] = state
    metrics["per_image"] = {it.image_id: {k: float(v[i]) for k, v in per.items()}
                            for i, it in enumerate(items)}
    from dvce.runner import info_distributions
    dist = info_distributions([it.result for it in items])
    if dist:  # the sampler's per-image choices (e.g. attempts and noise level), as counts
        metrics["sampler_info"] = dist
        for it in items:
            if "sampler_info" in it.result:
                metrics["per_image"][it.image_id]["sampler_info"] = it.result["sampler_info"]
    if oracle is not None:  # MNAC explained: which attributes the oracle saw change, and how often
        for i, it in enumerate(items):
            metrics["per_image"][it.image_id]["oracle_changed"] = changed[i]
        metrics["oracle_changed"] = dict(Counter(n for names in changed for n in names)
                                         .most_common())
    k = max(len(it.counterfactuals) for it in items)
    if k > 1 or any("counterfactuals" in it.result for it in items):
        metrics["per_rank"] = {}
        for r in range(1, k + 1):
            sel = [i for i, it in enumerate(items) if len(it.counterfactuals) >= r]
            rank_per, _ = score(sel, [items[i].counterfactuals[r - 1] for i in sel])
            metrics["per_rank"][str(r)] = {**_means(rank_per), "n": len(sel)}
        metrics["diversity"] = diversity(items, xs)
    return metrics


def _scores(items: list[RunItem], xs: torch.Tensor, cfs: list, t_idx: int, oracle, valid,
            masks: dict | None, attribute: str, batch_size: int) -> tuple[dict, list]:
    """Per-image metrics of one counterfactual per item (``cfs``: their
    :class:`~dvce.runfolder.RankedCounterfactual`), and the oracle's changed attributes."""
    cf = torch.stack([load_image(c.counterfactual, xs.shape[-1]) for c in cfs])
    per = {
        "flipped": torch.tensor([c.flipped for c in cfs], dtype=torch.float),
        "l1": (cf - xs).abs().flatten(1).mean(1),
        "l2": (cf - xs).pow(2).flatten(1).mean(1).sqrt(),
        "ssim": ssim((xs + 1) / 2, (cf + 1) / 2),
    }
    changed: list = []
    if oracle is not None:
        dev = next(oracle.parameters()).device
        run = lambda t: torch.cat([oracle(t[i:i + batch_size].to(dev)).cpu()  # noqa: E731
                                   for i in range(0, len(t), batch_size)])
        before, after = run(xs), run(cf)
        per["mnac"] = mnac(before, after, t_idx, valid)
        per["oracle_flipped"] = ((after[:, t_idx] > 0) != (before[:, t_idx] > 0)).float()
        changed = oracle_changes(before, after, t_idx, valid)
    if masks is not None:
        region = masks[attribute]
        rows = [it.source_index for it in items]
        if all(r is None for r in rows) or any(r is not None and not 0 <= r < len(region)
                                               for r in rows):
            raise ValueError(f"the masks ({len(region)} rows) do not belong to this run's images: "
                             "localisation needs a run made with --lmdb from the masks' dataset "
                             f"(dataset rows of this run: {sorted(r for r in rows if r is not None)[:5] or 'none'})")
        per["localization"] = torch.tensor([
            localization((c - x).abs().sum(0).numpy(), region[it.source_index])
            if it.source_index is not None else float("nan")
            for it, x, c in zip(items, xs, cf)])
    return per, changed


def _means(per: dict) -> dict:
    metrics = {k: float(torch.nanmean(v.float())) for k, v in per.items()}
    metrics["flip_rate"] = metrics.pop("flipped")
    return metrics


def diversity(items: list[RunItem], xs: torch.Tensor) -> dict:
    """How different the counterfactuals of each image are (runs made with ``--num-cfs``):
    ``mean_pairwise_iou`` of the change masks (:func:`change_mask`) of the flipping
    counterfactuals, over images with at least two (NaN without any); ``two_or_more_rate``, the
    share of images with two or more flipping counterfactuals; ``mean_flipping``, their mean
    number per image."""
    ious, counts = [], []
    for it, x in zip(items, xs):
        cms = [change_mask((load_image(c.counterfactual, x.shape[-1]) - x).abs().sum(0).numpy())
               for c in it.counterfactuals if c.flipped]
        counts.append(len(cms))
        if len(cms) >= 2:
            ious.append(mean_pairwise_iou(cms))
    ious = [v for v in ious if not np.isnan(v)]
    return {"mean_pairwise_iou": float(np.mean(ious)) if ious else float("nan"),
            "two_or_more_rate": float(np.mean([c >= 2 for c in counts])),
            "mean_flipping": float(np.mean(counts)),
            "max_counterfactuals": max(len(it.counterfactuals) for it in items)}


def oracle_changes(before: torch.Tensor, after: torch.Tensor, target_index: int,
                   valid: torch.Tensor | None = None) -> list[list[str]]:
    """Per image, the names of the oracle attributes whose decision (logit > 0) changed, the
    query attribute excluded: the attributes :func:`mnac` counts."""
    return [[ATTRIBUTES[k] for k in row.nonzero().flatten().tolist()]
            for row in _changed(before, after, target_index, valid)]


def _size(it: RunItem) -> int | None:
    with Image.open(it.original) as im:
        return im.size[0]


def write_metrics(run_dir, metrics: dict) -> Path:
    path = Path(run_dir) / "metrics.json"
    write_json(path, metrics)
    return path


#: The metrics :func:`format_table` prints, in order.
TABLE_KEYS = ("n", "flip_rate", "l1", "l2", "ssim", "mnac", "oracle_flipped", "localization")


def format_table(metrics: dict) -> str:
    keys = [k for k in TABLE_KEYS if k in metrics]
    w = max(len(k) for k in keys)
    lines = [f"{k:<{w}}  {metrics[k]:.4f}" if isinstance(metrics[k], float)
             else f"{k:<{w}}  {metrics[k]}" for k in keys]
    if metrics.get("oracle_changed") is not None:
        ch = ", ".join(f"{k} {v}" for k, v in metrics["oracle_changed"].items()) or "none"
        lines.append(f"{'oracle saw change':<{w}}  {ch} (images; per image in metrics.json)")
    if metrics.get("per_rank"):
        cols = [k for k in TABLE_KEYS if k != "n" and k in metrics["per_rank"]["1"]]
        lines.append("per rank (rank 1: smallest change):")
        lines.append("  rank   n  " + "  ".join(f"{k:>14}" for k in cols))
        for r, m in metrics["per_rank"].items():
            lines.append(f"  {r:>4} {m['n']:>3}  " + "  ".join(f"{m[k]:>14.4f}" for k in cols))
        d = metrics["diversity"]
        lines.append(f"diversity: mean pairwise IoU of the change masks {d['mean_pairwise_iou']:.3f}, "
                     f"images with ≥ 2 flipping counterfactuals {d['two_or_more_rate']:.3f}, "
                     f"flipping per image {d['mean_flipping']:.2f}")
    return "\n".join(lines)
