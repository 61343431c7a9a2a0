"""Benchmarks that measure things side by side in one process and print ratios (``ldvce bench``).

Settings: ``configs/experiment/bench.yaml`` and ``configs/experiment/seed-faithful.yaml``
(:mod:`benchmarks.common`).

- :mod:`benchmarks.generate` — ``ldvce bench generate``: the seed-faithful lDVCE (batch 1, as
  the original ran) against every other sampler with its own defaults, on the same toy images,
  classifier and LDM; ``--gpu`` (:mod:`benchmarks.gpu`) the same for time per image with the
  exact CompVis architecture at 256² (random weights) on a CUDA GPU; ``--protocol full``
  (:mod:`benchmarks.protocol`) both written as run folders (both directions) and evaluated with
  the published protocol; ``--devices N`` (:mod:`benchmarks.devices`) ``ldvce generate`` on one
  process against N processes and one process with N threads.
- :mod:`benchmarks.ldm` — ``ldvce bench ldm``: quality of the shipped toy LDM on unseen images.
- :mod:`benchmarks.lrp` — ``ldvce bench lrp``: LRP relevance mass in the mouth for every
  composite, the toy ResNet (local evidence) beside the oracle (a plain stride-32 ResNet18).
"""
