"""Random but plausible study data, for tests and for trying the study app without participants."""

from __future__ import annotations

import numpy as np

from .export import Polygon


def random_polygon(rng: np.random.Generator, center, radius: float, n_points: int, display_size: int = 512):
    """A star-shaped polygon (vertices sorted by angle, so it never self-intersects) in display px."""
    ang = np.sort(rng.uniform(0, 2 * np.pi, n_points))
    r = radius * rng.uniform(0.5, 1.0, n_points)
    x = np.clip(center[0] + r * np.cos(ang), 0, display_size)
    y = np.clip(center[1] + r * np.sin(ang), 0, display_size)
    # Browser pointer coordinates are float32 values (203.66668701171875 in the real export).
    return Polygon(tuple((float(np.float32(a)), float(np.float32(b))) for a, b in zip(x, y)))


def random_study(seed: int = 0, n_participants: int = 6, selection_images=("100", "101", "102"),
                 annotation_images=("100", "101"), max_frame: int = 5, display_size: int = 512,
                 p_skip: float = 0.2):
    """In-memory study data in :func:`study.export.write_export`'s input form.

    Participants mark mostly the mouth region (lower middle) and sometimes the eyes, draw 0–3
    polygons of 3–12 vertices, and pick a frame in -1..max_frame (sometimes skipping).

    Returns
    -------
    participants : list of str
    selections : dict img -> {pid: choice}
    polygons : dict img -> {pid: [Polygon, ...]}
    """
    rng = np.random.default_rng(seed)
    pids = [f"p{i:03d}-{rng.integers(1 << 30):08x}" for i in range(n_participants)]
    selections = {img: {} for img in selection_images}
    for img in selection_images:
        for pid in pids:
            if rng.random() > p_skip / 4:
                selections[img][pid] = int(rng.integers(-1, max_frame + 1))
    polygons = {img: {} for img in annotation_images}
    s = display_size / 512
    for img in annotation_images:
        for pid in pids:
            n = int(rng.integers(0, 4)) if rng.random() > p_skip else 0
            polys = []
            for q in range(n):
                centre = (256 * s + rng.normal(0, 15 * s), 370 * s + rng.normal(0, 15 * s)) if q == 0 or rng.random() < 0.5 \
                    else (rng.choice([190, 320]) * s, 250 * s + rng.normal(0, 10 * s))
                polys.append(random_polygon(rng, centre, rng.uniform(20, 70) * s, int(rng.integers(3, 13)), display_size))
            if polys:
                polygons[img][pid] = polys
    return pids, selections, polygons


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (Andrew's monotone chain) of (N, 2) points, counter-clockwise."""
    pts = np.unique(np.asarray(points, dtype=float), axis=0)
    if len(pts) < 3:
        return pts
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and np.cross(out[-1] - out[-2], p - out[-2]) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def simulate_study(masks, switch_frames, n_participants: int = 8, seed: int = 0,
                   display_size: int = 512, jitter_px: float = 10.0, p_distractor: float = 0.25,
                   frame_noise: int = 1, max_frame: int | None = None):
    """A study answered by simulated annotators who know the ground truth, with noise.

    Each annotator outlines the convex hull of the true region (``masks[img]``, a bool array at
    any resolution) with vertices jittered by ``jitter_px`` display pixels, sometimes adds a
    distractor polygon elsewhere, and picks the frame ``switch_frames[img]`` ± ``frame_noise``
    (or -1 when the switch frame is None). Returns (participants, selections, polygons) in
    :func:`study.export.write_export`'s input form.
    """
    rng = np.random.default_rng(seed)
    pids = [f"sim{i:03d}" for i in range(n_participants)]
    selections, polygons = {}, {}
    for img, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        k = display_size / mask.shape[0]
        ys, xs = np.nonzero(mask)
        hull = convex_hull(np.stack([(xs + 0.5) * k, (ys + 0.5) * k], 1)) if len(xs) else None
        polygons[img] = {}
        for pid in pids:
            polys = []
            if hull is not None and len(hull) >= 3:
                pts = np.clip(hull + rng.normal(0, jitter_px, hull.shape), 0, display_size)
                polys.append(Polygon(tuple((float(np.float32(a)), float(np.float32(b))) for a, b in pts)))
            if rng.random() < p_distractor:
                centre = rng.uniform(0.2, 0.8, 2) * display_size
                polys.append(random_polygon(rng, centre, display_size * 0.06, 6, display_size))
            polygons[img][pid] = polys
    for img, sw in switch_frames.items():
        selections[img] = {}
        for pid in pids:
            if sw is None:
                choice = -1
            else:
                choice = int(sw) + int(rng.integers(-frame_noise, frame_noise + 1))
                choice = max(0, choice if max_frame is None else min(choice, max_frame))
            selections[img][pid] = choice
    return pids, selections, polygons
