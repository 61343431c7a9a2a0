"""Attribution methods by name: one registered function each, so that adding a method is one
function (``@register_method``).

Every method explains the classifier's *decision* on one attribute: the attribute's logit times
``direction`` (+1 where the image is called positive, -1 where it is called negative, by default
the sign of the logit on the original image), so a map is always "evidence for what the
classifier decided" and positive values are relevant. Methods return ``(B, H, W)`` numpy maps at
the input resolution.

Registered (:data:`METHODS`):

* the LRP composites of :data:`xai.lrp.COMPOSITES` under their own names (``epsilon_plus_flat``,
  ``lrp0``, …; start relevance = the logit, signed by the decision);
* ``gradient``, ``smoothgrad``, ``integrated_gradients`` (zennit's attributors: |∇| summed over
  colour channels for the first two, the signed IG attribution with a grey (0) baseline);
* ``occlusion`` (captum: the drop of the decision's logit when an 8×8 patch is set to grey);
* ``gradcam`` (captum ``LayerGradCam`` on the last residual stage, upsampled, ReLU);
* ``crp_top`` (zennit-crp: the sum of the conditional heatmaps of the decision's top concepts of
  the last stage, :func:`xai.crp.conditional_heatmaps`);
* ``cf_delta`` (|x′ − x| summed over channels) and ``cf_lrp_diff`` (LRP-EpsilonPlusFlat of the
  original minus that of the counterfactual: the relevance for the decision that the change
  removed) — these need counterfactuals (``counterfactuals=``), made by the caller (a run folder
  or a sampler; ``xai`` never imports ``dvce``).

    from xai.attributions import attribution_maps
    maps = attribution_maps(model, images, "Smiling", "gradcam")          # (B, H, W)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from zennit.attribution import Gradient, IntegratedGradients, SmoothGrad

from classifier.attributes import attribute_index
from xai.lrp import (COMPOSITES, LABELS, _model_device_dtype, attribute as lrp_attribute, parse_names,
                     preserved)


@dataclass(frozen=True)
class Method:
    """A registered attribution method.

    Attributes
    ----------
    name : registry name (``--methods``).
    function : ``function(model, images, index, direction, counterfactuals) -> (B, H, W)``.
    label : short display name (figure columns, tables).
    family : ``"lrp"``, ``"gradient"``, ``"perturbation"``, ``"cam"``, ``"concept"`` or
        ``"counterfactual"``.
    needs_counterfactual : the function needs ``counterfactuals`` (same shape as the images).
    """
    name: str
    function: Callable
    label: str
    family: str
    needs_counterfactual: bool = False


#: name -> :class:`Method`, in registration order.
METHODS: dict[str, Method] = {}


def register_method(name: str, label: str, family: str, needs_counterfactual: bool = False):
    """Decorator: register ``function(model, images, index, direction, counterfactuals)`` as
    method ``name`` (a plain word; an existing name is an error)."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"method names are plain words, not {name!r}")

    def add(function):
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = Method(name, function, label, family, needs_counterfactual)
        return function
    return add


def parse_methods(spec: str | list[str] | None) -> list[str]:
    """``"gradcam,occlusion"`` (or a list) -> validated registry names; None -> all."""
    return list(METHODS) if spec is None else parse_names(spec, METHODS, "method")


