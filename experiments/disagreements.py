"""The counterfactuals an attribute oracle does not confirm, as a figure (``ldvce evaluate
--oracle``): each row the original, the counterfactual and its change, labelled with what the
explained classifier said and what the oracle saw change instead.

An oracle agreement below 1 is a number; what the classifier accepted as the target attribute
is better looked at. On the toy world such rows often show a classifier's own idea of the
attribute (a frown made flat that an MLP reads as a smile), not a sampler's failure.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dvce import runfolder
from xai.render import image_grid_figure

FIGURE = "oracle_disagreements.png"
#: Rows shown at most; the title says how many there were.
MAX_ROWS = 12


def disagreements(metrics: dict) -> list[str]:
    """Image ids whose counterfactual flipped the explained classifier but not the oracle,
    in natural order (``metrics``: :func:`dvce.metrics.evaluate_run` with an oracle)."""
    per = metrics.get("per_image", {})
    ids = [i for i, m in per.items() if m.get("flipped") and "oracle_flipped" in m
           and not m["oracle_flipped"]]
    return sorted(ids, key=runfolder.natural_key)


def _rgb(path: Path) -> np.ndarray | None:
    """The image as RGB, or None when it is missing or unreadable (the change map is not read by
    the metrics, so it may be the one file of an item that is broken)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


def _label(image_id: str, result: dict, changed: list[str]) -> str:
    logit = result.get("logit_after")
    said = f"classifier {logit:+.1f}" if isinstance(logit, (int, float)) else "classifier flipped"
    others = ", ".join(changed) if changed else "none"
    return f"{image_id}: {said}\noracle: not flipped; changed: {others}"


def disagreement_figure(run_dir, metrics: dict, path=None,
                        max_rows: int = MAX_ROWS) -> Path | None:
    """Write the figure of :func:`disagreements` (original | counterfactual | change) to
    ``path`` (default RUN/oracle_disagreements.png) and return it; None when the oracle
    confirmed every flip (an older figure of the run is then removed, so none is stale)."""
    run_dir = Path(run_dir)
    path = Path(path) if path else run_dir / FIGURE
    ids = disagreements(metrics)
    if not ids:
        path.unlink(missing_ok=True)
        return None
    rows = []
    for image_id in ids[:max_rows]:
        item = runfolder.get_item(run_dir, image_id)
        if item is None:  # removed since the metrics were computed
            continue
        files = [item.original, item.counterfactual, item.diff]
        changed = metrics["per_image"][image_id].get("oracle_changed") or []
        images = [im for im in map(_rgb, files) if im is not None]
        rows.append((_label(image_id, item.result, changed), images))
    attribute = metrics.get("attribute", "the target")
    title = (f"{len(ids)} of {metrics.get('n', '?')} flips the oracle does not see as "
             f"{attribute}" + (f" (first {len(rows)})" if len(ids) > len(rows) else "")
             + ": original, counterfactual, change")
    return image_grid_figure(rows, path, title=title, cell=1.1)
