"""``ldvce bench generate``: the seed-faithful lDVCE (batch 1, as the seed ran) against every
other sampler with its own defaults, same toy images, classifier and LDM; images per second,
flip rate, L1, localisation and the speed-up over the seed-faithful run. The command's other
modes live in :mod:`benchmarks.gpu`, :mod:`benchmarks.protocol` and :mod:`benchmarks.devices`;
:func:`run_generate` dispatches."""
from __future__ import annotations

import copy
import json
import time

import numpy as np
import torch

from benchmarks.common import (SEED_FAITHFUL, bench_faces, sampler_configs, toy_setup,
                               write_result)
from benchmarks.devices import bench_generate_devices, print_devices
from benchmarks.gpu import bench_generate_gpu
from benchmarks.protocol import bench_protocol_toy, print_protocol
from classifier.attributes import attribute_index
from classifier.devices import resolve_device
from dvce.ldm import load_ldm, slow_precision_warning, torch_dtype
from dvce.metrics import localization
from dvce.samplers import DEFAULT_METHOD, Problem, get_sampler


def _run_config(cfg, problem, x, masks_row, judge: Problem | None = None):
    """One sampler configuration on ``x``; ``judge`` (default ``problem``) decides the flips."""
    sampler = get_sampler(cfg["method"])
    bs = cfg["batch_size"]
    target = torch.ones(len(x))
    t0 = time.perf_counter()
    outs = [sampler(problem, x[i:i + bs], target[i:i + bs], **cfg["options"])
            for i in range(0, len(x), bs)]
    seconds = time.perf_counter() - t0
    cf = torch.cat([o.counterfactual.float().cpu() for o in outs])
    if judge is None:
        flipped = torch.cat([o.flipped for o in outs]).float()
    else:
        with torch.no_grad():
            flipped = (judge.logit(cf.to(x.device)) > 0).float().cpu()
    delta = (cf - x.cpu()).abs()
    loc = [localization(delta[i].sum(0).numpy(), masks_row[i]) for i in range(len(x))]
    return {"method": cfg["method"], "batch_size": bs, "options": cfg["options"],
            "images": len(x), "seconds": seconds, "images_per_s": len(x) / seconds,
            "flip_rate": float(flipped.mean()), "mean_l1": float(delta.flatten(1).mean(1).mean()),
            "localization": float(np.nanmean(loc))}


#: Faces of the toy speed comparison: with 8, one face that needs a later attempt of the
#: default sampler moves its ratio by about a tenth (14.2x at 8 faces, 16.2-16.9x at 16 on the
#: same machine, docs/benchmarks.md).
TOY_FACES = 16


def bench_generate_toy(n: int = TOY_FACES, device="cpu", seed_n: int | None = None,
                       dtype: str = "fp32") -> dict:
    """Seed-faithful vs every other sampler on ``n`` toy images (the seed config may run on
    fewer, ``seed_n``). ``speedup``: images per second relative to the seed-faithful run. With
    ``dtype="bf16"`` every sampler also runs with the LDM and the classifier in bfloat16
    (``ldvce generate --dtype bf16``; rows ``METHOD bf16``), its flips judged by the float32
    classifier."""
    data, clf, ldm, masks = toy_setup(device)
    rows, x = bench_faces(clf, data, n, device)
    region = masks["Smiling"][rows]
    problem = Problem(ldm, clf, attribute_index("Smiling"))
    k = seed_n or len(x)
    seed = _run_config(SEED_FAITHFUL, problem, x[:k], region[:k])
    methods = {cfg["method"]: _run_config(cfg, problem, x, region) for cfg in sampler_configs()}
    if dtype == "bf16":
        half = Problem(load_ldm("toy", device=device, dtype=torch_dtype(dtype)),
                       copy.deepcopy(clf).to(torch_dtype(dtype)), attribute_index("Smiling"))
        for cfg in sampler_configs():
            row = _run_config(cfg, half, x, region, judge=problem)
            methods[f"{cfg['method']} bf16"] = {**row, "dtype": "bf16"}
    return {"world": "toyfaces", "device": str(device), "rows": rows, "seed_faithful": seed,
            "default_method": DEFAULT_METHOD, "methods": methods,
            "speedup": {m: r["images_per_s"] / seed["images_per_s"] for m, r in methods.items()},
            "precision_warning": slow_precision_warning(dtype, device)}


def print_generate(r: dict) -> None:
    s = r["seed_faithful"]
    rows = [("seed-faithful (seed, bs 1)", s)] + [
        (f"{m}{' (default)' if m == r['default_method'] else ''}, bs {row['batch_size']}", row)
        for m, row in r["methods"].items()]
    print(f"{'configuration':<28}{'images':>7}{'img/s':>9}{'flip':>7}{'L1':>8}{'loc':>7}{'speedup':>9}")
    for name, row in rows:
        speedup = row["images_per_s"] / s["images_per_s"]
        print(f"{name:<28}{row['images']:>7}{row['images_per_s']:>9.3f}{row['flip_rate']:>7.2f}"
              f"{row['mean_l1']:>8.4f}{row['localization']:>7.2f}{speedup:>8.1f}x")
    print("speedup: images per second relative to the seed-faithful run")
    if r.get("precision_warning"):
        print(f"warning: {r['precision_warning']}")



def run_generate(n: int = 8, json_path=None, gpu: bool = False, device: str = "auto",
                 protocol: str = "basic", out="runs/bench-protocol", devices: int = 0,
                 batch_size: int = 8, dtype: str = "fp32") -> dict | None:
    """What ``ldvce bench generate`` does: the toy comparison (or, with ``gpu``, the 256² timing
    on CUDA; skipped with a message when there is none), printed and optionally written."""
    if gpu:
        if not torch.cuda.is_available():
            print("no CUDA GPU here: the 256² CompVis-architecture timing is skipped "
                  "(run `ldvce bench generate --gpu` on a GPU machine)")
            return None
        r = bench_generate_gpu(n)
        print(json.dumps(r, indent=2))
    elif protocol == "full":
        r = bench_protocol_toy(n, resolve_device(device), out=out)
        print_protocol(r)
        for v in r["runs"].values():
            v["metrics"].pop("per_image", None)
    elif devices:
        r = bench_generate_devices(n, devices, batch_size=batch_size)
        print_devices(r)
    else:
        r = bench_generate_toy(n, resolve_device(device), dtype=dtype)
        print_generate(r)
    write_result(r, json_path)
    return r



if __name__ == "__main__":  # python -m benchmarks.generate [N]: the toy comparison on N faces
    import sys
    run_generate(int(sys.argv[1]) if len(sys.argv) > 1 else TOY_FACES)
