"""Write a toyfaces dataset in the CelebA-HQ formats (LMDB + attribute file) with masks and factors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from classifier.dataset import write_attribute_file
from classifier.images import encode_png
from classifier.lmdb_store import write_lmdb
from fileio import write_json
from toyfaces.render import MODELLED, Factors, Spurious, labels_of, render, sample_factors

LMDB_NAME = "toyfaces.lmdb"
ATTR_NAME = "CelebAMask-HQ-attribute-anno.txt"
MASKS_NAME = "masks.npz"
META_NAME = "meta.json"


def make_dataset(out_dir: str | os.PathLike, n: int = 2000, seed: int = 0, size: int = 64,
                 spurious: Spurious | None = None, progress: bool = True) -> Path:
    """Render ``n`` faces into ``out_dir``: ``toyfaces.lmdb``, the attribute file, ``masks.npz``
    (bit-packed region masks per modelled attribute) and ``meta.json`` (factors and settings).

    ``meta.json`` is written last: its presence marks a complete dataset.
    """
    if n < 1:
        raise ValueError(f"a toyfaces dataset needs at least one face (n={n})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_NAME).unlink(missing_ok=True)
    factors = sample_factors(n, seed, spurious)
    chunk = 500
    masks = {a: [] for a in MODELLED}

    def encoded():
        bar = tqdm(total=n, desc="rendering toyfaces", unit="img", disable=not progress)
        for start in range(0, n, chunk):
            imgs, m = render(factors.take(slice(start, start + chunk)), size, with_masks=True)
            for a in MODELLED:
                masks[a].append(np.packbits(m[a], axis=-1))
            for img in imgs:
                yield encode_png(img)
            bar.update(len(imgs))
        bar.close()

    write_lmdb(out / LMDB_NAME, encoded(), size=size)
    write_attribute_file(out / ATTR_NAME, labels_of(factors))
    np.savez_compressed(out / MASKS_NAME, size=size, **{a: np.concatenate(v) for a, v in masks.items()})
    meta = {"n": n, "seed": seed, "size": size, "spurious": None if spurious is None else vars(spurious),
            "modelled": list(MODELLED), "factors": factors.records()}
    write_json(out / META_NAME, meta, indent=None)
    return out


def render_rows(n: int, seed: int, rows, size: int = 64, spurious: Spurious | None = None):
    """The faces and masks that ``make_dataset(out, n, seed, size, spurious)`` writes at ``rows``,
    rendered without writing (or rendering) the rest of the dataset.

    Returns images uint8 (len(rows), size, size, 3) and masks: attribute -> bool (len(rows),
    size, size). Every face is drawn from its own factors (its pixel noise included), so a row
    is the same image either way.
    """
    factors = sample_factors(n, seed, spurious).take(np.asarray(list(rows), dtype=np.int64))
    return render(factors, size, with_masks=True)


def is_complete(out_dir: str | os.PathLike) -> bool:
    return (Path(out_dir) / META_NAME).exists()


def load_meta(out_dir: str | os.PathLike) -> dict:
    return json.loads((Path(out_dir) / META_NAME).read_text())


def load_factors(out_dir: str | os.PathLike) -> Factors:
    return Factors.from_records(load_meta(out_dir)["factors"])


def load_masks(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Ground-truth region masks: attribute name -> bool array (N, H, W)."""
    path = Path(out_dir) / MASKS_NAME
    if not path.exists():
        raise FileNotFoundError(f"no toyfaces masks at {path} (make them with `ldvce toy make-data`)")
    with np.load(path) as z:
        size = int(z["size"])
        return {k: np.unpackbits(z[k], axis=-1, count=size).astype(bool) for k in z.files if k != "size"}


def paths(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(lmdb path, attribute file path) of a toyfaces dataset folder (the CelebA-HQ dataset-folder
    layout that ``classifier.dataset.dataset_files`` reads)."""
    out = Path(out_dir)
    return out / LMDB_NAME, out / ATTR_NAME
