"""LRP heatmaps with zennit: composites by name, built for the model at hand, and :func:`attribute`.

Rules are assigned by *role* rather than only by module type, so that one name means the same
thing on the ResNet and on the seed's flatten + MLP classifier:

``first``    the first linear layer in forward order (``net.conv1``; the MLP's first ``Linear``),
``feature``  the other convolutions (for an MLP: its hidden dense layers),
``head``     the dense layers on top of the convolutions (``net.fc``; the MLP's last ``Linear``),

plus the shared base map: activations → Pass, residual sums (``canonizer_sum``) → Norm, average
pooling → Norm, batch norms → Pass (they are merged into the convolutions by the canonizer anyway).

On an MLP a Flat rule on its only hidden layer gives a constant map (every input pixel gets the
same share of each hidden unit's relevance), so the ``*_flat`` composites use their ``feature``
rule (z+) there instead.

Canonizers are chosen for the model and passed by keyword: ``ResNetCanonizer`` for torchvision
ResNets (batch-norm merge + explicit residual sums), ``SequentialMergeBatchNorm`` for other
models with batch norms, none otherwise.
"""
from __future__ import annotations

import contextlib
from collections import namedtuple
from typing import Callable

import torch
from torch import nn
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.core import BasicHook, Composite, stabilize
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Flat, Norm, Pass, ZBox, ZPlus
from zennit.types import Activation, AvgPool, BatchNorm, Convolution

from classifier.attributes import attribute_index

#: Pixel range of the classifiers' inputs (images in [-1, 1]); used by the ZBox rule.
LOW, HIGH = -1.0, 1.0

Attribution = namedtuple("Attribution", "heatmap relevance logits")
Attribution.__doc__ = """Result of :func:`attribute` with ``full=True``.

heatmap: (B, H, W) relevance summed over colour channels; relevance: (B, C, H, W) per-channel
relevance at the input; logits: (B, num_classes) model outputs."""


# ------------------------------------------------------------------------------------ rules
class SignedGamma(BasicHook):
    """LRP-γ that follows the sign of each output (Montavon et al. 2019, generalised).

    Outputs with ``z_j > 0`` spread relevance in proportion to ``x⁺(w + γw⁺) + x⁻(w + γw⁻)``
    (positive contributions boosted), outputs with ``z_j ≤ 0`` in proportion to
    ``x⁺(w + γw⁻) + x⁻(w + γw⁺)`` (negative contributions boosted); biases are boosted the same
    way. zennit 0.4.6's ``Gamma`` boosts the positive weights for every output, so on a ResNet —
    where the residual sum hands relevance to convolutions with negative pre-activations — its
    denominators pass through zero and the relevance blows up (sums of 10³ times the logit on the
    toy ResNet); this rule keeps each denominator on the side of ``z_j``.
    """

    def __init__(self, gamma: float = 0.25, epsilon: float = 1e-6):
        def boost(sign):
            def mod(param, name):
                part = param.clamp(min=0) if sign > 0 else param.clamp(max=0)
                return param + gamma * part
            return mod

        def no_bias(mod):
            return lambda param, name: torch.zeros_like(param) if name == "bias" else mod(param, name)

        def mapper(out_grad, outputs):
            positive = outputs[4] > 0
            g_pos = torch.where(positive, out_grad / stabilize(outputs[0] + outputs[1], epsilon), 0.0)
            g_neg = torch.where(positive, 0.0, out_grad / stabilize(outputs[2] + outputs[3], epsilon))
            return (g_pos, g_pos, g_neg, g_neg, torch.zeros_like(out_grad))

        super().__init__(
            input_modifiers=[lambda x: x.clamp(min=0), lambda x: x.clamp(max=0),
                             lambda x: x.clamp(min=0), lambda x: x.clamp(max=0), lambda x: x],
            param_modifiers=[boost(+1), no_bias(boost(-1)), boost(-1), no_bias(boost(+1)),
                             lambda param, name: param],
            output_modifiers=[lambda out: out] * 5,
            gradient_mapper=mapper,
            reducer=lambda inputs, grads: sum(x * g for x, g in zip(inputs[:4], grads[:4])),
        )


