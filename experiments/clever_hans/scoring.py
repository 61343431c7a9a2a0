"""Ground-truth scores of a Clever-Hans run folder, and the renderer's answer key.

Where each counterfactual changed the face (per pixel in the hat and mouth regions), what the
independent oracle sees change, which change carried the flip, and where LRP puts the
decision's relevance; the answer key re-renders the faces with a hat or a smile.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import toyfaces
from classifier.attributes import attribute_index
from classifier.evaluate import dataset_for, predict
from classifier.images import load_image
from dvce.metrics import (decision_flip_rates, diversity, load_run, region_densities,
                          region_shares, undo_region)
from experiments.clever_hans.data import CUE, DEFAULT, TARGET
from study.metrics import decision_relevance_mass
from toyfaces.render import render
from xai.lrp import attribute as lrp


def change_rates(hat_density, mouth_density) -> dict:
    """Per image, which region changed most: ``hat_change_rate`` is the share of images whose
    mean |Δ| per pixel in the hat region exceeds that in the mouth region, ``mouth_change_rate``
    the reverse (ties, unchanged and unscored images count for neither)."""
    h, m = np.asarray(hat_density, float), np.asarray(mouth_density, float)
    ok = np.isfinite(h) & np.isfinite(m) & ((h > 0) | (m > 0))
    n = max(len(h), 1)
    return {"hat_change_rate": float((h[ok] > m[ok]).sum() / n),
            "mouth_change_rate": float((m[ok] > h[ok]).sum() / n)}


def interventions(models: dict, folder, rows) -> dict:
    """The answer key from the renderer: each face of ``rows`` re-rendered with a hat, and with
    its mouth mirrored into a smile (same curvature, other sign), everything else equal.

    Returns ``{"rates": {model name: {"hat": share called smiling with a hat added, "smile":
    share called smiling with the smile, "hat_seen": share whose Wearing_Hat logit is positive
    with the hat added, "hat_gain", "smile_gain": median change of the Smiling logit from the
    face as it is}}, "logits": {model name: {"original": [...], "hat": [...], "smile": [...]}}
    (Smiling, per face), "images": {"hat": (N, H, W, 3) uint8, "smile": …}}``. ``hat_seen`` of
    the oracle checks that it can see the rendered hats. The gains show a partial cue the rates
    hide: a classifier may never call a face smiling for its smile alone and still take part of
    its margin from it, which its minimal counterfactuals then use.
    """
    s, h = attribute_index(TARGET), attribute_index(CUE)
    base = toyfaces.load_factors(folder).take(np.asarray(rows, dtype=int))
    hat, smile = base.take(slice(None)), base.take(slice(None))
    hat.hat = np.ones(len(base), bool)
    smile.smile = np.abs(base.smile)
    images = {"hat": render(hat), "smile": render(smile)}
    x = {k: torch.from_numpy(v).permute(0, 3, 1, 2).float() / 127.5 - 1.0
         for k, v in {**images, "original": render(base)}.items()}
    out = {"rates": {}, "logits": {}, "images": images}
    with torch.no_grad():
        for name, m in models.items():
            lo, lh, ls = m(x["original"]), m(x["hat"]), m(x["smile"])
            out["rates"][name] = {"hat": float((lh[:, s] > 0).float().mean()),
                                  "smile": float((ls[:, s] > 0).float().mean()),
                                  "hat_seen": float((lh[:, h] > 0).float().mean()),
                                  # quantile, not median(): that takes the lower middle value
                                  "hat_gain": float((lh[:, s] - lo[:, s]).quantile(0.5)),
                                  "smile_gain": float((ls[:, s] - lo[:, s]).quantile(0.5))}
            out["logits"][name] = {"original": lo[:, s].tolist(), "hat": lh[:, s].tolist(),
                                   "smile": ls[:, s].tolist()}
    return out


def accuracies(clf, folders: dict[str, Path]) -> dict:
    """Smiling accuracy of ``clf`` on each folder, and on the faces of the decorrelated folder
    where hat and smile disagree (a hat reader gets these wrong)."""
    s, h = attribute_index(TARGET), attribute_index(CUE)
    out = {}
    for name, folder in folders.items():
        logits, labels, _ = predict(clf, dataset_for(folder, split="all"), progress=False)
        right = (logits[:, s] > 0).float() == labels[:, s]
        out[f"accuracy_{name}"] = float(right.float().mean())
        if name == "decorrelated":
            conflict = labels[:, s] != labels[:, h]
            out["accuracy_conflicting"] = (float(right[conflict].float().mean())
                                           if bool(conflict.any()) else float("nan"))
            out["n_conflicting"] = int(conflict.sum())
    return out


def score_run(run_dir, clf, oracle, masks: dict, composite: str = DEFAULT.composite) -> dict:
    """Ground-truth scores of one run folder (see the module docstring): change rates (from
    the per-pixel change in each region, :func:`change_rates`) and mean shares of Σ|Δ|, oracle flips, LRP masses (originals ``_pre``, counterfactuals ``_post``, both
    together without suffix), the sampler's mask size and hat coverage, flip rate and L1.
    ``per_image`` holds every image's numbers, ``maps`` its images and maps (for figures)."""
    items = load_run(run_dir)
    s, h = attribute_index(TARGET), attribute_index(CUE)
    x = torch.stack([load_image(it.original, None) for it in items])
    cf = torch.stack([load_image(it.counterfactual, None) for it in items])
    rows = [it.source_index for it in items]
    if any(r is None for r in rows):
        raise ValueError(f"{run_dir}: every item must come from a toyfaces row (source index)")
    hat, mouth = masks[CUE][rows], masks[TARGET][rows]
    delta = (cf - x).abs().sum(1).numpy()
    shares = [region_shares(d, hm, mm) for d, hm, mm in zip(delta, hat, mouth)]
    density = [region_densities(d, hm, mm) for d, hm, mm in zip(delta, hat, mouth)]
    with torch.no_grad():
        ob, oa = oracle(x).numpy(), oracle(cf).numpy()
    # which change carried the flip: undo it (original pixels back in the region), re-classify
    with torch.no_grad():
        keep = {r: clf(torch.stack([undo_region(x[i], cf[i], m[i])
                                    for i in range(len(items))]))[:, s].numpy()
                for r, m in (("hat", hat), ("mouth", mouth))}
    heat_pre = lrp(clf, x, TARGET, composite, "logit", full=True)
    heat_post = lrp(clf, cf, TARGET, composite, "logit", full=True)
    per, masses = {}, {k: [] for k in ("hat_pre", "mouth_pre", "hat_post", "mouth_post")}
    mask_frac, mask_hat, maps = [], [], {}
    for i, it in enumerate(items):
        e = {"row": rows[i], "flipped": bool(it.result["flipped"]), "l1": float(it.result["l1"]),
             "hat_share": shares[i][0], "mouth_share": shares[i][1],
             "hat_density": density[i][0], "mouth_density": density[i][1],
             "logit_hat_undone": float(keep["hat"][i]),
             "logit_mouth_undone": float(keep["mouth"][i]),
             "oracle_hat": [float(ob[i, h]), float(oa[i, h])],
             "oracle_smile": [float(ob[i, s]), float(oa[i, s])]}
        for when, att in (("pre", heat_pre), ("post", heat_post)):
            heat, logit = att.heatmap[i].numpy(), float(att.logits[i, s])
            e[f"logit_{when}"] = logit
            for region, m in (("hat", hat[i]), ("mouth", mouth[i])):
                e[f"lrp_{region}_mass_{when}"] = decision_relevance_mass(heat, logit, m)
                masses[f"{region}_{when}"].append(e[f"lrp_{region}_mass_{when}"])
        if it.mask is not None:  # the sampler's self-optimised pixel mask (guided)
            pm = np.load(it.mask) > 0.5
            e["sampler_mask_fraction"] = float(pm.mean())
            e["sampler_mask_hat_coverage"] = float(pm[hat[i]].mean())
            mask_frac.append(e["sampler_mask_fraction"])
            mask_hat.append(e["sampler_mask_hat_coverage"])
        per[it.image_id] = e
        maps[it.image_id] = {"original": x[i], "counterfactual": cf[i], "delta": delta[i],
                             "lrp_post": heat_post.heatmap[i].numpy(), "hat": hat[i],
                             "mouth": mouth[i]}
    mean = lambda v: float(np.nanmean(v)) if len(v) else float("nan")  # noqa: E731
    out = {"n": len(items), "flip_rate": mean([e["flipped"] for e in per.values()]),
           "l1": mean([e["l1"] for e in per.values()])}
    out.update(change_rates([a for a, _ in density], [b for _, b in density]))
    out["hat_share"] = mean([a for a, _ in shares])
    out["mouth_share"] = mean([b for _, b in shares])
    flipped = [e for e in per.values() if e["flipped"]]
    for r in ("hat", "mouth"):  # share of flips lost when that region's change is undone
        out[f"flip_needs_{r}_rate"] = (mean([e[f"logit_{r}_undone"] <= 0 for e in flipped])
                                       if flipped else float("nan"))
    flips = decision_flip_rates(ob, oa, {"hat": h, "smile": s})
    out["oracle_hat_flip_rate"], out["oracle_smile_flip_rate"] = flips["hat"], flips["smile"]
    for region in ("hat", "mouth"):
        pre, post = masses[f"{region}_pre"], masses[f"{region}_post"]
        out[f"lrp_{region}_mass"] = mean(pre + post)
        out[f"lrp_{region}_mass_pre"], out[f"lrp_{region}_mass_post"] = mean(pre), mean(post)
    if mask_frac:
        out["sampler_mask_fraction"] = mean(mask_frac)
        out["sampler_mask_hat_coverage"] = mean(mask_hat)
    if any("counterfactuals" in it.result for it in items):  # a --num-cfs run
        out.update(every_counterfactual(items, x, hat, mouth, per, maps))
    out["per_image"], out["maps"] = per, maps
    return out


