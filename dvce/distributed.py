"""Counterfactual generation on several processes: GPUs, nodes or SLURM tasks (Lightning Fabric).

:func:`run_distributed` produces the same run folder as :func:`dvce.runner.run`, with the work
split over the processes of a Lightning Fabric launch (``devices`` per node × ``num_nodes``;
under SLURM the processes are srun's tasks, found by Lightning's ``SLURMEnvironment``):

1. Rank 0 removes half-written folders, collects the finished folders and the failure records of
   earlier runs (the manifest, plus the per-rank record files a killed run left behind; inputs
   recorded unreadable are read again), and cuts what remains into batches of ``batch_size`` in
   input order: exactly the batches one process would run on the same run folder.
2. It broadcasts the batches; rank ``r`` of ``W`` runs batches ``r, r + W, r + 2W, …`` through
   :func:`dvce.runner.generate_batch`, which writes each image's folder atomically (a killed
   process leaves no folder that looks finished).
3. Each rank keeps its failed/unreadable records in ``.ranks/rank-<r>/manifest.jsonl`` inside
   the run folder, rewritten after every batch that adds one, so they survive a crash. Rank 0
   folds them into ``manifest.jsonl`` after each of its batches; once every rank is done it
   writes the final manifest and summary and removes the per-rank files.

Why whole batches: the samplers treat samples independently in their maths, but float32 kernels
on CPU round differently with the batch size (the counterfactual of the same image moves by
~1e-6 between batch sizes 1, 2 and 4, enough to flip single PNG bytes). Giving every sample the
same batch companions as a single process makes ``--devices N`` byte-identical to one process
with the same ``--batch-size`` (and the same thread count and hardware).

Why Fabric rather than ``Trainer.predict``: the work is the runner's own loop (load a batch,
sample, write folders) with a plan made on rank 0 and a final merge; Fabric supplies the launch,
the cluster environments (SLURM included), the device of each process and the collectives,
and leaves the loop as it is. ``Trainer.predict`` would need inference mode switched off (the
samplers take gradients), the models wrapped in a LightningModule, a dataloader that carries item
ids instead of tensors with Lightning's own sampler turned off, and a writer callback for
what :func:`dvce.runner.generate_batch` already does.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from dvce import runfolder as rf

if TYPE_CHECKING:  # torch-free at import, so `ldvce --help` can read the choices below
    from dvce import runner
    from dvce.samplers import Problem

RANKS = ".ranks"  # per-rank failure records of a multi-process run (removed when it ends)
# How long finished ranks wait for the slowest one. The default collective timeout (30 min for
# gloo, 10 for NCCL) is shorter than the imbalance between shards of a long run can be.
FINAL_WAIT = timedelta(days=7)
STRATEGIES = ("auto", "ddp")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")


@dataclass
class Plan:
    """What a (resumed) run still has to do, decided once on rank 0."""
    order: list[str]               # every input id, in input order
    batches: list[list[str]]       # ids still to generate, cut as one process would cut them
    records: dict[str, dict]       # failed entries of earlier runs (kept; unreadables are retried)
    n_finished: int                # inputs with a finished folder already
    n_recorded: int                # inputs recorded as failed earlier (not tried again)


def plan_run(items: list[runner.Item], out, batch_size: int) -> Plan:
    """Rank 0's plan: clean half-written folders, fold in the per-rank records a killed run left,
    and cut the remaining items into batches in input order."""
    from dvce import runner  # heavy: torch, as in run_distributed
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1 (got {batch_size})")
    out = Path(out)
    order, todo, records = runner.resume_state(items, out)
    left = runner.kept_records(rank_records(out))
    if left:  # a killed multi-process run: keep its records in the manifest, then drop the files
        records.update(left)
        runner.rewrite_manifest(out, order, records)
        todo = [it for it in todo if it.image_id not in records]
    shutil.rmtree(out / RANKS, ignore_errors=True)
    ids = [it.image_id for it in todo]
    batches = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    n_recorded = sum(k in records for k in order)
    return Plan(order, batches, records, len(order) - len(ids) - n_recorded, n_recorded)


def shard(batches: list, rank: int, world_size: int) -> list:
    """The batches of process ``rank``: every ``world_size``-th, starting at ``rank``."""
    return batches[rank::world_size]


def rank_dir(out, rank: int) -> Path:
    return Path(out) / RANKS / f"rank-{rank}"


def rank_records(out) -> dict[str, dict]:
    """Failure/unreadable records that the ranks of a run wrote (any world size)."""
    found: dict[str, dict] = {}
    base = Path(out) / RANKS
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        found.update(rf.read_manifest(d))
    return found


def run_distributed(items: list[runner.Item], problem: Problem, out, method: str | None = None,
                    target="auto", batch_size: int = 8, options: dict | None = None,
                    settings: dict | None = None, devices: int = 1, num_nodes: int = 1,
                    accelerator: str = "auto", strategy: str = "auto",
                    progress: bool = True, num_cfs: int = 1) -> dict | None:
    """Generate counterfactuals for ``items`` into ``out`` on ``devices`` × ``num_nodes``
    processes; returns the summary on rank 0 and None on the other ranks.

    Parameters
    ----------
    items : the inputs (:func:`dvce.runner.folder_items` / :func:`dvce.runner.lmdb_items`); every
        process must build the same list.
    problem : LDM, classifier and attribute; moved to each process's device.
    out, method, target, batch_size, options, settings, num_cfs : as :func:`dvce.runner.run`
        (``method`` None: the default method).
    devices, num_nodes : processes per node and nodes. With ``strategy="ddp"`` (or ``"auto"``
        and more than one process) Lightning starts the other processes of this node by running
        the same command again, unless a cluster environment (SLURM, torchrun) already did; so
        call this from a script or the CLI, not from a notebook.
    accelerator : ``"cpu"``, ``"gpu"`` or ``"auto"``.

    Per-sample results equal those of :func:`dvce.runner.run` with the same ``batch_size`` on
    the same run folder: whole batches are sharded (see the module docstring).
    """
    # heavy: torch; this module stays torch-free at import (`ldvce --help` reads it)
    from dvce import runner
    from dvce.samplers import DEFAULT_METHOD, get_sampler
    method = method or DEFAULT_METHOD
    out = Path(out)
    _check_inputs(items, batch_size, strategy)
    options = dict(options or {})
    settings = runner.run_settings(method, options, settings, num_cfs)
    runner.check_same_run(out, settings)  # in every process, before any of them starts work
    fabric = _launch(accelerator, devices, num_nodes, strategy)
    rank, world = fabric.global_rank, fabric.world_size
    wait_group = _long_wait_group()
    problem.ldm.to(fabric.device)
    problem.classifier.to(fabric.device)
    sampler = get_sampler(method)
    plan = _shared_plan(fabric, items, out, batch_size)
    by_id = {it.image_id: it for it in items}
    mine = _own_batches(plan, by_id, rank, world)

    t0 = time.perf_counter()
    own: dict[str, dict] = {}
    bar = tqdm(total=sum(map(len, mine)), desc=f"lDVCE ({method}) rank 0 of {world}",
               unit="img", disable=not progress or rank != 0)
    for ids in mine:
        new = runner.generate_batch([by_id[i] for i in ids], problem, out, sampler, target,
                                    options, settings, num_cfs)
        if new:
            own.update(new)
            rf.write_manifest(rank_dir(out, rank), own.values())
        if rank == 0:  # keep the manifest current while the others work
            runner.rewrite_manifest(out, plan.order, {**plan.records, **rank_records(out)})
        bar.update(len(ids))
    bar.close()

    _wait_for_all(wait_group)
    _end_process_group()
    if rank != 0:
        return None
    return _final_summary(out, plan, method, settings, world, t0)


def _check_inputs(items: list[runner.Item], batch_size: int, strategy: str) -> None:
    """Refuse bad input on every process before any starts: past the launch, one process
    stopping alone leaves the others waiting for it."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1 (got {batch_size})")
    if len({it.image_id for it in items}) != len(items):
        raise ValueError("image ids must be unique (two files share a name stem?)")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not supported here; choose from "
                         f"{', '.join(STRATEGIES)} (spawned processes cannot receive the image "
                         f"loaders)")


