"""Generation on several processes (dvce/distributed.py, `ldvce generate --devices N`) on CPU
with gloo: the same bytes as one process, SLURM task launch, a crash mid-write and its resume,
failures from every rank in the manifest."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dvce import runfolder as rf
from dvce import runner
from dvce.distributed import RANKS, plan_run, run_distributed, shard

REPO = Path(__file__).resolve().parents[1]
# Cheap guided settings (3 DDIM steps): the point is the split, not the quality.
GEN = ["--batch-size", "2", "--method", "guided", "--guided.num_steps", "20", "--guided.t_start", "100",
       "--guided.retry_scales", "[]", "--accelerator", "cpu"]
LAUNCH_VARS = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
               "MASTER_PORT", "LT_CLI_USED")


def _env(**extra) -> dict:
    """A clean environment: one thread per process, no launcher or SLURM variables inherited."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def _ldvce(args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldvce.cli", *map(str, args)], cwd=REPO,
                          env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _save(x: torch.Tensor, path: Path) -> None:
    Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def faces(toy_unseen, tmp_path_factory) -> Path:
    """8 unseen toy faces as PNGs plus an unreadable file that lands on rank 1 of 2 (batches of 2
    in name order: face0 face1 | face1b face2 | …)."""
    import toyfaces
    from classifier.dataset import CelebHQAttrDataset
    folder = tmp_path_factory.mktemp("faces")
    ds = CelebHQAttrDataset(*toyfaces.paths(toy_unseen), split="all", image_size=64,
                            augment=False)
    for r in range(8):
        _save(ds.read_image(r), folder / f"face{r}.png")
    (folder / "face1b.png").write_bytes(b"not an image")
    return folder


@pytest.fixture(scope="module")
def reference(faces, toy_resnet_ckpt, tmp_path_factory) -> Path:
    """`ldvce generate --devices 1`: the one-process run the others must equal."""
    out = tmp_path_factory.mktemp("one") / "run"
    r = _ldvce(["generate", "--images", faces, "--classifier", toy_resnet_ckpt, "--ldm", "toy",
                "--out", out, "--devices", "1", *GEN])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    folders = {d.name for d in a.iterdir() if d.is_dir()}
    assert folders == {d.name for d in b.iterdir() if d.is_dir()}  # no .ranks or .partial left
    assert folders == {f"face{i}" for i in range(8)}
    for name in folders:
        png = rf.COUNTERFACTUAL
        assert (a / name / png).read_bytes() == (b / name / png).read_bytes()
        ra, rb = rf.read_result(a / name), rf.read_result(b / name)
        la = [f["logit"] for f in ra["frames"]]
        lb = [f["logit"] for f in rb["frames"]]
        assert len(la) == len(lb) and np.allclose(la, lb, rtol=0, atol=1e-5)
        assert abs(ra["logit_after"] - rb["logit_after"]) <= 1e-5
    lines = [json.loads(l) for l in (b / rf.MANIFEST).read_text().splitlines()]
    assert sorted(e["image"] for e in lines) == sorted([f"face{i}" for i in range(8)] + ["face1b"])
    assert {e["image"]: e["status"] for e in lines} == \
        {k: e["status"] for k, e in rf.read_manifest(a).items()}
    assert rf.read_manifest(b)["face1b"]["status"] == "unreadable"  # recorded by rank 1 of 2


