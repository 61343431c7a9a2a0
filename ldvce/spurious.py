"""Clever Hans in the toy world: a classifier that learnt a spurious cue, exposed by its
counterfactuals, LRP and CRP.

Two classifiers with the same recipe (``configs/classifier/toy_resnet.yaml``: architecture, data
size, seed, epochs) differ only in their training data. The *biased* one sees a world where the
hat copies the smile (:class:`toyfaces.Spurious`: every smiling face wears a hat at strength 1);
the *clean* one the ordinary toy world, where hats are independent of smiles. Both are asked to
make the same not-smiling, hat-less, unseen faces smile. The toy world's ground truth scores the
answers:

- where the counterfactual changed the image: the change per pixel inside the hat region and
  inside the mouth region (``toyfaces`` masks); "most change on the hat" means more change per
  pixel in the hat region than in the mouth region (also reported: each region's share of Σ|Δ|);
- what the independent oracle (``toy_oracle``, trained on clean data) sees change: Wearing_Hat
  or Smiling;
- which change carried a flip: the counterfactual with the original's pixels put back in one
  region, classified again;
- where LRP puts the decision's relevance (hat vs mouth mask);
- CRP: the concepts that changed most between original and counterfactual, and each
  classifier's top concepts for Smiling, with reference images and the share of their
  conditional relevance inside the hat and mouth masks;
- the answer key: the renderer draws the same faces with a hat, or with a smile, everything else
  equal, and each classifier's decision on them says what it really uses.

:func:`run_experiment` does all of it; ``ldvce demo --spurious`` calls it. The finding on the toy
world (README, "What counterfactuals are for"): the answer key, LRP and CRP expose the biased
classifier's hat; the default ``guided`` counterfactuals mostly hide it.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from fileio import write_json

TARGET = "Smiling"
CUE = "Wearing_Hat"
STRENGTH = 1.0
TRAIN_SIZE, TRAIN_SEED = 12000, 1          # as the clean toy_resnet (ldvce.toyworld.TRAIN_DATA)
TEST_SIZE, TEST_SEED = 400, 7              # as ldvce.toyworld.TEST_DATA: unseen by both
RECIPE = "toy_resnet.yaml"
COMPOSITE = "epsilon_plus_flat"
CRP_LAYERS = "net.layer3,net.layer4"
ROLES = ("biased", "clean")


def _step(msg: str) -> None:
    print(f"[ldvce spurious] {msg}", flush=True)


# ------------------------------------------------------------------------------- the world
def spurious_data(strength: float = STRENGTH, n: int = TRAIN_SIZE, seed: int = TRAIN_SEED,
                  progress: bool = True) -> Path:
    """A cached toyfaces folder where Wearing_Hat copies Smiling with probability ``strength``.

    Same faces as the clean folder of the same ``n`` and ``seed`` except for the hats (the
    factors are drawn identically, then the cue is overwritten), so the two training sets differ
    in the planted correlation only.
    """
    import toyfaces
    from ldvce.toyworld import toy_data
    return toy_data((f"toy-{n}-{seed}-{CUE.lower()}-{strength:g}", n, seed), progress=progress,
                    spurious=toyfaces.Spurious(TARGET, CUE, strength))


def test_sets(strength: float = STRENGTH, n: int = TEST_SIZE, seed: int = TEST_SEED,
              progress: bool = True) -> dict[str, Path]:
    """``{"decorrelated": …, "correlated": …}``: unseen toyfaces folders of the same faces,
    hats independent of smiles in the first, planted as in training in the second."""
    from ldvce.toyworld import TEST_DATA, toy_data
    clean = toy_data((f"toy-test-{n}-{seed}", n, seed) if (n, seed) != TEST_DATA[1:] else TEST_DATA,
                     progress=progress)
    return {"decorrelated": clean, "correlated": spurious_data(strength, n, seed, progress)}


def biased_classifier(strength: float = STRENGTH, quiet: bool = True,
                      retrain: bool = False) -> Path:
    """Checkpoint of the toy ResNet recipe trained on :func:`spurious_data`.

    At the default strength the shipped weights (``toyfaces/weights/classifiers/
    toy_resnet_wearing_hat_1.safetensors``, made by this function; see the README there);
    otherwise, or with ``retrain``, trained here with the project's own training code (renders
    the 12000 training faces first; several minutes on 2 cores), then cached under
    ``<cache>/models``."""
    from ldvce.toyworld import shipped_or_trained
    return shipped_or_trained(
        f"toy_resnet_{CUE.lower()}_{strength:g}", RECIPE,
        lambda: spurious_data(strength, progress=not quiet), retrain=retrain, quiet=quiet,
        extra_args=("--data.make_with", "null"))  # never render clean faces in its place


def clean_classifier() -> Path:
    """The toy world's own ``toy_resnet``: same recipe, data size and seed, no planted cue."""
    from ldvce.toyworld import toy_classifier
    return toy_classifier("toy_resnet")


