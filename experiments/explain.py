"""``ldvce explain`` and ``ldvce crp``: LRP heatmaps and CRP concept analysis of a run or a folder.

``explain`` writes, for each counterfactual folder ``OUT/<image_id>/`` of a generation run (and
each further counterfactual's folder ``OUT/<image_id>/cf<r>/`` of a ``--num-cfs`` run),
``heatmap_<composite>_pre.png|.npy`` (original) and ``heatmap_<composite>_post.png|.npy``
(counterfactual) — the ``.npy`` is the 2-D float relevance map, the PNG the same on a symmetric
bwr scale with a colour bar (pre and post share the scale) — and the panel figure
``OUT/panel.png`` (``panel_2.png``… beyond :data:`PANEL_ROWS` images) plus
``OUT/explain_summary.json``. On a plain image folder it writes ``<out>/<image_id>/heatmap_*_pre.*``.

``crp local`` analyses each original/counterfactual pair of a run (which concepts gained or lost
relevance) — or, on a plain folder, each image's most relevant concepts — into ``OUT/local``;
``crp global`` runs relevance maximisation over a dataset and draws the attribute's top
concepts with their reference images into ``OUT/global`` (cached under ``OUT/global/cache``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import toyfaces  # noqa: F401  (registers the toy classifier names)
from classifier import CelebHQAttrDataset
from classifier.attributes import attribute_index, attribute_name
from classifier.dataset import ATTRIBUTE_FILE, dataset_files, report_unreadable
from classifier.devices import resolve_device as _device
from classifier.images import load_folder, load_image
from classifier.models import load_classifier
from classifier.registry import resolve_classifier
from dvce import runfolder
from fileio import write_json
from study.metrics import decision_relevance_mass
from xai import crp as C
from xai.crp import global_analysis
from xai.lrp import LABELS, attribute as lrp_attribute, parse_composites
from xai.render import PanelRow, heatmap_figure, panel_figure, resize_map, symmetric_vmax

PANEL_ROWS = 12


# -------------------------------------------------------------------------------- helpers


def model_image_size(model) -> int:
    """The square input size a classifier expects (ResNet: ``image_size``; MLP: ``input_dim``)."""
    hp = getattr(model, "hparams", {}) or {}
    if hp.get("input_dim"):
        return int(list(hp["input_dim"])[-1])
    return int(hp.get("image_size") or 256)


def _load_hrh(hrh_dir, image_id: str):
    if not hrh_dir:
        return None
    p = Path(hrh_dir) / f"{image_id}.npy"
    return np.load(p).astype(np.float32) if p.exists() else None


def _hrh_mass(heat: np.ndarray, logit: float, hrh: np.ndarray) -> float | None:
    """Share of the decision's positive relevance inside the HRH (on the heatmap's grid)."""
    v = decision_relevance_mass(heat, logit, resize_map(np.asarray(hrh) > 0, heat.shape) > 0.5)
    return None if np.isnan(v) else v  # JSON has no nan


# ------------------------------------------------------------------------------- explain
def explain_run(run_dir, model, composites=("lrp0", "epsilon_plus_flat"), attribute="Smiling",
                start: str = "logit", hrh_dir=None, out_dir=None, size: int | None = None,
                panel: bool = True, panel_path=None, batch_size: int = 16,
                progress: bool = True) -> dict:
    """LRP heatmaps for every image of a generation run (or a plain image folder) + panel.

    Parameters
    ----------
    run_dir : ``ldvce generate`` output (``<id>/original.png``, ``counterfactual.png``…) or a
        folder of images.
    model : classifier (LightningModule or plain network), images in [-1, 1].
    composites : registry names (:data:`xai.lrp.COMPOSITES`).
    hrh_dir : folder of human relevance heatmaps ``<image_id>.npy`` (panel column + numbers).
    out_dir : where to write; default: in place for a run, ``run_dir`` for a folder.
    size : image size (default: the classifier's input size).
    panel_path : where to write the panel (default ``out_dir/panel.png``; more than
        :data:`PANEL_ROWS` images continue in ``<stem>_2.png``…).

    Returns
    -------
    dict with ``n``, per-composite means (``sum_pre``/``sum_post``: total relevance, which for
    ``start="logit"`` approximates the logit where the rules conserve it; ``hrh_mass_pre``: share
    of the decision's positive relevance inside the HRH, when HRHs are given), per-image
    entries, ``panels`` and ``seconds_per_heatmap`` (LRP time per image and composite); also written to ``explain_summary.json``.
    """

    composites = parse_composites(composites)
    size = size or model_image_size(model)
    t0 = time.time()
    inputs = _explain_inputs(Path(run_dir), size, out_dir)
    maps, logits_pre, logits_post = _attribute_all(model, inputs, composites, attribute, start,
                                                   batch_size, progress)
    seconds = time.time() - t0
    label = attribute_name(attribute)
    images, panel_rows = [], []
    for i, image_id in enumerate(inputs.ids):
        entry, row = _write_heatmaps(i, inputs, maps, composites, logits_pre, logits_post,
                                     _load_hrh(hrh_dir, image_id), label)
        images.append(entry)
        panel_rows.append(row)
    panels = []
    if panel and panel_rows:
        title = (f"{label}: LRP of originals and counterfactuals" if inputs.kind == "run"
                 else f"{label}: LRP")
        panels = _write_panels(panel_rows, composites,
                               Path(panel_path) if panel_path else inputs.out_dir / "panel.png",
                               title)

    def mean(key, comp):
        vals = [e["composites"][comp].get(key) for e in images]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    n_cf = sum(c is not None for c in inputs.cfs)
    summary = {
        "kind": inputs.kind, "n": len(inputs.ids), "attribute": label, "start": start,
        "composites": {c: {"sum_pre": mean("sum_pre", c), "sum_post": mean("sum_post", c),
                           "hrh_mass_pre": mean("hrh_mass_pre", c)} for c in composites},
        "mean_logit_before": float(np.mean(logits_pre)),
        "mean_logit_after": (float(np.nanmean(logits_post)) if logits_post is not None else None),
        "seconds_per_heatmap": seconds / max(1, len(inputs.ids) + n_cf) / len(composites),
        "panels": panels, "images": images,
    }
    inputs.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(inputs.out_dir / "explain_summary.json", summary, indent=1)
    return summary


@dataclass
class _Inputs:
    """What :func:`explain_run` explains: a run's originals and counterfactuals, or a folder's
    images (``cfs`` all None), with each image's output folder and its run result."""
    kind: str                        # "run" or "folder"
    ids: list[str]
    originals: list[torch.Tensor]
    cfs: list[torch.Tensor | None]
    targets: list[Path]
    results: list[dict]
    out_dir: Path


def _explain_inputs(run_dir: Path, size: int, out_dir) -> _Inputs:
    out_dir = Path(out_dir) if out_dir else run_dir
    if runfolder.is_run(run_dir):
        # every counterfactual of an image (``--num-cfs``): rank r ≥ 2 is its own row,
        # "<image_id>/cf<r>", with its heatmaps in that rank's folder
        pairs = [(it, c) for it in runfolder.list_items(run_dir) for c in it.counterfactuals]
        originals = {it.image_id: load_image(it.original, size) for it, _ in pairs}
        rel = [runfolder.rank_folder(c.rank) for _, c in pairs]
        return _Inputs("run", [it.image_id if r == "." else f"{it.image_id}/{r}"
                               for (it, _), r in zip(pairs, rel)],
                       [originals[it.image_id] for it, _ in pairs],
                       [load_image(c.counterfactual, size) if c.counterfactual.exists() else None
                        for _, c in pairs],
                       [out_dir / it.image_id / r for (it, _), r in zip(pairs, rel)],
                       [c.result for _, c in pairs], out_dir)
    loaded = load_folder(run_dir, size)
    for path, why in loaded.problems:
        print(f"skipped {path.name}: {why}")
    if not loaded.ids:
        raise SystemExit(f"{run_dir}: neither a generation run nor a folder with images")
    ids = loaded.ids
    return _Inputs("folder", ids, loaded.images, [None] * len(ids), [out_dir / i for i in ids],
                   [{} for _ in ids], out_dir)


def _attribute_all(model, inputs: _Inputs, composites, attribute, start, batch_size, progress):
    """LRP of every original and counterfactual per composite: ``({composite: (pre maps,
    post maps or None per image)}, logits before, logits after or None)``."""
    have_cf = [i for i, c in enumerate(inputs.cfs) if c is not None]
    idx = attribute_index(attribute)
    maps: dict[str, tuple[list[np.ndarray], list[np.ndarray | None]]] = {}
    logits_pre = logits_post = None
    for comp in tqdm(composites, desc="LRP", disable=not progress, dynamic_ncols=True):
        pre = lrp_attribute(model, torch.stack(inputs.originals), attribute, comp, start,
                            batch_size=batch_size, full=True)
        post = (lrp_attribute(model, torch.stack([inputs.cfs[i] for i in have_cf]), attribute,
                              comp, start, batch_size=batch_size, full=True) if have_cf else None)
        logits_pre = pre.logits[:, idx].numpy()
        post_full = [None] * len(inputs.ids)
        if post is not None:
            logits_post = np.full(len(inputs.ids), np.nan)
            for k, i in enumerate(have_cf):
                post_full[i] = post.heatmap[k].numpy()
                logits_post[i] = float(post.logits[k, idx])
        maps[comp] = ([h.numpy() for h in pre.heatmap], post_full)
    return maps, logits_pre, logits_post


def _write_heatmaps(i: int, inputs: _Inputs, maps, composites, logits_pre, logits_post, hrh,
                    label: str) -> tuple[dict, PanelRow]:
    """Image ``i``'s heatmaps (``.npy`` + PNG, pre and post on one scale) into its folder: its
    summary entry and its panel row."""
    folder, cf = inputs.targets[i], inputs.cfs[i]
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"image": inputs.ids[i], "logit_before": float(logits_pre[i]),
             "logit_after": (float(logits_post[i]) if logits_post is not None
                             and cf is not None else None),
             "flipped": inputs.results[i].get("flipped"), "composites": {}}
    heat_pairs = {}
    for comp in composites:
        pre_h, post_h = maps[comp][0][i], maps[comp][1][i]
        vmax = symmetric_vmax(pre_h, post_h)
        lab = LABELS.get(comp, comp)
        np.save(folder / f"heatmap_{comp}_pre.npy", pre_h.astype(np.float32))
        heatmap_figure(pre_h, folder / f"heatmap_{comp}_pre.png", vmax=vmax,
                       title=f"{lab} $x_0$ ({label} logit {logits_pre[i]:+.2f})")
        stats = {"sum_pre": float(pre_h.sum())}
        if post_h is not None:
            np.save(folder / f"heatmap_{comp}_post.npy", post_h.astype(np.float32))
            heatmap_figure(post_h, folder / f"heatmap_{comp}_post.png", vmax=vmax,
                           title=f"{lab} $\\hat{{x}}_0$ ({label} logit {logits_post[i]:+.2f})")
            stats["sum_post"] = float(post_h.sum())
        if hrh is not None:
            stats["hrh_mass_pre"] = _hrh_mass(pre_h, logits_pre[i], hrh)
        entry["composites"][comp] = stats
        heat_pairs[comp] = (pre_h, post_h)
    note = f"{entry['logit_before']:+.2f}" + (f" → {entry['logit_after']:+.2f}"
                                              if entry["logit_after"] is not None else "")
    return entry, PanelRow(inputs.ids[i], inputs.originals[i], cf, heat_pairs, hrh, note=note)


def _write_panels(rows: list[PanelRow], composites, first: Path, title: str) -> list[str]:
    """Panel figures of :data:`PANEL_ROWS` images each: ``first``, then ``<stem>_2.png``…"""
    panels = []
    for p, start_row in enumerate(range(0, len(rows), PANEL_ROWS)):
        path = first if p == 0 else first.with_name(f"{first.stem}_{p + 1}{first.suffix}")
        panels.append(str(panel_figure(rows[start_row: start_row + PANEL_ROWS], composites, path,
                                       title=title)))
    return panels


def _model(classifier, device: str = "auto"):
    """A loaded classifier as is, or a checkpoint path / toy name loaded on ``device``."""
    if isinstance(classifier, torch.nn.Module):
        return classifier
    return load_classifier(resolve_classifier(classifier), map_location=_device(device))


def run_explain(run, classifier, *, attribute: str = "Smiling",
                composites="lrp0,epsilon_plus_flat", start: str = "logit", hrh=None,
                size: int | None = None, out=None, device: str = "auto") -> dict:
    """What ``ldvce explain`` does: :func:`explain_run` with a checkpoint, and a printed summary.

    ``classifier`` is a checkpoint path, a toy name or a loaded model; the other arguments are
    :func:`explain_run`'s (``hrh`` = ``hrh_dir``, ``out`` = ``out_dir``). Returns its summary.
    """
    if hrh and not Path(hrh).is_dir():
        raise FileNotFoundError(f"--hrh folder not found: {hrh} (expected human relevance "
                                "heatmaps <image_id>.npy, e.g. from ldvce study eval)")
    model = _model(classifier, device)
    summary = explain_run(run, model, composites, attribute=attribute, start=start, hrh_dir=hrh,
                          out_dir=out, size=size)
    print(f"{summary['n']} images explained with {', '.join(summary['composites'])} "
          f"({summary['seconds_per_heatmap'] * 1000:.0f} ms per heatmap) -> {Path(out or run)}")
    for p in summary["panels"]:
        print(f"panel: {p}")
    return summary


# ----------------------------------------------------------------------------------- crp
def _data_paths(data, attr_file=None) -> tuple[Path, Path]:
    """(LMDB, attribute file) of ``--data``: a dataset folder, or an LMDB with its attribute
    file beside it unless ``--attr-file`` is given (as ``ldvce generate``)."""
    data = Path(data)
    if attr_file is None and data.suffix == ".lmdb":
        attr_file = data.parent / ATTRIBUTE_FILE
    try:
        lmdb, attr = dataset_files(data, attr_file)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"ldvce crp global: {e}")
    if not attr.exists():
        raise SystemExit(f"--attr-file is required (no {attr})")
    return lmdb, attr


