"""The shortcut test's faces and edits: which faces get a cue added or removed, the edits
themselves (counterfactuals of the editor's cue output, one run folder per attribute and
direction), and what the explained classifier and the oracle say about them."""
from __future__ import annotations


import numpy as np
import torch

from classifier.attributes import attribute_index
from classifier.dataset import dataset_files
from classifier.evaluate import dataset_for, predict
from classifier.images import load_image
from dvce import runfolder, runner
from dvce.samplers import Problem
from experiments.explain import model_image_size

#: direction -> the editor's target decision on the cue
DIRECTIONS = {"add": 1, "remove": 0}


def pick_faces(editor, data, attribute: str, n: int, split: str = "all",
               device="cpu") -> dict[str, list[int]]:
    """The first ``n`` rows the editor calls without ``attribute`` (``"add"``: they get it) and
    the first ``n`` it calls with it (``"remove"``)."""
    logits, _, rows = predict(editor, dataset_for(data, split=split), device=device,
                              progress=False)
    has = logits[:, attribute_index(attribute)] > 0
    return {"add": rows[~has].tolist()[:n], "remove": rows[has].tolist()[:n]}


def edit_faces(run_dir, editor, ldm, data, rows: list[int], attribute: str, direction: str,
               method: str, options: dict | None = None, batch_size: int = 16,
               progress: bool = True, *, editor_name: str) -> dict:
    """Counterfactuals of the editor's ``attribute`` output toward ``direction`` for dataset
    ``rows`` into ``run_dir`` (resumable: finished faces are kept); returns the run summary.
    ``editor_name`` is recorded as the run's classifier, so that edits of another editor are
    never resumed into the same folder (the runner refuses, naming both)."""
    lmdb, attr = dataset_files(data)
    items = runner.lmdb_items(lmdb, attr, rows, ldm.image_size)
    return runner.run(items, Problem(ldm, editor, attribute_index(attribute)), run_dir,
                      method=method, target=DIRECTIONS[direction], batch_size=batch_size,
                      options=dict(options or {}),
                      settings={"attribute": attribute, "edit": direction,
                                "classifier": editor_name}, progress=progress)


@torch.no_grad()
def score_edits(run_dir, rows: list[int], explained, target: str, direction: str,
                cue: str, oracle=None) -> dict:
    """Per face of ``rows`` edited in ``run_dir``: the explained classifier's probability of
    ``target`` before and after, whether the editor's decision flipped, and (with ``oracle``)
    whether the oracle saw ``cue`` change toward ``direction``. ``used`` marks the edits the
    statistics count: the editor flipped and, with an oracle, the oracle confirms."""
    done = {it.image_id: it for it in runfolder.list_items(run_dir)}
    items = [done[str(r)] for r in rows if str(r) in done]
    out = {"rows": [int(it.image_id) for it in items], "missing": [r for r in rows
                                                                   if str(r) not in done]}
    if not items:
        return {**out, "p_before": [], "p_after": [], "editor_flipped": [],
                "oracle_confirmed": None, "used": []}
    size = model_image_size(explained)
    x = torch.stack([load_image(it.original, size) for it in items])
    cf = torch.stack([load_image(it.counterfactual, size) for it in items])
    k = attribute_index(target)
    out["p_before"] = torch.sigmoid(explained(x)[:, k].float()).tolist()
    out["p_after"] = torch.sigmoid(explained(cf)[:, k].float()).tolist()
    flipped = np.array([bool(it.result.get("flipped")) for it in items])
    out["editor_flipped"] = flipped.tolist()
    used = flipped
    out["oracle_confirmed"] = None
    if oracle is not None:
        c, want = attribute_index(cue), bool(DIRECTIONS[direction])
        size_o = model_image_size(oracle)
        xo = torch.stack([load_image(it.original, size_o) for it in items])
        co = torch.stack([load_image(it.counterfactual, size_o) for it in items])
        before, after = (oracle(xo)[:, c] > 0).numpy(), (oracle(co)[:, c] > 0).numpy()
        confirmed = (after == want) & (before != want)
        out["oracle_confirmed"] = confirmed.tolist()
        used = used & confirmed
    out["used"] = used.tolist()
    return out
