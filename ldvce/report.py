"""The demo's HTML report: every figure and table of a run, in one self-contained page."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from dvce import runfolder
from fileio import atomic_write_bytes


def _img(path: Path, width: int | None = None) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    w = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{data}"{w} alt="{html.escape(path.name)}">'


def _table(rows: dict, digits: int = 3) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return html.escape(str(v))
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{fmt(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def write_report(out: Path, summary: dict, metrics: dict, study: dict, crp: dict) -> Path:
    out = Path(out)
    run = out / "counterfactuals"
    per_image = metrics.get("per_image", {})
    cards = []
    for item in runfolder.list_items(run):
        if item.image_id not in per_image:
            continue
        img, d, r = item.image_id, item.folder, item.result
        gif = d / runfolder.GIF
        gif_tag = (f'<img src="data:image/gif;base64,{base64.b64encode(gif.read_bytes()).decode()}" '
                   f'width="128" alt="sequence">' if gif.exists() else "")
        cards.append(
            f"<div class=card><h4>image {html.escape(img)}</h4>"
            f"{_img(item.original, 128)}{_img(item.counterfactual, 128)}"
            f"{_img(item.diff, 128)}{gif_tag}"
            f"<p>p(smiling) {r['prob_before']:.2f} → {r['prob_after']:.2f}, "
            f"flipped: {r['flipped']}, L1 {r['l1']:.3f}, switch frame {r['switch_frame']}</p></div>")
    study_figs = "".join(_img(p, 360) for p in sorted((out / "study").glob("**/*.png"))[:12])
    crp_figs = "".join(_img(p, 480) for p in sorted((out / "crp").glob("**/*.png"))[:6])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>lDVCE demo report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}} .card{{display:inline-block;
margin:6px;padding:6px;border:1px solid #ddd;vertical-align:top;width:540px}}
.card img{{margin:2px;image-rendering:pixelated}}</style></head><body>
<h1>lDVCE demo (toyfaces world)</h1>
<p>Counterfactuals for faces the classifier calls <i>not smiling</i>, their LRP heatmaps, and a
simulated user study. Every number below was measured in this run.</p>
<h2>Summary</h2>{_table(summary)}
<h2>Overview</h2>{_img(out / 'overview.png', 1100)}
<h2>Counterfactual metrics</h2>{_table({k: v for k, v in metrics.items() if k != 'per_image'})}
<h2>Per image (original, counterfactual, |difference|, sequence)</h2>{''.join(cards)}
<h2>Concept relevance (CRP)</h2><pre>{html.escape(json.dumps(crp, indent=1)[:4000])}</pre>{crp_figs}
<h2>Simulated user study</h2>{study_figs}
<pre>{html.escape(json.dumps({k: study.get(k) for k in ('participants', 'outliers', 'switch_agreement', 'methods') if k in study}, indent=1, default=str)[:6000])}</pre>
</body></html>"""
    path = out / "report.html"
    atomic_write_bytes(path, page.encode())
    return path