def _launch(accelerator: str, devices: int, num_nodes: int, strategy: str):
    """A launched Fabric; a set-up Lightning refuses becomes a ValueError that names it."""
    # heavy: Lightning and torch, only when a run starts
    from lightning_fabric import Fabric
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    try:
        fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=strategy)
        # with the ddp launcher this starts the node's other processes by running the same
        # command again (in a notebook Lightning picks a fork launcher, refused here)
        fabric.launch()
    except (ValueError, RuntimeError, TypeError, MisconfigurationException) as e:
        raise ValueError(f"cannot set up {devices} process(es) x {num_nodes} node(s) "
                         f"(accelerator {accelerator!r}, strategy {strategy!r}): {e}") from e
    return fabric


def _shared_plan(fabric, items: list[runner.Item], out: Path, batch_size: int) -> Plan:
    """Rank 0's :func:`plan_run` (announced on stdout), broadcast to every rank."""
    plan = None
    if fabric.global_rank == 0:
        plan = plan_run(items, out, batch_size)
        n_todo = sum(map(len, plan.batches))
        print(f"ldvce generate: {len(plan.order)} images, {plan.n_finished} finished earlier, "
              f"{plan.n_recorded} recorded as failed; {n_todo} to do in "
              f"{len(plan.batches)} batches on {fabric.world_size} process(es)", flush=True)
    return fabric.broadcast(plan, src=0)


def _own_batches(plan: Plan, by_id: dict, rank: int, world: int) -> list[list[str]]:
    """This rank's shard of the plan; every id in it must be among this process's inputs."""
    mine = shard(plan.batches, rank, world)
    missing = [i for b in mine for i in b if i not in by_id]
    if missing:
        raise RuntimeError(f"rank {rank}: images {missing[:3]} of rank 0's plan are not among "
                           f"this process's inputs; every process must see the same inputs")
    return mine


def _final_summary(out: Path, plan: Plan, method: str, settings: dict, world: int,
                   t0: float) -> dict:
    """Rank 0, once every rank is done: the final manifest and summary (returned, its wall
    time counted from ``t0``); the per-rank record files go."""
    from dvce import runner  # heavy: torch, as in run_distributed
    runner.rewrite_manifest(out, plan.order, {**plan.records, **rank_records(out)})
    summary = runner.summarize(out, method, settings)
    summary.update(processes=world, wall_seconds=time.perf_counter() - t0)
    rf.write_summary(out, summary)
    shutil.rmtree(out / RANKS, ignore_errors=True)  # all in the manifest now
    return summary


def _end_process_group() -> None:
    import torch  # heavy: this module stays torch-free at import
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _long_wait_group():
    """A gloo group whose barrier waits :data:`FINAL_WAIT` (None for a single process)."""
    import torch.distributed as dist  # heavy: this module stays torch-free at import
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return dist.new_group(backend="gloo", timeout=FINAL_WAIT)


def _wait_for_all(group) -> None:
    if group is not None:
        import torch.distributed as dist  # heavy, as in _long_wait_group
        # a monitored barrier names the rank that never arrived if one died
        dist.monitored_barrier(group=group, timeout=FINAL_WAIT, wait_all_ranks=True)
