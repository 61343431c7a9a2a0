"""CelebA-HQ attributes over the diffae LMDB layout (any dataset written in the same files)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from classifier.attributes import ATTRIBUTES, attribute_index, attribute_name
from classifier.images import UnreadableImageError, decode_image, pil_to_tensor
from classifier.lmdb_store import image_key, lmdb_info, open_lmdb
from fileio import atomic_write_text

#: What reading a record raises when it is missing (KeyError) or not a readable image.
UNREADABLE = (UnreadableImageError, KeyError)


def unreadable_reason(e: Exception) -> str:
    """The message of an :data:`UNREADABLE` error (a KeyError's str() adds quotes)."""
    return str(e).strip("'\"")


# The seed's split by row of the attribute file, as fractions (30000 rows -> 24000/3000/3000).
SPLIT_FRACTIONS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0), "all": (0.0, 1.0)}
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"


def dataset_files(data: str | os.PathLike, attr_file: str | os.PathLike | None = None
                  ) -> tuple[Path, Path]:
    """(LMDB, attribute file) of a dataset given as an LMDB or as a dataset folder.

    ``data`` is either an LMDB (``celebahq256.lmdb``; then ``attr_file`` is required) or a
    *dataset folder* in the CelebA-HQ layout: exactly one ``*.lmdb`` beside
    ``CelebAMask-HQ-attribute-anno.txt`` (the layout ``toyfaces`` writes, and a tidy way to keep
    the real data). ``attr_file`` overrides the folder's attribute file.
    """
    p = Path(data)
    is_lmdb = p.suffix == ".lmdb" or (p / "data.mdb").exists()
    if is_lmdb:
        if attr_file is None:
            raise ValueError(f"{p} is an LMDB: the attribute file ({ATTRIBUTE_FILE}) must be given "
                             f"too (attr_path / --attr-file)")
        return p, Path(attr_file)
    if not p.is_dir():
        raise FileNotFoundError(f"no dataset at {p}: expected an LMDB or a folder holding one "
                                f"*.lmdb and {ATTRIBUTE_FILE}")
    lmdbs = sorted(p.glob("*.lmdb"))
    if len(lmdbs) != 1:
        found = ", ".join(q.name for q in lmdbs) or "none"
        raise FileNotFoundError(f"{p}: a dataset folder holds exactly one *.lmdb (found: {found})")
    attr = Path(attr_file) if attr_file is not None else p / ATTRIBUTE_FILE
    if not attr.exists():
        raise FileNotFoundError(f"{p}: no attribute file {attr.name} beside {lmdbs[0].name}")
    return lmdbs[0], attr


def read_attribute_file(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``CelebAMask-HQ-attribute-anno.txt``.

    Returns file names, attribute names and a (N, 40) int8 array of -1/+1.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"attribute file not found: {path}")
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a header line")
    names = lines[1].split()
    if tuple(names) != ATTRIBUTES:
        raise ValueError(f"{path}: line 2 must list the 40 CelebA attributes in order, got {names[:5]}…")
    files, rows = [], []
    for lineno, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 41:
            raise ValueError(f"{path}:{lineno}: expected a file name and 40 values, got {len(parts)} fields")
        try:
            rows.append([int(v) for v in parts[1:]])
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: non-integer attribute value ({e})") from e
        files.append(parts[0])
    return files, names, np.asarray(rows, dtype=np.int8).reshape(-1, len(ATTRIBUTES))


def write_attribute_file(path: str | os.PathLike, labels: np.ndarray, files: list[str] | None = None):
    """Write labels (N, 40) in {-1, 1} in the CelebAMask-HQ format."""
    labels = np.asarray(labels)
    files = files or [f"{i}.jpg" for i in range(len(labels))]
    lines = [str(len(labels)), " ".join(ATTRIBUTES)]
    lines += [f"{f} " + " ".join(f"{int(v):d}" for v in row) for f, row in zip(files, labels)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def split_range(split: str | tuple[int, int], n: int) -> range:
    """Row range of a split: a name in :data:`SPLIT_FRACTIONS` or an explicit (start, stop)."""
    if isinstance(split, (tuple, list)):
        start, stop = int(split[0]), int(split[1])
    elif split in SPLIT_FRACTIONS:
        a, b = SPLIT_FRACTIONS[split]
        start, stop = round(a * n), round(b * n)
    else:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLIT_FRACTIONS)} or (start, stop)")
    return range(max(0, start), min(n, stop))