# ----------------------------------------------------------------------------- scoring
def region_shares(delta: np.ndarray, hat: np.ndarray, mouth: np.ndarray) -> tuple[float, float]:
    """(share of Σ|Δ| inside ``hat``, share inside ``mouth``) of one non-negative (H, W) change
    map; NaN for both when nothing changed. Masks are resized to the map when they differ."""
    from dvce.metrics import localization
    return localization(delta, hat), localization(delta, mouth)


def region_densities(delta: np.ndarray, hat: np.ndarray, mouth: np.ndarray) -> tuple[float, float]:
    """(mean |Δ| per pixel inside ``hat``, inside ``mouth``): the change per unit area, which
    does not favour the larger region (the hat region is about three mouth regions) the way
    shares of Σ|Δ| do when a change is spread over the whole face."""
    from xai.render import resize_map
    d = np.asarray(delta, dtype=np.float64)
    out = []
    for m in (hat, mouth):
        m = resize_map(np.asarray(m, bool), d.shape) > 0.5
        out.append(float(d[m].mean()) if m.any() else float("nan"))
    return out[0], out[1]


def change_rates(hat_density, mouth_density) -> dict:
    """Per image, which region changed most: ``hat_change_rate`` is the share of images whose
    mean |Δ| per pixel in the hat region exceeds that in the mouth region, ``mouth_change_rate``
    the reverse (ties, unchanged and unscored images count for neither)."""
    h, m = np.asarray(hat_density, float), np.asarray(mouth_density, float)
    ok = np.isfinite(h) & np.isfinite(m) & ((h > 0) | (m > 0))
    n = max(len(h), 1)
    return {"hat_change_rate": float((h[ok] > m[ok]).sum() / n),
            "mouth_change_rate": float((m[ok] > h[ok]).sum() / n)}


def undo_region(original, counterfactual, region):
    """The counterfactual with the original's pixels restored inside ``region`` ((H, W) bool;
    images (3, H, W) or (B, 3, H, W) tensors/arrays): which change carried the flip?"""
    m = np.asarray(region, bool)
    if hasattr(counterfactual, "dim"):  # a torch tensor
        import torch
        return torch.where(torch.from_numpy(m).to(counterfactual.device), original, counterfactual)
    return np.where(m, original, counterfactual)


def oracle_flip_rates(before, after, hat_index: int, smile_index: int) -> dict:
    """How often the oracle's decision on Wearing_Hat and on Smiling changed between originals
    (``before``: (N, 40) logits) and counterfactuals (``after``)."""
    b, a = np.asarray(before) > 0, np.asarray(after) > 0
    changed = b != a
    return {"oracle_hat_flip_rate": float(changed[:, hat_index].mean()),
            "oracle_smile_flip_rate": float(changed[:, smile_index].mean())}


def interventions(models: dict, folder, rows) -> dict:
    """The answer key from the renderer: each face of ``rows`` re-rendered with a hat, and with
    its mouth mirrored into a smile (same curvature, other sign), everything else equal.

    Returns ``{"rates": {model name: {"hat": share called smiling with a hat added, "smile":
    share called smiling with the smile, "hat_seen": share whose Wearing_Hat logit is positive
    with the hat added}}, "logits": {model name: {"hat": [...], "smile": [...]}} (Smiling, per
    face), "images": {"hat": (N, H, W, 3) uint8, "smile": …}}``. ``hat_seen`` of the oracle
    checks that it can see the rendered hats.
    """
    import torch
    import toyfaces
    from classifier.attributes import attribute_index
    from toyfaces.render import render
    s, h = attribute_index(TARGET), attribute_index(CUE)
    base = toyfaces.load_factors(folder).take(np.asarray(rows, dtype=int))
    hat, smile = base.take(slice(None)), base.take(slice(None))
    hat.hat = np.ones(len(base), bool)
    smile.smile = np.abs(base.smile)
    images = {"hat": render(hat), "smile": render(smile)}
    x = {k: torch.from_numpy(v).permute(0, 3, 1, 2).float() / 127.5 - 1.0 for k, v in images.items()}
    out = {"rates": {}, "logits": {}, "images": images}
    with torch.no_grad():
        for name, m in models.items():
            lh, ls = m(x["hat"]), m(x["smile"])
            out["rates"][name] = {"hat": float((lh[:, s] > 0).float().mean()),
                                  "smile": float((ls[:, s] > 0).float().mean()),
                                  "hat_seen": float((lh[:, h] > 0).float().mean())}
            out["logits"][name] = {"hat": lh[:, s].tolist(), "smile": ls[:, s].tolist()}
    return out


