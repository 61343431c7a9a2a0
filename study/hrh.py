"""Human relevance heatmaps (HRHs) from the annotation task.

An HRH of an image is, per pixel, the number of participants whose polygons cover that pixel:
each participant's polygons are rasterised into one mask (their union), and the masks are summed.
A participant who drew overlapping polygons counts once, so the maximum is at most the number of
annotators and a threshold "≥ 50 % of annotators" means what it says. This is also what the
original evaluation did: it filled every polygon of a participant into one ``uint8`` mask with
``cv2.fillPoly(mask, [polygon], 1)`` and added the masks (``docs/study_hrh_rule.md``).

Rasterisation rules (``raster``, :data:`RASTERS`)
-------------------------------------------------
Polygon vertices are in display pixels (``display_size``, 512 in the study).

``"seed"`` (default) — the original evaluation's rule, reproduced pixel for pixel (on the real
export all 17 maps equal OpenCV's, so every maximum is the original's):

- vertices are scaled to the analysis size and truncated to integers (512 → 256: ``int(x / 2)``);
- the polygon is filled exactly as ``cv2.fillPoly`` (8-connected, no shift) fills it: its outline
  is drawn as 8-connected lines from the left end point (ties of the line round toward that end;
  lines leaving the image are clipped first, as OpenCV clips them), then each row ``y`` is filled
  from ``ceil(x_left)`` to ``floor(x_right)`` between pairs of edge crossings, edges active on
  ``y0 <= y < y1`` and stepped in 16.16 fixed point. Implemented here in pure Python/numpy, so
  OpenCV is not needed; the tests compare it with ``cv2.fillPoly``;
- **every** polygon counts, also one of 1 or 2 vertices: ``cv2.fillPoly`` draws its outline, a
  point or a line. The real export has seven such two-click polygons (the parser notes them);
  leaving them out is what made the maximum of image 27300 one short (31 instead of 32).

``"enclosed"`` — ``"seed"`` without the polygons of fewer than 3 vertices: the project's default
rule before issue 29 (whose outlines then also broke line ties away from OpenCV's, which moved
per-image sums by up to 0.25 %). Why keep it: a two-click "polygon" encloses no area; it is most likely a
drawing the participant abandoned, and the original counted its line only because
``cv2.fillPoly`` draws outlines. Use it when an HRH should count only regions that somebody
actually enclosed; it differs from ``"seed"`` in 311 of the real export's 1,118,128 counts, on
6 of 17 images (the maximum of 27300 drops to 31).

``"centre"`` — the geometric reading of browser coordinates: a pixel ``(row i, col j)`` covers
``[j, j+1) × [i, i+1)`` of the scaled image and is inside when its **centre** ``(j + 0.5,
i + 0.5)`` is inside the exact (unrounded) polygon by the even–odd rule, with half-open crossings
so that a point on a shared edge belongs to exactly one side. It covers 4–7 % fewer pixels than
``"seed"`` on the real export (no outline, no rounding outward). Polygons with fewer than 3
vertices cover nothing.

What the project does not copy from the original: it read polygon indices 0–9 only, matching
columns by the substring ``f"{i}/points/"`` (so polygon 10 would have been merged into polygon 0),
and it ignored the ``tool`` column. Neither matters for the real export (at most 6 polygons per
participant and image, every tool ``"Add"``); here every polygon index is read, and polygons of
another tool are skipped by :mod:`study.export` with a note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from .export import ADD_TOOL, Polygon, StudyExport


RASTERS = ("seed", "enclosed", "centre")
#: One line per rule, for reports.
RASTER_DESCRIPTIONS = {
    "seed": "the original evaluation's: OpenCV fillPoly of every polygon on truncated vertices, "
            "union per participant",
    "enclosed": "the original's fill, but polygons of fewer than 3 vertices (no area) left out",
    "centre": "pixel centres inside the exact polygon",
}
#: The original annotation figures are 1280×960 pixels (at 100 dpi).
ANNOTATION_FIGSIZE = (12.8, 9.6)
_XY_SHIFT = 16  # OpenCV's fixed-point precision for polygon edges


def rasterize_polygon(points: Sequence[tuple[float, float]], display_size: int = 512,
                      analysis_size: int = 256, raster: str = "seed") -> np.ndarray:
    """Filled mask of one polygon at the analysis resolution.

    Parameters
    ----------
    points : sequence of (x, y)
        Vertices in display pixels.
    display_size, analysis_size : int
        Side lengths of the displayed image and of the output mask.
    raster : {"seed", "enclosed", "centre"}
        The rasterisation rule (module docstring).

    Returns
    -------
    numpy.ndarray of bool, shape (analysis_size, analysis_size)
    """
    if raster == "seed":
        return _rasterize_seed(points, display_size, analysis_size)
    if raster == "enclosed":
        if len(points) < 3:
            return np.zeros((int(analysis_size), int(analysis_size)), dtype=bool)
        return _rasterize_seed(points, display_size, analysis_size)
    if raster == "centre":
        return _rasterize_centre(points, display_size, analysis_size)
    raise ValueError(f"unknown raster {raster!r}; choose from {', '.join(RASTERS)}")


# ------------------------------------------------------- the seed rule: OpenCV's fillPoly, ported
# The functions below follow OpenCV's drawing code (modules/imgproc/src/drawing.cpp: clipLine,
# LineIterator, CollectPolyEdges, FillEdgeCollection) for an 8-bit mask, line type 8, shift 0.


def _rasterize_seed(points, display_size: int, analysis_size: int) -> np.ndarray:
    size = int(analysis_size)
    mask = np.zeros((size, size), dtype=bool)
    if len(points) == 0:
        return mask
    # The original scaled with Python's int(): truncation toward zero.
    p = np.trunc(np.asarray(points, dtype=np.float64) * (analysis_size / display_size)).astype(np.int64)
    verts = [(int(x), int(y)) for x, y in p]
    edges = []
    for prev, cur in zip(verts[-1:] + verts[:-1], verts):  # edge i runs from vertex i-1 to vertex i
        _draw_line(mask, prev, cur)
        edge = _poly_edge(prev, cur, size)
        if edge is not None:
            edges.append(edge)
    _fill_edges(mask, edges)
    return mask


def _clip_line(size: int, p1: tuple[int, int], p2: tuple[int, int]):
    """OpenCV's ``clipLine`` on a ``size``×``size`` image: ``(inside, p1, p2)``, clipped ends."""
    right = bottom = size - 1
    (x1, y1), (x2, y2) = p1, p2

    def code(x, y):
        return (x < 0) + (x > right) * 2 + (y < 0) * 4 + (y > bottom) * 8

    c1, c2 = code(x1, y1), code(x2, y2)
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        # int(float * int / int) is C's (int64)((double)a * b / c): double arithmetic, truncated.
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += int(float(a - y1) * (x2 - x1) / (y2 - y1))
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += int(float(a - y2) * (x2 - x1) / (y2 - y1))
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += int(float(a - x1) * (y2 - y1) / (x2 - x1))
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += int(float(a - x2) * (y2 - y1) / (x2 - x1))
                x2 = a
                c2 = 0
    return (c1 | c2) == 0, (x1, y1), (x2, y2)


