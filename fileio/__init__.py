"""Neutral file helpers shared by every package: atomic writes, JSON, image-file listing.

Depends on the standard library and numpy only, so every package (``study`` without torch
included) can use it. Writers never leave a half-written file: they write a temporary name in the
same folder and rename it.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(o: Any) -> Any:
    """A JSON-safe copy of ``o``: numpy and torch scalars/arrays become numbers/lists, paths become
    strings, and non-finite floats become ``None`` (strict JSON has no NaN)."""
    if isinstance(o, dict):
        return {str(k): to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [to_jsonable(v) for v in o]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, np.ndarray):
        return to_jsonable(o.tolist())
    if isinstance(o, os.PathLike):
        return str(o)
    if hasattr(o, "tolist") and callable(o.tolist):  # torch tensors, without importing torch
        return to_jsonable(o.tolist())
    return o


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """``obj`` (sanitised by :func:`to_jsonable`) as JSON at ``path``, atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent))
    return path


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON at ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    """Every regular file in ``folder`` (sorted), images or not: non-images are reported later."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
