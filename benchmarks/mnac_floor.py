"""What MNAC a counterfactual of a toy run *needs*: the renderer's answer key for its faces.

``ldvce evaluate --oracle toy_oracle`` counts the attributes the oracle sees change (MNAC).
On the toy world the renderer can draw each face of a run again with only its smile turned
positive (same mouth opening, hair, beard …). This reports, for the faces of a run folder made
on a toy LMDB (``benchmarks/sampler_eval.py`` or ``ldvce generate --lmdb``):

- the MNAC of that answer key (the oracle's changes when only the smile changes);
- the explained classifier's logit on it, and how many faces stay below the sampler's margin;
- for the open-mouthed faces, the logit when the mouth is also closed — whether the classifier
  itself rewards closing the mouth;
- the run's own MNAC and which attributes the oracle saw change, for comparison.

    python benchmarks/mnac_floor.py RUN_FOLDER [--classifier toy_resnet] [--margin 3]
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch

import toyfaces
from classifier.attributes import ATTRIBUTES, attribute_index
from classifier.models import load_classifier
from dvce.metrics import mnac, oracle_changes
from toyfaces.render import render_tensor
from toyfaces.world import toy_classifier


def mnac_floor(run: Path, classifier: str = "toy_resnet", margin: float = 3.0) -> dict:
    run = Path(run)
    images = [json.loads(line)["image"] for line in (run / "manifest.jsonl").read_text().splitlines()
              if json.loads(line)["status"] == "ok"]
    source = json.loads((run / images[0] / "result.json").read_text())["source"]["lmdb"]
    rows = np.asarray([json.loads((run / i / "result.json").read_text())["source"]["index"]
                       for i in images])
    base = toyfaces.load_factors(Path(source).parent).take(rows)
    smile = base.take(slice(None))
    smile.smile = np.abs(base.smile)
    closed = smile.take(slice(None))
    closed.mouth_open = np.minimum(base.mouth_open, 0.2)
    clf = load_classifier(toy_classifier(classifier)).eval()
    oracle = load_classifier(toy_classifier("toy_oracle")).eval()
    s = attribute_index("Smiling")
    valid = torch.zeros(len(ATTRIBUTES), dtype=torch.bool)  # what MNAC counts on the toy world
    valid[[attribute_index(a) for a in toyfaces.MODELLED]] = True
    with torch.no_grad():
        before, after = oracle(render_tensor(base)), oracle(render_tensor(smile))
        logit, logit_closed = clf(render_tensor(smile))[:, s], clf(render_tensor(closed))[:, s]
    changed = collections.Counter(a for names in oracle_changes(before, after, s, valid)
                                  for a in names)
    opened = torch.from_numpy(base.mouth_open > 0.5)
    metrics = json.loads((run / "metrics.json").read_text())
    return {"run": str(run), "n": len(rows), "margin": margin,
            "answer_key_mnac": float(mnac(before, after, s, valid).mean()),
            "answer_key_changed": dict(changed),
            "answer_key_flips": float((logit > 0).float().mean()),
            "answer_key_below_margin": int((logit < margin).sum()),
            "open_mouths": int(opened.sum()),
            "open_below_margin": int((logit[opened] < margin).sum()),
            "open_closing_raises_logit": int((logit_closed[opened] > logit[opened]).sum()),
            "open_median_logit": float(logit[opened].median()) if opened.any() else None,
            "open_closed_median_logit": (float(logit_closed[opened].median())
                                         if opened.any() else None),
            "run_mnac": metrics.get("mnac"), "run_changed": metrics.get("oracle_changed")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder made on a toy LMDB, evaluated with --oracle toy_oracle")
    p.add_argument("--classifier", default="toy_resnet", help="the explained toy classifier")
    p.add_argument("--margin", type=float, default=3.0, help="the sampler's logit margin")
    a = p.parse_args(argv)
    r = mnac_floor(Path(a.run), a.classifier, a.margin)
    for k, v in r.items():
        print(f"{k:28s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
