"""Where each classifier puts the Smiling boundary on the renderer's own faces.

Oracle agreement compares what the explained classifier and the oracle call smiling. The
renderer holds the answer key, so on the toy world both can be asked directly. The first ``n``
not-smiling faces of an unseen world are drawn again with their smile factor set to each value
of a grid (−0.4 … +0.4; > 0 is Smiling), everything else unchanged. Per classifier and smile
value, the table gives the share of faces called smiling and the median Smiling logit. The
summary gives:
- the smile at which that share crosses one half (the classifier's boundary);
- the share of clear frowns (smile ≤ −0.2) it calls smiling;
- the smile at which its median logit reaches the samplers' ``margin``.

A classifier whose boundary sits below the oracle's, or whose logit stays low on drawn smiles,
accepts edits the oracle does not call smiles (docs/results_adaptive.md, ninth round).

    python benchmarks/smile_boundary.py --seed 8383 | --data TOYFACES_DIR [--n 96] \\
        [--classifiers toy_linear,toy_resnet,toy_resnet18,toy_oracle] [--margin 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

import toyfaces
from classifier.attributes import attribute_index
from classifier.models import load_classifier
from classifier.registry import resolve_classifier
from fileio import write_json
from toyfaces.render import render_tensor

GRID = tuple(round(s, 2) for s in np.arange(-0.4, 0.401, 0.05))
CLASSIFIERS = ("toy_linear", "toy_resnet", "toy_resnet18", "toy_oracle")
FROWN = -0.2  # smiles at or below this are clear frowns


def _crossing(xs, ys, level: float) -> float | None:
    """The first x at which ys reaches ``level`` (linearly interpolated), None if it never does."""
    if ys[0] >= level:
        return float(xs[0])
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 < level <= y1:
            return float(x0 + (level - y0) / (y1 - y0) * (x1 - x0))
    return None


@torch.no_grad()
def smile_boundary(data, n: int = 96, classifiers=CLASSIFIERS, grid=GRID,
                   margin: float = 3.0, batch_size: int = 64) -> dict:
    """The sweep over ``grid`` for the first ``n`` not-smiling faces of the toyfaces folder
    ``data``, per classifier (toy names or checkpoints): ``called_smiling`` and
    ``median_logit`` per smile value, ``boundary``, ``frowns_called_smiling`` and
    ``margin_reached_at`` (None: not within the grid)."""
    factors = toyfaces.load_factors(data)
    rows = np.flatnonzero(factors.smile <= 0)[:n]
    if len(rows) == 0:
        raise ValueError(f"{data} has no not-smiling faces")
    base = factors.take(rows)
    images = []
    for s in grid:  # the same faces, only the smile factor changed (the answer key)
        faces = dataclasses.replace(base, smile=np.full(len(rows), float(s)))
        images.append(render_tensor(faces))
    k = attribute_index("Smiling")
    out = {"data": str(data), "n": len(rows), "smile": list(grid), "margin": margin,
           "classifiers": {}}
    for name in classifiers:
        clf = load_classifier(resolve_classifier(name)).requires_grad_(False).eval()
        logits = np.stack([torch.cat([clf(x[i:i + batch_size])[:, k]
                                      for i in range(0, len(x), batch_size)]).numpy()
                           for x in images])  # (grid, faces)
        called = (logits > 0).mean(1)
        median = np.median(logits, 1)
        frowns = np.asarray(grid) <= FROWN
        out["classifiers"][name] = {
            "called_smiling": called.round(3).tolist(),
            "median_logit": median.round(2).tolist(),
            "boundary": _crossing(grid, called, 0.5),
            "frowns_called_smiling": float(called[frowns].mean()) if frowns.any() else None,
            "margin_reached_at": _crossing(grid, median, margin)}
    return out


def format_table(r: dict) -> str:
    names = list(r["classifiers"])
    lines = [f"{r['n']} not-smiling faces of {r['data']}, redrawn with smile s: share called "
             "smiling / median logit",
             "    s  " + "".join(f"{n:>18s}" for n in names)]
    for i, s in enumerate(r["smile"]):
        lines.append(f"{s:+5.2f}  " + "".join(
            f"{r['classifiers'][n]['called_smiling'][i]:9.2f}{r['classifiers'][n]['median_logit'][i]:+9.2f}"
            for n in names))
    for key, what, form in (("boundary", "boundary (half called smiling) at s", "+.3f"),
                            ("frowns_called_smiling", f"frowns (s ≤ {FROWN}) called smiling", ".3f"),
                            ("margin_reached_at", f"median logit reaches the margin {r['margin']} at s",
                             "+.3f")):
        lines.append(f"{what:>42s}: " + "  ".join(
            f"{n} {'—' if (v := r['classifiers'][n][key]) is None else format(v, form)}"
            for n in names))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=8383, help="the unseen toy world")
    p.add_argument("--data", default=None, help="a toyfaces folder instead of --seed")
    p.add_argument("--n", type=int, default=96, help="not-smiling faces to redraw")
    p.add_argument("--classifiers", default=",".join(CLASSIFIERS))
    p.add_argument("--margin", type=float, default=3.0, help="the samplers' logit margin")
    p.add_argument("--json", default=None, help="write the result here")
    a = p.parse_args(argv)
    if a.data:
        data = Path(a.data)
    else:  # imported here: it loads the samplers and experiments, which --data does not need
        from benchmarks.sampler_eval import unseen_world
        data = unseen_world(a.seed)
    r = smile_boundary(data, a.n, a.classifiers.split(","), margin=a.margin)
    print(format_table(r))
    if a.json:
        write_json(a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
