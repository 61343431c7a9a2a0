"""The shortcut test's report: a table of the shift per attribute and direction, and a page."""
from __future__ import annotations

import json
from pathlib import Path

from fileio.report import Report


def _interval(stat: dict) -> str:
    ci = stat.get("ci")
    return f"{stat['mean']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def shift_rows(result: dict) -> list[list]:
    """Table rows: attribute, direction, faces edited, edits counted, decision flips and mean
    change in p(target) with their 95 % intervals."""
    rows = []
    for attr, dirs in result["attributes"].items():
        for direction, e in dirs.items():
            s = e["shift"]
            rows.append([attr + (" (control)" if attr == result["control"] else ""), direction,
                         e["n_edited"], s["n"], _interval(s["flip_rate"]),
                         _interval(s["mean_delta_p"]), e["n_not_confirmed"]])
    return rows


HEADER = ["attribute", "edit", "faces edited", "edits counted", "decision flips (95 % CI)",
          "mean Δp (95 % CI)", "edits not confirmed"]


def report_section(doc: Report, out, result: dict) -> None:
    """Append the shortcut test to ``doc``: what was done, the table and the figure."""
    doc.heading(f"Shortcut test: does {result['cue']} move {result['target']}?")
    committee = len(result.get("editors") or [result["editor"]]) > 1
    editor = (f"the editor committee `{result['editor']}` (their mean logit; " if committee
              else f"the editor `{result['editor']}` (")
    options = json.dumps(result.get("options") or {})
    doc.paragraph(
        f"Faces without {result['cue']} had it added and faces with it had it removed, each by a "
        f"counterfactual of {editor}`{result['method']}` sampler, options {options}); the "
        f"explained classifier `{result['classifier']}` was asked about {result['target']} before "
        "and after. "
        + (f"{result['control']} was edited the same way as a control. " if result.get("control")
           else "")
        + "Edits the editor "
        "did not flip" + (", or the oracle did not confirm," if result.get("oracle") else "")
        + " are counted apart and left out of the statistics.")
    doc.table(HEADER, shift_rows(result))
    if result.get("figure"):
        doc.image(Path(out) / result["figure"], "edits", width=900, embed=True)


def write_report(out, result: dict) -> Path:
    """``out/report.html``: the shortcut test on a page of its own."""
    doc = Report("lDVCE: shortcut test")
    doc.heading("lDVCE shortcut test", 1)
    report_section(doc, out, result)
    return doc.write_html(Path(out) / "report.html")


def format_table(result: dict) -> str:
    """The table as plain text (for the command line)."""
    rows = [HEADER] + [[str(c) for c in r] for r in shift_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
