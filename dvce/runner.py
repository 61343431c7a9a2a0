"""Batch runner: images in, one folder per image out, resumable and never half-written.

The folder layout is owned by :mod:`dvce.runfolder`. Each image folder is written under a
temporary name and renamed when complete; the manifest and summary are rewritten atomically from
the folders after every batch, so a run killed at any point resumes by skipping the finished
folders and agrees with them.
"""
from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from classifier.dataset import CelebHQAttrDataset
from classifier.images import UnreadableImageError, load_image, save_image, tensor_to_uint8
from dvce import runfolder as rf
from dvce.diverse import (KEEP_OUT_REL, MAX_L1_RATIO, Candidate, check_method,
                          counterfactual_rounds, ranked)
from dvce.samplers import (DEFAULT_METHOD, DIVERSE, Problem, check_options, get_sampler,
                           sampler_defaults)
from fileio import atomic_write_bytes, list_image_files

STATUSES = rf.STATUSES


@dataclass
class Item:
    """One input: an id (folder name), a loader for its tensor, and where it came from."""
    image_id: str
    load: Callable[[], torch.Tensor]
    source: dict


def folder_items(folder, size: int) -> list[Item]:
    """Every file of an image folder (unreadable ones fail later, when loaded, and are reported)."""
    return [Item(p.stem, (lambda p=p: load_image(p, size)), {"path": str(p)})
            for p in list_image_files(folder)]


def lmdb_items(lmdb_path, attr_path, indices: Iterable[int] | None, size: int) -> list[Item]:
    ds = CelebHQAttrDataset(lmdb_path, attr_path, split="all", image_size=size, augment=False)
    rows = list(indices) if indices is not None else ds.indices
    return [Item(str(r), (lambda r=r: ds.read_image(r)), {"lmdb": str(lmdb_path), "index": int(r)})
            for r in rows]


def _gif(frames: list[np.ndarray], path: Path, ms: int = 400) -> None:
    ims = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=ms, loop=0)
    atomic_write_bytes(path, buf.getvalue())


def switch_frame(logits: list[float], target: int) -> int | None:
    """First frame whose decision agrees with the target (None if none does)."""
    for k, v in enumerate(logits):
        if (v > 0) == bool(target):
            return k
    return None


def write_result_folder(out: Path, image_id: str, x: torch.Tensor, cfs: list[Candidate],
                        target: int, settings: dict, seconds: float, source: dict,
                        num_cfs: int = 1) -> dict:
    """Write one image's folder atomically (see :func:`dvce.runfolder.writing_item`); returns its
    result dict. ``cfs``: the counterfactuals to keep, rank 1 first (:func:`dvce.diverse.ranked`);
    rank 1's files are the item's own, rank r ≥ 2 goes to ``cf<r>/`` and, when ``num_cfs`` > 1,
    ``result["counterfactuals"]`` describes every rank."""
    best = cfs[0]
    with rf.writing_item(out, image_id) as tmp:
        save_image(x, tmp / rf.ORIGINAL)
        save_image(best.res.reconstruction[best.i].cpu(), tmp / rf.RECONSTRUCTION)
        ranks = [_write_counterfactual(tmp, rf.rank_folder(r), x, c, target)
                 for r, c in enumerate(cfs, start=1)]
        top = ranks[0]
        result = {
            "image": image_id, "source": source, "status": "ok" if top["flipped"] else "not_flipped",
            "target": int(target), "flipped": top["flipped"], "iterations": top["iterations"],
            "logit_before": top["frames"][0]["logit"], "logit_after": top["logit_after"],
            "prob_before": top["frames"][0]["prob"], "prob_after": top["prob_after"],
            "logit_reconstruction": top["frames"][1]["logit"] if len(top["frames"]) > 1 else None,
            "l1": top["l1"], "l2": top["l2"], "switch_frame": top["switch_frame"],
            "frames": top["frames"], "seconds": seconds, **settings,
        }
        if top.get("sampler_info"):
            result["sampler_info"] = top["sampler_info"]
        if num_cfs > 1:
            result["counterfactuals"] = [{"rank": r, **d} for r, d in enumerate(ranks, start=1)]
        rf.write_result(tmp, result)
    return result


