"""Evaluate a study export end to end: selection task, HRHs, and HRH-vs-model metrics.

:func:`evaluate_study` runs three steps: :func:`compute_study` (the numbers and the HRHs, writes
nothing), :func:`study.figures.draw_figures` (optional) and :func:`write_outputs` (HRH files, the
JSON summary and the report of :mod:`study.report`). It writes into ``out_dir``::

    study_summary.json           everything below in numbers (schema in compute_study's docstring)
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dvce import runfolder
from fileio import atomic_write_text, write_json

from . import hrh as hrh_mod
from . import metrics as M
from . import selection as S
from .export import ANALYSIS_SIZE, DISPLAY_SIZE, ExportError, ParseIssue, StudyExport, read_export
from .figures import draw_figures
from .report import render_report

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


def find_run_dir(runs, image_id: str, layout: str = RUN_LAYOUT) -> Path | None:
    """The run folder of ``image_id`` in ``runs``: one folder or several (``--runs`` given more
    than once, e.g. one per condition); the first that has the image wins."""
    if runs is None:
        return None
    for root in ([runs] if isinstance(runs, (str, Path)) else runs):
        found = find_image_dir(root, image_id, layout)
        if found is not None:
            return found
    return None


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


@dataclass
class Evaluation:
    """What :func:`compute_study` found: the summary and the arrays its figures and files need.

    ``summary`` is :func:`evaluate_study`'s result before the figure paths are added and before
    the JSON round trip (it may still hold paths and numpy scalars).
    """

    summary: dict
    #: Annotation image -> HRH (participant counts at the analysis size), in export order.
    hrhs: dict[str, np.ndarray]
    #: Selection image -> (choice counts without outliers, switch frame, run frame paths).
    selection_plots: dict[str, tuple[dict[int, int], int | None, list[Path]]]
    #: Method -> annotation image -> map at the analysis size.
    maps: dict[str, dict[str, np.ndarray]]
    #: Participants the HRHs count (the top of their colour scale).
    n_hrh_people: int


def hrh_file(image_id: str) -> Path:
    """Where the HRH of ``image_id`` is written, relative to the output folder."""
    return Path("hrh") / f"{image_id}.npy"


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
    finished_only: bool = False, exclude_failed_catch: bool = False, exclude_file=None,
    condition_runs: dict | None = None,
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
    runs_dir : path or list of paths, optional
        ``ldvce generate`` output(s); gives switch frames, thumbnails and counterfactual
        difference maps (found by ``run_layout``; with several, the first holding an image).
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
    raster : {"seed", "enclosed", "centre"}
        How polygons become pixels (:mod:`study.hrh`): ``"seed"`` reproduces the original
        evaluation (OpenCV ``fillPoly`` on truncated vertices), ``"centre"`` counts pixel centres
        inside the exact polygon.
    finished_only, exclude_failed_catch, exclude_file
        Exclusions (see :func:`apply_exclusions`); the summary's ``excluded`` says who and why.
    condition_runs : dict, optional
        ``{condition: run folder}``: each condition's switch frames (:func:`condition_summary`).

    Returns
    -------
    dict
        The summary written to ``study_summary.json`` (its keys: :func:`compute_study`).

    Raises
    ------
    ExportError
        An unreadable export or exclusion file; ``exclude_failed_catch`` without catch results.
    """
    ex = export if isinstance(export, StudyExport) else read_export(export, display_size, analysis_size)
    if not ex.participants:
        raise ExportError(f"study export {ex.source} has no participant rows (only a header): "
                          "nothing to evaluate")
    ex, excluded, rules = _exclude(ex, finished_only, exclude_failed_catch, exclude_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ev = compute_study(ex, heatmaps_dir, runs_dir, outlier_rule, n_bootstrap, seed, heatmap_layout, run_layout,
                       exclude_outliers_from_hrh, raster, condition_runs)
    ev.summary["excluded"], ev.summary["exclusion_rules"] = excluded, rules
    if figures:
        draw_figures(ev, out, {img: find_study_image(images_dir, img) for img in ex.annotation_images})
    return write_outputs(ev, out)


# ------------------------------------------------------------------------------- exclusions


def read_exclusion_file(path) -> dict[str, str]:
    """``{participant id: reason}`` from an exclusion list: one id per line, optionally followed
    by ``,`` or whitespace and a reason; blank lines and lines starting with ``#`` are skipped.

    Raises
    ------
    ExportError
        When the file is missing or unreadable (nothing is evaluated with a list half-applied).
    """
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"exclusion list not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"cannot read exclusion list {p}: {exc}") from exc
    out: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pid, _, reason = _split_entry(line)
        out[pid] = reason
    return out


def _split_entry(line: str) -> tuple[str, str, str]:
    """``(id, separator, reason)`` of one exclusion-list line."""
    m = re.match(r"^(?P<id>[^,\s]+)\s*(?P<sep>,|\s)?\s*(?P<reason>.*)$", line)
    return m["id"], m["sep"] or "", m["reason"].strip()


def _exclusion_reason(ex: StudyExport, pid: str, submitted: str, finished_only: bool,
                      exclude_failed_catch: bool, listed: dict[str, str], list_name: str) -> str | None:
    """Why ``pid`` is left out, or None."""
    info = ex.info.get(pid, {})
    if pid in listed:
        return f"listed in {list_name}" + (f": {listed[pid]}" if listed[pid] else "")
    if finished_only and not submitted:
        status = info.get("status")
        return "screened out" if status == "screened_out" else "did not finish (no submittedAt)"
    if exclude_failed_catch and "catch_total" in info:
        passed, total = int(info.get("catch_passed", 0)), int(info["catch_total"])
        if passed < total:
            return f"failed catch trials ({passed} of {total} passed)"
    return None


def _exclude(ex: StudyExport, finished_only: bool, exclude_failed_catch: bool, exclude_file):
    """``(export without the excluded, [{id, reason}], the rules as the summary records them)``."""
    listed = read_exclusion_file(exclude_file) if exclude_file is not None else {}
    name = str(exclude_file) if exclude_file is not None else ""
    ex, excluded = apply_exclusions(ex, finished_only, exclude_failed_catch, listed, name)
    return ex, excluded, {"finished_only": finished_only, "exclude_failed_catch": exclude_failed_catch,
                          "exclude_file": name or None}


def apply_exclusions(ex: StudyExport, finished_only: bool = False, exclude_failed_catch: bool = False,
                     listed: dict[str, str] | None = None, list_name: str = "the exclusion list"
                     ) -> tuple[StudyExport, list[dict]]:
    """``ex`` without the excluded participants, and ``[{"id", "reason"}]`` of those left out.

    Left out: with ``finished_only`` who did not finish (empty ``submittedAt``; screened-out ones
    too), with ``exclude_failed_catch`` who failed a catch trial (the study server's
    ``Study/catch_*`` columns), and who is in ``listed`` (``{id: reason}``, e.g. from
    :func:`read_exclusion_file`; listed ids the export lacks are reported as "not in the
    export"). Withdrawn participants are not in the server's export at all.

    Raises
    ------
    ExportError
        ``exclude_failed_catch`` on an export that carries no catch-trial results.
    """
    listed = listed or {}
    if exclude_failed_catch and not any("catch_total" in d for d in ex.info.values()):
        raise ExportError(f"{ex.source}: --exclude-failed-catch needs catch-trial results (the study "
                          f"server's Study/catch_passed and Study/catch_total columns); this export has "
                          f"none: it is from a study without catch trials or from another app")
    excluded = []
    for p in ex.participants:
        why = _exclusion_reason(ex, p.id, p.submittedAt, finished_only, exclude_failed_catch, listed, list_name)
        if why is not None:
            excluded.append({"id": p.id, "reason": why})
    gone = {e["id"] for e in excluded}
    excluded += [{"id": pid, "reason": f"listed in {list_name} but not in the export"}
                 for pid in listed if pid not in set(ex.participant_ids)]
    if not gone:
        return ex, excluded
    keep = lambda table: {k: v for k, v in table.items() if k not in gone}  # noqa: E731
    return replace(ex, participants=[p for p in ex.participants if p.id not in gone],
                   selections={img: keep(t) for img, t in ex.selections.items()},
                   polygons={img: keep(t) for img, t in ex.polygons.items()}, info=keep(ex.info)), excluded


def compute_study(
    ex: StudyExport,
    heatmaps_dir=None,
    runs_dir=None,
    outlier_rule: str | Callable = "mean-zero",
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    heatmap_layout: str = HEATMAP_LAYOUT,
    run_layout: str = RUN_LAYOUT,
    exclude_outliers_from_hrh: bool = False,
    raster: str = "seed",
    condition_runs: dict | None = None,
) -> Evaluation:
    """The numbers of :func:`evaluate_study` (same parameters), reading inputs but writing nothing.

    Returns
    -------
    Evaluation
        Whose ``summary`` becomes ``study_summary.json``: ``participants`` (count),
        ``participant_ids``, ``participant_means``, ``outliers``, ``selection[img]`` (``counts``
        with string keys "-1".."max", ``counts_included``, ``n``, ``mean_choice``, ``mode``,
        ``switch_frame``, ``agreement``), ``hrh[img]`` (``path``, ``n_annotators``, ``max``,
        ``pixels_ge1``, ``pixels_ge50``, ``ceiling``), ``human_ceiling`` (mean of each metric
        over annotator×image with bootstrap CI), ``methods[name]`` (``consensus`` at ``ge1``/
        ``ge50`` plus ``spearman``, ``individual`` = per-annotator scores comparable with the
        ceiling, ``per_image``), ``excluded`` (``[{id, reason}]``), ``timings``, ``conditions``,
        ``issues`` and ``n_issues``.
    """
    rule_name = outlier_rule if isinstance(outlier_rule, str) else getattr(outlier_rule, "__name__", "custom")
    run_dirs = {img: find_run_dir(runs_dir, img, run_layout) for img in ex.images}
    for img in ex.selection_images:  # a further counterfactual "<id>.cf<r>" lives in <id>'s folder
        base, rank = runfolder.split_rank_id(img)
        if run_dirs.get(img) is None and rank > 1:
            run_dirs[img] = find_run_dir(runs_dir, base, run_layout)
    if not condition_runs:  # with conditions each one showed its own run, of its own length
        ex = _without_choices_beyond_the_run(ex, run_dirs)
    outliers = S.find_outliers(ex, outlier_rule)
    included = [p for p in ex.participant_ids if p not in set(outliers)]
    summary: dict = {
        "export": ex.source,
        "display_size": ex.display_size,
        "analysis_size": ex.analysis_size,
        "raster": raster,
        "participants": len(ex.participants),
        "participant_ids": ex.participant_ids,
        "images": {"selection": ex.selection_images, "annotation": ex.annotation_images},
        "outlier_rule": rule_name,
        "outliers": outliers,
        "participant_means": S.participant_means(ex),
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
    summary["selection"], selection_plots = _selection_task(ex, run_dirs, included)

    hrh_people = included if exclude_outliers_from_hrh else None
    summary["hrh"], per_image, ceiling_scores = _annotation_task(ex, hrh_people, raster)
    if ceiling_scores:
        summary["human_ceiling"] = {
            "description": "leave-one-out HRH (all other annotators) scored against each held-out "
                           "annotator's own mask; mean over annotator×image, CI over participants",
            "mean": {k: M.bootstrap_ci({p: [s[k] for s in v] for p, v in ceiling_scores.items()},
                                       n_bootstrap, seed) for k in CEILING_METRICS},
        }

    summary["timings"] = timing_summary(ex)
    summary["conditions"] = condition_summary(ex, summary["selection"], condition_runs, run_layout)
    maps, sources = _model_maps(ex, heatmaps_dir, heatmap_layout, run_dirs, summary["issues"])
    summary["n_issues"] = len(summary["issues"])
    if maps:
        summary["methods"] = _evaluate_methods(maps, per_image, ex.participant_ids, n_bootstrap, seed)
        for name in summary["methods"]:
            summary["methods"][name]["sources"] = sources.get(name, {})
    return Evaluation(summary, {img: d["hrh"] for img, d in per_image.items()}, selection_plots, maps,
                      len(hrh_people) if hrh_people is not None else len(ex.participant_ids))


_TRIAL_SECONDS_RE = re.compile(r"^trial/(?P<kind>sel|ann|catch):.+/seconds$")
_KIND_NAMES = {"sel": "selection", "ann": "annotation", "catch": "catch"}


def _stats(values: Sequence[float]) -> dict:
    """n, median, mean, min and max of ``values`` (None entries when empty)."""
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {"n": 0, "median": None, "mean": None, "min": None, "max": None}
    return {"n": int(v.size), "median": float(np.median(v)), "mean": float(v.mean()),
            "min": float(v.min()), "max": float(v.max())}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def timing_summary(ex: StudyExport) -> dict | None:
    """Seconds per trial (by task) and in total per participant, from the study server's
    ``Study/trial/<key>/seconds`` and ``Study/total_seconds`` columns; None without them."""
    totals: dict[str, float] = {}
    per_kind: dict[str, list[float]] = {}
    for pid, d in ex.info.items():
        if _number(d.get("total_seconds")) is not None:
            totals[pid] = _number(d["total_seconds"])
        for k, v in d.items():
            m = _TRIAL_SECONDS_RE.match(k)
            if m and _number(v) is not None:
                per_kind.setdefault(_KIND_NAMES[m["kind"]], []).append(_number(v))
    if not totals and not per_kind:
        return None
    return {"total_seconds": _stats(list(totals.values())), "per_participant": totals,
            "trial_seconds": {k: _stats(v) for k, v in per_kind.items()}}


def _condition_switch(name: str, img: str, selection: dict, condition_runs: dict | None, run_layout: str):
    """The switch frame of ``img`` in condition ``name``: from the condition's own run when
    ``condition_runs`` names one, else the overall one of the summary's ``selection``."""
    if condition_runs and name in condition_runs:
        d = find_run_dir(condition_runs[name], img, run_layout)
        if d is None:  # a further counterfactual "<id>.cf<r>" lives in <id>'s folder
            d = find_run_dir(condition_runs[name], runfolder.split_rank_id(img)[0], run_layout)
        item = _shown_item(d, img)
        return S.switch_frame_from_result(item.result) if item is not None else None
    return (selection.get(img) or {}).get("switch_frame")


def condition_summary(ex: StudyExport, selection: dict, condition_runs: dict | None = None,
                      run_layout: str = RUN_LAYOUT) -> dict:
    """Per between-subject condition (the ``Study/condition`` column): participants, selections
    (mean chosen frame without "none", share of "none", agreement with the switch frame),
    annotators and time; {} without conditions. ``selection`` is the summary's selection entries,
    ``condition_runs`` optional ``{condition: run folder}`` (see :func:`evaluate_study`)."""
    cond = {pid: d["condition"] for pid, d in ex.info.items() if d.get("condition")}
    out = {}
    for name in sorted(set(cond.values())):
        ids = {p for p in ex.participant_ids if cond.get(p) == name}
        per_image, all_choices = {}, []
        for img in ex.selection_images:
            ch = [c for p, c in ex.selections.get(img, {}).items() if p in ids]
            all_choices += ch
            frames = [c for c in ch if c >= 0]
            switch = _condition_switch(name, img, selection, condition_runs, run_layout)
            per_image[img] = {"n": len(ch), "mean_frame": _mean_of(frames), "none": ch.count(-1),
                              "agreement": S.switch_agreement(ch, switch)}
        frames = [c for c in all_choices if c >= 0]
        totals = [_number(ex.info.get(p, {}).get("total_seconds")) for p in ids]
        out[name] = {
            "participants": len(ids), "selections": len(all_choices), "mean_frame": _mean_of(frames),
            "none_share": (all_choices.count(-1) / len(all_choices)) if all_choices else None,
            "annotators": len({p for t in ex.polygons.values() for p in t if p in ids}),
            "median_total_seconds": _stats([t for t in totals if t is not None])["median"],
            "per_image": per_image,
        }
    return out


def write_outputs(ev: Evaluation, out: Path) -> dict:
    """Write the HRHs, ``study_summary.json``, ``report.md`` and ``report.html`` into ``out``;
    returns the summary as the JSON file holds it."""
    for img, hrh in ev.hrhs.items():
        hrh_mod.save_hrh(out / hrh_file(img), hrh)
    write_json(out / "study_summary.json", ev.summary, indent=1)
    summary = json.loads((out / "study_summary.json").read_text())  # the JSON-safe form
    md, page = render_report(summary)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", page)
    return summary


def _without_choices_beyond_the_run(ex: StudyExport, run_dirs: dict) -> StudyExport:
    """``ex`` without the selections of a frame its run does not have (the app shows the run's
    frames, so such a value is corrupt), each reported as a parse issue; unchanged without runs.
    For a study with one run per image (not per condition)."""
    rows = {p.id: p.row for p in ex.participants}
    selections, issues = dict(ex.selections), list(ex.issues)
    for img, table in ex.selections.items():
        item = _shown_item(run_dirs.get(img), img)
        n = len(item.frame_paths()) if item is not None else 0
        beyond = {p: c for p, c in table.items() if n and c >= n}
        if beyond:
            selections[img] = {p: c for p, c in table.items() if p not in beyond}
            issues += [ParseIssue(rows.get(p, 0), f"{img}/selection", str(c),
                                  f"selection beyond the run's last frame ({n} frames, 0..{n - 1}); "
                                  "skipped") for p, c in beyond.items()]
    return replace(ex, selections=selections, issues=issues) if len(issues) > len(ex.issues) else ex


def _shown_item(folder, image_id: str) -> runfolder.RunItem | None:
    """The run item whose frames selection image ``image_id`` showed: the item in ``folder`` (one
    without ``result.json`` still shows its frame files), or for ``<id>.cf<r>`` its counterfactual
    of rank r (``counterfactuals: all`` in the study; None when the run has no such rank)."""
    if folder is None or not Path(folder).is_dir():
        return None
    item = runfolder.RunItem(Path(folder).name, Path(folder), runfolder.read_result(folder) or {})
    rank = runfolder.split_rank_id(image_id)[1]
    return runfolder.rank_item(item, rank) if rank > 1 and "counterfactuals" in item.result else item


def _selection_task(ex: StudyExport, run_dirs: dict, included: list[str]) -> tuple[dict, dict]:
    """Per selection image: the summary entry, and what its histogram shows (see :class:`Evaluation`)."""
    entries, plots = {}, {}
    for img in ex.selection_images:
        table = ex.selections.get(img, {})
        item = _shown_item(run_dirs.get(img), img)
        result = item.result if item is not None else None
        switch = S.switch_frame_from_result(result)
        thumbs = item.frame_paths() if item is not None else []
        # The histogram must reach the run's last frame and its switch frame even if nobody chose them.
        max_frame = max([len(thumbs) - 1] + ([switch] if switch is not None else []))
        max_frame = max_frame if max_frame >= 0 else None
        counts = S.choice_counts(list(table.values()), max_frame)
        counts_inc = S.selection_counts(ex, img, included, max_frame)
        chosen = [table[p] for p in included if p in table]
        vals = np.asarray(list(table.values()))
        entries[img] = {
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
        plots[img] = (counts_inc, switch, thumbs)
    return entries, plots


def _annotation_task(ex: StudyExport, hrh_people: list[str] | None, raster: str) -> tuple[dict, dict, dict]:
    """Per annotation image the HRH summary entry and ``{"ids", "masks", "hrh"}``, and the
    leave-one-out ceiling scores as ``{participant: [metric dict per image]}``."""
    entries: dict[str, dict] = {}
    per_image: dict[str, dict] = {}
    ceiling_scores: dict[str, list[dict]] = {}
    for img in ex.annotation_images:
        ids, masks = hrh_mod.participant_masks(ex, img, hrh_people, raster)
        hrh = hrh_mod.hrh_from_masks(masks) if len(ids) else np.zeros((ex.analysis_size,) * 2, np.int32)
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
        entries[img] = {
            "path": str(hrh_file(img)),
            "n_annotators": len(ids),
            "max": int(hrh.max()),
            "pixels_ge1": int(thr["ge1"].sum()),
            "pixels_ge50": int(thr["ge50"].sum()),
            "ceiling": {k: _mean_of([s[k] for s in ceil_img]) for k in CEILING_METRICS} if ceil_img else None,
        }
    return entries, per_image, ceiling_scores


def _model_maps(ex: StudyExport, heatmaps_dir, heatmap_layout: str, run_dirs: dict,
                issues: list[dict]) -> tuple[dict, dict]:
    """``{method: {img: map}}`` at the analysis size and ``{method: {img: source}}``: model heatmaps
    and counterfactual differences. An unreadable heatmap is appended to ``issues``."""
    maps: dict[str, dict[str, np.ndarray]] = {}
    sources: dict[str, dict[str, str]] = {}
    for img in ex.annotation_images:
        for name, p in find_heatmaps(heatmaps_dir, img, heatmap_layout).items():
            try:
                arr = np.load(p)
                maps.setdefault(name, {})[img] = M.resize_map(arr, ex.analysis_size)
                sources.setdefault(name, {})[img] = str(p)
            except (OSError, ValueError) as exc:
                issues.append({"row": 0, "column": "", "value": str(p), "reason": f"heatmap unreadable: {exc}"})
        if run_dirs.get(img):
            d = counterfactual_difference(run_dirs[img], ex.analysis_size)
            if d is not None:
                maps.setdefault("cf_diff", {})[img] = d
                sources.setdefault("cf_diff", {})[img] = str(run_dirs[img])
    return maps, sources


def _evaluate_methods(maps, per_image, all_ids, n_bootstrap, seed) -> dict:
    """Consensus and per-annotator metrics for every method, with participant-bootstrap CIs."""
    results = {}
    for name, by_img in maps.items():
        per_img, indiv, scorers = _score_method(by_img, per_image)
        if not per_img:
            continue
        consensus = {t: {k: {"mean": _mean_of([per_img[i][t][k] for i in per_img]), "ci": None}
                         for k in M.MASK_METRICS} for t in M.THRESHOLDS}
        consensus["spearman"] = {"mean": _mean_of([per_img[i]["spearman"] for i in per_img]), "ci": None}
        if n_bootstrap and len(all_ids) > 1:
            _bootstrap_consensus(consensus, scorers, per_img, per_image, all_ids, n_bootstrap, seed)
        results[name] = {
            "images": sorted(per_img),
            "consensus": consensus,
            "individual": {k: M.bootstrap_ci({p: [s[k] for s in v] for p, v in indiv.items()}, n_bootstrap, seed)
                           for k in CEILING_METRICS},
            "per_image": per_img,
        }
    return results


def _score_method(by_img: dict, per_image: dict) -> tuple[dict, dict, dict]:
    """One method's maps against each annotated image's HRH and each annotator's mask.

    Returns ``per_img`` (:meth:`~study.metrics.HeatmapScorer.compare_with_hrh` plus the mean
    ``individual`` scores), ``indiv`` (``{participant: [scores per image]}``) and the scorers.
    """
    per_img, indiv, scorers = {}, {}, {}
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
    return per_img, indiv, scorers


def _quantile_ci(v) -> list[float] | None:
    v = np.asarray([x for x in v if x is not None], dtype=np.float64)
    return [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] if v.size else None


def _bootstrap_consensus(consensus, scorers, per_img, per_image, all_ids, n_bootstrap, seed) -> None:
    """Fill the ``ci`` entries of ``consensus`` (95 % percentile intervals).

    Resample participants (the same draw for every image), rebuild each image's HRH from the
    drawn annotators' masks, re-threshold, re-score, average over images.
    """
    index = {p: i for i, p in enumerate(all_ids)}
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
    for t in M.THRESHOLDS:
        for k in M.MASK_METRICS:
            consensus[t][k]["ci"] = _quantile_ci(boot[t][k])
    consensus["spearman"]["ci"] = _quantile_ci(boot_sp)
