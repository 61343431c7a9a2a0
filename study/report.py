"""The report of a study evaluation: ``report.md`` and ``report.html`` from ``study_summary.json``.

:func:`render_report` builds one :class:`fileio.report.Report` of these sections: introduction,
exclusions, timings and conditions (where the export has them), selection task, human relevance
heatmaps, model heatmaps vs HRH, parse issues and returns it as
Markdown and as HTML; figures are linked by their paths relative to the output folder.
"""

from __future__ import annotations

from fileio.report import Report, format_cell

from .hrh import RASTER_DESCRIPTIONS
from .metrics import MASK_METRICS


def _fmt_ci(d):
    if not d or d.get("mean") is None:
        return "–"
    ci = d.get("ci")
    return f"{d['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render_report(summary: dict) -> tuple[str, str]:
    """Markdown and HTML report of a summary (same content; the HTML links the figures by path)."""
    doc = Report("User-study evaluation")
    _introduction(doc, summary)
    _exclusions_section(doc, summary)
    _timings_section(doc, summary)
    _conditions_section(doc, summary)
    _selection_section(doc, summary)
    _hrh_section(doc, summary)
    _methods_section(doc, summary)
    _issues_section(doc, summary)
    return doc.markdown(), doc.html()


def _introduction(doc: Report, summary: dict) -> None:
    doc.heading("User-study evaluation", 1)
    doc.paragraph(f"Export: `{summary.get('export')}` — {summary['participants']} participants, "
                  f"{len(summary['images']['selection'])} selection images, "
                  f"{len(summary['images']['annotation'])} annotation images. Polygons drawn at "
                  f"{summary['display_size']} px, HRHs at {summary['analysis_size']} px, rasterised "
                  f"with the `{summary.get('raster', 'seed')}` rule"
                  + f" ({RASTER_DESCRIPTIONS.get(summary.get('raster', 'seed'), 'unknown rule')}). "
                  + f"Outlier rule `{summary['outlier_rule']}`: {len(summary['outliers'])} outlier(s)"
                  + (f" ({', '.join(summary['outliers'])})" if summary["outliers"] else "") + ".")
    if summary.get("figures", {}).get("participant_means"):
        doc.image(summary["figures"]["participant_means"], "mean choice per participant", caption=True)


def _selection_section(doc: Report, summary: dict) -> None:
    doc.heading("Selection task", 2)
    doc.paragraph("Counts of every choice over all participants (-1 = 'nobody smiles'; 0 original, "
                  "1 reconstruction, 2.. optimisation steps). Mean frame = mean of the chosen frames, "
                  "'none' (-1) left out (it is no frame); none = how many chose 'none'. Switch = the "
                  "classifier's switch frame from the run, where given; agreement excludes outliers.")
    sel = summary["selection"]
    width = max((len(e["counts"]) for e in sel.values()), default=0)
    keys = [str(k) for k in range(-1, width - 1)]
    rows = []
    for img, e in sel.items():
        ag = e.get("agreement") or {}
        rows.append([img] + [str(e["counts"].get(k, "")) for k in keys]
                    + [str(e["n"]), format_cell(e.get("mean_frame"), 2), str(e["counts"].get("-1", 0)),
                       format_cell(e["switch_frame"]), format_cell(ag.get("exact"), 2)])
    doc.table(["image"] + keys + ["n", "mean frame", "none", "switch", "exact"], rows)
    for img, e in sel.items():
        if e.get("figure"):
            doc.image(e["figure"], f"selection histogram {img}", caption=True)


def _exclusions_section(doc: Report, summary: dict) -> None:
    rules = summary.get("exclusion_rules") or {}
    excluded = summary.get("excluded") or []
    if not excluded and not any(rules.values()):
        return
    doc.heading("Exclusions", 2)
    on = [name for name, flag in (("--finished-only", rules.get("finished_only")),
                                  ("--exclude-failed-catch", rules.get("exclude_failed_catch"))) if flag]
    if rules.get("exclude_file"):
        on.append(f"--exclude-file {rules['exclude_file']}")
    doc.paragraph(f"Rules: {', '.join(on) or 'none'}. {len(excluded)} participant(s) left out of every "
                  f"number below" + (":" if excluded else "."))
    if excluded:
        doc.table(["participant", "reason"], [[e["id"], e["reason"]] for e in excluded])


