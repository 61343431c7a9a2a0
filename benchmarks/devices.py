"""``ldvce bench generate --devices N``: throughput of ``ldvce generate`` on one process
against N CPU processes (one thread each) and one process with N threads, same toy images."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import toyfaces
from classifier.evaluate import pick_not_smiling
from classifier.models import load_classifier
from dvce import runfolder as rf
from dvce.distributed import shard
from dvce.samplers import DEFAULT_METHOD
from toyfaces.world import TEST_DATA, toy_classifier, toy_data


def bench_generate_devices(n: int = 8, devices: int = 2, batch_size: int = 2,
                           options: dict | None = None, workdir=None) -> dict:
    """Throughput of ``ldvce generate`` on one process against ``devices`` processes (CPU, one
    thread each), same toy images and settings; plus one process with ``devices`` threads, the
    other way to use the same cores.

    Each configuration is a fresh ``ldvce generate`` command, timed end to end (start-up, model
    loading, generation, writing) and for generation alone (``wall_seconds`` in its summary).
    The counterfactual PNGs of the 1- and N-process runs are compared byte for byte: with the
    same batch size and thread count they must agree. On a shared machine the processes of one
    command compete with everything else (with the kernel's autogroup scheduling a command gets
    one fair share of the CPU however many processes it runs), so the result also carries what
    free cores would give: the 1-process run's batch times dealt out as the processes deal them.
    """
    data, ckpt = toy_data(TEST_DATA), toy_classifier("toy_resnet")
    rows = pick_not_smiling(load_classifier(ckpt).requires_grad_(False), data, n)
    lmdb, attr = toyfaces.paths(data)
    work = Path(workdir or tempfile.mkdtemp(prefix="ldvce-bench-devices-"))
    configs = [("1 process x 1 thread", 1, 1), (f"{devices} processes x 1 thread", devices, 1),
               (f"1 process x {devices} threads", 1, devices)]
    rows_out = []
    for name, procs, threads in configs:
        out = work / f"p{procs}-t{threads}"
        cmd = [sys.executable, "-m", "ldvce.cli", "generate", "--lmdb", str(lmdb), "--attr-file",
               str(attr), "--indices", *map(str, rows), "--classifier", str(ckpt), "--ldm", "toy",
               "--out", str(out), "--batch-size", str(batch_size), "--devices", str(procs),
               "--accelerator", "cpu"]
        for k, v in (options or {}).items():  # options of the default sampler, as JSON values
            cmd += [f"--{DEFAULT_METHOD}.{k}", json.dumps(v)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        total = time.perf_counter() - t0
        if r.returncode:
            raise RuntimeError(f"{name}: ldvce generate failed:\n{r.stderr[-2000:]}")
        summary = rf.read_summary(out)
        rows_out.append({"configuration": name, "processes": procs, "threads": threads,
                         "images": len(rows), "seconds_end_to_end": total,
                         "seconds_generating": summary["wall_seconds"],
                         "images_per_s": len(rows) / summary["wall_seconds"],
                         "images_per_s_end_to_end": len(rows) / total, "run": str(out),
                         "flip_rate": summary["flip_rate"]})
    one, many = (work / "p1-t1"), (work / f"p{devices}-t1")
    same = sum((one / str(r) / rf.COUNTERFACTUAL).read_bytes() ==
               (many / str(r) / rf.COUNTERFACTUAL).read_bytes() for r in rows)
    # What free cores would give: the 1-process run's sampler time per batch, dealt out to the
    # processes as run_distributed deals them; the slowest process sets the pace.
    per_image = {str(r): rf.read_result(one / str(r))["seconds"] for r in rows}
    batch_s = [sum(per_image[str(r)] for r in rows[i:i + batch_size])
               for i in range(0, len(rows), batch_size)]
    slowest = max(sum(shard(batch_s, k, devices)) for k in range(devices))
    return {"world": "toyfaces", "rows": rows, "batch_size": batch_size, "options": options or {},
            "cpu_cores": os.cpu_count(), "load_average": os.getloadavg()[0],
            "batch_seconds_one_process": batch_s,
            "speedup_free_cores_estimate": sum(batch_s) / slowest,
            "configurations": rows_out,
            "speedup": rows_out[1]["images_per_s"] / rows_out[0]["images_per_s"],
            "speedup_end_to_end": rows_out[1]["images_per_s_end_to_end"]
            / rows_out[0]["images_per_s_end_to_end"],
            "identical_counterfactuals": f"{same}/{len(rows)}"}


def print_devices(r: dict) -> None:
    print(f"ldvce generate on {r['configurations'][0]['images']} toy images, batch size "
          f"{r['batch_size']}, {r['cpu_cores']} CPU cores (load average {r['load_average']:.1f} "
          f"at the end)")
    print(f"{'configuration':<26}{'gen s':>8}{'img/s':>8}{'total s':>9}{'img/s':>8}{'flip':>6}")
    for c in r["configurations"]:
        print(f"{c['configuration']:<26}{c['seconds_generating']:>8.1f}{c['images_per_s']:>8.3f}"
              f"{c['seconds_end_to_end']:>9.1f}{c['images_per_s_end_to_end']:>8.3f}"
              f"{c['flip_rate']:>6.2f}")
    print(f"speedup of {r['configurations'][1]['configuration']} over 1 process x 1 thread: "
          f"{r['speedup']:.2f}x generating, {r['speedup_end_to_end']:.2f}x end to end "
          f"(start-up: each process imports torch and loads the models)")
    batches = [round(b, 1) for b in r["batch_seconds_one_process"]]
    print(f"on free cores (the 1-process batch times {batches} s dealt out to the processes): "
          f"{r['speedup_free_cores_estimate']:.2f}x generating")
    print(f"counterfactual PNGs identical between 1 and {r['configurations'][1]['processes']} "
          f"processes: {r['identical_counterfactuals']}")

