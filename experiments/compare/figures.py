"""The comparison's figure: faces (rows) × methods (columns), each map on the symmetric
relevance scale with the ground-truth region (or the HRH's ≥ 50 % area) outlined."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from study.hrh import hrh_from_masks
from study.metrics import resize_map, threshold_hrh
from xai.render import colormap, save_figure, symmetric_vmax, to_uint8_image


def outlines(faces, people=None) -> list[np.ndarray | None]:
    """Per face the outline drawn: its ground-truth mask, else the HRH's ≥ 50 % area at the
    image size, else None."""
    size = faces.images.shape[-2:]
    if faces.masks is not None:
        return list(faces.masks)
    if people:
        return [resize_map(threshold_hrh(hrh_from_masks(people[f]), len(people[f]))["ge50"]
                           .astype(float), size) > 0.5 if len(people.get(f, [])) else None
                for f in faces.ids]
    return [None] * len(faces.ids)


def grid_figure(faces, result: dict, path, people=None, rows: int = 6, cell: float = 1.5):
    """Faces × methods; column titles carry the method's mean mass accuracy (ground truth or
    HRH) and its randomisation verdict, each cell's title the face's own mass accuracy."""
    methods = list(result["methods"])
    k = min(rows, len(faces.ids))
    fig = Figure(figsize=(cell * (1 + len(methods)), cell * k + 1.2))
    axes = fig.subplots(k, 1 + len(methods), squeeze=False)
    lines = outlines(faces, people)
    for i in range(k):
        axes[i, 0].imshow(to_uint8_image(faces.images[i]))
        axes[i, 0].set_ylabel(faces.ids[i], fontsize=7)
        for j, m in enumerate(methods, start=1):
            r = result["methods"][m]
            h = r["maps"][i]
            v = symmetric_vmax(h)
            axes[i, j].imshow(h, cmap=colormap("bwr"), vmin=-v, vmax=v)
            key = "mass_accuracy" if "mass_accuracy" in r["per_face"] else "hrh_mass_accuracy"
            vals = r["per_face"].get(key)
            if vals is not None and np.isfinite(vals[i]):
                axes[i, j].set_title(f"{vals[i]:.2f}", fontsize=7, pad=2)
        for j in range(1 + len(methods)):
            if lines[i] is not None:
                axes[i, j].contour(lines[i], levels=[0.5], colors="k" if j else "w",
                                   linewidths=0.6)
    for j, m in enumerate(methods, start=1):
        r = result["methods"][m]
        s = r["metrics"].get("mass_accuracy") or r["metrics"].get("hrh_mass_accuracy")
        head = [r["label"]] + ([f"mass {s['mean']:.2f}"] if s else [])
        if r.get("randomisation"):
            head.append(f"randomisation: {r['randomisation'].split()[0]}")
        axes[0, j].text(0.5, 1.2, "\n".join(head), transform=axes[0, j].transAxes, ha="center",
                        va="bottom", fontsize=7)
    for a in axes.flat:
        a.set_xticks([]); a.set_yticks([])
    name = Path(str(result.get("classifier", ""))).stem
    fig.suptitle(f"{name}: evidence for the decision (red), region "
                 "outlined; cell titles: share of positive relevance in it", fontsize=8)
    return save_figure(fig, path)
