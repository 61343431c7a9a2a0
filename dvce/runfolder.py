"""The run folder of ``ldvce generate``: the one module that reads and writes its layout.

Layout of a run folder ``RUN``::

    RUN/<image_id>/original.png reconstruction.png counterfactual.png diff.png diff.npy
                   sequence/000.png … sequence.gif [mask.npy] result.json
                   [cf2/ cf3/ …]   with --num-cfs K: counterfactual rank r ≥ 2 (counterfactual.png
                                   diff.png diff.npy sequence/ sequence.gif [mask.npy])
    RUN/manifest.jsonl   one line per input: {"image", "status", "reason"}
    RUN/summary.json     n, flip_rate, mean_l1, seconds_per_image, method, …
    RUN/.<image_id>.partial/   an item being written (never read as a result)

An item is *finished* when its folder holds a readable ``result.json``; items are written under a
``.partial`` name and renamed when complete, so a run killed at any point never leaves a folder
that looks finished. ``result.json["frames"]`` lists every frame of the sequence with its logit
and its ``path`` relative to the item folder (frame 0 the original, 1 the DDIM reconstruction,
2.. the sampler's steps). With ``--num-cfs`` the item's own files are rank 1 (the smallest L1
among the counterfactuals that flipped) and ``result.json["counterfactuals"]`` lists every rank
(``rank``, ``path``, ``flipped``, ``l1``, ``frames``…); runs without it have one counterfactual,
which :attr:`RunItem.counterfactuals` reports the same way.

Depends on the standard library and the :mod:`fileio` helpers only (no torch), so ``study`` reads runs
without importing torch.
"""
from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from fileio import atomic_write_text, read_json, write_json

RESULT = "result.json"
MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
METRICS = "metrics.json"
DISAGREEMENTS = "oracle_disagreements.png"  # ldvce evaluate --oracle: the flips it does not confirm
SEQUENCE = "sequence"
ORIGINAL = "original.png"
RECONSTRUCTION = "reconstruction.png"
COUNTERFACTUAL = "counterfactual.png"
DIFF = "diff.png"
DIFF_NPY = "diff.npy"
MASK_NPY = "mask.npy"
GIF = "sequence.gif"
STATUSES = ("ok", "not_flipped", "failed", "unreadable")


def frame_name(k: int, rank_dir: str = ".") -> str:
    """Relative path of frame ``k`` inside an item folder (of the counterfactual in ``rank_dir``)."""
    name = f"{SEQUENCE}/{k:03d}.png"
    return name if rank_dir == "." else f"{rank_dir}/{name}"


def rank_folder(rank: int) -> str:
    """Where counterfactual ``rank`` of an item lives, relative to the item folder."""
    return "." if rank == 1 else f"cf{rank}"


class _CounterfactualFiles:
    """The files of one counterfactual, in the folder its ``cf_folder`` names."""
    cf_folder: Path

    @property
    def counterfactual(self) -> Path:
        return self.cf_folder / COUNTERFACTUAL

    @property
    def diff(self) -> Path:
        return self.cf_folder / DIFF

    @property
    def mask(self) -> Path | None:
        p = self.cf_folder / MASK_NPY
        return p if p.is_file() else None


@dataclass(frozen=True)
class RankedCounterfactual(_CounterfactualFiles):
    """One of an item's counterfactuals: its rank (1 = smallest change), folder, description
    (rank 1: the item's ``result.json``) and the item's folder (frame paths are relative to it)."""
    rank: int
    folder: Path
    result: dict
    item_folder: Path

    def frame_paths(self) -> list[Path]:
        return frame_paths(self.item_folder, self.result)

    @property
    def cf_folder(self) -> Path:
        return self.folder

    @property
    def flipped(self) -> bool:
        return bool(self.result.get("flipped"))