# ------------------------------------------------------------------------------ the decision
class Decision(nn.Module):
    """``model`` reduced to one output: the attribute's logit times ``direction`` ((B, 1)).

    ``direction`` is set per batch (:meth:`set`); the wrapped model's modules are shared."""

    def __init__(self, model: nn.Module, index: int):
        super().__init__()
        self.model = model
        self.index = int(index)
        self.direction: torch.Tensor | None = None

    def set(self, direction: torch.Tensor) -> "Decision":
        self.direction = direction
        return self

    def forward(self, x):
        out = self.model(x)[:, self.index: self.index + 1]
        if self.direction is None:
            return out
        d = self.direction.to(out).view(-1, 1)
        if len(out) != len(d):  # captum evaluates several perturbations of the batch at once
            d = d.repeat(len(out) // len(d), 1)
        return out * d


def decision_direction(model: nn.Module, images: torch.Tensor, attribute) -> torch.Tensor:
    """+1 where ``model`` calls the image positive for ``attribute`` (logit > 0), else -1."""
    idx = attribute_index(attribute)
    device, dtype = _model_device_dtype(model)
    with torch.no_grad(), preserved(model):
        logit = model(images.to(device=device, dtype=dtype))[:, idx].float().cpu()
    return torch.where(logit > 0, 1.0, -1.0)


def attribution_maps(model: nn.Module, images: torch.Tensor, attribute, method: str,
                     counterfactuals: torch.Tensor | None = None,
                     direction: torch.Tensor | None = None, batch_size: int = 16) -> np.ndarray:
    """Maps of one registered method for a batch of images.

    Parameters
    ----------
    model : the classifier (images in [-1, 1] -> logits), LightningModule or net.
    images : (B, 3, H, W) in [-1, 1].
    attribute : attribute name or index.
    method : a name of :data:`METHODS`.
    counterfactuals : (B, 3, H, W), for the methods that need them.
    direction : (B,) ±1, the decision explained per image (default: the sign of the logit).
    batch_size : images per call of the method.

    Returns
    -------
    numpy.ndarray (B, H, W) float64: evidence for the decision (higher = more relevant).
    """
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; choose from {list(METHODS)}")
    m = METHODS[method]
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if m.needs_counterfactual and (counterfactuals is None or counterfactuals.shape != images.shape):
        raise ValueError(f"method {method!r} needs counterfactuals of the images' shape "
                         f"{tuple(images.shape)}")
    idx = attribute_index(attribute)
    if direction is None:
        direction = decision_direction(model, images, idx)
    device, dtype = _model_device_dtype(model)
    out = []
    with preserved(model):
        for b in range(0, len(images), batch_size):
            x = images[b: b + batch_size].to(device=device, dtype=dtype).detach()
            cf = None if counterfactuals is None else \
                counterfactuals[b: b + batch_size].to(device=device, dtype=dtype).detach()
            d = direction[b: b + batch_size].to(device=device, dtype=dtype)
            maps = m.function(model, x, idx, d, cf)
            out.append(np.asarray(maps.detach().cpu().double() if torch.is_tensor(maps) else maps,
                                  dtype=np.float64))
    return np.concatenate(out)


def _signed(maps: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return maps * direction.view(-1, *([1] * (maps.dim() - 1))).to(maps)


# -------------------------------------------------------------------------------- LRP
def _lrp(composite: str):
    def lrp(model, x, index, direction, counterfactuals=None):
        heat = lrp_attribute(model, x, index, composite, start="logit", batch_size=len(x))
        return _signed(heat, direction.cpu())
    lrp.__doc__ = f"LRP with the {composite!r} composite, signed by the decision."
    return lrp


for _name in COMPOSITES:
    register_method(_name, LABELS.get(_name, _name), "lrp")(_lrp(_name))


# -------------------------------------------------------------------- zennit's attributors
def _zennit(attributor, model, x, index, direction):
    head = Decision(model, index).set(direction)
    with torch.enable_grad(), attributor(head) as attr:
        _, grad = attr(x, torch.ones((len(x), 1), device=x.device, dtype=x.dtype))
    return grad.detach()


@register_method("gradient", "Gradient", "gradient")
def gradient(model, x, index, direction, counterfactuals=None):
    """|∂ decision / ∂x| summed over colour channels (Simonyan et al.; zennit ``Gradient``)."""
    return _zennit(Gradient, model, x, index, direction).abs().sum(1)


@register_method("smoothgrad", "SmoothGrad", "gradient")
def smoothgrad(model, x, index, direction, counterfactuals=None):
    """|SmoothGrad| summed over channels: the gradient averaged over 20 noisy copies (noise 10 %
    of the image's range; zennit ``SmoothGrad``, seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        g = _zennit(lambda m: SmoothGrad(m, noise_level=0.1, n_iter=20), model, x, index, direction)
    return g.abs().sum(1)


@register_method("integrated_gradients", "IG", "gradient")
def integrated_gradients(model, x, index, direction, counterfactuals=None):
    """Integrated Gradients from a grey (0) image in 20 steps, summed over channels (signed;
    zennit ``IntegratedGradients``)."""
    return _zennit(lambda m: IntegratedGradients(m, n_iter=20, baseline_fn=torch.zeros_like),
                   model, x, index, direction).sum(1)


# --------------------------------------------------------------------------------- captum
#: Occlusion patch and stride in pixels at 64² (scaled with the image size).
OCCLUSION_WINDOW, OCCLUSION_STRIDE = 8, 8


@register_method("occlusion", "Occlusion", "perturbation")
def occlusion(model, x, index, direction, counterfactuals=None):
    """Drop of the decision's logit when the grey 8×8 patch (a grid of non-overlapping patches at
    64², scaled with the image) that holds the pixel is occluded (captum ``Occlusion``)."""
    from captum.attr import Occlusion
    scale = max(1, x.shape[-1] // 64)
    w, s = OCCLUSION_WINDOW * scale, OCCLUSION_STRIDE * scale
    head = Decision(model, index).set(direction)
    with torch.no_grad():
        a = Occlusion(head).attribute(x, sliding_window_shapes=(x.shape[1], w, w),
                                      strides=(x.shape[1], s, s), baselines=0.0, target=0,
                                      perturbations_per_eval=32)
    return a[:, 0]  # the same value in every channel of a patch


def last_stage(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM and CRP look at: ``layer4`` of a ResNet, else the last convolution."""
    net = getattr(model, "net", model)
    if hasattr(net, "layer4"):
        return net.layer4
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("Grad-CAM needs a convolutional model (no Conv2d found)")
    return convs[-1]


@register_method("gradcam", "Grad-CAM", "cam")
def gradcam(model, x, index, direction, counterfactuals=None):
    """Grad-CAM (Selvaraju et al.) of the decision on the last stage, bilinearly upsampled to the
    input, ReLU (captum ``LayerGradCam``)."""
    from captum.attr import LayerAttribution, LayerGradCam
    head = Decision(model, index).set(direction)
    with torch.enable_grad():
        cam = LayerGradCam(head, last_stage(model)).attribute(x, target=0, relu_attributions=True)
    return LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), "bilinear")[:, 0]


