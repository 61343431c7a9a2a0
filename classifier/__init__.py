"""Classifiers of the 40 CelebA-HQ attributes and the CelebA-HQ data layer.

``from classifier import LinearClassifier, ResNetClassifier, load_classifier`` gives the models
(``ResNet50Classifier`` is the former name of ``ResNetClassifier``). Names other than the
attribute list are imported on first use, so ``import classifier`` does not load torch.
"""
from importlib import import_module

from classifier.attributes import (ATTRIBUTES, NUM_ATTRIBUTES, UnknownAttributeError,
                                   attribute_index, attribute_name)

_EXPORTS = {
    "CelebHQAttrDataset": "classifier.dataset", "read_attribute_file": "classifier.dataset",
    "write_attribute_file": "classifier.dataset", "dataset_files": "classifier.dataset",
    "AttributeClassifier": "classifier.models", "LinearClassifier": "classifier.models",
    "ResNetClassifier": "classifier.models", "ResNet50Classifier": "classifier.models",
    "load_classifier": "classifier.models", "export_safetensors": "classifier.models",
    "CheckpointMismatchError": "classifier.models",
    "register_classifier": "classifier.registry", "registered_classifiers": "classifier.registry",
    "resolve_classifier": "classifier.registry", "resolve_device": "classifier.devices",
}

__all__ = ["ATTRIBUTES", "NUM_ATTRIBUTES", "UnknownAttributeError", "attribute_index",
           "attribute_name", *sorted(_EXPORTS)]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'classifier' has no attribute {name!r}")