def _write_counterfactual(item: Path, rel: str, x: torch.Tensor, c: Candidate, target: int) -> dict:
    """The files of one counterfactual (image, |Δ| map, mask, frame sequence, GIF) under
    ``item/rel`` ("." for rank 1), and its description (paths relative to the item folder)."""
    folder = item / rel
    folder.mkdir(parents=True, exist_ok=True)
    cf = c.counterfactual
    sig = lambda v: float(1 / (1 + np.exp(-v)))  # noqa: E731
    save_image(cf, folder / rf.COUNTERFACTUAL)
    diff = (cf - x.cpu()).abs().mean(0)
    d = (diff / max(float(diff.max()), 1e-8)).numpy()
    save_image((np.stack([d] * 3, -1) * 255).astype(np.uint8), folder / rf.DIFF)
    np.save(folder / rf.DIFF_NPY, diff.numpy().astype(np.float32))
    frames = [tensor_to_uint8(f) for f in c.frames]
    names = [rf.frame_name(k, rel) for k in range(len(frames))]
    for f, name in zip(frames, names):
        save_image(f, item / name)
    _gif(frames, folder / rf.GIF)
    if "mask" in c.res.info:
        np.save(folder / rf.MASK_NPY, c.res.info["mask"][c.i, 0].numpy().astype(np.float32))
    logits = c.logits
    desc = {
        "path": rel, "made": c.made, "flipped": c.flipped, "iterations": int(c.res.iterations[c.i]),
        # the counterfactual is the last frame: its logit is the one "after"
        "logit_after": float(logits[-1]), "prob_after": sig(logits[-1]),
        "l1": float((cf - x.cpu()).abs().mean()), "l2": float((cf - x.cpu()).pow(2).mean().sqrt()),
        "switch_frame": switch_frame(logits, target),
        "frames": [{"index": k, "logit": v, "prob": sig(v), "path": name}
                   for k, (v, name) in enumerate(zip(logits, names))],
    }
    info = sampler_info(c.res.info, c.i, len(c.res.flipped))
    if info:
        desc["sampler_info"] = info
    return desc


def sampler_info(info: dict, i: int, n: int) -> dict:
    """Sample ``i``'s plain values of a sampler's ``CFBatch.info``: per-sample lists of length
    ``n`` (e.g. the guided ``scale``, the adaptive ``attempts`` and ``t_start``) and scalars
    (e.g. ``num_steps``); tensors such as masks are written separately."""
    plain = (bool, int, float, str)
    out = {}
    for k, v in info.items():
        if isinstance(v, list) and len(v) == n and isinstance(v[i], plain):
            out[k] = v[i]
        elif isinstance(v, plain):
            out[k] = v
    return out


def info_distributions(results: list[dict]) -> dict:
    """Over result dicts: for each per-image ``sampler_info`` key, the count of each value
    (``{"attempts": {"1": 40, "2": 8}, "t_start": {"400": 40, …}}``) when it takes few distinct
    values (integers, booleans), else its mean."""
    from collections import Counter
    keys = sorted({k for r in results for k in r.get("sampler_info", {})})
    out = {}
    for k in keys:
        vals = [r["sampler_info"][k] for r in results if k in r.get("sampler_info", {})]
        if all(isinstance(v, (bool, int, str)) for v in vals):
            out[k] = {str(v): c for v, c in sorted(Counter(vals).items(), key=lambda e: str(e[0]))}
        else:
            out[k] = {"mean": float(np.mean(vals))}
    return out


def rewrite_manifest(out: Path, order: list[str], extra: dict[str, dict]) -> dict[str, dict]:
    """Manifest = finished folders + failures/unreadables recorded this or an earlier run."""
    done = rf.finished(out)
    entries = {}
    for image_id in order:
        if image_id in done:
            r = done[image_id]
            entries[image_id] = {"image": image_id, "status": r["status"],
                                 "reason": None if r["status"] == "ok" else
                                 "decision did not flip within the iteration budget"}
        elif image_id in extra:
            entries[image_id] = extra[image_id]
    rf.write_manifest(out, entries.values())
    return entries