# -------------------------------------------------------------------------------- CRP
#: Concepts of the last stage whose conditional heatmaps ``crp_top`` adds up.
CRP_TOP = 3


@register_method("crp_top", "CRP top-3", "concept")
def crp_top(model, x, index, direction, counterfactuals=None):
    """The sum of the conditional heatmaps (zennit-crp, EpsilonPlusFlat) of the ``CRP_TOP``
    channels of the last stage with the most relevance for the decision."""
    from xai.crp import concept_relevances, conditional_heatmaps, resolve_layers
    stage = last_stage(model)
    layer = next(n for n, mod in model.named_modules() if mod is stage)
    (layer,) = resolve_layers(model, [layer])
    rel, _, _ = concept_relevances(model, x, index, [layer], "epsilon_plus_flat")
    out = []
    for i in range(len(x)):
        r = rel[layer][i] * float(direction[i])
        top = np.argsort(-r)[:CRP_TOP]
        maps = conditional_heatmaps(model, x[i], index, layer, top, "epsilon_plus_flat")
        out.append(maps.sum(0) * float(direction[i]))
    return torch.from_numpy(np.stack(out))


# ------------------------------------------------------------------------ counterfactuals
@register_method("cf_delta", "|x′−x|", "counterfactual", needs_counterfactual=True)
def cf_delta(model, x, index, direction, counterfactuals=None):
    """|x′ − x| summed over colour channels: where the counterfactual changed the image."""
    return (counterfactuals - x).abs().sum(1)


@register_method("cf_lrp_diff", "LRP(x)−LRP(x′)", "counterfactual", needs_counterfactual=True)
def cf_lrp_diff(model, x, index, direction, counterfactuals=None):
    """LRP-EpsilonPlusFlat relevance of the original minus that of the counterfactual (start
    relevance: each image's logit), signed by the original's decision: the evidence for the
    decision that the counterfactual's change took away."""
    before = lrp_attribute(model, x, index, "epsilon_plus_flat", start="logit", batch_size=len(x))
    after = lrp_attribute(model, counterfactuals, index, "epsilon_plus_flat", start="logit",
                          batch_size=len(x))
    return _signed(before - after, direction.cpu())