def natural_key(name: str) -> list:
    """Sort key that puts ``frame_2`` before ``frame_10`` and ``900`` before ``27300``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))]


@dataclass(frozen=True)
class RunItem(_CounterfactualFiles):
    """One finished counterfactual: its id, folder and ``result.json``.

    ``rank_dir``: for an item seen through a further counterfactual of its image (a
    ``--num-cfs`` run, :func:`rank_item`), that counterfactual's folder relative to ``folder``;
    ``result`` is then that counterfactual's description."""
    image_id: str
    folder: Path
    result: dict
    rank_dir: str = "."

    @property
    def original(self) -> Path:
        return self.folder / ORIGINAL

    @property
    def reconstruction(self) -> Path:
        return self.folder / RECONSTRUCTION

    @property
    def cf_folder(self) -> Path:
        return self.folder / self.rank_dir

    @property
    def switch_frame(self) -> int | None:
        sf = self.result.get("switch_frame")
        return int(sf) if sf is not None else None

    @property
    def source_index(self) -> int | None:
        """The dataset row the image came from (LMDB runs), else the id if it is a number."""
        row = (self.result.get("source") or {}).get("index")
        if row is None and str(self.image_id).isdigit():
            row = int(self.image_id)
        return None if row is None else int(row)

    def frame_paths(self) -> list[Path]:
        """The sequence's frame images in order (see :func:`frame_paths`)."""
        return frame_paths(self.folder, self.result)

    @property
    def counterfactuals(self) -> list[RankedCounterfactual]:
        """Every counterfactual of the item, rank 1 first (one for runs without ``--num-cfs``)."""
        listed = self.result.get("counterfactuals")
        if not isinstance(listed, list) or not listed:
            rank = split_rank_id(self.image_id)[1] if self.rank_dir != "." else 1
            return [RankedCounterfactual(rank, self.folder / self.rank_dir, self.result, self.folder)]
        return [RankedCounterfactual(int(d["rank"]), self.folder / d.get("path", "."), d, self.folder)
                for d in sorted(listed, key=lambda d: int(d["rank"]))]


def frame_paths(folder, result: dict | None = None) -> list[Path]:
    """Frame images of an item folder, in sequence order.

    The ``path`` of each ``result["frames"]`` entry when all exist (what ``ldvce generate``
    writes); else ``sequence/*.png``, ``frames/*.png`` or ``frame*.png`` in natural order (older
    runs and other tools' folders).
    """
    folder = Path(folder)
    frames = (result if result is not None else read_result(folder) or {}).get("frames")
    if isinstance(frames, list) and frames and all(isinstance(f, dict) for f in frames):
        rels = [f.get("path") or f.get("image") or f.get("file") for f in frames]
        if all(rels) and all((folder / r).is_file() for r in rels):
            return [folder / r for r in rels]
    for pattern in (f"{SEQUENCE}/*.png", "frames/*.png", "frames/*.jpg", "frame*.png"):
        found = sorted(folder.glob(pattern), key=lambda p: natural_key(p.name))
        if found:
            return found
    return []


def read_result(folder) -> dict | None:
    """``folder/result.json`` as a dict, or None when absent or unreadable."""
    r = read_json(Path(folder) / RESULT)
    return r if isinstance(r, dict) else None


def _is_item_dir(d: Path) -> bool:
    return d.is_dir() and not d.name.startswith(".")


def finished(run_dir) -> dict[str, dict]:
    """Finished items of a run: ``{image_id: result}`` (unordered; see :func:`list_items`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return {}
    out = {}
    for d in run_dir.iterdir():
        if _is_item_dir(d):
            r = read_result(d)
            if r is not None:
                out[d.name] = r
    return out


def run_state(run_dir) -> dict:
    """Whether a run folder is whole: ``finished`` (its summary exists: the run reached its end;
    a stopped or still running one has none) and ``broken`` (item folders whose ``result.json``
    is missing or unreadable, so readers skip them)."""
    run_dir = Path(run_dir)
    broken = sorted((d.name for d in run_dir.iterdir() if _is_item_dir(d) and read_result(d) is None),
                    key=natural_key) if run_dir.is_dir() else []
    return {"finished": (run_dir / SUMMARY).is_file(), "broken": broken}


def list_items(run_dir) -> list[RunItem]:
    """Finished items of a run, in manifest order (input order), the rest in natural order."""
    run_dir = Path(run_dir)
    done = finished(run_dir)
    order = [k for k in read_manifest(run_dir) if k in done]
    order += sorted((k for k in done if k not in set(order)), key=natural_key)
    return [RunItem(k, run_dir / k, done[k]) for k in order]


def get_item(run_dir, image_id: str) -> RunItem | None:
    """The finished item ``image_id`` of a run (``<id>.cf<r>``: its counterfactual of rank r,
    :func:`rank_item`), or None."""
    folder = Path(run_dir) / str(image_id)
    image, rank = split_rank_id(image_id)
    if rank > 1 and not folder.is_dir():
        base = get_item(run_dir, image)
        return rank_item(base, rank) if base is not None else None
    r = read_result(folder) if _is_item_dir(folder) else None
    return RunItem(str(image_id), folder, r) if r is not None else None


def find_folder(root, image_id: str, layout: str = "{image_id}") -> Path | None:
    """The folder of ``image_id`` under ``root``: ``root/layout.format(image_id=…)`` when it
    exists, else the first sub-folder whose name contains the id as a token (``folder_IMG_27300``,
    ``27300_1.0_misclassified``), else None. Finished or not: other tools' folders count too."""
    if root is None or not Path(root).is_dir():
        return None
    root = Path(root)
    d = root / layout.format(image_id=image_id)
    if d.is_dir():
        return d
    for d in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if _is_item_dir(d) and str(image_id) in re.split(r"[^0-9A-Za-z]+", d.name):
            return d
    return None