class CelebHQAttrDataset(Dataset):
    """CelebA-HQ images with their 40 attribute labels.

    Parameters
    ----------
    lmdb_path : path to ``celebahq256.lmdb`` (diffae layout) or any LMDB in that layout.
    attr_path : path to ``CelebAMask-HQ-attribute-anno.txt``.
    split : ``"train"``, ``"val"``, ``"test"``, ``"all"`` or explicit ``(start, stop)`` rows.
    image_size : resize/crop to this size (default: the LMDB's own size).
    augment : random horizontal flips; the default turns them on for the train split only.
    indices : explicit rows instead of ``split``.
    skip_unreadable : a record that is missing or not a readable image becomes
        ``{"unreadable": row, "reason": ...}`` instead of raising, so that one bad record of a
        30000-image LMDB does not stop a pass over the rest; batch such samples with
        :func:`collate_readable`, which leaves them out and names them.

    Each sample is a dict ``{"img": (3, S, S) float in [-1, 1], "labels": (40,) float 0/1,
    "index": row}``. The LMDB is opened lazily in each process, so the dataset is safe to use with
    DataLoader workers and threads.
    """

    def __init__(self, lmdb_path, attr_path, split="all", image_size: int | None = None,
                 augment: bool | None = None, indices=None, skip_unreadable: bool = False):
        self.lmdb_path = str(lmdb_path)
        self.attr_path = str(attr_path)
        self.length, self.key_size = lmdb_info(lmdb_path)
        self.files, _, labels = read_attribute_file(attr_path)
        if len(labels) < self.length:
            raise ValueError(f"{attr_path} has {len(labels)} rows but {lmdb_path} holds {self.length} "
                             f"images")
        self.labels = torch.from_numpy((labels[: self.length] > 0).astype(np.float32))
        self.indices = (list(indices) if indices is not None
                        else list(split_range(split, self.length)))
        self.split = split
        self.image_size = image_size or self.key_size
        self.augment = (split == "train") if augment is None else augment
        self.skip_unreadable = skip_unreadable

    @staticmethod
    def attribute_index(name: str | int) -> int:
        return attribute_index(name)

    @staticmethod
    def attribute_name(idx: str | int) -> str:
        return attribute_name(idx)

    def __len__(self) -> int:
        return len(self.indices)

    def read_record(self, row: int) -> bytes:
        """The encoded image bytes of attribute-file row ``row``; a missing record is a KeyError
        naming the LMDB, the row and the key."""
        key = image_key(self.key_size, row)
        with open_lmdb(self.lmdb_path).begin(write=False) as txn:  # per-process handle
            data = txn.get(key)
        if data is None:
            raise KeyError(f"{self.lmdb_path}[{row}]: no record (key {key.decode()} is missing)")
        return data

    def read_image(self, row: int) -> torch.Tensor:
        """The image of attribute-file row ``row`` as a [-1, 1] tensor (no augmentation)."""
        return pil_to_tensor(decode_image(self.read_record(row), self.image_size,
                                          source=f"{self.lmdb_path}[{row}]"))

    def __getitem__(self, i: int) -> dict:
        row = self.indices[i]
        try:
            img = self.read_image(row)
        except UNREADABLE as e:
            if not self.skip_unreadable:
                raise
            return {"unreadable": row, "reason": unreadable_reason(e)}
        if self.augment and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return {"img": img, "labels": self.labels[row], "index": row}


def collate_readable(samples: list[dict]) -> dict:
    """Batch the readable samples of a :class:`CelebHQAttrDataset` with ``skip_unreadable``; the
    others are left out and listed as ``batch["unreadable"]``: ``[(row, reason), ...]``. A batch
    of unreadable records only has zero-length ``img``/``labels``/``index`` (consumers skip it)."""
    good = [s for s in samples if "unreadable" not in s]
    bad = [(int(s["unreadable"]), s["reason"]) for s in samples if "unreadable" in s]
    if good:
        batch = default_collate(good)
    else:
        batch = {"img": torch.zeros(0), "labels": torch.zeros(0, len(ATTRIBUTES)),
                 "index": torch.zeros(0, dtype=torch.long)}
    batch["unreadable"] = bad
    return batch


def report_unreadable(unreadable: list[tuple[int, str]], what: str, shown: int = 5) -> str:
    """One warning naming the unreadable records a pass left out (the first ``shown`` reasons)."""
    rows = sorted(set(unreadable))
    lines = [f"warning: {what} left out {len(rows)} unreadable record(s):"]
    lines += [f"  {reason}" for _, reason in rows[:shown]]
    if len(rows) > shown:
        lines.append(f"  ... and {len(rows) - shown} more")
    return "\n".join(lines)
