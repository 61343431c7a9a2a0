"""Clever Hans in the toy world: a classifier that learnt a spurious cue, exposed by its
counterfactuals, LRP and CRP (``ldvce demo --spurious``, ``notebooks/clever_hans.ipynb``).

Two classifiers with the same recipe (``configs/classifier/toy_resnet.yaml``: architecture, data
size, seed, epochs) differ only in their training data. The *biased* one sees a world where the
hat copies the smile (:class:`toyfaces.Spurious`: every smiling face wears a hat at strength 1);
the *clean* one the ordinary toy world, where hats are independent of smiles. Both are asked to
make the same not-smiling, hat-less, unseen faces smile. The toy world's ground truth scores the
answers:

- where the counterfactual changed the image: the change per pixel inside the hat region and
  inside the mouth region (``toyfaces`` masks); "most change on the hat" means more change per
  pixel in the hat region than in the mouth region (also reported: each region's share of Σ|Δ|);
- what the independent oracle (``toy_oracle``, trained on clean data) sees change: Wearing_Hat
  or Smiling;
- which change carried a flip: the counterfactual with the original's pixels put back in one
  region, classified again;
- where LRP puts the decision's relevance (hat vs mouth mask);
- CRP: the concepts that changed most between original and counterfactual, and each
  classifier's top concepts for Smiling, with reference images and the share of their
  conditional relevance inside the hat and mouth masks;
- the answer key: the renderer draws the same faces with a hat, or with a smile, everything else
  equal, and each classifier's decision on them says what it really uses.

Modules: :mod:`.data` (settings from ``configs/experiment/clever-hans.yaml``, the two worlds,
the classifiers, the faces), :mod:`.scoring` (ground-truth scores of a run, the answer key),
:mod:`.crp` (concepts), :mod:`.figures`, :mod:`.report`, and :mod:`.run`
(:func:`~experiments.clever_hans.run.run_experiment`, which ``ldvce demo --spurious`` calls).
"""