def summarize(out: Path, method: str, settings: dict) -> dict:
    done = rf.finished(out)
    manifest = rf.read_manifest(out)
    vals = list(done.values())
    n_ok = sum(r["flipped"] for r in vals)
    summary = {
        "n": len(manifest), "n_generated": len(vals),
        "n_failed": sum(e["status"] == "failed" for e in manifest.values()),
        "n_unreadable": sum(e["status"] == "unreadable" for e in manifest.values()),
        "flip_rate": n_ok / len(vals) if vals else 0.0,
        "mean_l1": float(np.mean([r["l1"] for r in vals])) if vals else None,
        "mean_l2": float(np.mean([r["l2"] for r in vals])) if vals else None,
        "mean_iterations": float(np.mean([r["iterations"] for r in vals])) if vals else None,
        "seconds_per_image": float(np.mean([r["seconds"] for r in vals])) if vals else None,
        "method": method, "settings": settings,
    }
    dist = info_distributions(vals)
    if dist:
        summary["sampler_info"] = dist
    rf.write_summary(out, summary)
    return summary


def run(items: list[Item], problem: Problem, out, method: str = DEFAULT_METHOD, target="auto",
        batch_size: int = 8, options: dict | None = None, settings: dict | None = None,
        progress: bool = True, num_cfs: int = 1) -> dict:
    """Generate counterfactuals for ``items`` into ``out``; returns the summary.

    ``target``: ``"auto"`` flips the current decision, or 0 / 1 for a fixed direction. Images
    already finished in ``out`` are skipped (resume); unreadable inputs and non-finite samples are
    reported in the manifest and the rest of the batch goes on. ``num_cfs``: up to that many
    different counterfactuals per image (:mod:`dvce.diverse`).
    """
    out = Path(out)
    sampler = get_sampler(method)
    options = dict(options or {})
    settings = run_settings(method, options, settings, num_cfs)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    order, todo, extra = resume_state(items, out, settings)
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"lDVCE ({method})",
               unit="img", disable=not progress)
    for batch in _batches(todo, batch_size):
        extra.update(generate_batch(batch, problem, out, sampler, target, options, settings,
                                    num_cfs))
        bar.update(len(batch))
        rewrite_manifest(out, order, extra)
    bar.close()
    rewrite_manifest(out, order, extra)
    return summarize(out, method, settings)


def run_settings(method: str, options: dict, settings: dict | None, num_cfs: int) -> dict:
    """What every ``result.json`` of a run records about how it was made (checks ``num_cfs``):
    the ``options`` given and, in ``sampler_options``, every option the sampler ran with (its
    defaults filled in), so that a run stays reproducible after a default changes; with
    ``num_cfs`` > 1 also the rule of :mod:`dvce.diverse`: its :data:`~dvce.diverse.KEEP_OUT_REL`,
    the later rounds' options (``later_options``) and :data:`~dvce.diverse.MAX_L1_RATIO`."""
    check_method(method, num_cfs)
    check_options(method, options)
    return {"method": method, "options": options,
            "sampler_options": {**sampler_defaults(method), **options}, **(settings or {}),
            **({"num_cfs": num_cfs, "keep_out_rel": KEEP_OUT_REL,
                "later_options": DIVERSE[method], "max_l1_ratio": MAX_L1_RATIO}
               if num_cfs > 1 else {})}


def resume_state(items: list[Item], out, settings: dict | None = None
                 ) -> tuple[list[str], list[Item], dict[str, dict]]:
    """Where a run into ``out`` stands: ``(order, todo, records)``.

    ``order`` is the input order of the ids, ``todo`` the items without a finished folder or a
    failure record, ``records`` the failed entries of the manifest (kept, not retried: a
    non-finite sample comes out the same again). Inputs recorded unreadable are tried again,
    since reading costs nothing and the file may have been replaced.
    Creates ``out``, removes folders left half-written by a killed run and the summary of an
    earlier run (written again when this one finishes, so a run stopped midway never looks
    finished). With ``settings`` (:func:`run_settings`), refuses to resume a run made otherwise
    (:data:`RUN_IDENTITY`).
    """
    out = Path(out)
    order = [it.image_id for it in items]
    if not order:
        raise ValueError("no input images: nothing to generate")
    repeated = sorted(i for i, k in Counter(order).items() if k > 1)
    if repeated:
        raise ValueError(f"image ids must be unique, but {', '.join(map(repr, repeated[:5]))} "
                         "occur more than once (two files share a name stem, or an index is "
                         "given twice)")
    out.mkdir(parents=True, exist_ok=True)
    rf.clean_partials(out)
    (out / rf.SUMMARY).unlink(missing_ok=True)
    done = rf.finished(out)
    if settings is not None:
        check_same_run(out, settings, done)
    extra = kept_records(rf.read_manifest(out))
    todo = [it for it in items if it.image_id not in done and it.image_id not in extra]
    return order, todo, extra


