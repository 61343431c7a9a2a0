"""The counterfactuals an attribute oracle does not confirm, as a figure (``ldvce evaluate
--oracle``): each row the original, the counterfactual and its change, labelled with what the
explained classifier said and what the oracle saw change instead.

An oracle agreement below 1 is a number; what the classifier accepted as the target attribute
is better looked at. On the toy world such rows often show a classifier's own idea of the
attribute (a frown made flat that an MLP reads as a smile), not a sampler's failure.
Runs with ``--num-cfs``: the rank-1 counterfactual of each image, as the top-level metrics.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from classifier.images import UnreadableImageError, load_pil
from dvce import runfolder
from xai.render import image_grid_figure

#: Rows shown at most; the title says how many there were.
MAX_ROWS = 12
#: Grey stands in for an image of a row that cannot be read, so the columns stay aligned.
MISSING_GREY = 128


def disagreements(metrics: dict) -> list[str]:
    """Image ids whose counterfactual flipped the explained classifier but whose decision the
    oracle does not see flip, in natural order (``metrics``: :func:`dvce.metrics.evaluate_run`
    with an oracle; without one, none)."""
    per = metrics.get("per_image", {})
    ids = [i for i, m in per.items() if m.get("flipped") and "oracle_flipped" in m
           and not m["oracle_flipped"]]
    return sorted(ids, key=runfolder.natural_key)


def _rgb(path: Path) -> np.ndarray | None:
    """The image as RGB, or None when it is missing or unreadable (the change map is not read by
    the metrics, so it may be the one broken file of an item)."""
    try:
        return np.asarray(load_pil(path))
    except UnreadableImageError:
        return None


def _label(image_id: str, result: dict, changed: list[str]) -> str:
    logit = result.get("logit_after")
    said = f"classifier {logit:+.1f}" if isinstance(logit, (int, float)) else "classifier flipped"
    others = ", ".join(changed) if changed else "none"
    return f"{image_id}: {said}\noracle: not flipped; changed: {others}"


def disagreement_figure(run_dir, metrics: dict, path=None,
                        max_rows: int = MAX_ROWS) -> Path | None:
    """Write the figure of :func:`disagreements` (original | counterfactual | change) to
    ``path`` (default RUN/oracle_disagreements.png) and return it. Returns None, and removes
    an older figure so that none is stale, when there is nothing to draw: the oracle confirmed
    every flip, the metrics have no oracle, or the items are gone."""
    run_dir = Path(run_dir)
    path = Path(path) if path else run_dir / runfolder.DISAGREEMENTS
    ids = disagreements(metrics)
    rows = []
    for image_id in ids[:max_rows]:
        item = runfolder.get_item(run_dir, image_id)
        if item is None:  # removed since the metrics were computed
            continue
        images = [_rgb(f) for f in (item.original, item.counterfactual, item.diff)]
        shape = next((im.shape for im in images if im is not None), None)
        if shape is None:
            continue
        changed = metrics["per_image"][image_id].get("oracle_changed") or []
        rows.append((_label(image_id, item.result, changed),
                     [np.full(shape, MISSING_GREY, np.uint8) if im is None else im
                      for im in images]))
    if not rows:
        path.unlink(missing_ok=True)
        return None
    flips = sum(bool(m.get("flipped")) for m in metrics["per_image"].values())
    attribute = metrics.get("attribute", "target")
    title = (f"{len(ids)} of {flips} flips whose {attribute} decision the oracle does not see "
             f"flip" + (f" (the first {max_rows})" if len(ids) > max_rows else "")
             + ": original, counterfactual, change")
    return image_grid_figure(rows, path, title=title, cell=1.1)