def accuracies(clf, folders: dict[str, Path]) -> dict:
    """Smiling accuracy of ``clf`` on each folder, and on the faces of the decorrelated folder
    where hat and smile disagree (a hat reader gets these wrong)."""
    from classifier.attributes import attribute_index
    from classifier.evaluate import dataset_for, predict
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


# ------------------------------------------------------------------------------ the experiment
def pick_faces(models: dict, folder, n: int) -> list[int]:
    """The first ``n`` rows of a toyfaces folder labelled not smiling and without a hat that
    every classifier in ``models`` calls not smiling: the faces all of them are asked to flip."""
    from classifier.attributes import attribute_index
    from classifier.evaluate import dataset_for, predict
    s, h = attribute_index(TARGET), attribute_index(CUE)
    ds = dataset_for(folder, split="all")
    keep = None
    for clf in models.values():
        logits, labels, rows = predict(clf, ds, progress=False)
        ok = (logits[:, s] <= 0) & (labels[:, s] < 0.5) & (labels[:, h] < 0.5)
        keep = ok if keep is None else keep & ok
    return rows[keep].tolist()[:n]


def generate(run_dir, clf, ldm, folder, rows, method: str | None = None, options: dict | None = None,
             batch_size: int = 16, name: str = "", progress: bool = True) -> dict:
    """Counterfactuals (target: smiling) of dataset ``rows`` into a fresh run folder, with the
    sampler's own defaults unless ``options`` are given; returns the run summary."""
    import toyfaces
    from classifier.attributes import attribute_index
    from dvce import runner
    from dvce.samplers import DEFAULT_METHOD, Problem
    method = method or DEFAULT_METHOD
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: stale items of other rows or models
    lmdb, attr = toyfaces.paths(folder)
    items = runner.lmdb_items(lmdb, attr, rows, ldm.image_size)
    return runner.run(items, Problem(ldm, clf, attribute_index(TARGET)), run_dir, method=method,
                      target=1, batch_size=batch_size, options=dict(options or {}),
                      settings={"attribute": TARGET, "classifier": name}, progress=progress)


def score_run(run_dir, clf, oracle, masks: dict, composite: str = COMPOSITE) -> dict:
    """Ground-truth scores of one run folder (see the module docstring): change rates (from
    the per-pixel change in each region, :func:`change_rates`) and mean shares of Σ|Δ|, oracle flips, LRP masses (originals ``_pre``, counterfactuals ``_post``, both
    together without suffix), the sampler's mask size and hat coverage, flip rate and L1.
    ``per_image`` holds every image's numbers, ``maps`` its images and maps (for figures)."""
    import torch
    from classifier.attributes import attribute_index
    from classifier.images import load_image
    from dvce.metrics import load_run
    from study.metrics import decision_relevance_mass
    from xai.lrp import attribute as lrp
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
    out.update(oracle_flip_rates(ob, oa, h, s))
    for region in ("hat", "mouth"):
        pre, post = masses[f"{region}_pre"], masses[f"{region}_post"]
        out[f"lrp_{region}_mass"] = mean(pre + post)
        out[f"lrp_{region}_mass_pre"], out[f"lrp_{region}_mass_post"] = mean(pre), mean(post)
    if mask_frac:
        out["sampler_mask_fraction"] = mean(mask_frac)
        out["sampler_mask_hat_coverage"] = mean(mask_hat)
    out["per_image"], out["maps"] = per, maps
    return out