def every_counterfactual(items, x, hat, mouth, per: dict, maps: dict) -> dict:
    """The scores of a run with several counterfactuals per face: ``any_hat_change_rate``, the
    share of faces of which at least one counterfactual changes the hat more than the mouth
    (per pixel, as :func:`change_rates`), and :func:`dvce.metrics.diversity`. Adds each face's
    per-rank ``hat_density``/``mouth_density``/``flipped``/``l1`` to ``per`` and its
    counterfactual images to ``maps`` (for the figure)."""
    any_hat = []
    for i, it in enumerate(items):
        ranks, images = [], []
        for c in it.counterfactuals:
            img = load_image(c.counterfactual, None)
            h_d, m_d = region_densities((img - x[i]).abs().sum(0).numpy(), hat[i], mouth[i])
            ranks.append({"rank": c.rank, "flipped": c.flipped, "l1": float(c.result["l1"]),
                          "hat_density": h_d, "mouth_density": m_d})
            images.append(img)
        per[it.image_id]["ranks"] = ranks
        maps[it.image_id]["counterfactuals"] = images
        any_hat.append(any(r["hat_density"] > r["mouth_density"] for r in ranks))
    return {"any_hat_change_rate": float(np.mean(any_hat)), **diversity(items, x)}


def public_score(score: dict) -> dict:
    """A score without per-image details and arrays (for ``summary.json``)."""
    out = {k: v for k, v in score.items() if k not in ("per_image", "maps", "crp")}
    if "crp" in score:
        out["crp"] = {k: v for k, v in score["crp"].items() if k != "references"}
    return out
