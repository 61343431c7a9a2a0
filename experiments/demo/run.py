"""`ldvce demo`: the whole pipeline on the offline toy world, end to end.

data → classifiers (shipped) → toy LDM (shipped) → counterfactuals (default sampler) → metrics
(oracle MNAC, localisation) → LRP heatmaps + panel → CRP local analysis → simulated study
(annotators = ground-truth masks with noise, selection = first frame the oracle calls smiling)
evaluated with the study code → overview.png, report.html, summary.json. Settings:
``configs/experiment/demo.yaml`` (:class:`DemoConfig`).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import toyfaces
from classifier.attributes import attribute_index
from classifier.models import load_classifier
from classifier.evaluate import pick_not_smiling
from classifier.registry import resolve_classifier
from dvce import runner
from dvce.ldm import load_ldm
from dvce.metrics import evaluate_run, write_metrics
from dvce.samplers import DEFAULT_METHOD, Problem
from experiments.disagreements import disagreement_figure
from experiments.config import load_config
from experiments.demo.report import write_report
from experiments.demo.scoring import (ATTRIBUTE, classifier_accuracy, relevance_mass,
                                      simulated_study)
from experiments.explain import explain_run, run_crp
from fileio import write_json
from toyfaces.world import TEST_DATA, toy_classifier, toy_data


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (``configs/experiment/demo.yaml`` documents each)."""
    images: int = 8
    quick_images: int = 4
    classifier: str = "toy_resnet"
    oracle: str = "toy_oracle"
    method: str = "default"
    options: dict = field(default_factory=dict)
    batch_size: int = 16
    composites: list[str] = field(default_factory=lambda: ["lrp0", "epsilon_plus_flat"])
    crp_layers: str = "net.layer3,net.layer4"
    crp_pairs: int = 2
    participants: int = 8
    bootstrap: int = 100
    seed: int = 0


def _step(msg: str) -> None:
    print(f"[ldvce demo] {msg}", flush=True)


def _classifier(name: str, retrain: bool):
    """A toy classifier by name (trained here with ``retrain``), or any registered name or path."""
    path = toy_classifier(name, retrain=True) if retrain else resolve_classifier(name)
    return load_classifier(path).requires_grad_(False)


def run_demo(out="runs/demo", quick: bool = False, n_images: int | None = None,
             retrain: bool = False, config="demo") -> dict:
    """The demo into ``out`` with the settings of ``config`` (a name in ``configs/experiment/``
    or a YAML path); returns the summary (also ``out/summary.json``)."""
    cfg = load_config(DemoConfig, config)
    method = DEFAULT_METHOD if cfg.method == "default" else cfg.method
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = n_images or (cfg.quick_images if quick else cfg.images)
    k = attribute_index(ATTRIBUTE)

    _step("toy test data (cached after the first run)")
    test_data = toy_data(TEST_DATA)
    masks = toyfaces.load_masks(test_data)
    _step(f"classifiers: {cfg.classifier} and the oracle {cfg.oracle} ("
          + ("training them here" if retrain else "shipped weights") + ")")
    clf, oracle = _classifier(cfg.classifier, retrain), _classifier(cfg.oracle, retrain)
    acc = classifier_accuracy(clf, test_data)
    _step(f"classifier accuracy on {ATTRIBUTE} (held-out seed): {acc:.3f}")
    _step("loading the shipped toy LDM")
    ldm = load_ldm("toy")

    rows = pick_not_smiling(clf, test_data, n)
    lmdb_path, attr_path = toyfaces.paths(test_data)
    items = runner.lmdb_items(lmdb_path, attr_path, rows, ldm.image_size)
    run_dir = out / "counterfactuals"
    shutil.rmtree(run_dir, ignore_errors=True)
    _step(f"generating counterfactuals for {len(items)} not-smiling test faces ({method})")
    gen_summary = runner.run(items, Problem(ldm, clf, k), run_dir, method=method, target=1,
                             batch_size=cfg.batch_size, options=dict(cfg.options),
                             settings={"attribute": ATTRIBUTE, "ldm": "toy",
                                       "classifier": cfg.classifier})
    metrics = evaluate_run(run_dir, oracle=oracle, masks=masks, attribute=ATTRIBUTE,
                           oracle_attributes=[attribute_index(a) for a in toyfaces.MODELLED])
    write_metrics(run_dir, metrics)
    disagreement_figure(run_dir, metrics)  # the flips the oracle does not confirm, if any

    _step("LRP heatmaps of originals and counterfactuals")
    # heatmaps first (the study compares them with the HRHs); the panel waits for the HRHs
    explain_run(run_dir, clf, cfg.composites, ATTRIBUTE, "logit", panel=False)
    rma = relevance_mass(run_dir, masks, cfg.composites[-1])
    _step("CRP: which concepts changed between original and counterfactual")
    crp_summary = run_crp("local", clf, run=run_dir, out=out / "crp", attribute=ATTRIBUTE,
                          layers=cfg.crp_layers, top=4, max_pairs=cfg.crp_pairs) or {}
    _step("simulated user study (ground-truth masks + noise) evaluated with the study code")
    study_summary, study_agreement = simulated_study(
        run_dir, masks, oracle, k, out / "study", cfg.participants, cfg.bootstrap, cfg.seed)
    _step("overview figure and report")
    explain_run(run_dir, clf, cfg.composites, ATTRIBUTE, "logit",
                hrh_dir=out / "study" / "hrh", panel_path=out / "overview.png")
    summary = {
        "classifier_accuracy": acc,
        "flip_rate": metrics["flip_rate"], "l1": metrics["l1"],
        "localization": metrics["localization"], "mnac": metrics["mnac"],
        "relevance_mass_accuracy": rma, "study_agreement": study_agreement,
        "images": len(items), "method": method,
        "seconds_per_image": gen_summary["seconds_per_image"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "summary.json", summary)
    write_report(out, summary, metrics, study_summary, crp_summary)
    _step(f"done in {summary['seconds']:.0f} s")
    for name in ("overview.png", "report.html", "summary.json"):
        print(f"  {out / name}")
    return summary