def find_item(root, image_id: str) -> RunItem | None:
    """The finished item of ``image_id`` under ``root`` (located by :func:`find_folder`), or None;
    ``<image_id>.cf<r>`` is its counterfactual of rank r (:func:`rank_item`)."""
    image, rank = split_rank_id(image_id)
    if rank > 1 and find_folder(root, image_id) is None:
        base = find_item(root, image)
        return rank_item(base, rank) if base is not None else None
    folder = find_folder(root, image_id)
    r = read_result(folder) if folder is not None else None
    return RunItem(str(image_id), folder, r) if r is not None else None


#: The id of an image's counterfactual of rank r ≥ 2 where a tool needs one id per
#: counterfactual (the study app): ``<image_id>.cf<r>``.
RANK_ID = re.compile(r"^(?P<image>.+)\.cf(?P<rank>[2-9]|[1-9]\d+)$")


def rank_item(item: RunItem, rank: int) -> RunItem | None:
    """``item`` seen through its counterfactual ``rank`` (None when it has none): id
    ``<image_id>.cf<rank>`` (rank 1: the item itself), the same folder and original, that
    counterfactual's description as result (frames, switch frame, flipped…)."""
    cfs = item.counterfactuals
    if not 1 <= rank <= len(cfs):
        return None
    if rank == 1:
        return item
    c = cfs[rank - 1]
    shared = {k: v for k, v in item.result.items() if k != "counterfactuals"}  # source, target…
    own = {k: v for k, v in c.result.items() if k != "path"}  # the folder is rank_dir
    return RunItem(f"{item.image_id}.cf{rank}", item.folder,
                   {**shared, **own, "image": f"{item.image_id}.cf{rank}",
                    "status": "ok" if c.flipped else "not_flipped"}, rank_folder(rank))


def split_rank_id(image_id: str) -> tuple[str, int]:
    """``("27300", 2)`` for ``27300.cf2`` (:data:`RANK_ID`), ``(image_id, 1)`` for any other id."""
    m = RANK_ID.match(str(image_id))
    return (m["image"], int(m["rank"])) if m else (str(image_id), 1)


def with_ranks(items: list[RunItem]) -> list[RunItem]:
    """Every item followed by its further counterfactuals as items (:func:`rank_item`)."""
    return [r for it in items for r in
            [rank_item(it, k) for k in range(1, len(it.counterfactuals) + 1)] if r is not None]


def is_run(path) -> bool:
    """True when ``path`` is a folder with at least one finished item."""
    path = Path(path)
    return path.is_dir() and any(_is_item_dir(d) and (d / RESULT).is_file() for d in path.iterdir())


# ------------------------------------------------------------------------------- manifest/summary
def read_manifest(run_dir) -> dict[str, dict]:
    """``manifest.jsonl`` as ``{image_id: entry}`` in file order (malformed lines skipped)."""
    p = Path(run_dir) / MANIFEST
    entries: dict[str, dict] = {}
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                e = json.loads(line)
                entries[str(e["image"])] = e
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return entries


def write_manifest(run_dir, entries) -> None:
    """Write manifest entries (an iterable of dicts with ``image``) atomically."""
    atomic_write_text(Path(run_dir) / MANIFEST, "".join(json.dumps(e) + "\n" for e in entries))


def read_summary(run_dir) -> dict | None:
    s = read_json(Path(run_dir) / SUMMARY)
    return s if isinstance(s, dict) else None


def write_summary(run_dir, summary: dict) -> Path:
    return write_json(Path(run_dir) / SUMMARY, summary)


# ------------------------------------------------------------------------------- writing items
def partial_folder(run_dir, image_id: str) -> Path:
    return Path(run_dir) / f".{image_id}.partial"


def clean_partials(run_dir) -> int:
    """Remove items left half-written by a killed run; returns how many."""
    stale = list(Path(run_dir).glob(".*.partial")) if Path(run_dir).is_dir() else []
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    return len(stale)


@contextmanager
def writing_item(run_dir, image_id: str) -> Iterator[Path]:
    """Write one item atomically: yields a temporary folder to fill; on leaving the block the
    caller must have written ``result.json`` (via :func:`write_result`), then the folder is renamed
    into place (replacing an older one). On an error the temporary folder is removed."""
    final = Path(run_dir) / str(image_id)
    tmp = partial_folder(run_dir, image_id)
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / SEQUENCE).mkdir(parents=True)
    try:
        yield tmp
        if not (tmp / RESULT).is_file():
            raise RuntimeError(f"{final}: no {RESULT} written; the item is not finished")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def write_result(folder, result: dict) -> Path:
    """``result.json`` of an item folder (written last: it marks the item finished)."""
    return write_json(Path(folder) / RESULT, result)