# ------------------------------------------------------------------------------- composites
class RoleComposite(Composite):
    """A zennit composite that assigns rules by role (``first`` / ``feature`` / ``head``).

    Parameters
    ----------
    first, feature, head : zennit rules (hooks) or None (None leaves the plain gradient).
    canonizers : list of zennit canonizers, or None.
    flat_safe : bool
        If True the ``first`` rule is a Flat rule and is replaced by ``feature`` on models
        without convolutions (an MLP), where Flat makes the heatmap constant.
    """

    def __init__(self, first, feature, head, canonizers=None, flat_safe: bool = False):
        self.rules = {"first": first, "feature": feature, "head": head}
        self.flat_safe = flat_safe
        self.base = [(Activation, Pass()), (Sum, Norm()), (AvgPool, Norm()), (BatchNorm, Pass())]
        super().__init__(module_map=self._mapping, canonizers=canonizers)

    def _mapping(self, ctx, name, module):
        if "roles" not in ctx:  # named_modules() yields the root first: assign roles once
            ctx["roles"] = layer_roles(module)
            ctx["mlp"] = not any(isinstance(m, Convolution) for m in module.modules())
        role = ctx["roles"].get(id(module))
        if role is not None:
            if role == "first" and self.flat_safe and ctx["mlp"]:
                role = "feature"
            return self.rules[role]
        return next((hook for types, hook in self.base if isinstance(module, types)), None)


def layer_roles(root: nn.Module) -> dict[int, str]:
    """``id(module) -> role`` for the linear layers of ``root`` (see the module docstring)."""
    convs = [m for m in root.modules() if isinstance(m, Convolution)]
    denses = [m for m in root.modules() if isinstance(m, nn.Linear)]
    roles: dict[int, str] = {}
    if convs:
        roles.update({id(m): "feature" for m in convs[1:]})
        roles[id(convs[0])] = "first"
        roles.update({id(m): "head" for m in denses})
    elif denses:
        roles.update({id(m): "feature" for m in denses[1:-1]})
        if len(denses) > 1:
            roles[id(denses[0])] = "first"
        roles[id(denses[-1])] = "head"
    return roles


def is_resnet(model: nn.Module) -> bool:
    # heavy: torchvision (~2 s), which `import xai` does not need until a model is explained
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
    return any(isinstance(m, (ResNet, BasicBlock, Bottleneck)) for m in model.modules())


def canonizers_for(model: nn.Module) -> list:
    """ResNetCanonizer for torchvision ResNets, SequentialMergeBatchNorm if there are batch norms."""
    if is_resnet(model):
        from zennit.torchvision import ResNetCanonizer  # heavy: imports torchvision, as above
        return [ResNetCanonizer()]
    if any(isinstance(m, BatchNorm) for m in model.modules()):
        return [SequentialMergeBatchNorm()]
    return []


def _composite(first, feature, head, flat_safe=False):
    def build(model: nn.Module) -> Composite:
        return RoleComposite(first(), feature(), head(), canonizers=canonizers_for(model),
                             flat_safe=flat_safe)
    return build


#: name -> function(model) -> a fresh zennit Composite for that model (composites hold hooks,
#: so build one per use). The seed's three first (its LRP notebook's choices), then zennit's.
COMPOSITES: dict[str, Callable[[nn.Module], Composite]] = {
    # seed: Conv -> ZPlus, Linear -> Epsilon(0), BN/ReLU -> Pass, AdaptiveAvgPool -> Norm
    "lrp0": _composite(ZPlus, ZPlus, lambda: Epsilon(epsilon=0.0)),
    "lrp_eps": _composite(ZPlus, ZPlus, lambda: Epsilon(epsilon=1.0)),
    "lrp_zplus": _composite(ZPlus, ZPlus, ZPlus),
    "epsilon_plus_flat": _composite(Flat, ZPlus, Epsilon, flat_safe=True),
    "epsilon_plus": _composite(ZPlus, ZPlus, Epsilon),
    # zennit's EpsilonGammaBox layout; γ as SignedGamma (zennit 0.4.6's Gamma diverges on ResNets)
    "epsilon_gamma_box": _composite(lambda: ZBox(LOW, HIGH), lambda: SignedGamma(gamma=0.25), Epsilon),
    "epsilon_alpha2_beta1": _composite(lambda: AlphaBeta(alpha=2, beta=1),
                                       lambda: AlphaBeta(alpha=2, beta=1), Epsilon),
}

#: Short display names (column titles of the panel figure).
LABELS = {
    "lrp0": "LRP-0", "lrp_eps": "LRP-EPS", "lrp_zplus": "LRP-Z+", "epsilon_plus_flat": "LRP-EPF",
    "epsilon_plus": "LRP-EP", "epsilon_gamma_box": "LRP-EGB", "epsilon_alpha2_beta1": "LRP-EAB",
}


