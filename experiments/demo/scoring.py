"""Scores of the demo: classifier accuracy, LRP relevance mass in the true region, and the
simulated user study (participants from the ground-truth masks, selections from the oracle)
evaluated with the study code."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from classifier.attributes import attribute_index
from classifier.evaluate import dataset_for, predict
from classifier.images import load_image
from dvce import runfolder
from study import evaluate_study, write_export
from study.metrics import decision_relevance_mass
from study.synthetic import simulate_study

ATTRIBUTE = "Smiling"


def classifier_accuracy(clf, data, attribute=ATTRIBUTE) -> float:
    """Accuracy of ``clf`` on ``attribute`` over a whole (held-out) toyfaces folder."""
    logits, labels, _ = predict(clf, dataset_for(data, split="all"), progress=False)
    k = attribute_index(attribute)
    return float(((logits[:, k] > 0).float() == labels[:, k]).float().mean())


def oracle_switch_frames(run_dir: Path, oracle, attribute_idx: int) -> dict[str, int | None]:
    """Per image: first sequence frame the *oracle* calls smiling (the simulated participants'
    answer to the selection task), None when no frame is."""
    out = {}
    for item in runfolder.list_items(run_dir):
        x = torch.stack([load_image(f, None) for f in item.frame_paths()])
        with torch.no_grad():
            logit = oracle(x)[:, attribute_idx]
        hits = (logit > 0).nonzero().flatten()
        out[item.image_id] = int(hits[0]) if len(hits) else None
    return out


def relevance_mass(run_dir: Path, masks, composite: str) -> float:
    """Mean share of the decision's positive LRP relevance inside the target's true region, for
    the originals (pre) and the counterfactuals (post) alike (see
    :func:`study.metrics.decision_relevance_mass`)."""
    vals = []
    for item in runfolder.list_items(run_dir):
        r = item.result
        region = masks[ATTRIBUTE][item.source_index]
        for when, logit in (("pre", r["logit_before"]), ("post", r["logit_after"])):
            f = item.folder / f"heatmap_{composite}_{when}.npy"
            if f.exists():
                vals.append(decision_relevance_mass(np.load(f), logit, region))
    return float(np.mean(vals)) if vals else float("nan")


def simulated_study(run_dir: Path, masks, oracle, k: int, out: Path, participants: int = 8,
                    n_bootstrap: int = 100, seed: int = 0):
    """The simulated study's summary and its agreement with the classifier's switch frames:
    ``participants`` annotators draw noisy ground-truth masks and pick the first frame the oracle
    calls smiling; the export is evaluated with the study code like a real one."""
    items = runfolder.list_items(run_dir)
    results = {it.image_id: it.result for it in items}
    region = {it.image_id: masks[ATTRIBUTE][it.source_index] for it in items}
    switch = oracle_switch_frames(run_dir, oracle, k)
    pids, selections, polygons = simulate_study(region, switch, n_participants=participants,
                                                seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    export = out / "simulated_export.csv"
    write_export(export, selections, polygons, pids)
    images = out / "images"
    images.mkdir(exist_ok=True)
    for it in items:  # the study shows the originals
        shutil.copy(it.original, images / f"{it.image_id}_1.0_misclassified.png")
    summary = evaluate_study(export, images, out, heatmaps_dir=run_dir, runs_dir=run_dir,
                             display_size=512, analysis_size=64, n_bootstrap=n_bootstrap, seed=seed)
    return summary, study_agreement(summary, results)


def study_agreement(summary: dict, results: dict) -> float:
    """Share of images where the participants' modal frame equals the classifier's switch frame."""
    hits, n = 0, 0
    for img, r in results.items():
        counts = summary.get("selection", {}).get(img, {}).get("counts", {})
        if not counts or r.get("switch_frame") is None:
            continue
        mode = int(max(counts.items(), key=lambda kv: kv[1])[0])
        hits += int(mode == r["switch_frame"])
        n += 1
    return hits / n if n else float("nan")
