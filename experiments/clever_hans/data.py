"""The Clever-Hans experiment's settings, worlds, classifiers and faces.

Settings come from ``configs/experiment/clever-hans.yaml`` (:class:`CleverHansConfig`); the
target and the cue define the experiment and stay fixed here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

import toyfaces
from classifier.attributes import attribute_index
from classifier.evaluate import dataset_for, predict
from classifier.models import export_safetensors, load_classifier
from experiments.config import load_config
from toyfaces.world import TEST_DATA, cache_dir, shipped_or_trained, toy_classifier, toy_data

TARGET = "Smiling"
CUE = "Wearing_Hat"
ROLES = ("biased", "clean")


@dataclass(frozen=True)
class CleverHansConfig:
    """Settings of the experiment (``configs/experiment/clever-hans.yaml`` documents each)."""
    strength: float = 1.0
    train_size: int = 12000
    train_seed: int = 1
    test_size: int = 400
    test_seed: int = 7
    recipe: str = "toy_resnet.yaml"
    images: int = 12
    quick_images: int = 4
    method: str = "default"
    options: dict = field(default_factory=dict)
    num_cfs: int = 1
    composite: str = "epsilon_plus_flat"
    crp_layers: str = "net.layer3,net.layer4"
    n_reference: int = 200
    quick_n_reference: int = 64
    max_pairs: int | None = 8


def config(name_or_path="clever-hans", **overrides) -> CleverHansConfig:
    """The experiment's settings from a config file, ``overrides`` (not None) on top."""
    return load_config(CleverHansConfig, name_or_path, **overrides)


#: The shipped settings (``configs/experiment/clever-hans.yaml``).
DEFAULT = config()


def spurious_data(strength: float = DEFAULT.strength, n: int = DEFAULT.train_size,
                  seed: int = DEFAULT.train_seed, progress: bool = True) -> Path:
    """A cached toyfaces folder where Wearing_Hat copies Smiling with probability ``strength``.

    Same faces as the clean folder of the same ``n`` and ``seed`` except for the hats (the
    factors are drawn identically, then the cue is overwritten), so the two training sets differ
    in the planted correlation only.
    """
    return toy_data((f"toy-{n}-{seed}-{CUE.lower()}-{strength:g}", n, seed), progress=progress,
                    spurious=toyfaces.Spurious(TARGET, CUE, strength))


def test_sets(strength: float = DEFAULT.strength, n: int = DEFAULT.test_size,
              seed: int = DEFAULT.test_seed, progress: bool = True) -> dict[str, Path]:
    """``{"decorrelated": …, "correlated": …}``: unseen toyfaces folders of the same faces,
    hats independent of smiles in the first, planted as in training in the second."""
    clean = toy_data((f"toy-test-{n}-{seed}", n, seed) if (n, seed) != TEST_DATA[1:] else TEST_DATA,
                     progress=progress)
    return {"decorrelated": clean, "correlated": spurious_data(strength, n, seed, progress)}


def biased_classifier(strength: float = DEFAULT.strength, quiet: bool = True,
                      retrain: bool = False, recipe: str = DEFAULT.recipe) -> Path:
    """Checkpoint of the toy ResNet recipe trained on :func:`spurious_data`.

    At the default strength the shipped weights (``toyfaces/weights/classifiers/
    toy_resnet_wearing_hat_1.safetensors``, made by this function; see the README there);
    otherwise, or with ``retrain``, trained here with the project's own training code (renders
    the 12000 training faces first; several minutes on 2 cores), then cached under
    ``<cache>/models``."""
    return shipped_or_trained(
        f"toy_resnet_{CUE.lower()}_{strength:g}", recipe,
        lambda: spurious_data(strength, progress=not quiet), retrain=retrain, quiet=quiet,
        extra_args=("--data.make_with", "null"))  # never render clean faces in its place


def clean_classifier() -> Path:
    """The toy world's own ``toy_resnet``: same recipe, data size and seed, no planted cue."""
    return toy_classifier("toy_resnet")


def hat_reader() -> Path:
    """The biased classifier's control: the clean toy ResNet with its ``Smiling`` output row
    replaced by its own ``Wearing_Hat`` row, so that its Smiling decision reads the hat and
    nothing else (hats are independent of smiles in the clean world it learnt). The biased
    classifier learnt the hat *with* the smile: a rendered smile moves its logit by a median
    of +1.2 to +2.2 on the seeds measured, this one's by under 1 either way. Run the
    experiment with this one as ``biased`` to see what a sampler shows when the hat is the
    whole decision. Made from the clean weights in a moment, at every call (never stale),
    into ``<cache>/models/toy_resnet_hat_reader.safetensors``."""
    model = load_classifier(clean_classifier())
    s, h = attribute_index(TARGET), attribute_index(CUE)
    with torch.no_grad():
        model.net.fc.weight[s] = model.net.fc.weight[h]
        model.net.fc.bias[s] = model.net.fc.bias[h]
    return export_safetensors(model, cache_dir() / "models" / "toy_resnet_hat_reader.safetensors")


def pick_faces(models: dict, folder, n: int) -> list[int]:
    """The first ``n`` rows of a toyfaces folder labelled not smiling and without a hat that
    every classifier in ``models`` calls not smiling: the faces all of them are asked to flip."""
    s, h = attribute_index(TARGET), attribute_index(CUE)
    ds = dataset_for(folder, split="all")
    keep = None
    for clf in models.values():
        logits, labels, rows = predict(clf, ds, progress=False)
        ok = (logits[:, s] <= 0) & (labels[:, s] < 0.5) & (labels[:, h] < 0.5)
        keep = ok if keep is None else keep & ok
    return rows[keep].tolist()[:n]
