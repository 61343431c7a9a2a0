"""One-call helpers for the notebooks in ``notebooks/`` (narrative and plots stay there)."""
from __future__ import annotations

from pathlib import Path  # noqa: F401 (the notebooks use nb.Path)

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

import toyfaces
from classifier.attributes import attribute_index
from classifier.devices import resolve_device
from classifier.models import load_classifier
from classifier.registry import resolve_classifier
from dvce import runfolder, runner
from dvce.ldm import load_ldm
from dvce.samplers import DEFAULT_METHOD, Problem
from toyfaces.world import TEST_DATA, toy_data


def load_models(classifier: str, ldm: str = "CompVis/ldm-celebahq-256", device: str = "auto"):
    """(classifier, ldm): a checkpoint path or toy name, and an LDM hub id / folder / ``toy``."""
    dev = resolve_device(device)
    clf = load_classifier(resolve_classifier(classifier), map_location=dev).requires_grad_(False)
    return clf, load_ldm(ldm, device=dev)


def toy_test_lmdb() -> tuple[str, str]:
    """(lmdb, attribute file) of the cached held-out toy images."""
    return tuple(str(p) for p in toyfaces.paths(toy_data(TEST_DATA)))


def inputs(images=None, lmdb=None, attr_file=None, indices=None, size=256):
    """Runner items from an image folder or from LMDB rows."""
    if images:
        return runner.folder_items(images, size)
    return runner.lmdb_items(lmdb, attr_file, indices, size)


def generate(items, clf, ldm, attribute="Smiling", method=DEFAULT_METHOD, out="runs/notebook",
             target="auto", batch_size=8, **options) -> dict:
    return runner.run(items, Problem(ldm, clf, attribute_index(attribute)), out, method=method,
                      target=target, batch_size=batch_size, options=options,
                      settings={"attribute": attribute})


def _img(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _item(run_dir, image_id=None):
    """The run's item ``image_id`` (default: its first); raises naming the run when absent."""
    items = runfolder.list_items(run_dir)
    if image_id is None and items:
        return items[0]
    hit = next((it for it in items if it.image_id == str(image_id)), None)
    if hit is None:
        raise FileNotFoundError(f"{run_dir}: no finished counterfactual {image_id or ''}".rstrip())
    return hit


def show_sequence(run_dir, image_id=None, max_frames: int = 12):
    """The frame sequence a selection study shows, with p(attribute) under each frame."""
    item = _item(run_dir, image_id)
    image_id, r = item.image_id, item.result
    frames = item.frame_paths()[:max_frames]
    fig, axes = plt.subplots(1, len(frames), figsize=(1.6 * len(frames), 2.0), squeeze=False)
    for ax, f, fr in zip(axes[0], frames, r["frames"]):
        ax.imshow(_img(f))
        ax.set_title(f"{fr['index']}: p={fr['prob']:.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"image {image_id}: 0 original, 1 reconstruction, 2.. steps "
                 f"(switch frame {r['switch_frame']})", fontsize=9)
    return fig


def show_difference(run_dir, image_id=None):
    """Original, counterfactual and |difference| of one item side by side."""
    item = _item(run_dir, image_id)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.6))
    for ax, (title, img) in zip(axes, [("original", _img(item.original)),
                                        ("counterfactual", _img(item.counterfactual)),
                                        ("|difference|", np.load(item.folder / "diff.npy"))]):
        ax.imshow(img, cmap="magma" if img.ndim == 2 else None)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return fig


def show_image(path, width: float = 10.0):
    img = _img(path)
    fig, ax = plt.subplots(figsize=(width, width * img.shape[0] / img.shape[1]))
    ax.imshow(img)
    ax.axis("off")
    return fig
