"""The comparison's settings and inputs: faces with their ground-truth regions (a toyfaces
folder), the classifier, counterfactuals (a run folder or the default sampler on the fly) and
the human relevance heatmaps (the study simulation on the toy world, or a real study export).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import toyfaces  # noqa: F401  registers the toy classifier names (--classifier toy_resnet)
from classifier.attributes import attribute_index, attribute_name
from classifier.models import load_classifier
from classifier.registry import resolve_classifier
from dvce.samplers import DEFAULT_METHOD

#: The five methods compared when none are named: one of each family.
DEFAULT_METHODS = ("epsilon_plus_flat", "gradient", "gradcam", "occlusion", "cf_delta")
#: Metric groups (``--metrics``).
METRIC_GROUPS = ("localisation", "faithfulness", "sanity", "humans")


@dataclass(frozen=True)
class CompareConfig:
    """Settings of ``ldvce xai compare``.

    Attributes
    ----------
    attribute : the attribute whose decision is explained.
    region : the ground-truth region scored (a toyfaces mask name; default: the attribute's).
    faces_with : use only faces labelled with this attribute (e.g. ``Wearing_Hat``).
    steps : pixel chunks of the deletion/insertion curves.
    randomisation_threshold : a method whose maps keep a rank correlation (|map|, Spearman) of
        at least this with the maps of the randomised model fails the sanity test.
    participants : simulated annotators per face (toy world).
    n_bootstrap, seed : the bootstrap of the 95 % intervals (over faces).
    sampler, ldm, sampler_options : the counterfactuals made on the fly.
    figure_faces : faces (rows) in the figure grid.
    """
    attribute: str = "Smiling"
    region: str | None = None
    faces_with: str | None = None
    steps: int = 16
    randomisation_threshold: float = 0.5
    participants: int = 8
    n_bootstrap: int = 1000
    seed: int = 0
    sampler: str = DEFAULT_METHOD
    ldm: str = "toy"
    sampler_options: dict = field(default_factory=dict)
    figure_faces: int = 6


@dataclass
class Faces:
    """The faces compared: images (B, 3, H, W) in [-1, 1], ids, and ground-truth region masks
    (B, H, W) bool or None (a real study has none)."""
    images: torch.Tensor
    ids: list[str]
    masks: np.ndarray | None
    rows: list[int] | None = None


def load_model(classifier: str | Path, device="cpu"):
    """A classifier by registered name or checkpoint path, in eval mode."""
    return load_classifier(resolve_classifier(classifier), map_location=device).eval()


def toy_faces(data: str | Path, n: int, attribute: str = "Smiling", region: str | None = None,
              faces_with: str | None = None) -> Faces:
    """The first ``n`` faces of a toyfaces folder (all rows, in order), with the ground-truth
    mask of ``region`` (default: ``attribute``'s); with ``faces_with`` only faces labelled with
    that attribute."""
    from classifier.evaluate import dataset_for
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    data = Path(data)
    if not (data / "masks.npz").is_file():
        raise FileNotFoundError(f"{data} is not a toyfaces folder with ground-truth masks "
                                "(masks.npz); make one with `ldvce toy make-data`, or give a real "
                                "study with --hrh-export")
    masks = toyfaces.load_masks(data)
    region = attribute_name(region or attribute)
    if region not in masks:
        raise KeyError(f"no ground-truth region {region!r} in {data}; have {sorted(masks)}")
    ds = dataset_for(data, split="all")
    rows = list(range(len(ds)))
    if faces_with:
        k = attribute_index(faces_with)
        rows = [r for r in rows if float(ds.labels[r][k]) > 0.5]
    rows = rows[:n]
    if not rows:
        raise ValueError(f"no face in {data} is labelled {faces_with!r}")
    images = torch.stack([ds[r]["img"] for r in rows])
    return Faces(images, [str(r) for r in rows], masks[region][rows], rows)


def study_faces(export: str | Path, images: str | Path, size: int):
    """A real study: the annotated images of ``export`` found in ``images`` (as ``ldvce study
    eval`` finds them), and the export. Returns ``(Faces, StudyExport)``."""
    from classifier.images import load_image
    from study.evaluate import find_study_image
    from study.export import read_export
    ex = read_export(export)
    found = {img: find_study_image(images, img) for img in ex.annotation_images}
    missing = [img for img, p in found.items() if p is None]
    if missing:
        raise FileNotFoundError(f"study images {missing[:5]} of {export} not found in {images}")
    if not found:
        raise ValueError(f"{export} has no annotated image")
    x = torch.stack([load_image(p, size) for p in found.values()])
    return Faces(x, list(found), None), ex


def counterfactuals(model, faces: Faces, attribute: str, config: CompareConfig,
                    run: str | Path | None = None) -> torch.Tensor:
    """Counterfactuals of ``faces`` that flip ``model``'s decision: read from the run folder
    ``run`` (items matched by dataset row, else by image id), or made now with the default
    sampler (``config.sampler`` on ``config.ldm``)."""
    if run is not None:
        return _from_run(run, faces)
    from dvce.ldm import load_ldm
    from dvce.samplers import Problem, get_sampler
    from xai.attributions import decision_direction
    device = next(model.parameters()).device
    ldm = load_ldm(config.ldm, device=device)
    d = decision_direction(model, faces.images, attribute)
    problem = Problem(ldm, model, attribute_index(attribute))
    res = get_sampler(config.sampler)(problem, faces.images.to(device), (d < 0).float().to(device),
                                      **dict(config.sampler_options))
    return res.counterfactual.detach().float().cpu()


def _from_run(run, faces: Faces) -> torch.Tensor:
    from classifier.images import load_image
    from dvce import runfolder
    items = runfolder.list_items(run)
    by_row = {it.source_index: it for it in items}
    by_id = {it.image_id: it for it in items}
    out = []
    for i, fid in enumerate(faces.ids):
        row = faces.rows[i] if faces.rows else None
        it = by_row.get(row) if row is not None else None
        it = it or by_id.get(fid)
        if it is None:
            raise FileNotFoundError(f"run folder {run} has no counterfactual of face {fid}")
        out.append(load_image(it.counterfactual, faces.images.shape[-1]))
    return torch.stack(out)


def simulated_hrhs(faces: Faces, participants: int, seed: int = 0, size: int | None = None):
    """Human relevance heatmaps from the study simulation (:func:`study.synthetic.simulate_study`:
    annotators outline the true region with noise and sometimes a distractor), rasterised as the
    study code does. Returns ``{face id: (participants, S, S) bool masks}``."""
    from study.hrh import participant_mask
    from study.synthetic import simulate_study
    if faces.masks is None:
        raise ValueError("simulated HRHs need ground-truth masks (a toyfaces folder)")
    size = size or faces.masks.shape[-1]
    region = {fid: m for fid, m in zip(faces.ids, faces.masks)}
    pids, _, polygons = simulate_study(region, {}, n_participants=participants, seed=seed)
    return {fid: np.stack([participant_mask(polygons[fid][p], 512, size) for p in pids])
            for fid in faces.ids}


def export_hrhs(ex, faces: Faces) -> dict[str, np.ndarray]:
    """Each annotated image's participant masks from a real study export."""
    from study.hrh import participant_masks
    return {fid: participant_masks(ex, fid)[1] for fid in faces.ids}
