"""The published protocol over a run folder: FR, FID, sFID, FVA, FS, MNAC, CD and COUT.

:func:`evaluate_protocol` reads a run through :mod:`dvce.runfolder`, asks the networks of
:mod:`dvce.protocol.features` for what it needs (cached per image content in ``RUN/.features``),
and computes the metrics with :mod:`dvce.protocol.metrics`. :func:`compare_table` lays runs out
beside the published numbers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from classifier.attributes import attribute_index, attribute_name
from classifier.dataset import read_attribute_file, split_range
from classifier.images import load_image
from dvce.protocol import metrics as M
from dvce.protocol.features import (FeatureStore, Network, _load_project, content_hash,
                                    face_network, fid_network, file_identity, oracle_network,
                                    read_rgb)
from dvce.runfolder import RunItem, list_items

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


@dataclass
class _Pairs:
    """The (original, counterfactual) pairs of a run folder as the metrics read them."""
    items: list[RunItem]
    originals: list[Path]
    counterfactuals: list[Path]
    original_hashes: list[str]        # content hashes: the feature cache's keys
    counterfactual_hashes: list[str]
    success: np.ndarray               # per pair: the run flipped the decision (result.json)
    ok: np.ndarray                    # indices of the successful pairs

    def successful(self, hashes: list[str], paths: list[Path]) -> tuple[list[str], list[Path]]:
        """``hashes`` and ``paths`` (one side's) restricted to the successful pairs."""
        return [hashes[i] for i in self.ok], [paths[i] for i in self.ok]


def _read_pairs(items: list[RunItem]) -> _Pairs:
    """The pairs of ``items``; a missing image file is a :class:`ProtocolError`."""
    success = np.array([bool(it.result.get("flipped")) for it in items])
    opaths = [it.original for it in items]
    cpaths = [it.counterfactual for it in items]
    for p in opaths + cpaths:
        if not Path(p).is_file():
            raise ProtocolError(f"{p} is missing: the run folder is incomplete")
    oh, ch = [content_hash(p) for p in opaths], [content_hash(p) for p in cpaths]
    return _Pairs(items, opaths, cpaths, oh, ch, success, np.flatnonzero(success))


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
    t0 = time.perf_counter()
    items = list_items(run_dir)
    if not items:
        raise ProtocolError(f"no finished counterfactuals (*/result.json) in {run_dir}")
    attribute = attribute_name(attribute or items[0].result.get("attribute", "Smiling"))
    query = attribute_index(attribute)
    store = FeatureStore(Path(run_dir) / FEATURES_DIR if cache else None)
    kw = dict(oracle=oracle, resolve=resolve, batch_size=batch_size, device=device)
    pairs = _read_pairs(items)
    out: dict = {"protocol": "full", "attribute": attribute, "n_pairs": len(items),
                 "n_successful": int(len(pairs.ok))}
    computed = {}
    fr = _flip_rate(items)
    if fr is not None:
        out["fr"] = fr
    out["fid"], out["sfid"] = _fid_sfid(store, fid_network(fid_features, **kw), pairs, seed,
                                        computed)
    out["fva"], out["fs"] = _fva_fs(store, face_network(face_model, query=query, **kw), pairs,
                                    computed)
    if oracle is None:
        raise ProtocolError("MNAC and CD need an attribute oracle: pass --oracle (steex:PATH, a "
                            "classifier checkpoint or a toy name)")
    onet = oracle_network(oracle, resolve=resolve, batch_size=batch_size, device=device)
    out["mnac"], out["cd"] = _mnac_cd(store, onet, pairs, query, valid_attributes,
                                      train_attr_file, computed)
    # COUT: every pair, the explained classifier.
    clf_spec = classifier or items[0].result.get("classifier")
    if not clf_spec:
        out["cout"] = {"value": None, "reason": "no classifier: pass --classifier"}
    else:
        out["cout"] = _cout(items, clf_spec, query, pairs.original_hashes,
                            pairs.counterfactual_hashes, store, cout_steps, batch_size, device,
                            resolve)
    out["computed"] = computed
    out["seconds"] = time.perf_counter() - t0
    return out


def _flip_rate(items: list[RunItem]) -> dict | None:
    """FR: the explained classifier's decision on each counterfactual (result.json); None when
    a result lacks ``logit_after`` or ``target``."""
    la = [it.result.get("logit_after") for it in items]
    tg = [it.result.get("target") for it in items]
    if not all(v is not None for v in la + tg):
        return None
    return {"value": M.flip_rate(la, tg), "n": len(items),
            "network": items[0].result.get("classifier", "the run's classifier"),
            "kind": "project"}


def _fid_sfid(store: FeatureStore, fnet: Network, pairs: _Pairs, seed: int,
              computed: dict) -> tuple[dict, dict]:
    """FID and sFID: all originals vs the successful counterfactuals."""
    fo, computed["fid_originals"] = _rows(store, fnet, pairs.original_hashes, pairs.originals)
    fc, computed["fid_counterfactuals"] = _rows(store, fnet, pairs.counterfactual_hashes,
                                                pairs.counterfactuals)
    ok = pairs.ok
    fid = {"value": M.fid(fo, fc[ok]), "n_real": len(fo), "n_counterfactual": int(len(ok)),
           "network": fnet.describe, "kind": fnet.kind, "dim": int(fo.shape[1])}
    s = M.sfid(fo, fc, pairs.success, seed=seed)
    return fid, {**s, "network": fnet.describe, "kind": fnet.kind}


def _face_embeddings(store: FeatureStore, face: Network, pairs: _Pairs,
                     computed: dict) -> tuple[np.ndarray, np.ndarray]:
    """The face model's embeddings of the successful pairs' originals and counterfactuals
    (pairwise models embed each pair at once and are cached per pair)."""
    ok, opaths, cpaths = pairs.ok, pairs.originals, pairs.counterfactuals
    if face.pairwise:
        keys = [f"{pairs.original_hashes[i]}:{pairs.counterfactual_hashes[i]}" for i in ok]
        rows, computed["face_pairs"] = store.rows(
            face.key, keys, lambda idx: face([read_rgb(opaths[ok[i]]) for i in idx]
                                             + [read_rgb(cpaths[ok[i]]) for i in idx]))
        d = rows.shape[1] // 2 if len(rows) else 0
        return rows[:, :d], rows[:, d:]
    eo, computed["face_originals"] = _rows(store, face,
                                           *pairs.successful(pairs.original_hashes, opaths))
    ec, computed["face_counterfactuals"] = _rows(
        store, face, *pairs.successful(pairs.counterfactual_hashes, cpaths))
    return eo, ec


def _fva_fs(store: FeatureStore, face: Network, pairs: _Pairs,
            computed: dict) -> tuple[dict, dict]:
    """FVA and FS: the face model on the successful pairs."""
    metric, thr = face.rule
    eo, ec = _face_embeddings(store, face, pairs, computed)
    v = M.fva_fs(eo, ec, metric, thr)
    fva = {"value": v["fva"], "n": v["n"], "rule": v.get("rule"), "network": face.describe,
           "kind": face.kind}
    fs = {"value": v["fs"], "n": v["n"], "network": face.describe, "kind": face.kind}
    if "mean_distance" in v:
        fva["mean_distance"] = v["mean_distance"]
    if face.kind == "dlib":
        fva["faces_not_found"] = face.extra["faces"].not_found
    return fva, fs


def _mnac_cd(store: FeatureStore, onet: Network, pairs: _Pairs, query: int, valid_attributes,
             train_attr_file, computed: dict) -> tuple[dict, dict]:
    """MNAC and CD: the oracle on the successful pairs (CD only with ``train_attr_file``)."""
    po, computed["oracle_originals"] = _rows(
        store, onet, *pairs.successful(pairs.original_hashes, pairs.originals))
    pc, computed["oracle_counterfactuals"] = _rows(
        store, onet, *pairs.successful(pairs.counterfactual_hashes, pairs.counterfactuals))
    valid = None if valid_attributes is None else list(valid_attributes)
    m = M.mnac(po, pc, query, valid)
    mnac = {**m, "network": onet.describe, "kind": onet.kind,
            "attributes": "all 40" if valid is None else len(valid)}
    if train_attr_file is None:
        return mnac, {"value": None, "reason": "needs --train-attr-file (the training split's "
                                               "CelebAMask-HQ-attribute-anno.txt)"}
    labels, split = _train_labels(train_attr_file)
    corrs = M.label_correlations(labels, query)
    if valid is not None:  # attributes outside the oracle's world count nowhere
        mask = np.zeros(len(corrs), bool)
        mask[valid] = True
        corrs = np.where(mask, corrs, 0.0)
    cd = M.correlation_difference(po, pc, query, corrs)
    return mnac, {"value": cd["value"], "n": cd["n"], "network": onet.describe,
                  "kind": onet.kind, "train_attr_file": str(train_attr_file),
                  "train_split": split, "query_delta_constant": cd["query_delta_constant"]}


def _cout(items, clf_spec, query, oh, ch, store, steps, batch_size, device, resolve) -> dict:
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
