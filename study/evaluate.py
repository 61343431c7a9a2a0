"""Evaluate a study export end to end: selection task, HRHs, and HRH-vs-model metrics.

:func:`evaluate_study` writes into ``out_dir``::

    study_summary.json           everything below in numbers (schema in evaluate_study's docstring)
    report.md, report.html       the same for people
    hrh/<img>.npy                int32 HRH (participant counts) at the analysis size
    figures/selection/<img>_sel.png     choice histograms
    figures/hrh/<img>_annot.png         HRH overlays
    figures/compare/<img>_compare.png   image | HRH | model maps (when heatmaps/runs are given)
    figures/participant_means.png

Where inputs live (documented, overridable layouts)
---------------------------------------------------
* Study images: ``images_dir/<img>_1.0_misclassified.png`` (the seed's names), else
  ``<img>.png``/``.jpg``, else any ``<img>_*`` / ``<img>.*`` image.
* Model heatmaps (``ldvce explain``): ``heatmaps_dir/{image_id}/heatmap_*_pre.npy``
  (:data:`HEATMAP_LAYOUT`); the ``*`` part (the composite) names the method
  ``heatmap:<composite>``.
* Generation runs (``ldvce generate``): ``runs_dir/{image_id}/`` (:data:`RUN_LAYOUT`) with
  ``result.json`` (switch frame, see :func:`study.selection.switch_frame_from_result`),
  ``original.png`` and ``counterfactual.png`` (→ method ``cf_diff``, |cf − x| summed over RGB)
  and optionally frame images (thumbnails).

If the folder named by a layout does not exist, a sub-folder whose name contains the image id as
a separate token is used instead (``27300_1.0_misclassified``, ``256-27300``), so run folders
named after LMDB keys or file stems are found too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import hrh as hrh_mod
from . import metrics as M
from . import selection as S
from .export import ANALYSIS_SIZE, DISPLAY_SIZE, StudyExport, read_export

from dvce import runfolder
from fileio import atomic_write_text, write_json
from fileio.report import Report, format_cell

HEATMAP_LAYOUT = "{image_id}/heatmap_*_pre.npy"
RUN_LAYOUT = "{image_id}"
DEFAULT_BOOTSTRAP = 200
CEILING_METRICS = M.MASK_METRICS + ("spearman",)


# ------------------------------------------------------------------------------- locating inputs


def find_study_image(images_dir, image_id: str) -> Path | None:
    """The study image of ``image_id`` in ``images_dir`` (see module docstring; a generation run
    folder gives its item's ``original.png``), or None."""
    if images_dir is None:
        return None
    d = Path(images_dir)
    item = runfolder.get_item(d, image_id)  # a generation run: the study shows the originals
    if item is not None and item.original.is_file():
        return item.original
    for name in (f"{image_id}_1.0_misclassified.png", f"{image_id}.png", f"{image_id}.jpg"):
        if (d / name).is_file():
            return d / name
    for pattern in (f"{image_id}_*", f"{image_id}.*"):
        hits = sorted(p for p in d.glob(pattern) if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if hits:
            return hits[0]
    return None


def find_image_dir(root, image_id: str, layout: str = RUN_LAYOUT) -> Path | None:
    """``root/layout.format(image_id=...)`` if it is a folder, else a sub-folder naming the id
    (:func:`dvce.runfolder.find_folder`)."""
    return runfolder.find_folder(root, image_id, layout)


def find_heatmaps(heatmaps_dir, image_id: str, layout: str = HEATMAP_LAYOUT) -> dict[str, Path]:
    """``{"heatmap:<name>": path}`` of one image; ``<name>`` is what the layout's ``*`` matched."""
    if heatmaps_dir is None:
        return {}
    dir_t, file_glob = layout.rsplit("/", 1) if "/" in layout else ("", layout)
    d = find_image_dir(heatmaps_dir, image_id, dir_t) if dir_t else Path(heatmaps_dir)
    if d is None:
        return {}
    file_glob = file_glob.format(image_id=image_id)
    rx = re.compile("^" + "(.*)".join(re.escape(part) for part in file_glob.split("*")) + "$")
    out = {}
    for p in sorted(d.glob(file_glob)):
        m = rx.match(p.name)
        name = "_".join(g for g in m.groups() if g) if m and m.groups() else p.stem
        out[f"heatmap:{name or p.stem}"] = p
    return out


def counterfactual_difference(run_dir, size: int) -> np.ndarray | None:
    """|counterfactual − original| summed over RGB (values in [0, 3]) at ``size``, or None."""
    run_dir = Path(run_dir)
    a, b = run_dir / runfolder.ORIGINAL, run_dir / runfolder.COUNTERFACTUAL
    if not (a.is_file() and b.is_file()):
        return None
    x = hrh_mod.load_image(a)
    y = hrh_mod.load_image(b)
    if x.shape != y.shape:
        return None
    return M.resize_map(np.abs(y - x).sum(axis=-1), size)


# ------------------------------------------------------------------------------- evaluation


def _mean_of(values: Sequence[float]) -> float | None:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def evaluate_study(
    export,
    images_dir=None,
    out_dir="study_eval",
    heatmaps_dir=None,
    runs_dir=None,
    display_size: int = DISPLAY_SIZE,
    analysis_size: int = ANALYSIS_SIZE,
    outlier_rule: str | Callable = "mean-zero",
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    heatmap_layout: str = HEATMAP_LAYOUT,
    run_layout: str = RUN_LAYOUT,
    exclude_outliers_from_hrh: bool = False,
    figures: bool = True,
    raster: str = "seed",
) -> dict:
    """Evaluate a user-study export and write figures, HRHs, a JSON summary and a report.

    Parameters
    ----------
    export : path or StudyExport
        The export CSV (parsed with ``display_size``/``analysis_size``) or an already parsed one.
    images_dir : path, optional
        Study images, for the overlays (``<img>_1.0_misclassified.png``).
    out_dir : path
        Output folder (created).
    heatmaps_dir : path, optional
        ``ldvce explain`` output; heatmaps found by ``heatmap_layout`` are compared with the HRHs.
    runs_dir : path, optional
        ``ldvce generate`` output; gives switch frames, thumbnails and counterfactual difference
        maps (found by ``run_layout``).
    display_size, analysis_size : int
        Displayed image size (polygon coordinates) and HRH size.
    outlier_rule : str or callable
        Name in :data:`study.selection.OUTLIER_RULES` (``"mean-zero"`` is the seed's rule,
        ``"none"`` disables it) or ``f(choices) -> bool``. Outliers are always listed; they are
        left out of ``counts_included``, the histograms and the switch agreement, and out of the
        HRHs only with ``exclude_outliers_from_hrh``. ``counts`` always holds every participant.
    n_bootstrap : int
        Bootstrap resamples of participants for the confidence intervals (0 = none).
    seed : int
        Seed of the bootstrap; equal inputs and seed give equal intervals.
    heatmap_layout, run_layout : str
        Where per-image inputs are, relative to ``heatmaps_dir``/``runs_dir`` (module docstring).
    exclude_outliers_from_hrh : bool
        Build the HRHs (and metrics) without the outliers.
    figures : bool
        Write figures (the slow part); numbers and HRHs are written either way.
    raster : {"seed", "centre"}
        How polygons become pixels (:mod:`study.hrh`): ``"seed"`` reproduces the original
        evaluation (OpenCV ``fillPoly`` on truncated vertices), ``"centre"`` counts pixel centres
        inside the exact polygon.

    Returns
    -------
    dict
        The summary written to ``study_summary.json``: ``participants`` (count),
        ``participant_ids``, ``participant_means``, ``outliers``, ``selection[img]`` (``counts``
        with string keys "-1".."max", ``counts_included``, ``n``, ``mean_choice``, ``mode``,
        ``switch_frame``, ``agreement``), ``hrh[img]`` (``path``, ``n_annotators``, ``max``,
        ``pixels_ge1``, ``pixels_ge50``, ``ceiling``), ``human_ceiling`` (mean of each metric
        over annotator×image with bootstrap CI), ``methods[name]`` (``consensus`` at ``ge1``/
        ``ge50`` plus ``spearman``, ``individual`` = per-annotator scores comparable with the
        ceiling, ``per_image``), ``issues`` and ``n_issues``.
    """
    ex = export if isinstance(export, StudyExport) else read_export(export, display_size, analysis_size)
    display_size, analysis_size = ex.display_size, ex.analysis_size
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"

    rule_name = outlier_rule if isinstance(outlier_rule, str) else getattr(outlier_rule, "__name__", "custom")
    outliers = S.find_outliers(ex, outlier_rule)
    included = [p for p in ex.participant_ids if p not in set(outliers)]
    means = S.participant_means(ex)

    summary: dict = {
        "export": ex.source,
        "display_size": display_size,
        "analysis_size": analysis_size,
        "raster": raster,
        "participants": len(ex.participants),
        "participant_ids": ex.participant_ids,
        "images": {"selection": ex.selection_images, "annotation": ex.annotation_images},
        "outlier_rule": rule_name,
        "outliers": outliers,
        "participant_means": means,
        "selection": {},
        "hrh": {},
        "human_ceiling": None,
        "methods": {},
        "n_bootstrap": int(n_bootstrap),
        "seed": int(seed),
        "issues": [i.as_dict() for i in ex.issues],
        "n_issues": len(ex.issues),
        "figures": {},
    }

    # ---- selection task ------------------------------------------------------------------
    run_dirs = {img: find_image_dir(runs_dir, img, run_layout) for img in ex.images}
    for img in ex.selection_images:
        table = ex.selections.get(img, {})
        result = runfolder.read_result(run_dirs[img]) if run_dirs.get(img) else None
        switch = S.switch_frame_from_result(result)
        thumbs = runfolder.frame_paths(run_dirs[img], result or {}) if run_dirs.get(img) else []
        # The histogram must reach the run's last frame and its switch frame even if nobody chose them.
        max_frame = max([len(thumbs) - 1] + ([switch] if switch is not None else []))
        max_frame = max_frame if max_frame >= 0 else None
        counts = S.choice_counts(list(table.values()), max_frame)
        counts_inc = S.selection_counts(ex, img, included, max_frame)
        chosen = [table[p] for p in included if p in table]
        vals = np.asarray(list(table.values()))
        entry = {
            "counts": {str(k): v for k, v in counts.items()},
            "counts_included": {str(k): v for k, v in counts_inc.items()},
            "n": len(table),
            "n_included": len(chosen),
            "mean_choice": float(vals.mean()) if vals.size else None,
            "mean_frame": float(vals[vals >= 0].mean()) if (vals >= 0).any() else None,
            "mode": max(counts, key=lambda k: (counts[k], -k)) if vals.size else None,
            "switch_frame": switch,
            "run_dir": run_dirs.get(img),
            "agreement": S.switch_agreement(chosen, switch),
        }
        if figures:
            thumbs_arr = [hrh_mod.load_image(p, 128) for p in thumbs] if thumbs else None
            p = S.plot_selection_histogram(counts_inc, fig_dir / "selection" / f"{img}_sel.png",
                                           switch, thumbs_arr)
            entry["figure"] = str(p.relative_to(out))
        summary["selection"][img] = entry
    if figures and means:
        summary["figures"]["participant_means"] = str(_plot_means(means, outliers, fig_dir / "participant_means.png").relative_to(out))

    # ---- annotation task: HRHs and the human ceiling ------------------------------------------
    hrh_people = included if exclude_outliers_from_hrh else None
    all_ids = ex.participant_ids
    per_image: dict[str, dict] = {}  # img -> ids, masks, hrh
    ceiling_scores: dict[str, list[dict]] = {}  # participant -> list of metric dicts
    for img in ex.annotation_images:
        ids, masks = hrh_mod.participant_masks(ex, img, hrh_people, raster)
        hrh = hrh_mod.hrh_from_masks(masks) if len(ids) else np.zeros((analysis_size,) * 2, np.int32)
        path = hrh_mod.save_hrh(out / "hrh" / f"{img}.npy", hrh)
        per_image[img] = {"ids": ids, "masks": masks, "hrh": hrh}
        thr = M.threshold_hrh(hrh, len(ids))
        ceil_img = []
        if len(ids) >= 2:
            for i, loo, mask in hrh_mod.leave_one_out_hrhs(masks):
                sc = M.HeatmapScorer(loo)
                s = sc.score(mask)
                s["spearman"] = sc.spearman(mask)
                ceiling_scores.setdefault(ids[i], []).append(s)
                ceil_img.append(s)
        entry = {
            "path": str(path.relative_to(out)),
            "n_annotators": len(ids),
            "max": int(hrh.max()),
            "pixels_ge1": int(thr["ge1"].sum()),
            "pixels_ge50": int(thr["ge50"].sum()),
            "ceiling": {k: _mean_of([s[k] for s in ceil_img]) for k in CEILING_METRICS} if ceil_img else None,
        }
        if figures:
            imgp = find_study_image(images_dir, img)
            image = hrh_mod.load_image(imgp, analysis_size) if imgp else None
            n_total = len(hrh_people) if hrh_people is not None else len(all_ids)
            p = hrh_mod.plot_hrh_overlay(hrh, image, n_total, fig_dir / "hrh" / f"{img}_annot.png",
                                         title=f"human relevance heatmap\n of all (N = {n_total}) participants"
                                               f" ({len(ids)} annotated)")
            entry["figure"] = str(p.relative_to(out))
            entry["image"] = str(imgp) if imgp else None
        summary["hrh"][img] = entry
    if ceiling_scores:
        summary["human_ceiling"] = {
            "description": "leave-one-out HRH (all other annotators) scored against each held-out "
                           "annotator's own mask; mean over annotator×image, CI over participants",
            "mean": {k: M.bootstrap_ci({p: [s[k] for s in v] for p, v in ceiling_scores.items()},
                                       n_bootstrap, seed) for k in CEILING_METRICS},
        }

    # ---- model heatmaps and counterfactual differences --------------------------------------
    maps: dict[str, dict[str, np.ndarray]] = {}  # method -> img -> map at analysis size
    sources: dict[str, dict[str, str]] = {}
    for img in ex.annotation_images:
        for name, p in find_heatmaps(heatmaps_dir, img, heatmap_layout).items():
            try:
                arr = np.load(p)
                maps.setdefault(name, {})[img] = M.resize_map(arr, analysis_size)
                sources.setdefault(name, {})[img] = str(p)
            except (OSError, ValueError) as exc:
                summary["issues"].append({"row": 0, "column": "", "value": str(p), "reason": f"heatmap unreadable: {exc}"})
        if run_dirs.get(img):
            d = counterfactual_difference(run_dirs[img], analysis_size)
            if d is not None:
                maps.setdefault("cf_diff", {})[img] = d
                sources.setdefault("cf_diff", {})[img] = str(run_dirs[img])
    summary["n_issues"] = len(summary["issues"])
    if maps:
        summary["methods"] = _evaluate_methods(maps, per_image, all_ids, n_bootstrap, seed)
        for name in summary["methods"]:
            summary["methods"][name]["sources"] = sources.get(name, {})
        if figures:
            for img in ex.annotation_images:
                ms = {n: maps[n][img] for n in maps if img in maps[n]}
                if ms:
                    imgp = find_study_image(images_dir, img)
                    image = hrh_mod.load_image(imgp, analysis_size) if imgp else None
                    p = _plot_compare(image, per_image[img]["hrh"], ms, fig_dir / "compare" / f"{img}_compare.png")
                    summary["hrh"][img]["compare_figure"] = str(p.relative_to(out))

    write_json(out / "study_summary.json", summary, indent=1)
    summary = json.loads((out / "study_summary.json").read_text())  # the JSON-safe form
    md, page = render_report(summary)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", page)
    return summary


def _evaluate_methods(maps, per_image, all_ids, n_bootstrap, seed) -> dict:
    """Consensus and per-annotator metrics for every method, with participant-bootstrap CIs."""
    results = {}
    index = {p: i for i, p in enumerate(all_ids)}
    for name, by_img in maps.items():
        per_img, indiv = {}, {}
        scorers = {}
        for img, h in by_img.items():
            info = per_image.get(img)
            if info is None or not len(info["ids"]):
                continue
            sc = scorers[img] = M.HeatmapScorer(h)
            res = sc.compare_with_hrh(info["hrh"], len(info["ids"]))
            scores = []
            for pid, mask in zip(info["ids"], info["masks"]):
                s = sc.score(mask)
                s["spearman"] = sc.spearman(mask)
                indiv.setdefault(pid, []).append(s)
                scores.append(s)
            res["individual"] = {k: _mean_of([s[k] for s in scores]) for k in CEILING_METRICS}
            per_img[img] = res
        if not per_img:
            continue
        consensus = {t: {k: {"mean": _mean_of([per_img[i][t][k] for i in per_img]), "ci": None}
                         for k in M.MASK_METRICS} for t in M.THRESHOLDS}
        consensus["spearman"] = {"mean": _mean_of([per_img[i]["spearman"] for i in per_img]), "ci": None}
        # Bootstrap: resample participants (the same draw for every image), rebuild each image's
        # HRH from the drawn annotators' masks, re-threshold, re-score, average over images.
        if n_bootstrap and len(all_ids) > 1:
            rng = np.random.default_rng(seed)
            flat = {img: per_image[img]["masks"].reshape(len(per_image[img]["ids"]), -1).astype(np.float32)
                    for img in per_img}
            cols = {img: np.array([index[p] for p in per_image[img]["ids"]]) for img in per_img}
            shape = next(iter(per_image.values()))["hrh"].shape
            boot = {t: {k: [] for k in M.MASK_METRICS} for t in M.THRESHOLDS}
            boot_sp = []
            for _ in range(int(n_bootstrap)):
                w = np.bincount(rng.integers(0, len(all_ids), len(all_ids)), minlength=len(all_ids))
                acc = {t: {k: [] for k in M.MASK_METRICS} for t in M.THRESHOLDS}
                sp = []
                for img, sc in scorers.items():
                    if img not in per_img:
                        continue
                    wi = w[cols[img]].astype(np.float32)
                    n = int(wi.sum())
                    if n == 0:
                        continue
                    hrh_b = np.rint(wi @ flat[img]).astype(np.int32).reshape(shape)
                    r = sc.compare_with_hrh(hrh_b, n)
                    for t in M.THRESHOLDS:
                        for k in M.MASK_METRICS:
                            acc[t][k].append(r[t][k])
                    sp.append(r["spearman"])
                for t in M.THRESHOLDS:
                    for k in M.MASK_METRICS:
                        boot[t][k].append(_mean_of(acc[t][k]))
                boot_sp.append(_mean_of(sp))

            def ci(v):
                v = np.asarray([x for x in v if x is not None], dtype=np.float64)
                return [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] if v.size else None

            for t in M.THRESHOLDS:
                for k in M.MASK_METRICS:
                    consensus[t][k]["ci"] = ci(boot[t][k])
            consensus["spearman"]["ci"] = ci(boot_sp)
        results[name] = {
            "images": sorted(per_img),
            "consensus": consensus,
            "individual": {k: M.bootstrap_ci({p: [s[k] for s in v] for p, v in indiv.items()}, n_bootstrap, seed)
                           for k in CEILING_METRICS},
            "per_image": per_img,
        }
    return results


# ------------------------------------------------------------------------------- figures


def _plot_means(means, outliers, path):
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [p for p, v in means.items() if v is not None]
    vals = [means[p] for p in ids]
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    colors = ["tab:red" if p in outliers else "tab:blue" for p in ids]
    ax.bar(range(len(ids)), vals, color=colors)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("participant (file order); red = outlier")
    ax.set_ylabel("mean choice")
    ax.set_title("mean selection per participant")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _plot_compare(image, hrh, maps, path):
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    n = 2 + len(maps)
    fig = Figure(figsize=(2.6 * n, 2.9))
    axes = fig.subplots(1, n)
    axes[0].imshow(image if image is not None else np.ones(hrh.shape + (3,)))
    axes[0].set_title("image")
    axes[1].imshow(hrh, cmap="gist_heat_r")
    axes[1].set_title("HRH")
    for ax, (name, m) in zip(axes[2:], maps.items()):
        lim = float(np.abs(m).max()) or 1.0
        ax.imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
        ax.set_title(name.replace("heatmap:", ""), fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


# ------------------------------------------------------------------------------- report


def _fmt_ci(d):
    if not d or d.get("mean") is None:
        return "–"
    ci = d.get("ci")
    return f"{d['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render_report(summary: dict) -> tuple[str, str]:
    """Markdown and HTML report of a summary (same content; the HTML links the figures by path)."""
    doc = Report("User-study evaluation")
    doc.heading("User-study evaluation", 1)
    doc.paragraph(f"Export: `{summary.get('export')}` — {summary['participants']} participants, "
                  f"{len(summary['images']['selection'])} selection images, "
                  f"{len(summary['images']['annotation'])} annotation images. Polygons drawn at "
                  f"{summary['display_size']} px, HRHs at {summary['analysis_size']} px, rasterised "
                  f"with the `{summary.get('raster', 'seed')}` rule"
                  + (" (the original evaluation's: OpenCV fillPoly on truncated vertices). "
                     if summary.get("raster", "seed") == "seed"
                     else " (pixel centres inside the exact polygon). ")
                  + f"Outlier rule `{summary['outlier_rule']}`: {len(summary['outliers'])} outlier(s)"
                  + (f" ({', '.join(summary['outliers'])})" if summary["outliers"] else "") + ".")
    if summary.get("figures", {}).get("participant_means"):
        doc.image(summary["figures"]["participant_means"], "mean choice per participant", caption=True)

    doc.heading("Selection task", 2)
    doc.paragraph("Counts of every choice over all participants (-1 = 'nobody smiles'; 0 original, "
                  "1 reconstruction, 2.. optimisation steps). Switch = the classifier's switch frame "
                  "from the run, where given; agreement excludes outliers.")
    sel = summary["selection"]
    width = max((len(e["counts"]) for e in sel.values()), default=0)
    keys = [str(k) for k in range(-1, width - 1)]
    rows = []
    for img, e in sel.items():
        ag = e.get("agreement") or {}
        rows.append([img] + [str(e["counts"].get(k, "")) for k in keys]
                    + [str(e["n"]), format_cell(e["mean_choice"], 2), format_cell(e["switch_frame"]), format_cell(ag.get("exact"), 2)])
    doc.table(["image"] + keys + ["n", "mean", "switch", "exact"], rows)
    for img, e in sel.items():
        if e.get("figure"):
            doc.image(e["figure"], f"selection histogram {img}", caption=True)

    doc.heading("Human relevance heatmaps", 2)
    rows = []
    for img, e in summary["hrh"].items():
        c = e.get("ceiling") or {}
        rows.append([img, str(e["n_annotators"]), str(e["max"]), str(e["pixels_ge1"]), str(e["pixels_ge50"]),
                     format_cell(c.get("mass_accuracy")), format_cell(c.get("auc"))])
    doc.table(["image", "annotators", "max", "px ≥1", "px ≥50%", "ceiling mass", "ceiling AUC"], rows)
    hc = summary.get("human_ceiling")
    if hc:
        doc.heading("Human ceiling (inter-annotator agreement)", 3)
        doc.paragraph(hc["description"] + ".")
        doc.table(["metric", "mean [95% CI]"], [[k, _fmt_ci(v)] for k, v in hc["mean"].items()])
    for img, e in summary["hrh"].items():
        if e.get("figure"):
            doc.image(e["figure"], f"HRH {img}", caption=True)

    if summary.get("methods"):
        doc.heading("Model heatmaps vs HRH", 2)
        doc.paragraph("Consensus: the method's map against the HRH thresholded at ≥1 annotator and at ≥50% "
                      "of annotators (mean over images, CI from resampling participants). Individual: against "
                      "each annotator's own mask — directly comparable with the human ceiling.")
        for name, r in summary["methods"].items():
            doc.heading(name, 3)
            rows = [[k, _fmt_ci(r["consensus"]["ge1"][k]), _fmt_ci(r["consensus"]["ge50"][k]),
                     _fmt_ci(r["individual"][k]), _fmt_ci((hc or {}).get("mean", {}).get(k))]
                    for k in M.MASK_METRICS]
            rows.append(["spearman (graded HRH)", _fmt_ci(r["consensus"]["spearman"]), "", _fmt_ci(r["individual"]["spearman"]),
                         _fmt_ci((hc or {}).get("mean", {}).get("spearman"))])
            doc.table(["metric", "HRH ≥1", "HRH ≥50%", "individual", "human ceiling"], rows)
        for img, e in summary["hrh"].items():
            if e.get("compare_figure"):
                doc.image(e["compare_figure"], f"maps {img}", caption=True)

    doc.heading("Parse issues", 2)
    issues = summary.get("issues", [])
    if issues:
        doc.paragraph(f"{len(issues)} entries were skipped or repaired (row = spreadsheet row, header = 1).")
        doc.table(["row", "column", "value", "reason"],
                  [[str(i["row"]), i["column"], str(i["value"])[:40], i["reason"]] for i in issues[:200]])
        if len(issues) > 200:
            doc.paragraph(f"… and {len(issues) - 200} more in study_summary.json.")
    else:
        doc.paragraph("None: every cell was read.")

    return doc.markdown(), doc.html()