def _outside(size: int, *pts: tuple[int, int]) -> bool:
    return any(not (0 <= x < size and 0 <= y < size) for x, y in pts)


def _draw_line(mask: np.ndarray, p1: tuple[int, int], p2: tuple[int, int]) -> None:
    """OpenCV's 8-connected line (``LineIterator``, left to right), both ends included.

    From the left end point, the main axis steps every pixel and the other coordinate is the
    exact one rounded with ties toward the left end: ``floor((2 t d_minor + d_main - 1) / (2 d_main))``
    steps after ``t`` (the closed form of the iterator's error term ``err = d_main - 2 d_minor``).
    """
    size = mask.shape[0]
    if _outside(size, p1, p2):
        inside, p1, p2 = _clip_line(size, p1, p2)
        if not inside:
            return
    if p2[0] < p1[0]:
        p1, p2 = p2, p1
    (x0, y0), (x1, y1) = p1, p2
    dx, dy, sy = x1 - x0, abs(y1 - y0), (1 if y1 >= y0 else -1)
    if dx == 0 and dy == 0:
        mask[y0, x0] = True
        return
    if dy > dx:  # steep: y is the main axis
        t = np.arange(dy + 1)
        ys, xs = y0 + sy * t, x0 + (2 * t * dx + dy - 1) // (2 * dy)
    else:
        t = np.arange(dx + 1)
        xs, ys = x0 + t, y0 + sy * ((2 * t * dy + dx - 1) // (2 * dx))
    mask[ys, xs] = True


def _c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _poly_edge(pt0: tuple[int, int], pt1: tuple[int, int], size: int):
    """OpenCV's ``PolyEdge`` of the edge ``pt0 → pt1``: ``[y0, y1, x, dx]`` (x, dx in 16.16), or
    None for a horizontal edge. A clipped edge keeps its y range and starts where its clipped
    part, extended, meets ``y0`` (as in ``CollectPolyEdges``)."""
    if pt0[1] == pt1[1]:
        return None
    (c0x, c0y), (c1x, c1y) = pt0, pt1
    if _outside(size, pt0, pt1):
        _, (t0x, t0y), (t1x, t1y) = _clip_line(size, pt0, pt1)
        if t0y != t1y:
            c0y, c1y = t0y, t1y
        c0x, c1x = t0x, t1x
    dx = _c_div((c1x - c0x) << _XY_SHIFT, c1y - c0y)
    if pt0[1] < pt1[1]:
        return [pt0[1], pt1[1], (c0x << _XY_SHIFT) + (pt0[1] - c0y) * dx, dx]
    return [pt1[1], pt0[1], (c1x << _XY_SHIFT) + (pt1[1] - c1y) * dx, dx]


def _fill_edges(mask: np.ndarray, edges: list) -> None:
    """OpenCV's ``FillEdgeCollection`` (non-antialiased): even–odd spans between active edges."""
    if len(edges) < 2:
        return
    h, w = mask.shape
    ends = [e[2] + (e[1] - e[0]) * e[3] for e in edges]
    y_min, y_max = min(e[0] for e in edges), max(e[1] for e in edges)
    x_min, x_max = min(min(e[2] for e in edges), min(ends)), max(max(e[2] for e in edges), max(ends))
    if y_max < 0 or y_min >= h or x_max < 0 or x_min >= (w << _XY_SHIFT):
        return
    pending = sorted(edges, key=lambda e: (e[0], e[2], e[3]))  # by y0, then x, then dx
    active: list = []  # sorted by x at the start of every row (stable, like OpenCV's bubble sort)
    i = 0
    for y in range(pending[0][0], min(y_max, h)):
        row = [e for e in active if e[1] != y]  # an edge leaves at its lower end
        new = []
        while i < len(pending) and pending[i][0] == y:
            new.append(pending[i])
            i += 1
        if new:  # merge: a new edge goes before the first active edge whose x is not smaller
            merged, j = [], 0
            for e in new:
                while j < len(row) and row[j][2] < e[2]:
                    merged.append(row[j])
                    j += 1
                merged.append(e)
            row = merged + row[j:]
        for left, right in zip(row[0::2], row[1::2]):
            if y >= 0:
                lo, hi = sorted((left[2], right[2]))
                x1, x2 = (lo + (1 << _XY_SHIFT) - 1) >> _XY_SHIFT, hi >> _XY_SHIFT  # ceil, floor
                if x1 < w and x2 >= 0:
                    mask[y, max(x1, 0):min(x2, w - 1) + 1] = True
            left[2] += left[3]
            right[2] += right[3]
        active = sorted(row, key=lambda e: e[2])


def _rasterize_centre(points, display_size: int, analysis_size: int) -> np.ndarray:
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
                     analysis_size: int = 256, raster: str = "seed") -> np.ndarray:
    """Union of one participant's 'Add' polygons on one image (bool, analysis size).

    Under ``raster="seed"`` this is exactly the original's per-participant mask: every polygon
    filled into one mask by ``cv2.fillPoly(mask, [polygon], 1)``.
    """
    mask = np.zeros((analysis_size, analysis_size), dtype=bool)
    for poly in polygons:
        if isinstance(poly, Polygon):
            if poly.tool != ADD_TOOL:
                continue  # the parser already reported and skipped these; be safe for hand-built data
            pts = poly.points
        else:
            pts = poly
        mask |= rasterize_polygon(pts, display_size, analysis_size, raster)
    return mask