def get_composite(name: str | Composite, model: nn.Module) -> Composite:
    """A fresh composite for ``model`` by registry name (a Composite instance passes through)."""
    if isinstance(name, Composite):
        return name
    if name not in COMPOSITES:
        raise KeyError(f"unknown composite {name!r}; choose from {sorted(COMPOSITES)}")
    return COMPOSITES[name](model)


def parse_names(spec: str | list[str], known, what: str) -> list[str]:
    """``"a,b"`` (or a list) -> the names, each checked against ``known`` (a registry); a clear
    error naming ``what`` (e.g. "composite") for unknown or no names."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ValueError(f"unknown {what}(s) {bad or spec!r}; choose from {sorted(known)}")
    return names


def parse_composites(spec: str | list[str]) -> list[str]:
    """``"lrp0,epsilon_plus_flat"`` -> validated list of registry names."""
    return parse_names(spec, COMPOSITES, "composite")


# ---------------------------------------------------------------------------- model guard
@contextlib.contextmanager
def preserved(model: nn.Module, eval_mode: bool = True):
    """Run a block on ``model`` and put back what attribution code may change.

    Restores every module's ``training`` flag and every parameter's ``requires_grad`` flag, and
    checks that the ``state_dict`` keys are the same afterwards (canonizers add and remove
    parameters; a leftover would be a bug, so it raises). With ``eval_mode`` the block runs in
    eval mode (batch norm statistics and dropout frozen, as LRP assumes).
    """
    training = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    keys = list(model.state_dict().keys())
    if eval_mode:
        model.eval()
    try:
        yield model
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)
    after = list(model.state_dict().keys())
    if after != keys:
        raise RuntimeError(f"attribution left the model altered: state_dict keys changed "
                           f"({sorted(set(after) ^ set(keys))[:5]})")


def _model_device_dtype(model: nn.Module):
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def start_relevance(logits: torch.Tensor, index: int, start: str = "logit") -> torch.Tensor:
    """Output relevance: the chosen logit's value (``"logit"``, sign follows the logit) or 1
    (``"one"``, one-hot) at ``index``, zero elsewhere."""
    mask = torch.zeros_like(logits)
    if start == "logit":
        mask[:, index] = logits[:, index].detach()
    elif start == "one":
        mask[:, index] = 1.0
    else:
        raise ValueError(f"start must be 'logit' or 'one', not {start!r}")
    return mask


# ------------------------------------------------------------------------------- attribute
def attribute(model: nn.Module, images: torch.Tensor, attribute: str | int = "Smiling",
              composite: str | Composite = "epsilon_plus_flat", start: str = "logit",
              batch_size: int = 16, full: bool = False):
    """LRP relevance of one attribute's logit for a batch of images.

    Parameters
    ----------
    model : the classifier LightningModule or its ``.net`` (images in [-1, 1] -> logits).
    images : (B, 3, H, W) or (3, H, W) tensor in [-1, 1].
    attribute : attribute name (``"Smiling"``) or index (31).
    composite : registry name (see :data:`COMPOSITES`) or a zennit Composite instance.
    start : ``"logit"`` (start relevance = the logit, so the heatmap's sign follows the decision)
        or ``"one"`` (one-hot; the relevance sums to ~1 where the rules conserve it).
    batch_size : images per backward pass.
    full : also return the per-channel relevance and the logits.

    Returns
    -------
    torch.Tensor (B, H, W) on the CPU: relevance summed over colour channels; or an
    :class:`Attribution` ``(heatmap, relevance (B, C, H, W), logits (B, K))`` with ``full=True``.

    The model is left as it was: training flags, ``requires_grad`` flags, parameters and
    ``state_dict`` keys are restored (see :func:`preserved`).
    """
    idx = attribute_index(attribute)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    device, dtype = _model_device_dtype(model)
    heat, rels, logits = [], [], []
    with preserved(model), torch.enable_grad():
        for b in range(0, len(images), batch_size):
            x = images[b: b + batch_size].to(device=device, dtype=dtype).detach().requires_grad_(True)
            comp = get_composite(composite, model)
            with comp.context(model) as modified:
                out = modified(x)
                (rel,) = torch.autograd.grad(out, x, grad_outputs=start_relevance(out, idx, start))
            rel = rel.detach().cpu()
            rels.append(rel)
            heat.append(rel.sum(1))
            logits.append(out.detach().cpu())
    heatmap = torch.cat(heat)
    if not full:
        return heatmap
    return Attribution(heatmap, torch.cat(rels), torch.cat(logits))
