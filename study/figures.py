"""The figures of a study evaluation (the optional, slow step of :func:`study.evaluate.evaluate_study`).

:func:`draw_figures` writes, under ``out/figures``::

    selection/<img>_sel.png        choice histograms (:func:`study.selection.plot_selection_histogram`)
    participant_means.png          mean choice per participant, outliers in red
    hrh/<img>_annot.png            HRH overlays (:func:`study.hrh.plot_hrh_overlay`)
    compare/<img>_compare.png      image | HRH | model maps, for images with model maps

and notes each path, relative to ``out``, in the evaluation's summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from . import hrh as hrh_mod
from . import selection as S

if TYPE_CHECKING:  # study.evaluate imports this module
    from .evaluate import Evaluation


def draw_figures(ev: Evaluation, out: Path, study_images: Mapping[str, Path | None]) -> None:
    """Draw every figure of ``ev`` into ``out/figures`` and add their paths to ``ev.summary``.

    ``study_images`` gives each annotation image's picture (None: the overlay is drawn on white).
    Selection entries get ``figure``; HRH entries get ``figure``, ``image`` (the picture's path
    or None) and, where model maps exist, ``compare_figure``; ``figures["participant_means"]``
    is set when ``participant_means`` is not empty.
    """
    fig_dir = out / "figures"
    summary = ev.summary
    for img, (counts_inc, switch, thumbs) in ev.selection_plots.items():
        thumbs_arr = [hrh_mod.load_image(p, 128) for p in thumbs] if thumbs else None
        p = S.plot_selection_histogram(counts_inc, fig_dir / "selection" / f"{img}_sel.png", switch, thumbs_arr)
        summary["selection"][img]["figure"] = str(p.relative_to(out))
    means = summary["participant_means"]
    if means:
        p = plot_participant_means(means, summary["outliers"], fig_dir / "participant_means.png")
        summary["figures"]["participant_means"] = str(p.relative_to(out))

    size = summary["analysis_size"]
    pictures = {img: hrh_mod.load_image(study_images[img], size) if study_images.get(img) else None
                for img in ev.hrhs}
    for img, hrh in ev.hrhs.items():
        entry = summary["hrh"][img]
        p = hrh_mod.plot_hrh_overlay(hrh, pictures[img], ev.n_hrh_people, fig_dir / "hrh" / f"{img}_annot.png",
                                     title=f"human relevance heatmap\n of all (N = {ev.n_hrh_people}) participants"
                                           f" ({entry['n_annotators']} annotated)")
        entry["figure"] = str(p.relative_to(out))
        entry["image"] = str(study_images[img]) if study_images.get(img) else None
    for img, hrh in ev.hrhs.items():
        ms = {n: ev.maps[n][img] for n in ev.maps if img in ev.maps[n]}
        if ms:
            p = plot_compare(pictures[img], hrh, ms, fig_dir / "compare" / f"{img}_compare.png")
            summary["hrh"][img]["compare_figure"] = str(p.relative_to(out))


def plot_participant_means(means: Mapping[str, float | None], outliers, path: Path) -> Path:
    """Bar chart of each participant's mean choice (file order), outliers in red."""
    # heavy: matplotlib loads only when figures are drawn (keeps `import study` fast)
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    ids = [p for p, v in means.items() if v is not None]
    vals = [means[p] for p in ids]
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    colors = ["tab:red" if p in outliers else "tab:blue" for p in ids]
    ax.bar(range(len(ids)), vals, color=colors)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("participant (file order); red = outlier")
    ax.set_ylabel("mean choice")
    ax.set_title("mean selection per participant")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def plot_compare(image: np.ndarray | None, hrh: np.ndarray, maps: Mapping[str, np.ndarray], path: Path) -> Path:
    """One row: the image (white when None), the HRH, then each model map on a symmetric colour scale."""
    # heavy: matplotlib loads only when figures are drawn (keeps `import study` fast)
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    n = 2 + len(maps)
    fig = Figure(figsize=(2.6 * n, 2.9))
    axes = fig.subplots(1, n)
    axes[0].imshow(image if image is not None else np.ones(hrh.shape + (3,)))
    axes[0].set_title("image")
    axes[1].imshow(hrh, cmap="gist_heat_r")
    axes[1].set_title("HRH")
    for ax, (name, m) in zip(axes[2:], maps.items()):
        lim = float(np.abs(m).max()) or 1.0
        ax.imshow(m, cmap="bwr", vmin=-lim, vmax=lim)
        ax.set_title(name.replace("heatmap:", ""), fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path