def participant_masks(export: StudyExport, image: str, participants: Sequence[str] | None = None,
                      raster: str = "seed") -> tuple[list[str], np.ndarray]:
    """Masks of every participant who annotated ``image``.

    Parameters
    ----------
    export : StudyExport
    image : str
        Image id.
    participants : sequence of str, optional
        Restrict to these ids (e.g. without outliers); default all.
    raster : {"seed", "enclosed", "centre"}
        Rasterisation rule (module docstring).

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
        masks[i] = participant_mask(drawn[pid], export.display_size, S, raster)
    return ids, masks


def hrh_from_masks(masks: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Integer count map: per pixel, how many (weighted) participants cover it."""
    m = np.asarray(masks, dtype=np.int32)
    if weights is None:
        return m.sum(axis=0, dtype=np.int32)
    return np.tensordot(np.asarray(weights, dtype=np.int32), m, axes=1).astype(np.int32)


def compute_hrh(export: StudyExport, image: str, participants: Sequence[str] | None = None,
                raster: str = "seed") -> np.ndarray:
    """HRH of ``image``: int32 count map of shape (analysis_size, analysis_size)."""
    _, masks = participant_masks(export, image, participants, raster)
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
    # matplotlib is imported here, not at the top: it is heavy, and only figures need it (an
    # evaluation with --no-figures and every HRH computation run without loading it).
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=ANNOTATION_FIGSIZE)
    ax = fig.add_subplot()
    if image is not None:
        ax.imshow(image, extent=(0, hrh.shape[1], hrh.shape[0], 0))
    im = ax.imshow(hrh, cmap=cmap, alpha=alpha, vmin=0, vmax=max(int(n_participants), 1),
                   extent=(0, hrh.shape[1], hrh.shape[0], 0))
    cb = fig.colorbar(im, ax=ax)
    cb.set_label("relevance score (participants)", rotation=270, labelpad=15)
    ax.set_title(title or f"human relevance heatmap\n of all (N = {n_participants}) participants")
    ax.axis("off")
    fig.savefig(path, dpi=100)
    return path
