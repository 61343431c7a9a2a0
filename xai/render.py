"""Pictures of explanations: heatmap images, HRH overlays and the panel figure.

Heatmaps use zennit's ``bwr`` palette on a *symmetric* scale (0 is white, ±vmax are full blue /
red), as ``zennit.image.imgify(..., symmetric=True)`` does. Everything here builds plain RGB
arrays and RGB PIL images: nothing is a palette ("P") image, which Pillow 13 refuses to save
(zennit-crp fix 5 in :mod:`xai.crp`). Figures are drawn with matplotlib's object API (no pyplot state), so rendering is
safe in scripts, tests and threads.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image
from zennit.image import CMAPS, palette as zpalette

from classifier.images import tensor_to_uint8
from fileio import atomic_write_bytes
from xai.lrp import LABELS


# --------------------------------------------------------------------------- colour scales
def palette(cmap: str = "bwr") -> np.ndarray:
    """(256, 3) uint8 colour table: zennit's built-in colour maps, else matplotlib's."""
    if cmap in CMAPS:
        return np.asarray(zpalette(cmap), dtype=np.uint8).reshape(-1, 3)[:256]
    return (matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def colormap(cmap: str = "bwr"):
    """A matplotlib colormap with the same colours as :func:`palette` (for colour bars)."""
    return ListedColormap(palette(cmap) / 255.0, name=f"zennit_{cmap}")


def symmetric_vmax(*maps) -> float:
    """The shared symmetric bound of several heatmaps: max |value| (1.0 if all are zero)."""
    v = max((float(np.nanmax(np.abs(np.asarray(m)))) for m in maps if m is not None and np.size(m)),
            default=0.0)
    return v if v > 0 and np.isfinite(v) else 1.0


def heatmap_rgb(heatmap, vmax: float | None = None, cmap: str = "bwr") -> np.ndarray:
    """(H, W) relevance -> (H, W, 3) uint8 on the symmetric scale [-vmax, vmax] (default: max |h|)."""
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (H, W), got shape {h.shape}")
    vmax = symmetric_vmax(h) if vmax is None else float(vmax)
    idx = np.clip(np.nan_to_num((h / vmax + 1.0) / 2.0, nan=0.5) * 255.0, 0, 255).astype(np.uint8)
    return palette(cmap)[idx]


def to_uint8_image(image) -> np.ndarray:
    """(3, H, W) tensor in [-1, 1], (H, W, 3) float in [0, 1] or uint8 -> (H, W, 3) uint8."""
    if isinstance(image, torch.Tensor):
        return tensor_to_uint8(image)
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a[..., :3] if a.ndim == 3 else np.stack([a] * 3, -1)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.min() < 0:  # [-1, 1]
        a = (a + 1) / 2
    return (np.clip(a[..., :3], 0, 1) * 255).round().astype(np.uint8)


def resize_map(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to (H, W) (nearest for masks of bools)."""
    a = np.asarray(a)
    if a.shape == tuple(size):
        return a
    img = Image.fromarray(a.astype(np.float32))
    return np.asarray(img.resize((size[1], size[0]), Image.NEAREST if a.dtype == bool
                                 else Image.BILINEAR), dtype=np.float32)


def hrh_overlay(image, hrh, alpha: float = 0.5, cmap: str = "gist_heat_r") -> np.ndarray:
    """The seed's HRH picture: the map in white-to-red at ``alpha`` over the (faded) image."""
    img = to_uint8_image(image).astype(np.float32) / 255.0
    h = resize_map(np.asarray(hrh, dtype=np.float32), img.shape[:2])
    top = float(h.max())
    colour = matplotlib.colormaps[cmap](h / top if top > 0 else h)[..., :3]
    out = ((1 - alpha) * img + alpha * colour).clip(0, 1)
    return (out * 255).round().astype(np.uint8)