def concept_regions(clf, images, rows, concepts: list[str], masks: dict,
                    composite: str = COMPOSITE) -> dict:
    """For each CRP concept ``"layer#channel"``: the share of its conditional relevance
    (absolute values) for Smiling that lies in the hat and in the mouth masks, averaged over
    ``images`` ((3, H, W) tensors of the toyfaces ``rows`` whose ``masks`` apply). A "hat
    concept" puts its relevance on the hat."""
    from dvce.metrics import localization
    from xai.crp import conditional_heatmaps
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
                 progress: bool = True) -> dict:
    """CRP of one classifier's run, two views of its concepts.

    ``changed``: the concepts most often among the most changed between originals and
    counterfactuals (``ldvce.explain.crp_local``), with where their relevance lies on the
    counterfactuals. ``global``: the classifier's top concepts for Smiling over ``n_reference``
    faces of ``reference_data`` (relevance maximisation, ``xai.crp.global_analysis``, cached),
    with where their relevance lies on their own reference images. Both get reference images
    (``concepts.png``); ``references`` maps each concept to its images.
    """
    from classifier.evaluate import dataset_for
    from classifier.images import load_image
    from dvce import runfolder
    from ldvce.explain import crp_local, model_image_size
    from ldvce.toyworld import cache_dir
    from xai.crp import global_analysis, load_references
    from xai.render import image_grid_figure
    import toyfaces
    out_dir = Path(out_dir)
    local = crp_local(run_dir, clf, TARGET, CRP_LAYERS, top=4, out_dir=out_dir / "local",
                      max_items=max_pairs, progress=progress)
    changed = [c for c, _ in local["most_often_changed"][:top]]
    items = runfolder.list_items(run_dir)
    on_cf = concept_regions(clf, [load_image(it.counterfactual, None) for it in items],
                            [it.source_index for it in items], changed, masks)
    ds = dataset_for(reference_data, split="all", image_size=model_image_size(clf))
    # the relevance maximisation is cached by model, data and settings: shared by every output
    where = cache_dir() / "crp-global"
    ranked = global_analysis(clf, ds, TARGET, CRP_LAYERS, where, n=n_reference, top=1,
                             figure=False, progress=progress)
    best = sorted((e for v in ranked["layers"].values() for e in v),
                  key=lambda e: -e["mean_share"])[:2]
    glob = global_analysis(clf, ds, TARGET, CRP_LAYERS, where, n=n_reference,
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


def run_experiment(out="runs/spurious", n_images: int = 16, strength: float = STRENGTH,
                   data_seed: int = TEST_SEED, data_size: int = TEST_SIZE,
                   method: str | None = None, options: dict | None = None, crp: bool = True,
                   n_reference: int = 200, max_pairs: int | None = 8, figure: bool = True,
                   biased=None, clean=None, progress: bool = False) -> dict:
    """The whole experiment into ``out``; returns the summary (also ``out/summary.json``).

    Parameters
    ----------
    out : output folder: ``biased/`` and ``clean/`` (run folder ``counterfactuals/`` with LRP
        panels, ``crp/``), ``overview.png``, ``report.html``, ``summary.json``.
    n_images : not-smiling, hat-less faces of the unseen folder that both classifiers flip.
    strength : the planted correlation of the biased classifier's training data.
    data_seed, data_size : the unseen test world (both test sets are rendered from it).
    method, options : the counterfactual sampler (default: ``DEFAULT_METHOD``) and its options
        (default: its own defaults).
    crp : also run the CRP analysis (local pairs, concept regions, reference images).
    n_reference : faces of the correlated test set searched for CRP reference images.
    max_pairs : original/counterfactual pairs the CRP local analysis draws and ranks concepts
        on (``None``: all).
    biased, clean : checkpoints to use instead of the cached toy ones (default: trained with
        :func:`biased_classifier` and the toy world's ``toy_resnet``).
    """
    from classifier.models import load_classifier
    from dvce.ldm import load_ldm
    from dvce.samplers import DEFAULT_METHOD
    from ldvce.explain import explain_run
    from ldvce.toyworld import toy_classifier
    import toyfaces

    t0 = time.perf_counter()
    method = method or DEFAULT_METHOD

    def say(msg):
        _step(f"{msg} [{time.perf_counter() - t0:.0f} s]")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)  # present again only when finished
    say(f"classifiers: biased (trained where {CUE} copies {TARGET}, p = {strength:g}), clean "
          "(toy_resnet), oracle — shipped weights, or trained once and cached")
    ckpts = {"biased": biased or biased_classifier(strength), "clean": clean or clean_classifier()}
    models = {role: load_classifier(p).requires_grad_(False) for role, p in ckpts.items()}
    oracle = load_classifier(toy_classifier("toy_oracle")).requires_grad_(False)
    sets = test_sets(strength, data_size, data_seed, progress=progress)
    masks = toyfaces.load_masks(sets["decorrelated"])
    rows = pick_faces(models, sets["decorrelated"], n_images)
    if not rows:
        raise RuntimeError(f"no not-smiling, hat-less face of {sets['decorrelated']} is called "
                           "not smiling by both classifiers")
    say(f"{len(rows)} unseen not-smiling faces without a hat (seed {data_seed}) that both "
          "classifiers call not smiling")
    # the answer key: the same faces re-rendered with a hat / with a smile
    key = interventions({**models, "oracle": oracle}, sets["decorrelated"], rows)
    rates = key["rates"]
    ldm = load_ldm("toy")
    results = {}
    for role, clf in models.items():
        acc = accuracies(clf, sets)
        acc["intervention_hat_rate"] = rates[role]["hat"]
        acc["intervention_smile_rate"] = rates[role]["smile"]
        say(f"{role}: Smiling accuracy correlated {acc['accuracy_correlated']:.3f}, "
              f"decorrelated {acc['accuracy_decorrelated']:.3f}, hat ≠ smile "
              f"{acc['accuracy_conflicting']:.3f}")
        run_dir = out / role / "counterfactuals"
        say(f"{role}: counterfactuals ({method}) → {run_dir}")
        gen = generate(run_dir, clf, ldm, sets["decorrelated"], rows, method, options,
                       name=f"{role} ({CUE} p={strength:g})" if role == "biased" else "toy_resnet",
                       progress=progress)
        explain_run(run_dir, clf, [COMPOSITE], TARGET, "logit", progress=progress)
        score = score_run(run_dir, clf, oracle, masks)
        score.update(acc)
        score["seconds_per_image"] = gen["seconds_per_image"]
        if crp:
            say(f"{role}: CRP — concepts that changed most, their regions and reference images")
            # reference faces from the world the biased classifier learnt (hats on every
            # smile), for both: there the top concepts for Smiling separate hat from mouth readers
            score["crp"] = crp_analysis(clf, run_dir, masks, sets["correlated"],
                                        out / role / "crp", n_reference=n_reference,
                                        max_pairs=max_pairs, progress=progress)
            top = score["crp"]["top_concepts"][0] if score["crp"]["top_concepts"] else {}
            score["crp_top_hat_mass"] = top.get("hat_mass")
            score["crp_top_mouth_mass"] = top.get("mouth_mass")
        results[role] = score
        say(f"{role}: most change on the hat {score['hat_change_rate']:.0%}, on the mouth "
              f"{score['mouth_change_rate']:.0%}; oracle sees hat flip "
              f"{score['oracle_hat_flip_rate']:.0%}, smile flip {score['oracle_smile_flip_rate']:.0%}")
    block = {"target": TARGET, "cue": CUE, "strength": strength, "method": method,
             "options": dict(options or {}), "data_seed": data_seed, "images": len(rows),
             "rows": rows, "composite": COMPOSITE,
             "classifiers": {role: str(p) for role, p in ckpts.items()},
             "oracle_sees_rendered_hats": rates["oracle"]["hat_seen"],
             **{role: _public(r) for role, r in results.items()}}
    if figure:
        overview_figure(out, results, out / "overview.png", answer_key=key, rows=rows)
    summary = {"spurious": block, "seconds": round(time.perf_counter() - t0, 1)}
    for role in ROLES:
        write_json(out / role / "scores.json",
                   {**_public(results[role]), "per_image": results[role]["per_image"]})
    write_report(out, summary)
    write_json(out / "summary.json", summary)
    _step(f"done in {summary['seconds']:.0f} s")
    return summary


