"""The comparison's section of ``report.html`` (:class:`fileio.report.Report` blocks)."""
from __future__ import annotations

from pathlib import Path

from fileio.report import Report

#: Columns of the report's table: metric key -> header.
COLUMNS = {"mass_accuracy": "mass ↑", "rank_accuracy": "rank ↑", "pointing_game": "pointing ↑",
           "auc": "AUC ↑", "deletion_auc": "deletion ↓", "insertion_auc": "insertion ↑",
           "aopc": "AOPC ↑", "randomisation_similarity": "rand. sim. ↓",
           "hrh_mass_accuracy": "HRH mass ↑", "hrh_rank_accuracy": "HRH rank ↑",
           "hrh_pointing_game": "HRH pointing ↑", "hrh_auc": "HRH AUC ↑",
           "hrh_spearman": "HRH Spearman ↑"}


def cell(s: dict | None) -> str:
    """``0.74 [0.70, 0.78]`` (mean and bootstrap 95 % interval), ``–`` when undefined."""
    if not s or s.get("mean") is None or s["mean"] != s["mean"]:
        return "–"
    ci = s.get("ci")
    return f"{s['mean']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def report_section(doc: Report, result: dict, figure: str | None = None, level: int = 2) -> None:
    """Add the comparison (table, human ceiling, figure) to ``doc``."""
    keys = [k for k in COLUMNS if any(k in r["metrics"] for r in result["methods"].values())]
    doc.heading(f"Which heatmap? {Path(str(result.get('classifier', ''))).stem}", level)
    doc.paragraph(
        f"{result['n']} faces; maps explain the decision on `{result.get('attribute')}`. "
        f"Localisation against the ground-truth region `{result.get('region')}`; deletion/"
        "insertion: probability of the decision while pixels go grey (most relevant first) or "
        "come back; randomisation: rank correlation of |map| with the map of the fully "
        "randomised model (*pass* below the threshold); HRH: human relevance heatmaps "
        f"({result.get('hrh')}), mask metrics at the ≥ 50 % threshold. Mean [bootstrap 95 % "
        "interval over faces].")
    rows = [[name, r["label"]] + [cell(r["metrics"].get(k)) for k in keys]
            + [f"{r['seconds_per_image']:.3f}", r.get("randomisation") or "–"]
            for name, r in result["methods"].items()]
    doc.table(["method", "label"] + [COLUMNS[k] for k in keys] + ["s / image", "randomisation"],
              rows)
    ceiling = result.get("human_ceiling")
    if ceiling:
        doc.paragraph("Human ceiling (leave-one-out: each annotator against the HRH of the "
                      "others, as `ldvce study eval`):")
        doc.table(["metric", "mean [95 % CI]"], [[k, cell(v)] for k, v in ceiling.items()])
    if figure:
        doc.image(figure, "faces × methods", caption=True)


def write_report(path, result: dict, figure: str | None = None) -> Path:
    """A ``report.html`` holding the comparison's section."""
    doc = Report("Which heatmap to trust")
    report_section(doc, result, figure, level=1)
    return doc.write_html(path)