# ------------------------------------------------------------------------------ no processes
def test_plan_cuts_what_is_left_as_one_process_would(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(7):
        (folder / f"{i:02d}.png").write_bytes(b"never loaded")
    items = runner.folder_items(folder, 64)
    (out / "01").mkdir(parents=True)
    rf.write_result(out / "01", {"status": "ok"})
    rf.write_manifest(out, [{"image": "02", "status": "failed", "reason": "NaN"}])
    rf.write_manifest(out / RANKS / "rank-3", [  # left by a killed run
        {"image": "03", "status": "unreadable", "reason": "broken"},
        {"image": "04", "status": "failed", "reason": "NaN"}])
    (out / ".05.partial").mkdir()
    plan = plan_run(items, out, batch_size=2)
    assert plan.batches == [["00", "03"], ["05", "06"]]  # the unreadable input is read again
    assert (plan.n_finished, plan.n_recorded) == (1, 2)
    assert not (out / RANKS).exists() and not (out / ".05.partial").exists()
    assert {k: e["status"] for k, e in rf.read_manifest(out).items()} == \
        {"01": "ok", "02": "failed", "04": "failed"}  # the killed rank's failure survived
    assert shard(plan.batches, 0, 2) == [["00", "03"]]
    assert shard(plan.batches, 1, 2) == [["05", "06"]]
    assert shard(plan.batches, 2, 3) == []
    with pytest.raises(ValueError, match="batch size"):
        plan_run(items, out, batch_size=0)


def test_one_process_through_fabric_equals_the_runner(tmp_path):
    from test_dvce import BrightnessClassifier, _images
    from dvce.ldm import build_random_ldm
    from toyfaces.ldm import toy_unet_config, toy_vq_config
    from dvce.samplers import Problem
    folder = tmp_path / "in"
    folder.mkdir()
    for i, x in enumerate(_images(3, seed=5)):
        _save(x, folder / f"img{i}.png")
    _save(torch.ones(3, 64, 64), folder / "white.png")  # NaN logit -> failed
    (folder / "broken.png").write_bytes(b"no")
    problem = Problem(build_random_ldm(toy_vq_config(64), toy_unet_config(16), seed=1),
                      BrightnessClassifier(), 31)
    items = runner.folder_items(folder, 64)
    opts = dict(num_steps=20, t_start=200, retry_scales=())
    plain = runner.run(items, problem, tmp_path / "plain", "guided", batch_size=2, options=opts,
                       progress=False)
    fab = run_distributed(items, problem, tmp_path / "fabric", "guided", batch_size=2, options=opts,
                          devices=1, accelerator="cpu", progress=False)
    for i in range(3):
        assert (tmp_path / "plain" / f"img{i}" / rf.COUNTERFACTUAL).read_bytes() == \
            (tmp_path / "fabric" / f"img{i}" / rf.COUNTERFACTUAL).read_bytes()
    status = lambda run: {k: e["status"] for k, e in rf.read_manifest(run).items()}  # noqa: E731
    assert status(tmp_path / "plain") == status(tmp_path / "fabric")
    assert rf.read_manifest(tmp_path / "fabric")["white"]["status"] == "failed"
    assert fab["processes"] == 1 and fab["n"] == plain["n"] == 5
    assert {k: fab[k] for k in ("n_generated", "n_failed", "n_unreadable", "flip_rate")} == \
        {k: plain[k] for k in ("n_generated", "n_failed", "n_unreadable", "flip_rate")}


def test_unsupported_strategy_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="ddp_spawn"):
        run_distributed([], None, tmp_path / "x", strategy="ddp_spawn")
    assert not (tmp_path / "x").exists()


