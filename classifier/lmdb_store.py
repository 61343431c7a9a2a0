"""The diffae CelebA-HQ LMDB layout: keys ``f"{size}-{idx:05d}"`` -> PNG/JPEG bytes, plus ``length``."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

import lmdb


def image_key(size: int, idx: int) -> bytes:
    return f"{size}-{str(idx).zfill(5)}".encode("utf-8")


def write_lmdb(path: str | os.PathLike, items: Iterable[bytes], size: int, map_size: int = 1 << 34):
    """Write encoded images as ``{size}-{idx:05d}`` keys and a ``length`` key.

    Written to ``<path>.partial`` and renamed at the end, so an interrupted build never leaves an
    LMDB that looks complete.
    """
    path = Path(path)
    close_lmdb(path)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    env = lmdb.open(str(tmp), map_size=map_size, subdir=True, lock=True)
    n = 0
    try:
        txn = env.begin(write=True)
        for n, data in enumerate(items, start=1):
            txn.put(image_key(size, n - 1), data)
            if n % 1000 == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(b"length", str(n).encode("utf-8"))
        txn.commit()
    finally:
        env.close()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return n


_ENVS: dict[tuple[str, int], lmdb.Environment] = {}


def open_lmdb(path: str | os.PathLike) -> lmdb.Environment:
    """Read-only, lock-free handle, one per (file, process): py-lmdb refuses to open the same
    environment twice in a process, and handles must not be inherited by forked workers."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LMDB not found: {path}")
    key = (str(path.resolve()), os.getpid())
    env = _ENVS.get(key)
    if env is None:
        for other in [k for k in _ENVS if k[0] == key[0]]:
            # Inherited from the parent through fork (DataLoader workers): py-lmdb still counts
            # it as open here, so close this process's copy of the mapping before reopening.
            # Read-only and lock-free, this does not disturb the parent.
            _ENVS.pop(other).close()
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                        max_readers=126, subdir=path.is_dir())
        _ENVS[key] = env
    return env


def close_lmdb(path: str | os.PathLike) -> None:
    """Close this process's handle (before rewriting the file)."""
    env = _ENVS.pop((str(Path(path).resolve()), os.getpid()), None)
    if env is not None:
        env.close()


def lmdb_info(path: str | os.PathLike) -> tuple[int, int]:
    """(length, key size) of an LMDB in the diffae layout (the size is read off the first key)."""
    env = open_lmdb(path)
    with env.begin() as txn:
        raw = txn.get(b"length")
        size = None
        for key in txn.cursor().iternext(keys=True, values=False):
            k = key.decode("utf-8", "replace")
            if "-" in k and k.split("-")[0].isdigit():
                size = int(k.split("-")[0])
                break
    if raw is None or size is None:
        raise ValueError(f"{path}: not an LMDB in the diffae layout (no 'length' or no "
                         f"'<size>-<index>' keys)")
    return int(raw), size
