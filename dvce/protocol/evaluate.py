"""The published protocol over a run folder: FR, FID, sFID, FVA, FS, MNAC, CD and COUT.

:func:`evaluate_protocol` reads a run through :mod:`dvce.runfolder`, asks the networks of
:mod:`dvce.protocol.features` for what it needs (cached per image content in ``RUN/.features``),
and computes the metrics with :mod:`dvce.protocol.metrics`. :func:`compare_table` lays runs out
beside the published numbers.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from dvce.protocol import metrics as M
from dvce.protocol.features import (FeatureStore, Network, content_hash, face_network,
                                    fid_network, oracle_network, read_rgb)

FEATURES_DIR = ".features"

# The published table (CelebA-HQ 256, "Smile", oracle-based protocol); FVA and FR in percent.
PUBLISHED = {  # as printed in the papers' tables
    "DiME": dict(fid="18.1", sfid="27.7", fva="96.7", fs="0.67", mnac="2.63", cd="1.82",
                 cout="0.65", fr="97.0"),
    "ACE ℓ1": dict(fid="3.21", sfid="20.2", fva="100", fs="0.89", mnac="1.56", cd="2.61",
                   cout="0.55", fr="95.0"),
    "LDCE-txt": dict(fid="13.6", sfid="25.8", fva="99.1", fs="0.76", mnac="2.44", cd="1.68",
                     cout="0.34", fr=None),
    "RCSB": dict(fid="3.04", sfid="20.0", fva="100", fs="0.93", mnac="1.22", cd="3.22",
                 cout="0.83", fr="98.9"),
    "MaskDiME": dict(fid="2.51", sfid="18.1", fva="100", fs="0.94", mnac="1.41", cd="2.67",
                     cout="0.69", fr="99.4"),
}
# What the published numbers were measured with (the network kind each metric used).
PUBLISHED_NETWORKS = {
    "data": "CelebA-HQ 256, Smiling",
    "fid": ("inception", "Inception-v3 pool3 (pytorch-fid)"),
    "sfid": ("inception", "Inception-v3 pool3 (pytorch-fid)"),
    "fva": ("vggface2", "VGGFace2 ResNet-50, cosine > 0.5"),
    "fs": ("vggface2", "VGGFace2 ResNet-50 cosine"),
    "mnac": ("steex", "STEEX CelebA-HQ oracle (VGGFace2 ResNet-50 + 40-way head)"),
    "cd": ("steex", "STEEX CelebA-HQ oracle, CelebA train-split correlations"),
    "cout": ("densenet", "DecisionDensenet CelebA-HQ classifier"),
    "fr": ("densenet", "DecisionDensenet CelebA-HQ classifier"),
}
COLUMNS = (("fid", "FID↓"), ("sfid", "sFID↓"), ("fva", "FVA↑"), ("fs", "FS↑"), ("mnac", "MNAC↓"),
           ("cd", "CD↓"), ("cout", "COUT↑"), ("fr", "FR↑"))


class ProtocolError(ValueError):
    """A run folder or an input cannot be evaluated (the message names it)."""


def _train_labels(train_attr_file):
    """(N, 40) labels of the training split: rows of ``CelebA-HQ-to-CelebA-mapping.txt`` whose
    CelebA ``list_eval_partition.csv`` partition is 0 when both files sit beside the attribute
    file (``compute_CD.py``), else the project's split by row (train = first 80 %)."""
    from classifier.dataset import read_attribute_file, split_range
    p = Path(train_attr_file)
    _, _, labels = read_attribute_file(p)
    mapping, partition = p.parent / "CelebA-HQ-to-CelebA-mapping.txt", p.parent / "list_eval_partition.csv"
    if mapping.is_file() and partition.is_file():
        parts = {}
        for line in partition.read_text().splitlines()[1:]:
            f, _, v = line.strip().partition(",")
            if v:
                parts[f] = int(v)
        rows = []
        for line in mapping.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3:
                rows.append(parts.get(fields[2]) == 0)
        keep = np.zeros(len(labels), dtype=bool)
        keep[:len(rows)] = rows[:len(labels)]
        return labels[keep], f"CelebA partition 0 via {mapping.name} ({int(keep.sum())} rows)"
    rows = split_range("train", len(labels))
    return labels[rows.start:rows.stop], f"rows {rows.start}-{rows.stop - 1} (train split by row)"


def _rows(store: FeatureStore, net: Network, keys, paths):
    def compute(idx):
        return net([read_rgb(paths[i]) for i in idx])
    return store.rows(net.key, keys, compute)