def test_slurm_example_matches_the_cli_flags():
    text = (REPO / "docs" / "slurm_generate.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "docs" / "slurm_generate.sbatch")]).returncode == 0
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    srun = text[text.index("srun ldvce generate"):]
    assert re.search(rf"--devices {sbatch['ntasks-per-node']}\b", srun)
    assert re.search(rf"--num-nodes {sbatch['nodes']}\b", srun)
    assert sbatch["gpus-per-node"] == sbatch["ntasks-per-node"] and "--accelerator gpu" in srun


# ------------------------------------------------------------------------------ two processes
@pytest.mark.integration
def test_two_processes_give_the_same_bytes_as_one(faces, reference, toy_resnet_ckpt, tmp_path):
    out = tmp_path / "two"
    r = _ldvce(["generate", "--images", faces, "--classifier", toy_resnet_ckpt, "--ldm", "toy",
                "--out", out, "--devices", "2", *GEN])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "9 to do in 5 batches on 2 process(es)" in r.stdout
    _assert_same_run(reference, out)
    assert rf.read_summary(out)["processes"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_slurm_tasks_started_as_srun_would(faces, reference, toy_resnet_ckpt, tmp_path):
    """Two processes with the variables srun gives the tasks of a 1-node, 2-task job: Lightning's
    SLURMEnvironment takes the ranks from them and starts no processes of its own."""
    out = tmp_path / "slurm"
    job = dict(SLURM_JOB_ID="4242", SLURM_JOB_NAME="ldvce-generate", SLURM_NTASKS="2",
               SLURM_NTASKS_PER_NODE="2", SLURM_NNODES="1", SLURM_NODEID="0",
               SLURM_NODELIST="127.0.0.1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    args = [sys.executable, "-m", "ldvce.cli", "generate", "--images", faces, "--classifier",
            toy_resnet_ckpt, "--ldm", "toy", "--out", out, "--devices", "2", "--num-nodes", "1",
            *GEN]
    procs = [subprocess.Popen(list(map(str, args)), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=_env(**job, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)))
             for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    plans = [o for o, _ in outs if "to do in" in o]
    assert len(plans) == 1 and "on 2 process(es)" in plans[0]  # one world of two, one rank 0
    _assert_same_run(reference, out)


@pytest.mark.integration
def test_crash_mid_write_on_one_rank_then_resume(tmp_path):
    """Rank 1 records an unreadable and a NaN input, then is SIGKILLed while writing a folder;
    the rerun does exactly the missing images, keeps rank 1's failure record and reads the
    unreadable input again (still unreadable: recorded again)."""
    from test_dvce import _images
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    # sorted: a0 a1 | b_broken b_white | c0 c1 | c2 c3 | c4 c5 -> rank 1 runs batches 1 and 3
    names = ["a0", "a1", "c0", "c1", "c2", "c3", "c4", "c5"]
    for name, x in zip(names, _images(8, seed=11)):
        _save(x, folder / f"{name}.png")
    (folder / "b_broken.png").write_bytes(b"not an image")
    _save(torch.ones(3, 64, 64), folder / "b_white.png")
    job = [sys.executable, str(REPO / "tests" / "distributed_job.py"), str(folder), str(out)]

    first = subprocess.run(job, cwd=REPO, env=_env(LDVCE_TEST_DIE_AT_RESULT="2"),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode != 0
    done = {d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")}
    assert "c2" in done and "c3" not in done and (out / ".c3.partial").is_dir()
    assert all(rf.read_result(out / d) for d in done)  # nothing that only looks finished
    assert set(rf.read_manifest(out / RANKS / "rank-1")) == {"b_broken", "b_white"}
    mtimes = {d: (out / d / rf.RESULT).stat().st_mtime_ns for d in done}

    second = subprocess.run(job, cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (f"{len(done)} finished earlier, 1 recorded as failed; "
            f"{8 - len(done) + 1} to do") in second.stdout
    assert {d.name for d in out.iterdir() if d.is_dir()} == set(names)  # no .partial, no .ranks
    assert all((out / d / rf.RESULT).stat().st_mtime_ns == mtimes[d] for d in done)
    lines = [json.loads(l) for l in (out / rf.MANIFEST).read_text().splitlines()]
    assert sorted(e["image"] for e in lines) == sorted(names + ["b_broken", "b_white"])
    status = {e["image"]: e["status"] for e in lines}
    assert status["b_broken"] == "unreadable" and status["b_white"] == "failed"
    summary = rf.read_summary(out)
    assert (summary["n"], summary["n_generated"], summary["processes"]) == (10, 8, 2)


def test_cli_refuses_device_with_devices(tmp_path):
    from ldvce.cli import main
    with pytest.raises(SystemExit, match="--accelerator"):
        main(["generate", "--images", str(tmp_path), "--classifier", "x.ckpt", "--out",
              str(tmp_path / "o"), "--devices", "2", "--device", "cuda:1"])
    assert not (tmp_path / "o").exists()
