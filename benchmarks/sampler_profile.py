"""Where a sampler's time goes on the bench faces: seconds per stage of ``dvce.samplers``.

The toy target of issue 26 (the default ≥ 50× the seed-faithful configuration) needs to know
which stage to cut. This times the default sampler on the ``ldvce bench generate`` faces (toy
ResNet, unseen seed-7 world, one batch) with each private stage of ``dvce.samplers`` wrapped in
a timer, after one warm-up call. Stages nest: ``_pre_explanation`` contains one ``_invert`` and
one ``_guided_pass``; ``_robust`` contains the ``_renoised`` round trips of its checks. The
sampler's results are unchanged (the wrappers only time).

    OMP_NUM_THREADS=1 python benchmarks/sampler_profile.py [--n 8] [--method adaptive]
        [--options '{"grad_decoder": "auto"}']
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time

import torch

from benchmarks.common import bench_faces, toy_setup
from classifier.attributes import attribute_index
from dvce import samplers
from dvce.samplers import DEFAULT_METHOD, Problem, get_sampler

#: The stages timed (private functions of ``dvce.samplers``).
STAGES = ("_pre_explanation", "_invert", "_guided_pass", "_attribution", "_invert_attempt",
          "_robust", "_renoised", "_prune")


def profile(n: int = 8, method: str = DEFAULT_METHOD, options: dict | None = None) -> dict:
    """{"total": s, "stages": {name: {"seconds": s, "calls": k}}} of one timed call."""
    data, clf, ldm, _ = toy_setup("cpu")
    _, x = bench_faces(clf, data, n, "cpu")
    problem = Problem(ldm, clf, attribute_index("Smiling"))
    seconds, calls = collections.Counter(), collections.Counter()
    originals = {name: getattr(samplers, name) for name in STAGES}

    def timed(name, f):
        def run(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - t
                calls[name] += 1
        return run

    sampler = get_sampler(method)
    sampler(problem, x, torch.ones(len(x)), **(options or {}))  # warm-up, untimed
    try:
        for name, f in originals.items():
            setattr(samplers, name, timed(name, f))
        t0 = time.perf_counter()
        sampler(problem, x, torch.ones(len(x)), **(options or {}))
        total = time.perf_counter() - t0
    finally:
        for name, f in originals.items():
            setattr(samplers, name, f)
    return {"method": method, "options": options or {}, "n": len(x), "total": total,
            "stages": {k: {"seconds": seconds[k], "calls": calls[k]}
                       for k, _ in seconds.most_common()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8, help="bench faces (one batch)")
    p.add_argument("--method", default=DEFAULT_METHOD)
    p.add_argument("--options", default="{}", help="sampler options as JSON")
    a = p.parse_args(argv)
    r = profile(a.n, a.method, json.loads(a.options))
    print(f"{r['method']} {r['options']} on {r['n']} faces: {r['total']:.2f} s")
    for name, v in r["stages"].items():
        print(f"  {name:<18} {v['seconds']:6.2f} s  ({v['calls']} calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
