"""``ldvce bench generate --protocol full``: the seed-faithful configuration and the default
sampler written as run folders on the same unseen toy faces (both directions) and evaluated
with the published protocol (toy-oracle networks)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import toyfaces
from benchmarks.common import BATCH_SIZE, SEED_FAITHFUL, sampler_configs, toy_setup
from classifier.attributes import attribute_index
from classifier.evaluate import pick_both_directions
from dvce import runner
from dvce.samplers import DEFAULT_METHOD, Problem
from experiments.protocol import compare_runs, run_protocol
from toyfaces.world import TRAIN_DATA, toy_data


def bench_protocol_toy(n: int = 32, device="cpu", out="runs/bench-protocol") -> dict:
    """Seed-faithful vs the default method, each written as a run folder (``OUT/seed``,
    ``OUT/<default method>``) on the same unseen toy faces (both directions, target = the
    other decision) and evaluated with the full published protocol; the toy oracle stands in
    for the Inception features, the face model and the CelebA-HQ oracle, the training data's
    attribute file gives CD's correlations."""
    data, clf, ldm, _ = toy_setup(device)
    rows = pick_both_directions(clf, data, n, device)
    lmdb, attr = toyfaces.paths(data)
    items = runner.lmdb_items(lmdb, attr, rows, ldm.image_size)
    train_attr = toyfaces.paths(toy_data(TRAIN_DATA))[1]
    result = {"world": "toyfaces", "data": str(data), "rows": rows, "runs": {}}
    best = sampler_configs()[0]  # the default method with its defaults
    for name, cfg in (("seed", SEED_FAITHFUL), (DEFAULT_METHOD, best)):
        run = Path(out) / name
        if run.exists():
            shutil.rmtree(run)  # a benchmark measures afresh
        t0 = time.perf_counter()
        # Batched for both: this measures quality, not speed (the samplers stop per sample, so
        # the batch changes no result), and batch 1 of the seed config is ~10x slower on a CPU.
        summary = runner.run(items, Problem(ldm, clf, attribute_index("Smiling")), run, method=cfg["method"],
                             batch_size=max(cfg["batch_size"], BATCH_SIZE), options=dict(cfg["options"]),
                             settings={"attribute": "Smiling", "classifier": "toy_resnet",
                                       "ldm": "toy"}, progress=False)
        seconds = time.perf_counter() - t0
        m = run_protocol(run, oracle="toy_oracle", train_attr_file=train_attr, masks=data,
                         device=device)
        result["runs"][name] = {"run": str(run), "images_per_s": len(items) / seconds,
                                "flip_rate": summary["flip_rate"], "metrics": m}
    return result


def print_protocol(r: dict) -> None:
    print(compare_runs([v["run"] for v in r["runs"].values()]))
    for name, v in r["runs"].items():
        m = v["metrics"]
        print(f"{name}: {v['images_per_s']:.3f} images/s, L1 {m['l1']:.4f}, localisation "
              f"{m.get('localization', float('nan')):.2f}, MNAC with the query "
              f"{m['mnac']['with_query']:.2f}")

