"""The demo's HTML report: every figure and table of a run, in one self-contained page."""
from __future__ import annotations

import json
from pathlib import Path

from dvce import runfolder
from fileio import to_jsonable
from fileio.report import Report

STYLE = (".card{display:inline-block;margin:6px;padding:6px;border:1px solid #ddd;"
         "vertical-align:top;width:540px}.card img{margin:2px;image-rendering:pixelated}"
         "body{max-width:1200px}")


def write_report(out: Path, summary: dict, metrics: dict, study: dict, crp: dict) -> Path:
    out = Path(out)
    run = out / "counterfactuals"
    per_image = metrics.get("per_image", {})
    doc = Report("lDVCE demo report", style=STYLE)
    doc.heading("lDVCE demo (toyfaces world)", 1)
    doc.paragraph("Counterfactuals for faces the classifier calls *not smiling*, their LRP heatmaps, "
                  "and a simulated user study. Every number below was measured in this run.")
    doc.heading("Summary")
    doc.key_values(summary)
    doc.heading("Overview")
    doc.image(out / "overview.png", "overview.png", width=1100, embed=True)
    doc.heading("Counterfactual metrics")
    doc.key_values({k: v for k, v in metrics.items() if k != "per_image"})
    unconfirmed = run / runfolder.DISAGREEMENTS
    if unconfirmed.is_file():
        doc.heading("Flips the oracle does not confirm")
        doc.image(unconfirmed, unconfirmed.name, width=700, embed=True)
    doc.heading("Per image (original, counterfactual, |difference|, sequence)")
    for item in runfolder.list_items(run):
        if item.image_id not in per_image:
            continue
        r = item.result
        with doc.box("card"):
            doc.heading(f"image {item.image_id}", 4)
            for path in (item.original, item.counterfactual, item.diff, item.folder / runfolder.GIF):
                doc.image(path, path.name, width=128, embed=True)
            oracle = per_image[item.image_id].get("oracle_flipped")
            seen = "" if oracle is None or not r["flipped"] else f", oracle confirms: {bool(oracle)}"
            doc.paragraph(f"p(smiling) {r['prob_before']:.2f} → {r['prob_after']:.2f}, "
                          f"flipped: {r['flipped']}{seen}, L1 {r['l1']:.3f}, "
                          f"switch frame {r['switch_frame']}")
    doc.heading("Concept relevance (CRP)")
    doc.preformatted(json.dumps(to_jsonable(crp), indent=1)[:4000])
    for p in sorted((out / "crp").glob("**/*.png"))[:6]:
        doc.image(p, p.name, width=480, embed=True)
    doc.heading("Simulated user study")
    for p in sorted((out / "study").glob("**/*.png"))[:12]:
        doc.image(p, p.name, width=360, embed=True)
    keys = ("participants", "outliers", "switch_agreement", "methods")
    doc.preformatted(json.dumps(to_jsonable({k: study.get(k) for k in keys if k in study}),
                                indent=1)[:6000])
    return doc.write_html(out / "report.html")
