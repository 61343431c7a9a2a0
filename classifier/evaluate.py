"""Evaluate a classifier checkpoint: per-attribute table and the misclassified images to explain."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchmetrics.classification import MultilabelAUROC, MultilabelStatScores
from tqdm import tqdm

from classifier.attributes import NUM_ATTRIBUTES, attribute_index, attribute_name
from classifier.dataset import (CelebHQAttrDataset, collate_readable, dataset_files,
                                report_unreadable)
from classifier.images import save_image
from classifier.models import attribute_table, load_classifier


def dataset_for(data, attr_file=None, split="test", image_size=None,
                skip_unreadable: bool = False) -> CelebHQAttrDataset:
    """A dataset from an LMDB (+ attribute file) or a dataset folder (see
    :func:`classifier.dataset.dataset_files`), without augmentation; with ``skip_unreadable``,
    :func:`predict` leaves unreadable records out and names them instead of stopping."""
    lmdb_path, attr_file = dataset_files(data, attr_file)
    return CelebHQAttrDataset(lmdb_path, attr_file, split=split, image_size=image_size,
                              augment=False, skip_unreadable=skip_unreadable)


@torch.no_grad()
def predict(model, ds, batch_size=64, device="cpu", progress=True,
            unreadable: list | None = None):
    """Logits (N, 40), labels (N, 40) and row indices of the readable records of a dataset.

    Records the dataset could not read (``skip_unreadable``) are left out: appended to
    ``unreadable`` as ``(row, reason)`` when a list is given, else named in a warning on stderr.
    """
    model = model.to(device).eval()
    logits, labels, rows, bad = [], [], [], []
    collate = collate_readable if getattr(ds, "skip_unreadable", False) else None
    for b in tqdm(DataLoader(ds, batch_size=batch_size, collate_fn=collate), desc="evaluating",
                  disable=not progress):
        bad += b.get("unreadable", [])
        if len(b["index"]) == 0:
            continue
        logits.append(model(b["img"].to(device)).float().cpu())
        labels.append(b["labels"])
        rows.append(b["index"])
    if unreadable is not None:
        unreadable += bad
    elif bad:
        print(report_unreadable(bad, "the prediction pass"), file=sys.stderr)
    if not rows:
        where = getattr(ds, "lmdb_path", "the dataset")
        raise ValueError(f"no readable image among the {len(ds)} records of {where}")
    return torch.cat(logits), torch.cat(labels), torch.cat(rows)


def evaluate_checkpoint(checkpoint, data, attr_file=None, split="test", attribute="Smiling",
                        export_misclassified=None, batch_size=64, device="cpu", progress=True):
    """Print the per-attribute table; optionally write ``{idx}_{gt}_misclassified.png`` files."""
    model = load_classifier(checkpoint)
    size = model.hparams.get("image_size") or model.hparams.get("input_dim", [3, 256, 256])[-1]
    ds = dataset_for(data, attr_file, split, image_size=size, skip_unreadable=True)
    unreadable: list = []
    logits, labels, rows = predict(model, ds, batch_size, device, progress, unreadable)
    if unreadable:
        print(report_unreadable(unreadable, f"the evaluation of {len(ds)} records"),
              file=sys.stderr)
    stats = MultilabelStatScores(num_labels=NUM_ATTRIBUTES, average=None)(logits, labels.long())
    auroc = MultilabelAUROC(num_labels=NUM_ATTRIBUTES, average=None)(logits, labels.long())
    table = attribute_table(stats, auroc)
    hi = attribute_name(attribute)
    print(f"{'attribute':<22} {'acc':>6} {'bal.acc':>8} {'AUROC':>7} {'pos':>6}")
    for name, row in table.items():
        mark = " <==" if name == hi else ""
        print(f"{name:<22} {row['accuracy']:6.3f} {row['balanced_accuracy']:8.3f} "
              f"{row['auroc']:7.3f} {row['positives']:6d}{mark}")
    written = []
    if export_misclassified:
        k = attribute_index(attribute)
        wrong = ((logits[:, k] > 0).float() != labels[:, k]).nonzero().flatten()
        out = Path(export_misclassified)
        out.mkdir(parents=True, exist_ok=True)
        for i in wrong.tolist():
            row = int(rows[i])
            path = out / f"{row}_{float(labels[i, k]):.1f}_misclassified.png"
            save_image(ds.read_image(row), path)
            written.append(path)
        print(f"wrote {len(written)} misclassified images for {hi} to {out}")
    return {"table": table, "misclassified": written,
            "unreadable": [{"row": r, "reason": why} for r, why in sorted(set(unreadable))]}


def pick_not_smiling(clf, data, n: int, device="cpu", attribute="Smiling") -> list[int]:
    """The first ``n`` rows of a dataset folder the classifier calls not ``attribute`` (the
    seed's use case: make them smile)."""
    logits, _, rows = predict(clf, dataset_for(data, split="all"), device=device, progress=False)
    return rows[logits[:, attribute_index(attribute)] <= 0].tolist()[:n]


def pick_both_directions(clf, data, n: int, device="cpu", attribute="Smiling") -> list[int]:
    """The first ``n // 2`` rows the classifier calls not ``attribute`` and the first
    ``n - n // 2`` it calls ``attribute``: the published protocol explains both directions (CD
    needs both)."""
    logits, _, rows = predict(clf, dataset_for(data, split="all"), device=device, progress=False)
    k = attribute_index(attribute)
    no, yes = rows[logits[:, k] <= 0].tolist(), rows[logits[:, k] > 0].tolist()
    return no[:n // 2] + yes[:n - n // 2]