@torch.no_grad()
def evaluate_protocol(run_dir, *, fid_features: str = "oracle", face_model: str = "oracle",
                      oracle: str | None = None, classifier: str | None = None,
                      train_attr_file=None, attribute: str | None = None, valid_attributes=None,
                      seed: int = 0, cout_steps: int = 50, batch_size: int = 32, device="cpu",
                      resolve=None, cache: bool = True) -> dict:
    """The protocol's metrics of a run folder (writes only the feature cache).

    Parameters
    ----------
    fid_features, face_model : network specs (:data:`~dvce.protocol.features.FID_FEATURES`,
        :data:`~dvce.protocol.features.FACE_MODELS`); ``oracle`` uses ``oracle``'s checkpoint.
    oracle : attribute oracle spec for MNAC/CD (``steex:PATH`` or a classifier checkpoint).
    classifier : the explained classifier for COUT (default: the run's ``classifier``).
    train_attr_file : attribute file of the training data (CD); without it CD is not computed.
    valid_attributes : indices MNAC/CD count (default: all 40).
    resolve : maps a classifier name (e.g. a toy name) to a checkpoint path.
    """
    from classifier.attributes import attribute_index, attribute_name
    from dvce.runfolder import list_items
    t0 = time.perf_counter()
    items = list_items(run_dir)
    if not items:
        raise ProtocolError(f"no finished counterfactuals (*/result.json) in {run_dir}")
    attribute = attribute_name(attribute or items[0].result.get("attribute", "Smiling"))
    query = attribute_index(attribute)
    store = FeatureStore(Path(run_dir) / FEATURES_DIR if cache else None)
    kw = dict(oracle=oracle, resolve=resolve, batch_size=batch_size, device=device)
    success = np.array([bool(it.result.get("flipped")) for it in items])
    opaths = [it.original for it in items]
    cpaths = [it.counterfactual for it in items]
    for p in opaths + cpaths:
        if not Path(p).is_file():
            raise ProtocolError(f"{p} is missing: the run folder is incomplete")
    oh, ch = [content_hash(p) for p in opaths], [content_hash(p) for p in cpaths]
    ok = np.flatnonzero(success)
    out: dict = {"protocol": "full", "attribute": attribute, "n_pairs": len(items),
                 "n_successful": int(len(ok))}
    computed = {}

    # FR: the explained classifier's decision on each counterfactual (result.json).
    la = [it.result.get("logit_after") for it in items]
    tg = [it.result.get("target") for it in items]
    if all(v is not None for v in la + tg):
        out["fr"] = {"value": M.flip_rate(la, tg), "n": len(items),
                     "network": items[0].result.get("classifier", "the run's classifier"),
                     "kind": "project"}

    # FID / sFID: all originals vs successful counterfactuals.
    fnet = fid_network(fid_features, **kw)
    fo, computed["fid_originals"] = _rows(store, fnet, oh, opaths)
    fc, computed["fid_counterfactuals"] = _rows(store, fnet, ch, cpaths)
    out["fid"] = {"value": M.fid(fo, fc[ok]), "n_real": len(fo), "n_counterfactual": int(len(ok)),
                  "network": fnet.describe, "kind": fnet.kind, "dim": int(fo.shape[1])}
    s = M.sfid(fo, fc, success, seed=seed)
    out["sfid"] = {**s, "network": fnet.describe, "kind": fnet.kind}

    # FVA / FS: successful pairs.
    face = face_network(face_model, query=query, **kw)
    metric, thr = face.rule
    if face.pairwise:
        keys = [f"{oh[i]}:{ch[i]}" for i in ok]
        rows, computed["face_pairs"] = store.rows(
            face.key, keys, lambda idx: face([read_rgb(opaths[ok[i]]) for i in idx]
                                             + [read_rgb(cpaths[ok[i]]) for i in idx]))
        d = rows.shape[1] // 2 if len(rows) else 0
        eo, ec = rows[:, :d], rows[:, d:]
    else:
        eo, computed["face_originals"] = _rows(store, face, [oh[i] for i in ok],
                                               [opaths[i] for i in ok])
        ec, computed["face_counterfactuals"] = _rows(store, face, [ch[i] for i in ok],
                                                     [cpaths[i] for i in ok])
    v = M.fva_fs(eo, ec, metric, thr)
    out["fva"] = {"value": v["fva"], "n": v["n"], "rule": v.get("rule"), "network": face.describe,
                  "kind": face.kind}
    out["fs"] = {"value": v["fs"], "n": v["n"], "network": face.describe, "kind": face.kind}
    if "mean_distance" in v:
        out["fva"]["mean_distance"] = v["mean_distance"]
    if face.kind == "dlib":
        out["fva"]["faces_not_found"] = face.extra["faces"].not_found

    # MNAC / CD: the oracle on successful pairs.
    if oracle is None:
        raise ProtocolError("MNAC and CD need an attribute oracle: pass --oracle (steex:PATH, a "
                            "classifier checkpoint or a toy name)")
    onet = oracle_network(oracle, resolve=resolve, batch_size=batch_size, device=device)
    po, computed["oracle_originals"] = _rows(store, onet, [oh[i] for i in ok], [opaths[i] for i in ok])
    pc, computed["oracle_counterfactuals"] = _rows(store, onet, [ch[i] for i in ok],
                                                   [cpaths[i] for i in ok])
    valid = None if valid_attributes is None else list(valid_attributes)
    m = M.mnac(po, pc, query, valid)
    out["mnac"] = {**m, "network": onet.describe, "kind": onet.kind,
                   "attributes": "all 40" if valid is None else len(valid)}
    if train_attr_file is not None:
        labels, split = _train_labels(train_attr_file)
        corrs = M.label_correlations(labels, query)
        if valid is not None:  # attributes outside the oracle's world count nowhere
            mask = np.zeros(len(corrs), bool)
            mask[valid] = True
            corrs = np.where(mask, corrs, 0.0)
        cd = M.correlation_difference(po, pc, query, corrs)
        out["cd"] = {"value": cd["value"], "n": cd["n"], "network": onet.describe,
                     "kind": onet.kind, "train_attr_file": str(train_attr_file),
                     "train_split": split, "query_delta_constant": cd["query_delta_constant"]}
    else:
        out["cd"] = {"value": None, "reason": "needs --train-attr-file (the training split's "
                                              "CelebAMask-HQ-attribute-anno.txt)"}

    # COUT: every pair, the explained classifier.
    clf_spec = classifier or items[0].result.get("classifier")
    if not clf_spec:
        out["cout"] = {"value": None, "reason": "no classifier: pass --classifier"}
    else:
        out["cout"] = _cout(items, clf_spec, query, oh, ch, store, cout_steps, batch_size, device,
                            resolve)
    out["computed"] = computed
    out["seconds"] = time.perf_counter() - t0
    return out


