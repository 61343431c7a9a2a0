"""Counterfactual quality of a sampler on unseen toy faces, as a new user measures it.

What ``ldvce generate`` + ``ldvce evaluate --oracle toy_oracle --masks DATA`` do, in one call:
render an unseen toy world of ``seed`` (cached), take the first ``n`` faces the classifier calls
not smiling, write their counterfactuals into a run folder with the sampler and options given
(its defaults otherwise) and score it with the independent oracle and the ground-truth masks.

    python benchmarks/sampler_eval.py --classifier toy_resnet --seed 7272 --n 48 \\
        --method adaptive [--options '{"renoise_t": 0}'] [--out runs/eval] [--json r.json]

The returned (and printed) row: flip rate, oracle agreement (share of counterfactuals whose
Smiling decision the oracle sees flip), localisation, MNAC, L1, seconds per image, and the
sampler's per-face choices (attempts, noise levels) as counts. The run folder also gets
``oracle_disagreements.png``, the flips the oracle does not confirm. The Clever-Hans pair is
``ldvce demo --spurious --data-seed S --n N`` (``--classifier clever_hans``);
``--classifier clever_hans_hat_reader`` runs it with the control in place of the biased
classifier: a Smiling decision that reads the hat and nothing else
(:func:`experiments.clever_hans.data.hat_reader`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

import toyfaces
from classifier.attributes import attribute_index
from classifier.evaluate import pick_not_smiling
from classifier.models import load_classifier
from classifier.registry import resolve_classifier
from dvce import runner
from dvce.ldm import load_ldm, torch_dtype
from dvce.metrics import evaluate_run, write_metrics
from dvce.samplers import DEFAULT_METHOD, Problem
from experiments.clever_hans.data import hat_reader
from experiments.clever_hans.run import run_experiment
from experiments.disagreements import disagreement_figure
from toyfaces.world import toy_classifier, toy_data

WORLD_SIZE = 400  # faces rendered per unseen seed; about half are not smiling


def unseen_world(seed: int, size: int = WORLD_SIZE) -> Path:
    """A cached toyfaces folder of ``size`` faces of ``seed`` (render once)."""
    return toy_data((f"toy-eval-{size}-{seed}", size, seed), progress=False)


def evaluate_sampler(classifier: str = "toy_resnet", seed: int = 7272, n: int = 48,
                     method: str | None = None, options: dict | None = None,
                     out: str | Path = "runs/eval", batch_size: int = 16,
                     progress: bool = False, dtype: str = "fp32") -> dict:
    """Generate and score ``n`` counterfactuals (target: smiling) of the unseen ``seed`` world
    with ``classifier`` (a toy name or a checkpoint) and ``method`` (default: the default
    sampler) with the LDM and the classifier in ``dtype`` (fp32, bf16: ``ldvce generate
    --dtype``); returns the metrics row (``metrics.json`` of the run folder has every image;
    the oracle and the masks score the written images in float32)."""
    method = method or DEFAULT_METHOD
    folder = unseen_world(seed)
    clf = load_classifier(resolve_classifier(classifier)).requires_grad_(False)
    rows = pick_not_smiling(clf, folder, n)
    precision = torch_dtype(dtype)
    clf = clf.to(precision)
    tag = "-".join([Path(str(classifier)).stem, str(seed), method]
                   + ([dtype] if dtype != "fp32" else [])
                   + [f"{k}={v}" for k, v in sorted((options or {}).items())])
    run_dir = Path(out) / tag.replace(" ", "").replace("/", "_")
    shutil.rmtree(run_dir, ignore_errors=True)
    ldm = load_ldm("toy", dtype=precision)
    lmdb, attr = toyfaces.paths(folder)
    items = runner.lmdb_items(lmdb, attr, rows, ldm.image_size)
    summary = runner.run(items, Problem(ldm, clf, attribute_index("Smiling")), run_dir,
                         method=method, target=1, batch_size=batch_size,
                         options=dict(options or {}),
                         settings={"attribute": "Smiling", "classifier": str(classifier)},
                         progress=progress)
    oracle = load_classifier(toy_classifier("toy_oracle")).requires_grad_(False)
    with torch.no_grad():
        m = evaluate_run(run_dir, oracle=oracle, masks=toyfaces.load_masks(folder),
                         attribute="Smiling",
                         oracle_attributes=[attribute_index(a) for a in toyfaces.MODELLED])
    write_metrics(run_dir, m)
    disagreement_figure(run_dir, m)  # the flips the oracle does not confirm, to look at
    return {"classifier": str(classifier), "seed": seed, "n": m["n"], "method": method,
            "dtype": dtype,
            "options": dict(options or {}), "flip": m["flip_rate"],
            "agreement": m["oracle_flipped"], "localization": m["localization"],
            "mnac": m["mnac"], "l1": m["l1"], "seconds_per_image": summary["seconds_per_image"],
            "oracle_changed": m.get("oracle_changed"), "sampler_info": m.get("sampler_info"),
            "run": str(run_dir)}


def evaluate_clever_hans(seed: int = 7272, n: int = 24, method: str | None = None,
                         options: dict | None = None, out: str | Path = "runs/eval",
                         num_cfs: int = 1, biased: str | Path | None = None) -> dict:
    """The Clever-Hans pair (``ldvce demo --spurious --data-seed SEED --n N`` without CRP and
    figures): per classifier (biased, clean) flip rate, the share of faces whose change per
    pixel is larger on the hat than on the mouth, the oracle's hat and smile flip rates, L1 and
    seconds per image; with ``num_cfs`` > 1 also the share of faces of which at least one
    counterfactual changes the hat most, and the set's diversity. ``biased``: a checkpoint in
    place of the biased classifier (e.g. :func:`~experiments.clever_hans.data.hat_reader`)."""
    tag = "-".join(["cleverhans" + ("" if biased is None else f"_{Path(biased).stem}"), str(seed),
                    method or "default"]
                   + [f"{k}={v}" for k, v in sorted((options or {}).items())]
                   + ([f"k{num_cfs}"] if num_cfs > 1 else []))
    s = run_experiment(Path(out) / tag.replace(" ", ""), n_images=n, data_seed=seed,
                       method=method, options=options, num_cfs=num_cfs, crp=False,
                       figure=False, biased=biased)["spurious"]
    keys = ("flip_rate", "hat_change_rate", "mouth_change_rate", "oracle_hat_flip_rate",
            "oracle_smile_flip_rate", "l1", "seconds_per_image", "any_hat_change_rate",
            "two_or_more_rate", "mean_pairwise_iou", "intervention_hat_gain",
            "intervention_smile_gain")
    return {"seed": seed, "n": s["images"], "method": s["method"], "options": dict(options or {}),
            "num_cfs": num_cfs, "biased_checkpoint": None if biased is None else str(biased),
            **{role: {k: s[role][k] for k in keys if k in s[role]} for role in ("biased", "clean")}}


def format_clever_hans(r: dict) -> str:
    def several(v):
        if "any_hat_change_rate" not in v:
            return ""
        return (f"  any CF hat-most {v['any_hat_change_rate']:.3f}  ≥2 flipping "
                f"{v['two_or_more_rate']:.3f}  IoU {v['mean_pairwise_iou']:.3f}")
    return "\n".join(
        f"{role:<7}{r['seed']:>6}{r['n']:>4}  flip {v['flip_rate']:.3f}  hat-most "
        f"{v['hat_change_rate']:.3f}  oracle hat {v['oracle_hat_flip_rate']:.3f}  oracle smile "
        f"{v['oracle_smile_flip_rate']:.3f}  L1 {v['l1']:.4f}  {v['seconds_per_image']:.2f} s/img"
        + (f"  answer key: logit +hat {v['intervention_hat_gain']:+.1f} +smile "
           f"{v['intervention_smile_gain']:+.1f}" if "intervention_smile_gain" in v else "")
        + several(v) for role, v in ((k, r[k]) for k in ("biased", "clean")))


def format_row(r: dict) -> str:
    info = r.get("sampler_info") or {}
    extra = "  ".join(f"{k} {v}" for k, v in info.items() if k in ("attempts", "t_start", "robust"))
    return (f"{r['classifier']:<14}{r['seed']:>6}{r['n']:>4}  flip {r['flip']:.3f}  agree "
            f"{r['agreement']:.3f}  loc {r['localization']:.3f}  MNAC {r['mnac']:.3f}  L1 "
            f"{r['l1']:.4f}  {r['seconds_per_image']:.2f} s/img  {extra}")


def markdown_table(rows: list[dict]) -> str:
    """A markdown table of result rows (both kinds: a classifier's, the Clever-Hans pair's)."""
    out = ["| classifier | seed | n | method, options | flip | oracle agreement | localisation "
           "| MNAC | L1 | hat-most (biased / clean) | oracle sees hat | s/img | attempts | noise levels |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        how = r["method"] + (" " + json.dumps(r["options"]) if r["options"] else "")
        if "biased" in r:
            b, c = r["biased"], r["clean"]
            role = Path(r["biased_checkpoint"]).stem if r.get("biased_checkpoint") else "biased"
            out.append(f"| Clever Hans {role} / clean | {r['seed']} | {r['n']} | {how} | "
                       f"{b['flip_rate']:.3f} / {c['flip_rate']:.3f} | | | | {b['l1']:.4f} / "
                       f"{c['l1']:.4f} | {b['hat_change_rate']:.3f} / {c['hat_change_rate']:.3f} | "
                       f"{b['oracle_hat_flip_rate']:.3f} | {b['seconds_per_image']:.2f} / "
                       f"{c['seconds_per_image']:.2f} | | |")
            continue
        info = r.get("sampler_info") or {}
        fmt = lambda d: ", ".join(f"{k}: {v}" for k, v in d.items()) if d else ""  # noqa: E731
        out.append(f"| {r['classifier']} | {r['seed']} | {r['n']} | {how} | {r['flip']:.3f} | "
                   f"{r['agreement']:.3f} | {r['localization']:.3f} | {r['mnac']:.3f} | "
                   f"{r['l1']:.4f} | | | {r['seconds_per_image']:.2f} | "
                   f"{fmt(info.get('attempts'))} | {fmt(info.get('t_start'))} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", default="toy_resnet",
                   help="a toy classifier name, a checkpoint, clever_hans for the pair, or "
                   "clever_hans_hat_reader for the pair with the hat-reading control as biased")
    p.add_argument("--seed", type=int, default=7272)
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--method", default=None)
    p.add_argument("--options", default="{}", help="sampler options as JSON")
    p.add_argument("--num-cfs", type=int, default=1,
                   help="counterfactuals per face (ldvce generate --num-cfs)")
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="precision of the LDM and the classifier (ldvce generate --dtype)")
    p.add_argument("--json", default=None, help="append the row to this JSON-lines file")
    p.add_argument("--table", default=None,
                   help="instead: print the rows of this JSON-lines file as a markdown table")
    a = p.parse_args(argv)
    if a.table:
        with open(a.table) as f:
            print(markdown_table([json.loads(line) for line in f if line.strip()]))
        return 0
    torch.set_num_threads(1)
    if a.classifier in ("clever_hans", "clever_hans_hat_reader"):
        r = evaluate_clever_hans(a.seed, a.n, a.method, json.loads(a.options), a.out, a.num_cfs,
                                 hat_reader() if a.classifier.endswith("hat_reader") else None)
        print(format_clever_hans(r), flush=True)
    else:
        r = evaluate_sampler(a.classifier, a.seed, a.n, a.method, json.loads(a.options), a.out,
                             a.batch_size, dtype=a.dtype)
        print(format_row(r), flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