def crp_local(run_dir, model, attribute="Smiling", layers="net.layer3,net.layer4", top: int = 6,
              out_dir="crp_local", size: int | None = None, composite="epsilon_plus_flat",
              max_items: int | None = None, progress: bool = True) -> dict:
    """CRP on a run (pairs: which concepts changed) or a plain image folder (top concepts).

    Writes ``<image_id>_crp.png`` and ``<image_id>_crp.json`` per image (the first
    ``max_items`` if given) and ``crp_local.json`` with, for runs, how often each concept was
    among the most changed ones.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = size or model_image_size(model)
    layers = C.resolve_layers(model, layers)
    per_image, counts = {}, {}
    if runfolder.is_run(run_dir):
        items = [it for it in runfolder.list_items(run_dir) if it.counterfactual.exists()]
        items = items[:max_items] if max_items else items
        for it in tqdm(items, desc="CRP pairs", disable=not progress, dynamic_ncols=True):
            x0, x1 = load_image(it.original, size), load_image(it.counterfactual, size)
            res = C.pair_analysis(model, x0, x1, attribute, layers, top, composite)
            C.pair_figure(res, x0, x1, out_dir / f"{it.image_id}_crp.png",
                          title=f"{it.image_id}: concepts whose relevance for "
                                f"{res['attribute']} changed most")
            js = C.json_ready(res)
            write_json(out_dir / f"{it.image_id}_crp.json", js, indent=1)
            per_image[it.image_id] = {"logit_before": js["logit_before"], "logit_after": js["logit_after"],
                                 "changed": [e["concept"] for e in js["changed_overall"]]}
            for e in js["changed_overall"]:
                counts[e["concept"]] = counts.get(e["concept"], 0) + 1
        kind = "pairs"
    else:
        loaded = load_folder(run_dir, size)
        pairs = list(zip(loaded.ids, loaded.images))
        for image_id, x in tqdm(pairs[:max_items] if max_items else pairs, desc="CRP",
                                disable=not progress, dynamic_ncols=True):
            res = C.local_analysis(model, x, attribute, layers, top, composite)
            C.local_figure(res, x, out_dir / f"{image_id}_crp.png", title=image_id)
            js = C.json_ready(res)
            write_json(out_dir / f"{image_id}_crp.json", js, indent=1)
            per_image[image_id] = {"logit": js["logit"], "top": {
                l: [C.concept_id(l, c) for c in v["channels"]] for l, v in js["layers"].items()}}
        kind = "images"
    summary = {"kind": kind, "attribute": attribute_name(attribute), "layers": layers,
               "composite": composite, "n": len(per_image), "images": per_image,
               "most_often_changed": sorted(counts.items(), key=lambda kv: -kv[1])[:20]}
    write_json(out_dir / "crp_local.json", summary, indent=1)
    return summary


def run_crp(mode: str, classifier, *, out, attribute: str = "Smiling", run=None, data=None,
            attr_file=None, layers: str = "net.layer3,net.layer4", top: int = 6, n: int = 200,
            device: str = "auto", max_pairs: int | None = None) -> dict:
    """What ``ldvce crp local|global`` does, with a printed summary.

    ``mode="local"``: :func:`crp_local` on ``run`` (a generation run or an image folder; the
    first ``max_pairs`` items if given) into ``OUT/local``. ``mode="global"``: relevance
    maximisation over ``n`` images of ``data`` (LMDB + ``attr_file``, or a toyfaces folder) into
    ``OUT/global``. So one ``out`` holds both. ``classifier`` is a checkpoint path, a toy name or
    a loaded model.
    """
    if mode not in ("local", "global"):
        raise ValueError(f"crp mode must be 'local' or 'global', got {mode!r}")
    if mode == "local" and not run:
        raise SystemExit("crp local needs --run (a generation run or an image folder)")
    if mode == "global" and not data:
        raise SystemExit("crp global needs --data (a CelebA-HQ LMDB or a toyfaces folder)")
    model = _model(classifier, device)
    if mode == "local":
        out = Path(out) / "local"
        s = crp_local(run, model, attribute, layers, top, out, max_items=max_pairs)
        print(f"CRP local: {s['n']} {s['kind']} -> {out}")
        if s["most_often_changed"]:
            print("concepts most often among the most changed: "
                  + ", ".join(f"{c} ({k}×)" for c, k in s["most_often_changed"][:6]))
        return s
    out = Path(out) / "global"
    lmdb, attr = _data_paths(data, attr_file)
    ds = CelebHQAttrDataset(lmdb, attr, split="all", image_size=model_image_size(model),
                            augment=False)
    t0 = time.time()
    r = global_analysis(model, ds, attribute, layers, out, n=n, top=top)
    print(f"CRP global over {r['n']} images ({r['n_positive']} with {r['attribute']}) in "
          f"{time.time() - t0:.1f} s -> {r.get('figure')}")
    if r["unreadable"]:
        print(report_unreadable([(u["row"], u["reason"]) for u in r["unreadable"]],
                                "the CRP global analysis"), file=sys.stderr)
    for layer, entries in r["layers"].items():
        print(f"  {layer}: " + ", ".join(f"#{e['channel']} ({e['mean_share']:+.3f})" for e in entries))
    return r
