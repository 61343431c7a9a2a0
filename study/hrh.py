"""Human relevance heatmaps (HRHs) from the annotation task.

An HRH of an image is, per pixel, the number of participants whose polygons cover that pixel
(the seed's "sum over participants of their filled polygon masks"). A participant who drew
overlapping polygons counts once: the HRH counts *people*, so its maximum is the number of
annotators and a threshold "≥ 50 % of annotators" means what it says. (Summing every polygon
instead differs on the real export in 348 of 1,066,358 counts, on 3 of 17 images.)

Rasterisation rule
------------------
Polygon vertices are in display pixels (``display_size``, 512 in the study) and are scaled by
``analysis_size / display_size`` (512 → 256). A pixel ``(row i, col j)`` covers the square
``[j, j+1) × [i, i+1)`` of the scaled image, and it is inside a polygon when its **centre**
``(j + 0.5, i + 0.5)`` is inside by the even–odd rule, with half-open crossings so that a
point on a shared edge belongs to exactly one side. This is the geometric reading of browser
coordinates (pixel k spans [k, k+1)). Libraries that put pixel centres on integers (PIL's
``ImageDraw.polygon``, ``skimage.draw.polygon``) differ from it by half a pixel at the edges,
and PIL also paints the outline; those are the "polygon-edge rasterisation differences".
Polygons with fewer than 3 vertices enclose no area and cover nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .export import ADD_TOOL, Polygon, StudyExport


def rasterize_polygon(points: Sequence[tuple[float, float]], display_size: int = 512,
                      analysis_size: int = 256) -> np.ndarray:
    """Filled mask of one polygon at the analysis resolution.

    Parameters
    ----------
    points : sequence of (x, y)
        Vertices in display pixels.
    display_size, analysis_size : int
        Side lengths of the displayed image and of the output mask.

    Returns
    -------
    numpy.ndarray of bool, shape (analysis_size, analysis_size)
    """
    size = int(analysis_size)
    mask = np.zeros((size, size), dtype=bool)
    if len(points) < 3:
        return mask
    s = analysis_size / display_size
    p = np.asarray(points, dtype=np.float64) * s
    x0, y0 = p[:, 0], p[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    # Only rows whose centre lies within the polygon's vertical extent can be inside.
    r_lo = max(int(np.ceil(y0.min() - 0.5)), 0)
    r_hi = min(int(np.floor(y0.max() - 0.5)), size - 1)
    if r_hi < r_lo:
        return mask
    yc = np.arange(r_lo, r_hi + 1) + 0.5  # (R,)
    xc = np.arange(size) + 0.5  # (C,)
    # Edge e crosses the horizontal line y = yc when yc is in [min(y0,y1), max(y0,y1)):
    # the half-open test counts a vertex once and ignores horizontal edges.
    ylo, yhi = np.minimum(y0, y1)[:, None], np.maximum(y0, y1)[:, None]
    crosses = (yc[None, :] >= ylo) & (yc[None, :] < yhi)  # (E, R)
    with np.errstate(divide="ignore", invalid="ignore"):  # horizontal edges never cross: masked out
        t = (yc[None, :] - y0[:, None]) / (y1 - y0)[:, None]
        xint = np.where(crosses, x0[:, None] + t * (x1 - x0)[:, None], -np.inf)  # (E, R)
    # Even–odd: a centre is inside if an odd number of crossings lie strictly to its right.
    right = (xint[:, :, None] > xc[None, None, :]).sum(axis=0)  # (R, C)
    mask[r_lo:r_hi + 1] = (right % 2) == 1
    return mask


def participant_mask(polygons: Iterable[Polygon | Sequence], display_size: int = 512,
                     analysis_size: int = 256) -> np.ndarray:
    """Union of one participant's 'Add' polygons on one image (bool, analysis size)."""
    mask = np.zeros((analysis_size, analysis_size), dtype=bool)
    for poly in polygons:
        if isinstance(poly, Polygon):
            if poly.tool != ADD_TOOL:
                continue  # the parser already reported and skipped these; be safe for hand-built data
            pts = poly.points
        else:
            pts = poly
        mask |= rasterize_polygon(pts, display_size, analysis_size)
    return mask


def participant_masks(export: StudyExport, image: str, participants: Sequence[str] | None = None
                      ) -> tuple[list[str], np.ndarray]:
    """Masks of every participant who annotated ``image``.

    Parameters
    ----------
    export : StudyExport
    image : str
        Image id.
    participants : sequence of str, optional
        Restrict to these ids (e.g. without outliers); default all.

    Returns
    -------
    ids : list of str
        The annotators, in file order.
    masks : numpy.ndarray of bool, shape (len(ids), S, S)
    """
    wanted = None if participants is None else set(participants)
    drawn = export.polygons.get(image, {})
    ids = [pid for pid in export.participant_ids if pid in drawn and (wanted is None or pid in wanted)]
    S = export.analysis_size
    masks = np.zeros((len(ids), S, S), dtype=bool)
    for i, pid in enumerate(ids):
        masks[i] = participant_mask(drawn[pid], export.display_size, S)
    return ids, masks


def hrh_from_masks(masks: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Integer count map: per pixel, how many (weighted) participants cover it."""
    m = np.asarray(masks, dtype=np.int32)
    if weights is None:
        return m.sum(axis=0, dtype=np.int32)
    return np.tensordot(np.asarray(weights, dtype=np.int32), m, axes=1).astype(np.int32)


def compute_hrh(export: StudyExport, image: str, participants: Sequence[str] | None = None) -> np.ndarray:
    """HRH of ``image``: int32 count map of shape (analysis_size, analysis_size)."""
    _, masks = participant_masks(export, image, participants)
    if len(masks) == 0:
        return np.zeros((export.analysis_size, export.analysis_size), dtype=np.int32)
    return hrh_from_masks(masks)


def leave_one_out_hrhs(masks: np.ndarray):
    """Yield ``(i, hrh_without_i, mask_i)`` for every participant ``i``.

    The leave-one-out HRH is the consensus of everybody else; comparing it with the held-out
    participant's own mask measures how well humans predict each other (the human ceiling).
    """
    total = hrh_from_masks(masks)
    for i in range(len(masks)):
        yield i, total - masks[i].astype(np.int32), masks[i]


def save_hrh(path, hrh: np.ndarray) -> Path:
    """Save an HRH as an integer ``.npy`` (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(hrh).astype(np.int32))
    return path


def load_image(path, size: int | None = None) -> np.ndarray:
    """RGB image as float array in [0, 1], optionally resized to ``size``×``size``."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.float32) / 255.0


def plot_hrh_overlay(hrh: np.ndarray, image: np.ndarray | None, n_participants: int, path,
                     title: str | None = None, alpha: float = 0.5, cmap: str = "gist_heat_r") -> Path:
    """Save the seed-style overlay: the HRH over the image, colour scale 0..n_participants.

    The map is drawn with a white-to-red colormap at ``alpha`` over the image, so uncovered
    pixels fade the photo and the most agreed-on region is darkest. The colour scale runs to
    the number of participants (not a fixed number), so figures of different studies compare.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if image is not None:
        ax.imshow(image, extent=(0, hrh.shape[1], hrh.shape[0], 0))
    im = ax.imshow(hrh, cmap=cmap, alpha=alpha, vmin=0, vmax=max(int(n_participants), 1),
                   extent=(0, hrh.shape[1], hrh.shape[0], 0))
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("relevance score (participants)", rotation=270, labelpad=15)
    ax.set_title(title or f"human relevance heatmap\n of all (N = {n_participants}) participants")
    ax.axis("off")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
