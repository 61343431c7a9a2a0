"""The whole Clever-Hans experiment (:func:`run_experiment`) and ``ldvce demo --spurious``
(:func:`run_demo`): classifiers, faces, answer key, counterfactuals, LRP, CRP, scores, figure,
report and ``summary.json``."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import toyfaces
from classifier.attributes import attribute_index
from classifier.models import load_classifier
from dvce import runner
from dvce.ldm import load_ldm
from dvce.samplers import DEFAULT_METHOD, Problem
from experiments.clever_hans import data as D
from experiments.clever_hans.crp import crp_analysis
from experiments.clever_hans.data import CUE, ROLES, TARGET
from experiments.clever_hans.figures import counterfactuals_figure, overview_figure
from experiments.clever_hans.report import write_report
from experiments.clever_hans.scoring import accuracies, interventions, public_score, score_run
from experiments.config import as_dict
from experiments.explain import explain_run
from fileio import write_json
from toyfaces.world import toy_classifier


def _step(msg: str) -> None:
    print(f"[ldvce spurious] {msg}", flush=True)


def generate(run_dir, clf, ldm, folder, rows, method: str = DEFAULT_METHOD,
             options: dict | None = None,
             batch_size: int = 16, name: str = "", progress: bool = True, num_cfs: int = 1) -> dict:
    """Counterfactuals (target: smiling) of dataset ``rows`` into a fresh run folder, with the
    sampler's own defaults unless ``options`` are given, up to ``num_cfs`` per face; returns the
    run summary."""
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: stale items of other rows or models
    lmdb, attr = toyfaces.paths(folder)
    items = runner.lmdb_items(lmdb, attr, rows, ldm.image_size)
    return runner.run(items, Problem(ldm, clf, attribute_index(TARGET)), run_dir, method=method,
                      target=1, batch_size=batch_size, options=dict(options or {}),
                      settings={"attribute": TARGET, "classifier": name}, progress=progress,
                      num_cfs=num_cfs)


def run_experiment(out="runs/spurious", n_images: int | None = 16, strength: float | None = None,
                   data_seed: int | None = None, data_size: int | None = None,
                   method: str | None = None, options: dict | None = None,
                   num_cfs: int | None = None, crp: bool = True,
                   n_reference: int | None = None, max_pairs: int | None = 8,
                   figure: bool = True, biased=None, clean=None, progress: bool = False,
                   config: D.CleverHansConfig = D.DEFAULT) -> dict:
    """The whole experiment into ``out``; returns the summary (also ``out/summary.json``).

    Every setting left None is ``config``'s (``configs/experiment/clever-hans.yaml``).

    Parameters
    ----------
    out : output folder: ``biased/`` and ``clean/`` (run folder ``counterfactuals/`` with LRP
        panels, ``crp/``), ``overview.png``, ``report.html``, ``summary.json``.
    n_images : not-smiling, hat-less faces of the unseen folder that both classifiers flip.
    strength : the planted correlation of the biased classifier's training data.
    data_seed, data_size : the unseen test world (both test sets are rendered from it).
    method, options, num_cfs : the sampler, its options (default: its own defaults) and the
        counterfactuals per face (:mod:`dvce.diverse`; above 1 also their diversity scores).
    crp : also run the CRP analysis (local pairs, concept regions, reference images).
    n_reference : faces of the correlated test set searched for CRP reference images.
    max_pairs : original/counterfactual pairs the CRP local analysis draws and ranks concepts
        on (``None``: all).
    biased, clean : checkpoints to use instead of the cached toy ones (default: trained with
        :func:`~experiments.clever_hans.data.biased_classifier` and the toy world's
        ``toy_resnet``); :func:`~experiments.clever_hans.data.hat_reader` is the control for
        ``biased``: a Smiling decision that reads only the hat.
    """
    cfg = D.CleverHansConfig(**{**as_dict(config), **{k: v for k, v in dict(
        images=n_images, strength=strength, test_seed=data_seed, test_size=data_size,
        method=method, options=options, num_cfs=num_cfs, n_reference=n_reference).items()
        if v is not None},
        "max_pairs": max_pairs})
    method = DEFAULT_METHOD if cfg.method == "default" else cfg.method
    t0 = time.perf_counter()

    def say(msg):
        _step(f"{msg} [{time.perf_counter() - t0:.0f} s]")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # present again only when finished
    said = (f"trained where {CUE} copies {TARGET}, p = {cfg.strength:g}" if biased is None
            else Path(biased).name)
    say(f"classifiers: biased ({said}), clean (toy_resnet), oracle — shipped weights, or trained "
        "once and cached")
    ckpts = {"biased": biased or D.biased_classifier(cfg.strength, recipe=cfg.recipe),
             "clean": clean or D.clean_classifier()}
    models = {role: load_classifier(p).requires_grad_(False) for role, p in ckpts.items()}
    oracle = load_classifier(toy_classifier("toy_oracle")).requires_grad_(False)
    sets = D.test_sets(cfg.strength, cfg.test_size, cfg.test_seed, progress=progress)
    masks = toyfaces.load_masks(sets["decorrelated"])
    rows = D.pick_faces(models, sets["decorrelated"], cfg.images)
    if not rows:
        raise RuntimeError(f"no not-smiling, hat-less face of {sets['decorrelated']} is called "
                           "not smiling by both classifiers")
    say(f"{len(rows)} unseen not-smiling faces without a hat (seed {cfg.test_seed}) that both "
        "classifiers call not smiling")
    # the answer key: the same faces re-rendered with a hat / with a smile
    key = interventions({**models, "oracle": oracle}, sets["decorrelated"], rows)
    ldm = load_ldm("toy")
    results = {role: _score_classifier(role, clf, oracle, ldm, sets, masks, rows, key["rates"],
                                       out, cfg, method, crp, say, progress)
               for role, clf in models.items()}
    block = {"target": TARGET, "cue": CUE, "strength": cfg.strength, "method": method,
             "options": dict(cfg.options), "num_cfs": cfg.num_cfs, "data_seed": cfg.test_seed, "images": len(rows),
             "rows": rows, "composite": cfg.composite, "biased_given": biased is not None,
             "classifiers": {role: str(p) for role, p in ckpts.items()},
             "oracle_sees_rendered_hats": key["rates"]["oracle"]["hat_seen"],
             **{role: public_score(r) for role, r in results.items()}}
    if figure:
        label = {} if biased is None else {"biased_label": f"{Path(biased).name} (biased role)"}
        overview_figure(out, results, out / "overview.png", answer_key=key, rows=rows, **label)
    if figure and cfg.num_cfs > 1:
        counterfactuals_figure(results, out / "counterfactuals.png")
    summary = {"spurious": block, "seconds": round(time.perf_counter() - t0, 1)}
    for role in ROLES:
        write_json(out / role / "scores.json",
                   {**public_score(results[role]), "per_image": results[role]["per_image"]})
    write_report(out, summary)
    write_json(out / "summary.json", summary)
    _step(f"done in {summary['seconds']:.0f} s")
    return summary


def _score_classifier(role, clf, oracle, ldm, sets, masks, rows, rates, out, cfg, method,
                      crp, say, progress) -> dict:
    """One classifier's part of the experiment: accuracies, counterfactuals of ``rows``, LRP,
    ground-truth scores and (with ``crp``) the CRP analysis."""
    acc = accuracies(clf, sets)
    acc["intervention_hat_rate"] = rates[role]["hat"]
    acc["intervention_smile_rate"] = rates[role]["smile"]
    acc["intervention_hat_gain"] = rates[role]["hat_gain"]
    acc["intervention_smile_gain"] = rates[role]["smile_gain"]
    say(f"{role}: Smiling accuracy correlated {acc['accuracy_correlated']:.3f}, "
        f"decorrelated {acc['accuracy_decorrelated']:.3f}, hat ≠ smile "
        f"{acc['accuracy_conflicting']:.3f}")
    run_dir = out / role / "counterfactuals"
    say(f"{role}: counterfactuals ({method}) → {run_dir}")
    gen = generate(run_dir, clf, ldm, sets["decorrelated"], rows, method, cfg.options,
                   name=f"{role} ({CUE} p={cfg.strength:g})" if role == "biased" else "toy_resnet",
                   progress=progress, num_cfs=cfg.num_cfs)
    explain_run(run_dir, clf, [cfg.composite], TARGET, "logit", progress=progress)
    score = score_run(run_dir, clf, oracle, masks, cfg.composite)
    score.update(acc)
    score["seconds_per_image"] = gen["seconds_per_image"]
    if crp:
        say(f"{role}: CRP — concepts that changed most, their regions and reference images")
        # reference faces from the world the biased classifier learnt (hats on every smile), for
        # both: there the top concepts for Smiling separate hat from mouth readers
        score["crp"] = crp_analysis(clf, run_dir, masks, sets["correlated"], out / role / "crp",
                                    n_reference=cfg.n_reference, max_pairs=cfg.max_pairs,
                                    progress=progress, layers=cfg.crp_layers)
        top = score["crp"]["top_concepts"][0] if score["crp"]["top_concepts"] else {}
        score["crp_top_hat_mass"] = top.get("hat_mass")
        score["crp_top_mouth_mass"] = top.get("mouth_mass")
    say(f"{role}: most change on the hat {score['hat_change_rate']:.0%}, on the mouth "
        f"{score['mouth_change_rate']:.0%}; oracle sees hat flip "
        f"{score['oracle_hat_flip_rate']:.0%}, smile flip {score['oracle_smile_flip_rate']:.0%}")
    return score


def run_demo(out="runs/spurious", quick: bool = False, retrain: bool = False,
             config="clever-hans", data_seed: int | None = None, n: int | None = None,
             hat_reader: bool = False) -> dict:
    """``ldvce demo --spurious``: :func:`run_experiment` with the settings of ``config`` (a name
    in ``configs/experiment/`` or a YAML path), printing where the files are. ``retrain``: train
    the biased classifier here instead of using the shipped weights (the clean one and the
    oracle are shipped as in the main demo). ``data_seed`` and ``n``: another unseen test world
    and how many of its faces. ``hat_reader``: the control (:func:`~experiments.clever_hans.data.
    hat_reader`) in the biased classifier's place."""
    if hat_reader and retrain:
        raise SystemExit("ldvce demo --spurious: --hat-reader and --retrain exclude each other "
                         "(the control is made from the shipped clean classifier, not trained)")
    cfg = D.config(config, test_seed=data_seed)
    biased = (D.biased_classifier(cfg.strength, quiet=False, retrain=True, recipe=cfg.recipe)
              if retrain else D.hat_reader() if hat_reader else None)
    summary = run_experiment(out, n_images=n or (cfg.quick_images if quick else cfg.images),
                             biased=biased, max_pairs=cfg.max_pairs, progress=False,
                             n_reference=cfg.quick_n_reference if quick else cfg.n_reference,
                             config=cfg)
    for name in ("overview.png", "report.html", "summary.json"):
        print(f"  {Path(out) / name}")
    return summary
