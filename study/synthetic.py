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