def _timings_section(doc: Report, summary: dict) -> None:
    t = summary.get("timings")
    if not t:
        return
    doc.heading("Timings", 2)
    doc.paragraph("Seconds from the moment a trial was first shown to its answer, and per participant "
                  "from the first trial shown to the last answer (included participants).")
    rows = [[f"per {k} trial"] + [format_cell(v[c], 1) if c != "n" else str(v["n"]) for c in ("n", "median", "mean", "min", "max")]
            for k, v in t["trial_seconds"].items()]
    tot = t["total_seconds"]
    rows.append(["total per participant"] + [format_cell(tot[c], 1) if c != "n" else str(tot["n"])
                                              for c in ("n", "median", "mean", "min", "max")])
    doc.table(["", "n", "median s", "mean s", "min s", "max s"], rows)


def _conditions_section(doc: Report, summary: dict) -> None:
    conds = summary.get("conditions")
    if not conds:
        return
    doc.heading("Conditions", 2)
    doc.paragraph("Between-subject conditions (the export's Study/condition column). Mean frame leaves "
                  "'none' out; exact = share of choices equal to the classifier's switch frame.")
    doc.table(["condition", "participants", "selections", "mean frame", "none share", "annotators", "median total s"],
              [[name, str(c["participants"]), str(c["selections"]), format_cell(c["mean_frame"], 2),
                format_cell(c["none_share"], 2), str(c["annotators"]), format_cell(c["median_total_seconds"], 1)]
               for name, c in conds.items()])
    imgs = list(dict.fromkeys(img for c in conds.values() for img in c["per_image"]))
    doc.table(["image"] + [f"{name}: mean frame (n, exact)" for name in conds],
              [[img] + [_cond_cell(c["per_image"].get(img)) for c in conds.values()] for img in imgs])


def _cond_cell(e: dict | None) -> str:
    if not e or not e["n"]:
        return "–"
    exact = (e.get("agreement") or {}).get("exact")
    return f"{format_cell(e['mean_frame'], 2)} ({e['n']}, {format_cell(exact, 2)})"


def _hrh_section(doc: Report, summary: dict) -> None:
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


def _methods_section(doc: Report, summary: dict) -> None:
    if not summary.get("methods"):
        return
    hc = summary.get("human_ceiling")
    doc.heading("Model heatmaps vs HRH", 2)
    doc.paragraph("Consensus: the method's map against the HRH thresholded at ≥1 annotator and at ≥50% "
                  "of annotators (mean over images, CI from resampling participants). Individual: against "
                  "each annotator's own mask — directly comparable with the human ceiling.")
    for name, r in summary["methods"].items():
        doc.heading(name, 3)
        rows = [[k, _fmt_ci(r["consensus"]["ge1"][k]), _fmt_ci(r["consensus"]["ge50"][k]),
                 _fmt_ci(r["individual"][k]), _fmt_ci((hc or {}).get("mean", {}).get(k))]
                for k in MASK_METRICS]
        rows.append(["spearman (graded HRH)", _fmt_ci(r["consensus"]["spearman"]), "", _fmt_ci(r["individual"]["spearman"]),
                     _fmt_ci((hc or {}).get("mean", {}).get("spearman"))])
        doc.table(["metric", "HRH ≥1", "HRH ≥50%", "individual", "human ceiling"], rows)
    for img, e in summary["hrh"].items():
        if e.get("compare_figure"):
            doc.image(e["compare_figure"], f"maps {img}", caption=True)


def _issues_section(doc: Report, summary: dict) -> None:
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
