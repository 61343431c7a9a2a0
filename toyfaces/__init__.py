"""toyfaces: a procedural face world with ground truth, in the CelebA-HQ formats (DESIGN.md §3)."""
from toyfaces.data import is_complete, load_factors, load_masks, load_meta, make_dataset, paths
from toyfaces.render import MODELLED, Factors, Spurious, labels_of, render, sample_factors

__all__ = ["make_dataset", "load_masks", "load_meta", "load_factors", "is_complete", "paths",
           "MODELLED", "Factors", "Spurious", "labels_of", "render", "sample_factors"]