def kept_records(records: dict[str, dict]) -> dict[str, dict]:
    """The manifest records a resumed run keeps instead of trying again: the failed samples
    (unreadable inputs are read again, see :func:`resume_state`)."""
    return {k: v for k, v in records.items() if v["status"] == "failed"}


#: What makes a run folder one run (``result.json`` keys): ``evaluate``, the study and the
#: summary read every item of a folder as made the same way. ``sampler_options`` (the options
#: with the defaults of their time) keeps a run begun before a default changed from being finished
#: with the new one; older runs, which did not record it, are compared on the rest.
RUN_IDENTITY = ("method", "num_cfs", "keep_out_rel", "later_options", "max_l1_ratio", "options",
                "sampler_options", "attribute", "classifier", "ldm", "dtype")


def _identity(result: dict) -> dict:
    """The :data:`RUN_IDENTITY` of a ``result.json`` or of :func:`run_settings`, JSON-normalised
    (tuples as lists); keys an older run did not record are left out, except the
    :mod:`dvce.diverse` rule of a set, which is then the one before it was recorded."""
    have = {k: result[k] for k in RUN_IDENTITY if result.get(k) is not None}
    have.setdefault("num_cfs", 1)
    if have["num_cfs"] > 1:  # sets made before 2026-12-07: later rounds as the first, no cap
        have.setdefault("later_options", {})
        have.setdefault("max_l1_ratio", "none")
    return json.loads(json.dumps(have, default=str))


def check_same_run(out, settings: dict, done: dict[str, dict] | None = None) -> None:
    """A resumed run must be made the way its finished items (``done``, default: read from
    ``out``) were: the same :data:`RUN_IDENTITY` (method, options, classifier, attribute, LDM,
    precision, counterfactuals per image). Raises ValueError naming what differs otherwise."""
    out = Path(out)
    done = rf.finished(out) if done is None else done
    want = _identity(settings)
    for image_id, result in done.items():
        have = _identity(result)
        differ = [k for k in RUN_IDENTITY if k in have and k in want and have[k] != want[k]]
        if differ:
            was = ", ".join(f"{k}={have[k]}" for k in differ)
            now = ", ".join(f"{k}={want[k]}" for k in differ)
            raise ValueError(
                f"{out} already holds counterfactuals made with {was} (e.g. {out / image_id}); "
                f"this run asks for {now}. Resume with the same settings, or write to a new --out.")


def generate_batch(batch: list[Item], problem: Problem, out: Path, sampler, target, options: dict,
                   settings: dict, num_cfs: int = 1) -> dict[str, dict]:
    """Load one batch, run the sampler on it and write a folder per image; returns the failure
    and unreadable records of the batch (``{image_id: manifest entry}``). With ``num_cfs`` > 1,
    up to that many counterfactuals per image (:mod:`dvce.diverse`).

    The sampler sees exactly the readable images of ``batch`` in order, so a batch gives the same
    results wherever it runs (the distributed runner shards whole batches for that reason).
    """
    records: dict[str, dict] = {}
    xs, ok_items = [], []
    for it in batch:
        try:
            xs.append(it.load())
            ok_items.append(it)
        except (UnreadableImageError, OSError, KeyError) as e:
            records[it.image_id] = {"image": it.image_id, "status": "unreadable", "reason": str(e)}
    if not ok_items:
        return records
    x = torch.stack(xs)
    with torch.no_grad():
        logit = problem.logit(x.to(problem.ldm.device))
    tgt = (logit.cpu() <= 0).float() if target == "auto" else torch.full((len(x),), float(target))
    t0 = time.perf_counter()
    made = counterfactual_rounds(problem, x, tgt, sampler, options, num_cfs,
                                 settings.get("later_options"))
    secs = (time.perf_counter() - t0) / len(x)
    for i, it in enumerate(ok_items):
        keep = ranked(made[i], x[i])
        if not keep:
            records[it.image_id] = {"image": it.image_id, "status": "failed",
                                    "reason": made[i][0].failed}
            continue
        write_result_folder(out, it.image_id, x[i], keep, int(tgt[i]), settings, secs,
                            it.source, num_cfs)
    return records


def _batches(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