# --------------------------------------------------------------------------------- files
def rgb_png_bytes(arr: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 array, always as an RGB image (never a palette image)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def save_rgb(arr: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 array as an RGB PNG, atomically."""
    atomic_write_bytes(path, rgb_png_bytes(arr))
    return Path(path)


def _figure(width: float, height: float):
    return Figure(figsize=(width, height))


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG, atomically (RGBA PNG from Agg, never palette)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def heatmap_figure(heatmap, path: str | os.PathLike, title: str | None = None,
                   vmax: float | None = None, cmap: str = "bwr", dpi: int = 120) -> Path:
    """One heatmap with a colour bar on the symmetric scale, like the seed's ``xai_Pre_LRP-0.png``."""
    h = np.asarray(heatmap, dtype=np.float64)
    vmax = symmetric_vmax(h) if vmax is None else float(vmax)
    fig = _figure(3.6, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(h, cmap=colormap(cmap), vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_xticks([]); ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=10)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("relevance", fontsize=8)
    return save_figure(fig, path, dpi=dpi)


# --------------------------------------------------------------------------------- panel
@dataclass
class PanelRow:
    """One row of the panel: an image, its counterfactual (optional), heatmaps and HRH.

    ``heatmaps`` maps a composite name to ``(pre, post)`` 2-D arrays (``post`` None without a
    counterfactual).
    """
    image_id: str
    original: np.ndarray
    counterfactual: np.ndarray | None = None
    heatmaps: dict = field(default_factory=dict)
    hrh: np.ndarray | None = None
    note: str = ""


def panel_figure(rows: Sequence[PanelRow], composites: Sequence[str], path: str | os.PathLike,
                 labels: dict | None = None, title: str | None = None, cell: float = 1.55,
                 shared_scale: bool = True, dpi: int = 120) -> Path:
    """The seed's panel (``usage_images.png``): one row per image; columns original,
    counterfactual, heatmaps of x₀ and x̂₀ per composite, and an HRH column if any row has one.

    Each composite's pre/post pair shares one symmetric scale per row (``shared_scale``), so
    red/blue intensities compare within a pair; the colour bar shows that relative scale.
    """
    labels = {**LABELS, **(labels or {})}
    rows = list(rows)
    if not rows:
        raise ValueError("panel_figure needs at least one row")
    has_cf = any(r.counterfactual is not None for r in rows)
    has_hrh = any(r.hrh is not None for r in rows)
    groups = _panel_groups(composites, labels, has_cf, has_hrh)
    ncols = sum(len(g[1]) for g in groups)
    gap = 0.12  # extra space between column groups, in cells
    width = ncols * cell + (len(groups) - 1) * gap * cell + 0.9
    height = len(rows) * cell + 0.75 + (0.3 if title else 0)
    fig = _figure(width, height)
    top = 1 - (0.75 + (0.3 if title else 0)) / height
    left_margin, right_margin = 0.35 / width, 0.55 / width
    usable = 1 - left_margin - right_margin
    unit = usable / (ncols + (len(groups) - 1) * gap)
    cell_h = (top - 0.02) / len(rows)
    col_x, group_spans = _panel_columns(groups, left_margin, unit, gap)
    names = [n for _, cols in groups for n in cols]
    for ri, row in enumerate(rows):
        y = top - (ri + 1) * cell_h
        cells = _panel_cells(row, composites, has_cf, has_hrh, shared_scale)
        for ci, img in enumerate(cells):
            ax = fig.add_axes([col_x[ci] + unit * 0.03, y + cell_h * 0.03, unit * 0.94, cell_h * 0.94])
            ax.set_xticks([]); ax.set_yticks([])
            if img is None:
                ax.axis("off")
                continue
            ax.imshow(img, interpolation="nearest")
            if ri == 0:
                ax.set_title(names[ci], fontsize=8)
        fig.text(left_margin * 0.5, y + cell_h / 2, row.image_id + (f"\n{row.note}" if row.note else ""),
                 rotation=90, ha="center", va="center", fontsize=6.5)
    _panel_headers(fig, group_spans, unit, top + 0.45 / height, height)
    if title:
        fig.text(0.5, 1 - 0.05 / height, title, ha="center", va="top", fontsize=11)
    if composites:
        _panel_colorbar(fig, [1 - right_margin * 0.75, 0.1, right_margin * 0.22, 0.6 * top],
                        has_cf)
    return save_figure(fig, path, dpi=dpi)


def _panel_groups(composites: Sequence[str], labels: dict, has_cf: bool,
                  has_hrh: bool) -> list[tuple[str, list[str]]]:
    """The panel's column groups: (group header, column titles)."""
    groups = [("Images", ["Original $x_0$"] + (["Countf. $\\hat{x}_0$"] if has_cf else []))]
    for c in composites:
        lab = labels.get(c, c)
        groups.append((lab, [f"{lab} $x_0$"] + ([f"{lab} $\\hat{{x}}_0$"] if has_cf else [])))
    if has_hrh:
        groups.append(("HRH", ["HRH $x_0$"]))
    return groups


def _panel_columns(groups, left_margin: float, unit: float,
                   gap: float) -> tuple[list[float], list[tuple[str, float, float]]]:
    """Left edge of every column and (header, start, end) of every group, in figure
    coordinates: columns ``unit`` wide, groups ``gap`` units apart."""
    col_x, x = [], left_margin
    group_spans = []
    for gname, cols in groups:
        start = x
        for _ in cols:
            col_x.append(x)
            x += unit
        group_spans.append((gname, start, x))
        x += gap * unit
    return col_x, group_spans


def _panel_cells(row: PanelRow, composites: Sequence[str], has_cf: bool, has_hrh: bool,
                 shared_scale: bool) -> list[np.ndarray | None]:
    """One panel row's images, column by column (None: an empty cell)."""
    cells = [to_uint8_image(row.original)]
    if has_cf:
        cells.append(to_uint8_image(row.counterfactual) if row.counterfactual is not None else None)
    for c in composites:
        pre, post = row.heatmaps.get(c, (None, None))
        vmax = symmetric_vmax(pre, post) if shared_scale else None
        cells.append(heatmap_rgb(pre, vmax) if pre is not None else None)
        if has_cf:
            cells.append(heatmap_rgb(post, vmax) if post is not None else None)
    if has_hrh:
        cells.append(hrh_overlay(row.original, row.hrh) if row.hrh is not None else None)
    return cells


def _panel_headers(fig, group_spans, unit: float, header_y: float, height: float) -> None:
    """Each group's bold header over a rule spanning its columns."""
    for gname, x0, x1 in group_spans:
        fig.text((x0 + x1) / 2, header_y, gname, ha="center", va="bottom", fontsize=10,
                 fontweight="bold")
        fig.add_artist(Line2D([x0 + unit * 0.03, x1 - unit * 0.03], [header_y - 0.05 / height] * 2,
                              color="black", linewidth=0.8, transform=fig.transFigure))


def _panel_colorbar(fig, rect: list[float], has_cf: bool) -> None:
    """The relative symmetric scale (−max … +max) of the heatmaps, in axes at ``rect``."""
    cax = fig.add_axes(rect)
    sm = ScalarMappable(norm=Normalize(-1, 1), cmap=colormap("bwr"))
    cb = fig.colorbar(sm, cax=cax, ticks=[-1, 0, 1])
    cb.ax.set_yticklabels(["−max", "0", "+max"], fontsize=7)
    cb.set_label("relevance (per pair)" if has_cf else "relevance (per image)", fontsize=7)


def image_grid_figure(rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: str | os.PathLike,
                      title: str | None = None, cell: float = 1.0, dpi: int = 120) -> Path:
    """A labelled grid: each row a label and a list of RGB images (CRP reference images)."""
    rows = [(lab, list(imgs)) for lab, imgs in rows]
    ncols = max((len(imgs) for _, imgs in rows), default=1) or 1
    width, height = 2.2 + ncols * cell, 0.4 + len(rows) * cell + (0.35 if title else 0)
    fig = _figure(width, height)
    top = 1 - (0.2 + (0.35 if title else 0)) / height
    ch = (top - 0.2 / height) / max(len(rows), 1)
    cw = (1 - 2.2 / width) / ncols
    for ri, (lab, imgs) in enumerate(rows):
        y = top - (ri + 1) * ch
        fig.text(2.1 / width, y + ch / 2, lab, ha="right", va="center", fontsize=7.5)
        for ci, img in enumerate(imgs):
            ax = fig.add_axes([2.2 / width + ci * cw + cw * 0.03, y + ch * 0.03, cw * 0.94, ch * 0.94])
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([]); ax.set_yticks([])
    if title:
        fig.text(0.5, 1 - 0.08 / height, title, ha="center", va="top", fontsize=10)
    return save_figure(fig, path, dpi=dpi)
