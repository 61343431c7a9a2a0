"""The published counterfactual evaluation protocol (FR, FID, sFID, FVA, FS, MNAC, CD, COUT).

- :mod:`dvce.protocol.metrics` — the metric math on precomputed features (no networks, no files);
- :mod:`dvce.protocol.nets` — architectures of the protocol's networks (pytorch-fid Inception-v3,
  VGGFace2 ResNet-50, the STEEX CelebA-HQ oracle) and their weight-file loaders;
- :mod:`dvce.protocol.features` — the networks by name (pluggable) and the per-image cache;
- :mod:`dvce.protocol.evaluate` — the runner over a run folder and the comparison table.
"""
