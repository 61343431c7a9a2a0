"""toyfaces: a procedural face world with ground truth, in the CelebA-HQ file formats.

Faces are drawn from continuous factors (smile, mouth, glasses, sex, hair, hat, skin, pose, …)
with labels for 11 CelebA attributes and a ground-truth region mask per attribute; datasets are
written as an LMDB + ``CelebAMask-HQ-attribute-anno.txt`` (so the ``classifier`` package reads
them as any CelebA-HQ dataset folder). The package also ships the toy LDM and the trained toy
classifiers (``weights/``).

Importing it registers the toy LDM as ``load_ldm("toy")`` (``dvce.ldm.register_ldm``) and the
toy classifiers as ``--classifier toy_resnet`` etc. (``classifier.registry.register_classifier``,
:mod:`toyfaces.world`); the dataset writer/readers are imported on first use, so the import
itself needs no torch.
"""
from importlib import import_module
from pathlib import Path

from dvce.ldm import register_ldm as _register_ldm
from toyfaces.ldm import TOY_LDM_NAME, toy_ldm_folder
from toyfaces.render import MODELLED, Factors, Spurious, labels_of, render, sample_factors
from toyfaces.world import register_toy_classifiers as _register_toy_classifiers

#: Shipped weights: ``toy-ldm/`` (diffusers folder) and ``classifiers/`` (safetensors).
WEIGHTS = Path(__file__).resolve().parent / "weights"

_register_ldm(TOY_LDM_NAME, toy_ldm_folder)
_register_toy_classifiers()

_EXPORTS = {
    "make_dataset": "toyfaces.data", "load_masks": "toyfaces.data", "load_meta": "toyfaces.data",
    "load_factors": "toyfaces.data", "is_complete": "toyfaces.data", "paths": "toyfaces.data",
    "render_rows": "toyfaces.data",
}

__all__ = sorted(_EXPORTS) + ["WEIGHTS", "MODELLED", "Factors", "Spurious", "labels_of", "render",
                              "sample_factors"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'toyfaces' has no attribute {name!r}")