def _cout(items, clf_spec, query, oh, ch, store, steps, batch_size, device, resolve) -> dict:
    from classifier.images import load_image
    from dvce.protocol.features import _load_project, file_identity
    model, path = _load_project(clf_spec, resolve, device)
    key = f"cout|{steps}|{query}|{file_identity(path)}"

    def logit_fn(x):
        return model(x.to(device))[:, query].cpu()

    def compute(idx):
        vals = []
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            load = lambda p: load_image(p, None)  # noqa: E731
            x = torch.stack([load(items[i].original) for i in part])
            cf = torch.stack([load(items[i].counterfactual) for i in part])
            vals.append(M.cout(logit_fn, x, cf, steps)["per_pair"])
        return np.concatenate(vals)[:, None]
    rows, n_new = store.rows(key, [f"{o}:{c}" for o, c in zip(oh, ch)], compute)
    return {"value": float(rows[:, 0].mean()), "n": len(rows), "steps": steps,
            "network": f"{model.architecture} ({clf_spec})", "kind": "project", "computed": n_new}


# ------------------------------------------------------------------------------ comparison
def _cell(metrics: dict, key: str):
    v = metrics.get(key)
    v = v.get("value") if isinstance(v, dict) else None
    if v is None:
        return None
    return 100 * v if key in ("fva", "fr") else v


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}" if abs(v) >= 1 else f"{v:.2f}"


def compare_table(runs: dict[str, dict]) -> str:
    """The published table's layout (markdown) with ``runs`` (name → metrics.json) as rows
    below the published methods, and per run the metrics whose networks differ from the
    published ones."""
    head = "| method | " + " | ".join(h for _, h in COLUMNS) + " |"
    lines = [head, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in PUBLISHED.items():
        lines.append(f"| {name} (published) | " + " | ".join(row[k] or "–" for k, _ in COLUMNS)
                     + " |")
    for name, m in runs.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(_cell(m, k)) for k, _ in COLUMNS) + " |")
    lines.append("")
    lines.append(f"Published: {PUBLISHED_NETWORKS['data']}; FVA and FR in %.")
    previous = None
    for name, m in runs.items():
        diffs = []
        for k, _ in COLUMNS:
            entry = m.get(k)
            if not isinstance(entry, dict) or entry.get("value") is None:
                diffs.append(f"{k}: not computed")
                continue
            kind, published = PUBLISHED_NETWORKS[k]
            if entry.get("kind") != kind:
                diffs.append(f"{k}: {entry.get('network')} (published: {published})")
        head = f"{name}: attribute {m.get('attribute')}, {m.get('n_pairs')} pairs; "
        if previous is not None and diffs == previous[1]:
            lines.append(head + f"the same networks as {previous[0]}.")
        else:
            lines.append(head + ("networks differ from the published ones —" if diffs else
                                 "same network kinds as published."))
            lines += [f"  - {d}" for d in diffs]
        previous = (name, diffs)
    return "\n".join(lines)
