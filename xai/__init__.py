"""Explanations of the attribute classifiers: LRP heatmaps (zennit), CRP concepts (zennit-crp),
and their pictures (see docs/architecture.md for where they sit in the pipeline).

    from xai import attribute, COMPOSITES
    heat = attribute(model, images, "Smiling", composite="epsilon_plus_flat")   # (B, H, W)

``xai.crp`` (imported on demand: it pulls in zennit-crp) holds the concept analyses and the
zennit-crp fixes for this stack; ``xai.render`` the heatmap images and the panel figure.
"""
from xai.lrp import COMPOSITES, LABELS, Attribution, attribute, get_composite, parse_composites, preserved

__all__ = ["COMPOSITES", "LABELS", "Attribution", "attribute", "get_composite", "parse_composites",
           "preserved"]
