"""CRP for the Clever-Hans experiment: which concepts changed, where their relevance lies (hat
or mouth), and each classifier's top concepts for the target with reference images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import toyfaces
from classifier.evaluate import dataset_for
from classifier.images import load_image
from dvce import runfolder
from dvce.metrics import localization
from experiments.clever_hans.data import CUE, DEFAULT, TARGET
from experiments.explain import crp_local, model_image_size
from toyfaces.world import cache_dir
from xai.crp import conditional_heatmaps, global_analysis, load_references
from xai.render import image_grid_figure


def concept_regions(clf, images, rows, concepts: list[str], masks: dict,
                    composite: str = DEFAULT.composite) -> dict:
    """For each CRP concept ``"layer#channel"``: the share of its conditional relevance
    (absolute values) for Smiling that lies in the hat and in the mouth masks, averaged over
    ``images`` ((3, H, W) tensors of the toyfaces ``rows`` whose ``masks`` apply). A "hat
    concept" puts its relevance on the hat."""
    by_layer: dict[str, list[int]] = {}
    for concept in concepts:
        layer, channel = concept.rsplit("#", 1)
        by_layer.setdefault(layer, []).append(int(channel))
    mass = {c: {"hat": [], "mouth": []} for c in concepts}
    for image, row in zip(images, rows):
        for layer, channels in by_layer.items():  # one batched CRP pass per image and layer
            maps = conditional_heatmaps(clf, image, TARGET, layer, channels, composite)
            for channel, heat in zip(channels, maps):
                for region, key in (("hat", CUE), ("mouth", TARGET)):
                    mass[f"{layer}#{channel}"][region].append(
                        localization(np.abs(np.asarray(heat, dtype=np.float64)), masks[key][row]))
    return {c: {f"{r}_mass": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                for r, v in m.items()} for c, m in mass.items()}


def crp_analysis(clf, run_dir, masks: dict, reference_data, out_dir, top: int = 3,
                 n_reference: int = 200, max_pairs: int | None = None,
                 progress: bool = True, layers: str = DEFAULT.crp_layers) -> dict:
    """CRP of one classifier's run, two views of its concepts.

    ``changed``: the concepts most often among the most changed between originals and
    counterfactuals (``experiments.explain.crp_local``), with where their relevance lies on the
    counterfactuals. ``global``: the classifier's top concepts for Smiling over ``n_reference``
    faces of ``reference_data`` (relevance maximisation, ``xai.crp.global_analysis``, cached),
    with where their relevance lies on their own reference images. Both get reference images
    (``concepts.png``); ``references`` maps each concept to its images.
    """
    out_dir = Path(out_dir)
    local = crp_local(run_dir, clf, TARGET, layers, top=4, out_dir=out_dir / "local",
                      max_items=max_pairs, progress=progress)
    changed = [c for c, _ in local["most_often_changed"][:top]]
    items = runfolder.list_items(run_dir)
    on_cf = concept_regions(clf, [load_image(it.counterfactual, None) for it in items],
                            [it.source_index for it in items], changed, masks)
    ds = dataset_for(reference_data, split="all", image_size=model_image_size(clf))
    # the relevance maximisation is cached by model, data and settings: shared by every output
    where = cache_dir() / "crp-global"
    ranked = global_analysis(clf, ds, TARGET, layers, where, n=n_reference, top=1,
                             figure=False, progress=progress)
    best = sorted((e for v in ranked["layers"].values() for e in v),
                  key=lambda e: -e["mean_share"])[:2]
    glob = global_analysis(clf, ds, TARGET, layers, where, n=n_reference,
                           concepts=changed + [e["concept"] for e in best if e["concept"] not in changed],
                           figure=False, progress=progress)
    entries = {e["concept"]: e for v in glob["layers"].values() for e in v}
    ref_masks = toyfaces.load_masks(reference_data)
    on_refs = {}
    for e in best:  # where a top concept looks when it is most relevant: its reference faces
        refs = e["reference_rows"]
        on_refs.update(concept_regions(clf, [ds.read_image(r) for r in refs], refs,
                                       [e["concept"]], ref_masks))
    references = {c: load_references(glob, c) for c in entries}
    rows = ([(f"changed: {c.removeprefix('net.')}\nhat {on_cf[c]['hat_mass']:.2f} · mouth "
              f"{on_cf[c]['mouth_mass']:.2f}", references[c]) for c in changed]
            + [(f"top for {TARGET}: {e['concept'].removeprefix('net.')}\nhat "
                f"{on_refs[e['concept']]['hat_mass']:.2f} · mouth "
                f"{on_refs[e['concept']]['mouth_mass']:.2f}", references[e["concept"]])
               for e in best])
    figure = image_grid_figure(rows, out_dir / "concepts.png",
                               title="CRP concepts and their reference images (relevance on the "
                                     "hat / mouth masks)")
    return {"concepts": [{"concept": c, "times_among_most_changed": k, **on_cf[c],
                          "mean_share": entries[c]["mean_share"],
                          "reference_rows": entries[c]["reference_rows"]}
                         for c, k in local["most_often_changed"][:top]],
            "top_concepts": [{"concept": e["concept"], "mean_share": e["mean_share"],
                              **on_refs[e["concept"]], "reference_rows": e["reference_rows"]}
                             for e in best],
            "reference_figure": str(figure), "local_dir": str(out_dir / "local"),
            "references": references}
