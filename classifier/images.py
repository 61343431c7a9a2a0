"""Image files in, tensors out (and back): the one place that knows about modes, sizes and EXIF.

Tensors are float (3, H, W) in [-1, 1] (``(x - 0.5) / 0.5``), the range the classifiers and the
VQ autoencoder expect.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fileio import atomic_write_bytes, list_image_files


class UnreadableImageError(ValueError):
    """A file that is not a readable image (the message names the path)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB from any mode: EXIF orientation applied, alpha composited onto white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Scale the short side to ``size`` and crop the centre square (the CelebA-HQ convention)."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_image(data: bytes, size: int | None = None, source: str = "<bytes>") -> Image.Image:
    """Decode image bytes to an RGB PIL image, optionally resized/cropped to ``size``."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError as e:  # its message names a BytesIO object, not the file
        raise UnreadableImageError(f"{source}: not a readable image (not a format PIL knows)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise UnreadableImageError(f"{source}: not a readable image ({e})") from e
    img = to_rgb(img)
    return resize_center_crop(img, size) if size else img


def load_pil(path: str | os.PathLike, size: int | None = None) -> Image.Image:
    """Read an image file as RGB; raises :class:`UnreadableImageError` naming the path."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnreadableImageError(f"{path}: cannot read file ({e})") from e
    return decode_image(data, size, source=str(path))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().sub_(0.5).div_(0.5)


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor in [-1, 1] -> uint8 (H, W, 3)."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round()
    return x.permute(1, 2, 0).to(torch.uint8).numpy()


def load_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Image file -> (3, size, size) tensor in [-1, 1]."""
    return pil_to_tensor(load_pil(path, size))


def save_image(x: torch.Tensor | np.ndarray, path: str | os.PathLike) -> None:
    """Write a (3, H, W) [-1, 1] tensor or (H, W, 3) uint8 array as PNG, atomically."""
    arr = tensor_to_uint8(x) if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.uint8)
    atomic_write_bytes(path, encode_png(arr))


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class FolderImages:
    """Images read from a folder: ids (file stems), tensors, and the files that were skipped."""
    ids: list[str]
    paths: list[Path]
    images: list[torch.Tensor]
    problems: list[tuple[Path, str]]


def load_folder(folder: str | os.PathLike, size: int) -> FolderImages:
    """Load every readable image in ``folder`` at ``size``; unreadable files are reported, not fatal."""
    out = FolderImages([], [], [], [])
    for p in list_image_files(folder):
        try:
            out.images.append(load_image(p, size))
        except UnreadableImageError as e:
            out.problems.append((p, str(e)))
            continue
        out.ids.append(p.stem)
        out.paths.append(p)
    return out