def _public(score: dict) -> dict:
    """A score without per-image details and arrays (for ``summary.json``)."""
    out = {k: v for k, v in score.items() if k not in ("per_image", "maps", "crp")}
    if "crp" in score:
        out["crp"] = {k: v for k, v in score["crp"].items() if k != "references"}
    return out


# ------------------------------------------------------------------------------ figure, report
def _rate(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.0f} %"


def overview_figure(out, results: dict, path, answer_key: dict | None = None,
                    rows: list[int] | None = None, n_show: int = 4, dpi: int = 130):
    """The experiment in one picture: per face, the original, then for the biased and the clean
    classifier the counterfactual, |Δ| (hat region outlined cyan, mouth yellow) and the LRP
    map of the counterfactual, then (with ``answer_key`` from :func:`interventions` for
    ``rows``) the same face rendered with a hat and with a smile; below, each classifier's most
    relevant CRP concept for Smiling with its reference images."""
    from xai.render import _figure, heatmap_rgb, save_figure, symmetric_vmax, to_uint8_image
    ids = [i for i in results["biased"]["maps"] if i in results["clean"]["maps"]][:n_show]
    crp_rows = [(role, results[role]["crp"]) for role in ROLES if results[role].get("crp")]
    key_cols = 2 if answer_key is not None and rows is not None else 0
    ncols, cell = 7 + key_cols, 1.3
    nrows = len(ids) + len(crp_rows)
    fig = _figure(ncols * cell + 0.3, nrows * (cell + 0.1) + 1.3)
    gs = fig.add_gridspec(nrows, ncols, wspace=0.06, hspace=0.32)
    heads = (["original"] + [f"{role}: {what}" for role in ROLES
                             for what in ("CF", "|Δ|", "LRP of CF")]
             + ["rendered + hat", "rendered + smile"][:key_cols])

    def show(ax, img, title=None, note=None, **kw):
        ax.imshow(img, interpolation="nearest", **kw)
        ax.set_xticks([]); ax.set_yticks([])
        if title:
            ax.set_title(title, fontsize=7)
        if note:
            ax.set_xlabel(note, fontsize=5.5, labelpad=1)
        return ax

    for r, image_id in enumerate(ids):
        b = results["biased"]["maps"][image_id]
        ax = show(fig.add_subplot(gs[r, 0]), to_uint8_image(b["original"]), heads[0] if r == 0 else None)
        ax.set_ylabel(f"row {image_id}", fontsize=7)
        for k, role in enumerate(ROLES):
            m = results[role]["maps"][image_id]
            e = results[role]["per_image"][image_id]
            c = 1 + 3 * k
            show(fig.add_subplot(gs[r, c]), to_uint8_image(m["counterfactual"]),
                 heads[c] if r == 0 else None, f"logit {e['logit_pre']:+.1f} → {e['logit_post']:+.1f}")
            ax = show(fig.add_subplot(gs[r, c + 1]), m["delta"], heads[c + 1] if r == 0 else None,
                      f"hat {e['hat_density']:.2f} · mouth {e['mouth_density']:.2f}", cmap="magma")
            ax.contour(m["hat"], levels=[0.5], colors="cyan", linewidths=0.6)
            ax.contour(m["mouth"], levels=[0.5], colors="yellow", linewidths=0.6)
            show(fig.add_subplot(gs[r, c + 2]),
                 heatmap_rgb(m["lrp_post"], symmetric_vmax(m["lrp_post"])),
                 heads[c + 2] if r == 0 else None)
        if key_cols:
            i = rows.index(int(image_id))
            for j, kind in enumerate(("hat", "smile")):
                lb, lc = (answer_key["logits"][role][kind][i] for role in ROLES)
                show(fig.add_subplot(gs[r, 7 + j]), answer_key["images"][kind][i],
                     heads[7 + j] if r == 0 else None, f"biased {lb:+.1f} · clean {lc:+.1f}")
    for j, (role, crp) in enumerate(crp_rows):
        r = len(ids) + j
        if not crp.get("top_concepts"):
            continue
        top = crp["top_concepts"][0]
        ax = fig.add_subplot(gs[r, 0])
        ax.axis("off")
        ax.text(1.0, 0.5, f"{role}: top CRP concept\nfor {TARGET}: "
                f"{top['concept'].removeprefix('net.')}\nrelevance on hat {top['hat_mass']:.2f}"
                f"\non mouth {top['mouth_mass']:.2f}\nreference images →", ha="right",
                va="center", fontsize=6.5, transform=ax.transAxes)
        for ci, img in enumerate(crp["references"].get(top["concept"], [])[:ncols - 1]):
            show(fig.add_subplot(gs[r, 1 + ci]), img)
    sb, sc = results["biased"], results["clean"]
    fig.suptitle(
        "Biased (trained where every smiling face wears a hat) vs clean classifier, same faces\n"
        f"most change on the hat: {_rate(sb['hat_change_rate'])} vs "
        f"{_rate(sc['hat_change_rate'])} · on the mouth: {_rate(sb['mouth_change_rate'])} vs "
        f"{_rate(sc['mouth_change_rate'])} · oracle sees a hat appear: "
        f"{_rate(sb['oracle_hat_flip_rate'])} vs {_rate(sc['oracle_hat_flip_rate'])}, a smile: "
        f"{_rate(sb['oracle_smile_flip_rate'])} vs {_rate(sc['oracle_smile_flip_rate'])}\n"
        f"LRP of the counterfactual on the hat: {sb['lrp_hat_mass_post']:.2f} vs "
        f"{sc['lrp_hat_mass_post']:.2f}, on the mouth: {sb['lrp_mouth_mass_post']:.2f} vs "
        f"{sc['lrp_mouth_mass_post']:.2f}", fontsize=8)
    return save_figure(fig, path, dpi=dpi)


