"""``ldvce evaluate --protocol full`` and ``ldvce evaluate --compare``: the published protocol
(:mod:`dvce.protocol`) on run folders, with toy names resolved and the table printed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import toyfaces
from classifier.dataset import read_attribute_file
from classifier.devices import resolve_device
from classifier.registry import resolve_classifier
from dvce.metrics import evaluate_run, write_metrics
from dvce.protocol.evaluate import ProtocolError, compare_table, evaluate_protocol
from dvce.protocol.nets import WeightsError
from experiments.disagreements import disagreement_figure
from fileio import read_json


def valid_attributes(train_attr_file) -> list[int] | None:
    """Attributes that vary in the training labels (all 40 on CelebA-HQ; the modelled ones on
    the toy world, whose other 29 are constant and which an oracle cannot have learned)."""
    if train_attr_file is None:
        return None
    _, _, labels = read_attribute_file(train_attr_file)
    varies = (labels != labels[:1]).any(0)
    return [int(i) for i in np.flatnonzero(varies)]


def run_protocol(run, *, fid_features="oracle", face_model="oracle", oracle=None,
                 classifier=None, train_attr_file=None, attribute=None, masks=None, seed=0,
                 device="cpu", cache=True) -> dict:
    """The existing metrics (flip rate, L1/L2/SSIM, localisation with ``masks``) and the
    protocol's, merged; writes ``RUN/metrics.json`` and returns it."""
    loaded_masks = None
    if masks:
        loaded_masks = toyfaces.load_masks(masks)
    base = evaluate_run(run, masks=loaded_masks, attribute=attribute)
    proto = evaluate_protocol(run, fid_features=fid_features, face_model=face_model,
                              oracle=oracle, classifier=classifier,
                              train_attr_file=train_attr_file, attribute=attribute,
                              valid_attributes=valid_attributes(train_attr_file), seed=seed,
                              device=device, resolve=resolve_classifier, cache=cache)
    metrics = {**base, **proto}
    write_metrics(run, metrics)
    disagreement_figure(run, metrics)  # none drawn here: removes one the metrics no longer back
    return metrics


def format_protocol(m: dict) -> str:
    """One line per protocol metric: value, n and the network."""
    lines = []
    for k in ("fr", "fid", "sfid", "fva", "fs", "mnac", "cd", "cout"):
        e = m.get(k) or {}
        v = e.get("value")
        n = e.get("n", e.get("n_counterfactual", e.get("n_half")))
        extra = f" (with the query: {e['with_query']:.3f})" if k == "mnac" and "with_query" in e else ""
        text = "not computed: " + e.get("reason", "") if v is None else f"{v:.4f}{extra}"
        lines.append(f"{k:<5} {text:<32} n={n}  {e.get('network', '')}")
    return "\n".join(lines)


def run_name(run) -> str:
    s = read_json(Path(run) / "summary.json") or {}
    method = s.get("method")
    return f"{Path(run).name}" + (f" ({method})" if method and method not in Path(run).name else "")


def compare_runs(runs) -> str:
    """The comparison table of run folders that have protocol metrics."""
    table = {}
    for r in runs:
        m = read_json(Path(r) / "metrics.json")
        if not isinstance(m, dict) or m.get("protocol") != "full":
            raise SystemExit(f"ldvce evaluate --compare: {r} has no protocol metrics; run "
                             f"`ldvce evaluate {r} --protocol full …` first")
        table[run_name(r)] = m
    return compare_table(table)


def evaluate_command(run=None, *, compare=None, fid_features="oracle", face_model="oracle",
                     oracle=None, classifier=None, train_attr_file=None, attribute=None,
                     masks=None, sfid_seed: int = 0, device: str = "auto",
                     no_cache: bool = False) -> dict | None:
    """What ``ldvce evaluate --protocol full`` / ``--compare`` does (keyword options as there)."""
    if compare:
        print(compare_runs(compare))
        return None
    if not run:
        raise SystemExit("ldvce evaluate: give a run folder (or --compare RUN_A RUN_B …)")
    try:
        m = run_protocol(run, fid_features=fid_features, face_model=face_model,
                         oracle=oracle, classifier=classifier,
                         train_attr_file=train_attr_file, attribute=attribute, masks=masks,
                         seed=sfid_seed, device=resolve_device(device), cache=not no_cache)
    except (WeightsError, ProtocolError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"ldvce evaluate: {e}")
    print(format_protocol(m))
    print(f"wrote {Path(run) / 'metrics.json'} ({m['seconds']:.1f} s)")
    return m
