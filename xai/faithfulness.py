"""Faithfulness and sanity checks of attribution maps that need the model: deletion/insertion
curves (pixel flipping, AOPC) and Adebayo et al.'s model-parameter randomisation.

Deletion (most relevant first, "MoRF"): the pixels are set to the baseline (0, grey in
[-1, 1]) in ``steps`` equal chunks, most relevant first, and the classifier's probability for
its decision on the original image is recorded after each chunk; a faithful map makes it fall
fast (small area under the curve, large AOPC). Insertion starts from the baseline image and puts
the original pixels back in the same order; a faithful map makes the probability rise fast
(large area). AOPC (Samek et al. 2017) is the mean drop ``p(x) − p(x_k)`` over ``k = 0 … steps``.

Randomisation (Adebayo et al. 2018, "cascading to the bottom"): every layer's parameters are
re-initialised (:func:`randomized_copy`); a method whose maps barely change explains the image,
not the model. Comparing the maps is the caller's business (a rank correlation).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from classifier.attributes import attribute_index
from xai.lrp import _model_device_dtype, preserved

#: Chunks of pixels flipped per curve (the curve has ``steps + 1`` points).
STEPS = 16


def _order(maps: np.ndarray) -> np.ndarray:
    """(B, H*W) pixel indices, most relevant first; ties in a stable, seeded random order (a
    constant map flips pixels at random, not row by row)."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    rng = np.random.default_rng(0)
    jitter = rng.random(flat.shape[1])
    return np.stack([np.lexsort((jitter, -np.nan_to_num(f, nan=-np.inf))) for f in flat])


def perturbation_curves(model: nn.Module, images: torch.Tensor, attribute, maps,
                        direction: torch.Tensor, steps: int = STEPS,
                        baseline: float = 0.0) -> dict[str, np.ndarray]:
    """Deletion and insertion curves of ``maps`` on ``images``.

    Parameters
    ----------
    model : the classifier (images in [-1, 1] -> logits).
    images : (B, 3, H, W) in [-1, 1].
    attribute : attribute name or index.
    maps : (B, H, W) evidence for the decision (higher = more relevant).
    direction : (B,) ±1: the decision on each original image.
    steps : chunks of pixels per curve.
    baseline : the value a removed pixel takes.

    Returns
    -------
    dict with ``"deletion"`` and ``"insertion"``: (B, steps + 1) probabilities of the original
    decision, from 0 % to 100 % of the pixels flipped.
    """
    maps = np.asarray(maps)
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps must be (B, H, W) = {(images.shape[0], *images.shape[-2:])}, "
                         f"got {maps.shape}")
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    idx = attribute_index(attribute)
    device, dtype = _model_device_dtype(model)
    order = torch.from_numpy(_order(maps))
    n_pix = order.shape[1]
    cuts = [round(k * n_pix / steps) for k in range(steps + 1)]
    out = {"deletion": [], "insertion": []}
    with torch.no_grad(), preserved(model):
        for i in range(len(images)):
            keep = torch.zeros(steps + 1, n_pix, dtype=torch.bool)  # pixel already flipped
            for k, c in enumerate(cuts):
                keep[k, order[i, :c]] = True
            flipped = keep.view(steps + 1, 1, *images.shape[-2:])
            x = images[i: i + 1].float()
            base = torch.full_like(x, baseline)
            batch = {"deletion": torch.where(flipped, base, x),
                     "insertion": torch.where(flipped, x, base)}
            for name, b in batch.items():
                logit = model(b.to(device=device, dtype=dtype))[:, idx].float().cpu()
                out[name].append(torch.sigmoid(logit * float(direction[i])).numpy())
    return {k: np.stack(v).astype(np.float64) for k, v in out.items()}


def curve_area(curve) -> np.ndarray:
    """Area under each curve (trapezoid rule on [0, 1]): (B, K) -> (B,)."""
    c = np.asarray(curve, dtype=np.float64)
    return ((c[:, 1:] + c[:, :-1]) / 2).mean(axis=1)


def aopc(deletion) -> np.ndarray:
    """Area over the MoRF perturbation curve: mean of ``p(x) − p(x_k)`` over k = 0 … K−1."""
    c = np.asarray(deletion, dtype=np.float64)
    return (c[:, :1] - c).mean(axis=1)


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every parameter re-initialised (each module's
    ``reset_parameters``, seeded; batch norms also forget their running statistics) — Adebayo
    et al.'s fully randomised model. ``model`` is not touched."""
    clone = copy.deepcopy(model)
    n = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for mod in clone.modules():
            reset = getattr(mod, "reset_parameters", None)
            if callable(reset):
                reset()
                n += 1
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats:
                mod.reset_running_stats()
    if n == 0:
        raise ValueError("randomisation found no layer with reset_parameters() in the model")
    return clone.eval()