ROWS = [("flip_rate", "counterfactual flips the classifier"),
        ("hat_change_rate", "most change on the hat (per pixel, vs the mouth)"),
        ("mouth_change_rate", "most change on the mouth (per pixel, vs the hat)"),
        ("hat_share", "mean share of |Δ| in the hat region"),
        ("mouth_share", "mean share of |Δ| in the mouth region"),
        ("flip_needs_hat_rate", "flips lost when the hat-region change is undone"),
        ("flip_needs_mouth_rate", "flips lost when the mouth-region change is undone"),
        ("oracle_hat_flip_rate", "oracle: Wearing_Hat changed"),
        ("oracle_smile_flip_rate", "oracle: Smiling changed"),
        ("lrp_hat_mass", "LRP relevance mass in the hat mask (both images)"),
        ("lrp_mouth_mass", "LRP relevance mass in the mouth mask (both images)"),
        ("lrp_hat_mass_post", "… of the counterfactual, in the hat mask"),
        ("lrp_mouth_mass_post", "… of the counterfactual, in the mouth mask"),
        ("crp_top_hat_mass", "top CRP concept for Smiling: relevance on the hat"),
        ("crp_top_mouth_mass", "top CRP concept for Smiling: relevance on the mouth"),
        ("intervention_hat_rate", "answer key: called smiling when a hat is rendered on"),
        ("intervention_smile_rate", "answer key: called smiling when a smile is rendered"),
        ("accuracy_correlated", "Smiling accuracy, hats as in biased training"),
        ("accuracy_decorrelated", "Smiling accuracy, hats independent"),
        ("accuracy_conflicting", "Smiling accuracy where hat ≠ smile"),
        ("sampler_mask_fraction", "sampler mask: share of the image"),
        ("sampler_mask_hat_coverage", "sampler mask: share of the hat region"),
        ("l1", "mean |Δ| (L1)")]


