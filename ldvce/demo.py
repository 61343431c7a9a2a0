"""`ldvce demo`: the whole pipeline on the offline toy world, end to end.

data → classifiers (cached) → toy LDM (shipped) → counterfactuals (best sampler) → metrics
(oracle MNAC, localisation) → LRP heatmaps + panel → CRP local analysis → simulated study
(annotators = ground-truth masks with noise, selection = first frame the oracle calls smiling)
evaluated with the study code → overview.png, report.html, summary.json.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dvce import runfolder
from fileio import write_json

ATTRIBUTE = "Smiling"


def _step(msg: str) -> None:
    print(f"[ldvce demo] {msg}", flush=True)


def classifier_accuracy(clf, data, attribute=ATTRIBUTE) -> float:
    """Accuracy of ``clf`` on ``attribute`` over a whole (held-out) toyfaces folder."""
    from classifier.attributes import attribute_index
    from classifier.evaluate import dataset_for, predict
    logits, labels, _ = predict(clf, dataset_for(data, split="all"), progress=False)
    k = attribute_index(attribute)
    return float(((logits[:, k] > 0).float() == labels[:, k]).float().mean())


def oracle_switch_frames(run_dir: Path, oracle, attribute_idx: int) -> dict[str, int | None]:
    """Per image: first sequence frame the *oracle* calls smiling (the simulated participants'
    answer to the selection task), None when no frame is."""
    from classifier.images import load_image
    out = {}
    for item in runfolder.list_items(run_dir):
        x = torch.stack([load_image(f, None) for f in item.frame_paths()])
        with torch.no_grad():
            logit = oracle(x)[:, attribute_idx]
        hits = (logit > 0).nonzero().flatten()
        out[item.image_id] = int(hits[0]) if len(hits) else None
    return out


def run_demo(out="runs/demo", quick: bool = False, n_images: int | None = None,
             retrain: bool = False) -> dict:
    from classifier.attributes import attribute_index
    from classifier.models import load_classifier
    from dvce import runner
    from dvce.ldm import load_ldm
    from dvce.metrics import evaluate_run, write_metrics
    from dvce.samplers import Problem
    from ldvce.report import write_report
    from ldvce.toyworld import TEST_DATA, toy_classifier, toy_data
    import toyfaces

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = n_images or (4 if quick else 8)
    k = attribute_index(ATTRIBUTE)

    _step("toy test data (cached after the first run)")
    test_data = toy_data(TEST_DATA)
    masks = toyfaces.load_masks(test_data)

    _step("classifiers: toy ResNet and the oracle ("
          + ("training them here" if retrain else "shipped weights") + ")")
    clf = load_classifier(toy_classifier("toy_resnet", retrain=retrain)).requires_grad_(False)
    oracle = load_classifier(toy_classifier("toy_oracle", retrain=retrain)).requires_grad_(False)
    acc = classifier_accuracy(clf, test_data)
    _step(f"classifier accuracy on {ATTRIBUTE} (held-out seed): {acc:.3f}")

    _step("loading the shipped toy LDM")
    ldm = load_ldm("toy")

    from dvce.samplers import DEFAULT_METHOD
    from ldvce.bench import pick_not_smiling
    rows = pick_not_smiling(clf, test_data, n)
    lmdb_path, attr_path = toyfaces.paths(test_data)
    items = runner.lmdb_items(lmdb_path, attr_path, rows, ldm.image_size)
    run_dir = out / "counterfactuals"
    shutil.rmtree(run_dir, ignore_errors=True)
    _step(f"generating counterfactuals for {len(items)} not-smiling test faces ({DEFAULT_METHOD})")
    # the default sampler with its own defaults; one batch holds the quick and the full demo
    gen_summary = runner.run(items, Problem(ldm, clf, k), run_dir, method=DEFAULT_METHOD,
                             target=1, batch_size=16,
                             settings={"attribute": ATTRIBUTE, "ldm": "toy", "classifier": "toy_resnet"})
    metrics = evaluate_run(run_dir, oracle=oracle, masks=masks, attribute=ATTRIBUTE,
                           oracle_attributes=[attribute_index(a) for a in toyfaces.MODELLED])
    write_metrics(run_dir, metrics)

    _step("LRP heatmaps of originals and counterfactuals")
    from ldvce.explain import explain_run
    hrh_dir = out / "study" / "hrh"
    # heatmaps first (the study compares them with the HRHs); the panel waits for the HRHs
    explain_run(run_dir, clf, ["lrp0", "epsilon_plus_flat"], ATTRIBUTE, "logit", panel=False)
    rma = _relevance_mass(run_dir, masks, "epsilon_plus_flat")

    _step("CRP: which concepts changed between original and counterfactual")
    crp_summary = _crp_local(run_dir, clf, out / "crp")

    _step("simulated user study (ground-truth masks + noise) evaluated with the study code")
    study_summary, study_agreement = _simulated_study(run_dir, masks, oracle, k, out / "study")

    _step("overview figure and report")
    explain_run(run_dir, clf, ["lrp0", "epsilon_plus_flat"], ATTRIBUTE, "logit",
                hrh_dir=hrh_dir, panel_path=out / "overview.png")
    summary = {
        "classifier_accuracy": acc,
        "flip_rate": metrics["flip_rate"], "l1": metrics["l1"],
        "localization": metrics["localization"], "mnac": metrics["mnac"],
        "relevance_mass_accuracy": rma, "study_agreement": study_agreement,
        "images": len(items), "method": DEFAULT_METHOD,
        "seconds_per_image": gen_summary["seconds_per_image"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "summary.json", summary)
    write_report(out, summary, metrics, study_summary, crp_summary)
    _step(f"done in {summary['seconds']:.0f} s")
    for name in ("overview.png", "report.html", "summary.json"):
        print(f"  {out / name}")
    return summary


def _relevance_mass(run_dir: Path, masks, composite: str) -> float:
    """Mean share of the decision's positive LRP relevance inside the target's true region, for
    the originals (pre) and the counterfactuals (post) alike (see
    :func:`study.metrics.decision_relevance_mass`)."""
    from study.metrics import decision_relevance_mass
    vals = []
    for item in runfolder.list_items(run_dir):
        r = item.result
        region = masks[ATTRIBUTE][item.source_index]
        for when, logit in (("pre", r["logit_before"]), ("post", r["logit_after"])):
            f = item.folder / f"heatmap_{composite}_{when}.npy"
            if f.exists():
                vals.append(decision_relevance_mass(np.load(f), logit, region))
    return float(np.mean(vals)) if vals else float("nan")


def _crp_local(run_dir: Path, clf, out: Path) -> dict:
    from ldvce.explain import run_crp
    return run_crp("local", clf, run=run_dir, out=out, attribute=ATTRIBUTE,
                   layers="net.layer3,net.layer4", top=4, max_pairs=2) or {}


def _simulated_study(run_dir: Path, masks, oracle, k: int, out: Path):
    from study import evaluate_study, write_export
    from study.synthetic import simulate_study
    items = runfolder.list_items(run_dir)
    results = {it.image_id: it.result for it in items}
    region = {it.image_id: masks[ATTRIBUTE][it.source_index] for it in items}
    switch = oracle_switch_frames(run_dir, oracle, k)
    pids, selections, polygons = simulate_study(region, switch, n_participants=8, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    export = out / "simulated_export.csv"
    write_export(export, selections, polygons, pids)
    images = out / "images"
    images.mkdir(exist_ok=True)
    for it in items:  # the study shows the originals
        shutil.copy(it.original, images / f"{it.image_id}_1.0_misclassified.png")
    summary = evaluate_study(export, images, out, heatmaps_dir=run_dir, runs_dir=run_dir,
                             display_size=512, analysis_size=64, n_bootstrap=100, seed=0)
    return summary, _study_agreement(summary, results)


def _study_agreement(summary: dict, results: dict) -> float:
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