def summary_table(summary: dict) -> str:
    """The summary's per-classifier numbers as a plain-text table."""
    b = summary["spurious"]
    w = max(len(label) for _, label in ROWS)
    lines = [f"{'':<{w}}  {'biased':>8}  {'clean':>8}"]
    for key, label in ROWS:
        vals = [b[role].get(key) for role in ROLES]
        lines.append(f"{label:<{w}}  " + "  ".join("       –" if v is None else f"{v:8.3f}"
                                                   for v in vals))
    return "\n".join(lines)


def world_figure(path, strength: float = STRENGTH, n: int = 8, seed: int = 0):
    """Example faces of the biased training world (hats copy smiles with ``strength``) and of
    the decorrelated world, half smiling, half not, labelled; saved to ``path``."""
    import toyfaces
    from toyfaces.render import render, sample_factors
    from xai.render import image_grid_figure
    rows = []
    for label, sp in ((f"biased training world\n(hat copies smile, p = {strength:g})",
                       toyfaces.Spurious(TARGET, CUE, strength)),
                      ("decorrelated world\n(hats independent)", None)):
        f = sample_factors(8 * n, seed, sp)
        smiling = np.flatnonzero(f.smile > 0.15)[: n // 2]
        frowning = np.flatnonzero(f.smile < -0.15)[: n - n // 2]
        rows.append((label + "\nsmiling | not smiling",
                     list(render(f.take(np.concatenate([smiling, frowning]))))))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return image_grid_figure(rows, path, title="The two toy worlds")


def reading(summary: dict) -> str:
    """What the numbers say, in two sentences built from them (no claim the run did not
    measure): does the answer key show a hat reader, and did its counterfactuals show the hat?"""
    b = summary["spurious"]
    bi, cl = b["biased"], b["clean"]
    key = (f"The answer key says the biased classifier reads the hat: it calls "
           f"{_rate(bi['intervention_hat_rate'])} of these faces smiling once a hat is drawn on "
           f"and {_rate(bi['intervention_smile_rate'])} once the smile is drawn (clean: "
           f"{_rate(cl['intervention_hat_rate'])} and {_rate(cl['intervention_smile_rate'])}).")
    if bi["hat_change_rate"] >= 0.9 and bi["oracle_hat_flip_rate"] > bi["oracle_smile_flip_rate"]:
        cf = (f"Its counterfactuals show it: {_rate(bi['hat_change_rate'])} change the hat region "
              f"most, and the oracle sees a hat appear in {_rate(bi['oracle_hat_flip_rate'])}.")
    else:
        cf = (f"Its `{b['method']}` counterfactuals hide it: they flip {_rate(bi['flip_rate'])} of "
              f"the faces, change the hat region most in only {_rate(bi['hat_change_rate'])} (the "
              f"mouth in {_rate(bi['mouth_change_rate'])}), and the oracle sees a hat appear in "
              f"{_rate(bi['oracle_hat_flip_rate'])} but a smile in "
              f"{_rate(bi['oracle_smile_flip_rate'])}; LRP of the counterfactuals puts "
              f"{bi['lrp_hat_mass_post']:.2f} of the biased decision's relevance on the hat region "
              f"(clean: {cl['lrp_hat_mass_post']:.2f}).")
    return f"{key} {cf}"


def report_section(doc, out, summary: dict) -> None:
    """Append the experiment's section to ``doc`` (a :class:`fileio.report.Report`): what was
    done, the overview figure, the per-classifier table and the CRP concepts. Any report can
    carry it; :func:`write_report` makes a page of it alone."""
    out = Path(out)
    b = summary["spurious"]
    doc.heading("A classifier that learnt a spurious cue")
    doc.paragraph(
        f"Two toy ResNets with the same recipe: the *biased* one was trained where every smiling "
        f"face wears a hat ({b['cue']} copies {b['target']} with p = {b['strength']:g}), the "
        f"*clean* one where hats are independent of smiles. Both were asked to make the same "
        f"{b['images']} unseen not-smiling, hat-less faces (seed {b['data_seed']}) smile with the "
        f"`{b['method']}` sampler. The toy world's masks say where each counterfactual changed "
        "the face, the independent oracle what it sees change, and the renderer's answer key "
        "(the same faces drawn with a hat, or with a smile) what each classifier really uses.")
    doc.paragraph(reading(summary))
    doc.image(out / "overview.png", "overview", width=1000, embed=True)
    doc.table(["", *ROLES], [[label, *(b[role].get(key) for role in ROLES)]
                             for key, label in ROWS], row_headers=True)
    for role in ROLES:
        crp = b[role].get("crp")
        if not crp:
            continue
        doc.heading(f"{role}: CRP concepts", 3)
        doc.paragraph("The concepts that changed most between originals and counterfactuals "
                      "(relevance measured on the counterfactuals), and the classifier's top "
                      f"concepts for {TARGET} (relevance measured on their reference images).")
        doc.table(["concept", "relevance on the hat", "on the mouth", "why listed"],
                  [[c["concept"], c["hat_mass"], c["mouth_mass"],
                    f"among the most changed in {c['times_among_most_changed']} pairs"]
                   for c in crp["concepts"]]
                  + [[c["concept"], c["hat_mass"], c["mouth_mass"],
                      f"top for {TARGET} (mean share {c['mean_share']:+.3f})"]
                     for c in crp.get("top_concepts", [])])
        if crp.get("reference_figure"):
            doc.image(crp["reference_figure"], f"{role}: reference images", width=560, embed=True)


def write_report(out, summary: dict) -> Path:
    """``out/report.html``: the experiment's section as a page of its own."""
    from fileio.report import Report
    doc = Report("lDVCE: a spurious cue")
    doc.heading("lDVCE demo: what counterfactuals are for", 1)
    report_section(doc, out, summary)
    doc.paragraph(f"Run time {summary['seconds']:.0f} s.")
    return doc.write_html(Path(out) / "report.html")


def run_demo(out="runs/spurious", quick: bool = False, retrain: bool = False,
             data_seed: int | None = None, n: int | None = None) -> dict:
    """``ldvce demo --spurious``: :func:`run_experiment` with the demo's settings, printing where
    the files are. ``retrain``: train the biased classifier here instead of using the shipped
    weights (the clean one and the oracle are shipped as in the main demo). ``data_seed`` and
    ``n``: the unseen test world (default seed 7, 400 faces) and how many faces to flip
    (default 12, 4 with ``quick``)."""
    biased = biased_classifier(retrain=True, quiet=False) if retrain else None
    summary = run_experiment(out, n_images=n or (4 if quick else 12), biased=biased,
                             data_seed=TEST_SEED if data_seed is None else data_seed,
                             n_reference=64 if quick else 200, progress=False)
    for name in ("overview.png", "report.html", "summary.json"):
        print(f"  {Path(out) / name}")
    return summary
