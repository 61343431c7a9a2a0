"""Concept relevance propagation (CRP) with zennit-crp: local and global concept analysis.

This module owns the fixes zennit-crp 0.6.0 needs on this stack (numpy ≥ 1.24, torch ≥ 2.0,
Pillow 13); each has a test that fails without it (``tests/test_xai_crp.py``):

1. ``crp.helper.load_stat_targets`` uses ``np.int`` (gone since numpy 1.24), so
   ``FeatureVisualization.compute_stats`` crashes -> :func:`load_stat_targets`,
   :meth:`FeatureVisualization.compute_stats`.
2. ``FeatureVisualization`` turns a 40-dim 0/1 label vector into the targets {0, 1} (attributes
   ``5_o_Clock_Shadow`` and ``Arched_Eyebrows``!) unless ``multitarget_to_single`` is defined ->
   :class:`FeatureVisualization` explains the chosen attribute(s) on every image.
3. Since torch 2.0 ``retain_grad`` hooks run after all other tensor hooks, so the relevance that
   ``CondAttribution`` records at a *conditioned* layer is taken after the concept mask (only the
   masked channels are non-zero), and with ``exclude_parallel=True`` it is even counted twice ->
   :class:`CondAttribution` records the gradient with an ordinary tensor hook registered before
   the mask, once per backward pass.
4. ``CondAttribution.__init__`` calls ``model.requires_grad_(False)`` on the model it is given and
   never undoes it -> :class:`CondAttribution` freezes the parameters only while it computes and
   restores each flag afterwards.
5. Pillow 13 refuses to save zennit's palette ("P") images (``imgify(...).save`` -> TypeError);
   crp's ``vis_opaque_img``/``ImageCache`` go through that path -> :func:`vis_opaque_rgb` and
   :func:`pil_rgb` produce RGB arrays / RGB images only.

Local analysis (:func:`local_analysis`, :func:`pair_analysis`): channel ("concept") relevances of
chosen layers for one attribute's logit, the most relevant concepts with their conditional
heatmaps, and for an original/counterfactual pair which concepts gained or lost relevance. With
the default ``start="logit"`` a layer's channel relevances approximately decompose the logit, so
the changes decompose the logit change of the counterfactual.

Global analysis (:func:`global_analysis`): relevance maximisation over a dataset
(``FeatureVisualization``), the attribute's most important concepts (mean relevance share on the
images that have the attribute) and their reference images, cached on disk.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import crp
import numpy as np
import torch
from crp import attribution as _crp_attribution
from crp import visualization as _crp_visualization
from crp.concepts import ChannelConcept
from crp.helper import load_maximization, load_statistics
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms.functional import gaussian_blur
from tqdm import tqdm

from classifier.attributes import attribute_index, attribute_name
from fileio import atomic_write_bytes, to_jsonable, write_json
from xai.lrp import _model_device_dtype, get_composite, preserved
from xai.render import (_figure, heatmap_rgb, image_grid_figure, rgb_png_bytes, save_figure,
                        symmetric_vmax, to_uint8_image)

MODEL_OUTPUT = "y"


# =============================================================================== the fixes
def load_stat_targets(path_folder) -> np.ndarray:
    """``crp.helper.load_stat_targets`` without ``np.int`` (fix 1)."""
    return np.load(Path(path_folder) / "targets.npy").astype(int)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module, freeze: bool = True):
    """Set ``requires_grad=False`` on all parameters for the block, then restore each flag."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    if freeze:
        model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class CondAttribution(_crp_attribution.CondAttribution):
    """``crp.attribution.CondAttribution`` with fixes 3 and 4.

    * Relevances recorded at a layer (``record_layer`` or a conditioned layer) are the
      gradients arriving at that layer's output *before* any concept mask, once per backward
      pass (zennit-crp's intent; torch < 2 behaviour).
    * ``no_param_grad`` freezes the parameters only during a call and restores the flags.
    """

    def __init__(self, model: nn.Module, device=None, overwrite_data_grad: bool = True,
                 no_param_grad: bool = True):
        super().__init__(model, device=device, overwrite_data_grad=overwrite_data_grad,
                         no_param_grad=False)
        self.no_param_grad = no_param_grad
        self._recorded: dict[str, torch.Tensor] = {}

    def __call__(self, *args, **kwargs):
        self._recorded = {}
        with frozen_parameters(self.model, self.no_param_grad):
            return super().__call__(*args, **kwargs)

    def generate(self, *args, **kwargs):
        self._recorded = {}
        with frozen_parameters(self.model, self.no_param_grad):
            yield from super().generate(*args, **kwargs)

    def _generate_hook(self, layer_name, layer_out):
        recorded = self._recorded

        def record(module, input, output):
            layer_out[layer_name] = output
            if isinstance(output, torch.Tensor) and output.requires_grad:
                # An ordinary tensor hook, registered before the MaskHook's (the recording
                # forward hooks are installed first), sees the unmasked gradient; keep the first
                # one of a backward pass (exclude_parallel=True reaches this tensor twice). Clone:
                # crp's mask functions then modify the gradient tensor in place.
                def keep(grad):
                    if layer_name not in recorded:
                        recorded[layer_name] = grad.detach().clone()

                output.register_hook(keep)

        return record

    def _collect_hook_activation_relevance(self, layer_out, on_device=None, length=None):
        relevances, activations = {}, {}
        for name, out in layer_out.items():
            act = out.detach()[:length]
            activations[name] = act.to(on_device) if on_device else act
            grad = self._recorded.pop(name, None)
            rel = torch.zeros_like(act) if grad is None else grad[:length]
            relevances[name] = rel.to(on_device) if on_device else rel
        return activations, relevances


class FeatureVisualization(_crp_visualization.FeatureVisualization):
    """``crp.visualization.FeatureVisualization`` for multi-label data (fixes 1 and 2).

    Parameters
    ----------
    targets : attribute indices to explain on every image (e.g. ``[31]`` for Smiling).
    Other parameters as zennit-crp's. The dataset must return ``(image, labels)``
    (wrap a dict dataset in :class:`PairDataset`).

    Besides relevance maximisation it collects each image's relevance share per channel
    (``concept_relevance[layer]``: (n, C), abs-normalised as crp does) to rank concepts globally.
    """

    def __init__(self, attribution, dataset, layer_map, targets: Sequence[int], **kwargs):
        super().__init__(attribution, dataset, layer_map, **kwargs)
        self.targets = [int(t) for t in targets]
        self.concept_relevance: dict[str, dict[int, np.ndarray]] = {}
        for part in (self.RelMax, self.ActMax, self.RelStats, self.ActStats):
            part.delete_result_arrays = _dropper(part)  # without a full gc.collect() (~0.2 s each)

    def multitarget_to_single(self, multi_target):
        return list(self.targets)

    @torch.no_grad()
    def analyze_relevance(self, rel, layer_name, concept, data_indices, targets):
        super().analyze_relevance(rel, layer_name, concept, data_indices, targets)
        shares = concept.attribute(rel, abs_norm=True).float().cpu().numpy()
        store = self.concept_relevance.setdefault(layer_name, {})
        for i, share in zip(np.asarray(data_indices).tolist(), shares):
            store[int(i)] = share

    def compute_stats(self, concept_id, layer_name: str, mode="relevance", top_N=5, mean_N=10,
                      norm=False):
        """As zennit-crp's, with :func:`load_stat_targets` (no ``np.int``)."""
        path = {"relevance": self.RelStats.PATH, "activation": self.ActStats.PATH}.get(mode)
        if path is None:
            raise ValueError("`mode` must be `relevance` or `activation`")
        targets = load_stat_targets(path)
        rel_target = torch.zeros(len(targets))
        for i, t in enumerate(targets):
            _, rel_c_sorted, _ = load_statistics(path, layer_name, t)
            rel_target[i] = float(rel_c_sorted[:mean_N, concept_id].mean())
        args = torch.argsort(rel_target, descending=True)[:top_N]
        sorted_t, sorted_val = targets[args.numpy()], rel_target[args]
        if norm:
            sorted_val = sorted_val / sorted_val[0]
        return sorted_t, sorted_val


def _dropper(part):
    def delete_result_arrays():
        part.d_c_sorted, part.rel_c_sorted, part.rf_c_sorted = {}, {}, {}
    return delete_result_arrays


def pil_rgb(img):
    """Any PIL image (palette images included) or (H, W, 3) uint8 array -> an RGB PIL image
    (fix 5: what we save is never a palette image)."""
    if isinstance(img, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def save_png(img, path) -> Path:
    """Save a PIL image or RGB array as an RGB PNG, atomically."""
    atomic_write_bytes(path, rgb_png_bytes(np.asarray(pil_rgb(img))))
    return Path(path)


@torch.no_grad()
def vis_opaque_rgb(images: torch.Tensor, heatmaps: torch.Tensor, rf: bool = False,
                   alpha: float = 0.3, vis_th: float = 0.2, crop_th: float = 0.1,
                   kernel_size: int | None = None, size: int | None = None) -> list[np.ndarray]:
    """crp's ``vis_opaque_img`` as RGB arrays (fix 5): each reference image is dimmed where its
    blurred conditional heatmap is below ``vis_th`` × max and, with ``rf``, cropped to where it
    exceeds ``crop_th`` × max. ``images`` are [-1, 1]; results are resized to ``size`` (default:
    the image size) so they line up in a grid."""
    out = []
    side = images.shape[-1]
    k = kernel_size or max(3, int(round(side * 19 / 224)) | 1)
    for img, heat in zip(images, heatmaps):
        img = ((img.float().cpu() + 1) / 2).clamp(0, 1)
        h = gaussian_blur(heat.float().cpu()[None, None], kernel_size=k)[0, 0]
        h = h / (h.max() + 1e-10)
        vis = h > vis_th
        if rf:
            rows, cols = torch.where(h > crop_th)
            if len(rows) and rows.max() > rows.min() and cols.max() > cols.min():
                r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                img, vis = img[:, r0:r1, c0:c1], vis[r0:r1, c0:c1]
        img = img * vis + img * (~vis) * alpha
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        target = size or side
        arr = np.asarray(Image.fromarray(arr).resize((target, target), Image.BILINEAR))
        out.append(arr)
    return out


# ============================================================================== helpers
def resolve_layers(model: nn.Module, layers: str | Iterable[str]) -> list[str]:
    """Layer names as they are in ``model`` (``net.layer4`` and ``layer4`` both work)."""
    names = dict(model.named_modules())
    wanted = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    out = []
    for w in wanted:
        if not w:
            continue
        for cand in (w, f"net.{w}", w[4:] if w.startswith("net.") else None):
            if cand and cand in names:
                out.append(cand)
                break
        else:
            convs = [n for n, m in names.items() if isinstance(m, (nn.Conv2d, nn.Sequential))
                     and n.count(".") <= 1 and n]  # the layers CRP reads, not loss or metrics
            raise KeyError(f"layer {w!r} not in the model; its layers include "
                           f"{', '.join(convs[:10])}")
    return out


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model's state (for cache keys)."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _init_rel(start: str):
    if start == "logit":
        return None  # crp's default: the logit value at the target
    if start == "one":
        return lambda pred: torch.ones_like(pred)
    raise ValueError(f"start must be 'logit' or 'one', not {start!r}")


def _prepare(model, images):
    device, dtype = _model_device_dtype(model)
    if images.dim() == 3:
        images = images.unsqueeze(0)
    return images.to(device=device, dtype=dtype).detach()


def concept_id(layer: str, channel: int) -> str:
    """How concepts are named in outputs: ``"net.layer4#123"``."""
    return f"{layer}#{int(channel)}"


# ========================================================================== local analysis
def concept_relevances(model: nn.Module, images: torch.Tensor, attribute="Smiling",
                       layers: str | Sequence[str] = ("net.layer3", "net.layer4"),
                       composite="epsilon_plus_flat", start: str = "logit"):
    """Channel relevances of ``layers`` for one attribute's logit.

    Returns ``(relevances, logits, heatmaps)``: ``{layer: (B, C) float array}`` (relevance summed
    over each channel's positions, not normalised), the (B,) logits and the (B, H, W) input
    heatmaps. The model is left unaltered.
    """
    idx = attribute_index(attribute)
    layers = resolve_layers(model, layers)
    x = _prepare(model, images)
    with preserved(model):
        att = CondAttribution(model)
        comp = get_composite(composite, model)
        res = att(x.requires_grad_(True), [{MODEL_OUTPUT: [idx]}] * len(x), comp,
                  record_layer=list(layers), init_rel=_init_rel(start), exclude_parallel=False)
    cc = ChannelConcept()
    rel = {l: cc.attribute(res.relevances[l], abs_norm=False).detach().cpu().double().numpy()
           for l in layers}
    return rel, res.prediction[:, idx].detach().cpu().double().numpy(), res.heatmap.detach().cpu()


def conditional_heatmaps(model: nn.Module, image: torch.Tensor, attribute, layer: str,
                         channels: Sequence[int], composite="epsilon_plus_flat",
                         start: str = "logit", batch_size: int = 8) -> np.ndarray:
    """CRP heatmaps of single concepts: relevance of ``attribute`` restricted to each channel of
    ``layer``, one (H, W) map per channel -> (k, H, W)."""
    idx = attribute_index(attribute)
    (layer,) = resolve_layers(model, [layer])
    channels = [int(c) for c in channels]
    if not channels:
        return np.zeros((0, *image.shape[-2:]))
    x = _prepare(model, image)[:1]
    maps = []
    with preserved(model):
        att = CondAttribution(model)
        comp = get_composite(composite, model)
        conds = [{MODEL_OUTPUT: [idx], layer: [c]} for c in channels]
        for res in att.generate(x.requires_grad_(True), conds, comp, init_rel=_init_rel(start),
                                batch_size=batch_size, exclude_parallel=True, verbose=False):
            maps.append(res.heatmap.detach().cpu().double().numpy())
    return np.concatenate(maps)[: len(channels)]


def local_analysis(model: nn.Module, image: torch.Tensor, attribute="Smiling",
                   layers=("net.layer3", "net.layer4"), top: int = 6,
                   composite="epsilon_plus_flat", start: str = "logit") -> dict:
    """The ``top`` most relevant concepts (by |relevance|) of each layer for one image, with
    their conditional heatmaps.

    Returns ``{"attribute", "logit", "heatmap" (H, W), "layers": {layer: {"channels",
    "relevance", "share", "heatmaps" (k, H, W)}}}``; ``share`` is relevance / Σ|relevance| of
    the layer.
    """
    layers = resolve_layers(model, layers)
    rel, logit, heat = concept_relevances(model, image, attribute, layers, composite, start)
    out = {"attribute": attribute_name(attribute), "logit": float(logit[0]),
           "heatmap": heat[0].double().numpy(), "layers": {}}
    for layer in layers:
        r = rel[layer][0]
        order = np.argsort(-np.abs(r))[:top]
        out["layers"][layer] = {
            "channels": order.tolist(), "relevance": r[order].tolist(),
            "share": (r[order] / (np.abs(r).sum() + 1e-12)).tolist(),
            "heatmaps": conditional_heatmaps(model, image, attribute, layer, order, composite, start),
        }
    return out


def pair_analysis(model: nn.Module, original: torch.Tensor, counterfactual: torch.Tensor,
                  attribute="Smiling", layers=("net.layer3", "net.layer4"), top: int = 6,
                  composite="epsilon_plus_flat", start: str = "logit",
                  heatmaps: bool = True) -> dict:
    """Which concepts gained or lost relevance between an original and its counterfactual.

    For each layer, channel relevances before/after and ``delta = after - before``; ``gained``
    (largest positive deltas), ``lost`` (most negative) and ``changed`` (largest |delta|), each
    a list of ``{"concept", "layer", "channel", "before", "after", "delta"}``. With
    ``heatmaps``, conditional heatmaps of the ``changed`` concepts on both images
    (``"heatmaps": {layer: (2, k, H, W)}``). ``changed_overall`` ranks all layers together by
    |delta| relative to the layer's total |delta|.
    """
    layers = resolve_layers(model, layers)
    x = torch.stack([_prepare(model, original)[0], _prepare(model, counterfactual)[0]])
    rel, logits, heat = concept_relevances(model, x, attribute, layers, composite, start)
    out = {"attribute": attribute_name(attribute), "composite": str(composite), "start": start,
           "logit_before": float(logits[0]), "logit_after": float(logits[1]),
           "heatmap_before": heat[0].double().numpy(), "heatmap_after": heat[1].double().numpy(),
           "layers": {}, "heatmaps": {}}
    overall = []
    for layer in layers:
        before, after = rel[layer][0], rel[layer][1]
        delta = after - before

        def entries(order):
            return [{"concept": concept_id(layer, c), "layer": layer, "channel": int(c),
                     "before": float(before[c]), "after": float(after[c]),
                     "delta": float(delta[c])} for c in order]

        changed = np.argsort(-np.abs(delta))[:top]
        gained = [c for c in np.argsort(-delta)[:top] if delta[c] > 0]
        lost = [c for c in np.argsort(delta)[:top] if delta[c] < 0]
        total = float(np.abs(delta).sum()) + 1e-12
        out["layers"][layer] = {
            "sum_before": float(before.sum()), "sum_after": float(after.sum()),
            "gained": entries(gained), "lost": entries(lost), "changed": entries(changed)}
        overall += [dict(e, share_of_change=abs(e["delta"]) / total) for e in entries(changed)]
        if heatmaps:
            out["heatmaps"][layer] = np.stack([
                conditional_heatmaps(model, x[0], attribute, layer, changed, composite, start),
                conditional_heatmaps(model, x[1], attribute, layer, changed, composite, start)])
    out["changed_overall"] = sorted(overall, key=lambda e: -e["share_of_change"])[:top]
    return out


def json_ready(result: dict) -> dict:
    """A JSON-safe copy of an analysis result without its arrays (heatmaps and other tensors
    stay in the ``.npz``/figures; numbers are converted by :func:`fileio.to_jsonable`)."""
    def drop_arrays(o):
        if isinstance(o, dict):
            return {k: drop_arrays(v) for k, v in o.items()
                    if not isinstance(v, (np.ndarray, torch.Tensor)) and k != "heatmaps"}
        if isinstance(o, list):
            return [drop_arrays(v) for v in o]
        return o
    return to_jsonable(drop_arrays(result))


def pair_figure(result: dict, original, counterfactual, path, title: str | None = None,
                dpi: int = 120) -> Path:
    """Figure of :func:`pair_analysis`: per layer two rows (x₀, x̂₀) — the image, its LRP
    heatmap, and the conditional heatmaps of the concepts that changed most (one symmetric
    scale per concept and pair), titled with the concept and its relevance change."""
    layers = [l for l in result["layers"] if l in result["heatmaps"]]
    k = max((result["heatmaps"][l].shape[1] for l in layers), default=0)
    ncols, nrows = 2 + k, 2 * max(len(layers), 1)
    cell = 1.35
    fig = _figure(ncols * cell + 0.6, nrows * cell + 0.9)
    imgs = [to_uint8_image(original), to_uint8_image(counterfactual)]
    hv = symmetric_vmax(result["heatmap_before"], result["heatmap_after"])
    lrp = [heatmap_rgb(result["heatmap_before"], hv), heatmap_rgb(result["heatmap_after"], hv)]
    logits = [result["logit_before"], result["logit_after"]]
    gs = fig.add_gridspec(nrows, ncols, wspace=0.08, hspace=0.35)
    for li, layer in enumerate(layers or [None]):
        for j in range(2):
            r = 2 * li + j
            ax = fig.add_subplot(gs[r, 0]); ax.imshow(imgs[j]); ax.set_xticks([]); ax.set_yticks([])
            ax.set_ylabel(("$x_0$" if j == 0 else "$\\hat{x}_0$") + f"\nlogit {logits[j]:+.2f}", fontsize=7)
            ax = fig.add_subplot(gs[r, 1]); ax.imshow(lrp[j]); ax.set_xticks([]); ax.set_yticks([])
            if r == 0:
                ax.set_title("LRP", fontsize=7)
            if layer is None:
                continue
            maps = result["heatmaps"][layer]
            for ci, e in enumerate(result["layers"][layer]["changed"][:k]):
                v = symmetric_vmax(maps[0, ci], maps[1, ci])
                ax = fig.add_subplot(gs[r, 2 + ci])
                ax.imshow(heatmap_rgb(maps[j, ci], v)); ax.set_xticks([]); ax.set_yticks([])
                if j == 0:
                    ax.set_title(f"{layer.removeprefix('net.')} #{e['channel']}\n"
                                 f"Δ {e['delta']:+.3g}", fontsize=6.5)
    fig.suptitle(title or f"CRP: concepts whose relevance for {result['attribute']} changed most",
                 fontsize=9)
    return save_figure(fig, path, dpi=dpi)


def local_figure(result: dict, image, path, title: str | None = None, dpi: int = 120) -> Path:
    """Figure of :func:`local_analysis`: the image, its LRP heatmap, and per layer a row of the
    most relevant concepts' conditional heatmaps (each on its own symmetric scale)."""
    layers = list(result["layers"])
    k = max((len(v["channels"]) for v in result["layers"].values()), default=0)
    cell = 1.35
    fig = _figure((2 + k) * cell + 0.4, max(len(layers), 1) * cell + 0.8)
    gs = fig.add_gridspec(max(len(layers), 1), 2 + k, wspace=0.08, hspace=0.4)
    ax = fig.add_subplot(gs[0, 0]); ax.imshow(to_uint8_image(image)); ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(f"logit {result['logit']:+.2f}", fontsize=7)
    ax = fig.add_subplot(gs[0, 1]); ax.imshow(heatmap_rgb(result["heatmap"]))
    ax.set_xticks([]); ax.set_yticks([]); ax.set_title("LRP", fontsize=7)
    for li, layer in enumerate(layers):
        v = result["layers"][layer]
        for ci, (c, share) in enumerate(zip(v["channels"], v["share"])):
            ax = fig.add_subplot(gs[li, 2 + ci])
            ax.imshow(heatmap_rgb(v["heatmaps"][ci])); ax.set_xticks([]); ax.set_yticks([])
            ax.set_title(f"{layer.removeprefix('net.')} #{c}\nshare {share:+.2f}", fontsize=6.5)
    fig.suptitle(title or f"CRP: most relevant concepts for {result['attribute']}", fontsize=9)
    return save_figure(fig, path, dpi=dpi)


# ========================================================================= global analysis
class PairDataset(Dataset):
    """``(image, labels)`` pairs, as zennit-crp expects, from a dataset of dicts
    (``CelebHQAttrDataset``: ``{"img", "labels", "index"}``), limited to the first ``n``.

    With ``skip_unreadable``, each of those ``n`` records is read once up front and the ones that
    are missing or not readable images are left out (``unreadable``: ``[(position, reason)]``),
    so one bad record does not stop a relevance maximisation over the rest."""

    def __init__(self, base: Dataset, n: int | None = None, skip_unreadable: bool = False):
        self.base = base
        first = len(base) if n is None else min(int(n), len(base))
        self.positions = list(range(first))
        self.unreadable: list[tuple[int, str]] = []
        if skip_unreadable:
            from classifier.dataset import UNREADABLE, unreadable_reason
            for i in range(first):
                try:
                    s = self.base[i]
                except UNREADABLE as e:
                    self.unreadable.append((i, unreadable_reason(e)))
                    continue
                if isinstance(s, dict) and "unreadable" in s:  # a base that skips them itself
                    self.unreadable.append((i, s["reason"]))
            bad = {i for i, _ in self.unreadable}
            self.positions = [i for i in self.positions if i not in bad]
        self.n = len(self.positions)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        i = int(i)
        if i >= self.n:
            raise IndexError(i)
        s = self.base[self.positions[i]]
        return (s["img"], s["labels"]) if isinstance(s, dict) else s

    def labels(self, i: int) -> torch.Tensor:
        b = self.base
        if hasattr(b, "labels") and hasattr(b, "indices"):  # CelebHQAttrDataset: no image decode
            return b.labels[b.indices[self.positions[int(i)]]]
        return self[i][1]

    def row(self, i: int) -> int:
        """The base dataset's row of pair ``i`` (its attribute-file row for a CelebHQAttrDataset)."""
        return self.row_of_position(self.positions[int(i)])

    def row_of_position(self, p: int) -> int:
        """The base dataset's row of its ``p``-th sample."""
        return int(self.base.indices[p]) if hasattr(self.base, "indices") else int(p)

    def describe(self) -> dict:
        b = self.base
        d = {"type": type(b).__name__, "n": self.n}
        for key in ("lmdb_path", "attr_path", "image_size"):
            if hasattr(b, key):
                d[key] = str(getattr(b, key))
        if hasattr(b, "indices"):
            idx = [self.row_of_position(p) for p in self.positions]
            d["indices"] = hashlib.sha1(json.dumps(idx).encode()).hexdigest()[:12]
        return d


def _cache_key(model, data: PairDataset, attribute: int, layers, composite, n_refs) -> tuple[str, dict]:
    info = {"model": model_fingerprint(model), "data": data.describe(), "attribute": attribute,
            "layers": list(layers), "composite": str(composite), "n_refs": n_refs,
            "zennit_crp": getattr(crp, "__version__", "0.6.0"), "format": 1}
    return hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16], info


def global_analysis(model: nn.Module, dataset: Dataset, attribute="Smiling",
                    layers=("net.layer3", "net.layer4"), out_dir="crp_global", n: int = 200,
                    top: int = 6, n_refs: int = 8, composite="epsilon_plus_flat",
                    batch_size: int = 16, figure: bool = True, progress: bool = True,
                    concepts: Sequence[str] | None = None) -> dict:
    """Relevance maximisation over ``n`` images of ``dataset`` and the attribute's top concepts.

    Steps: (1) zennit-crp ``FeatureVisualization`` explains ``attribute`` on every image and
    keeps, per channel of ``layers``, the images where it is most relevant; (2) concepts are
    ranked by their mean relevance share on the images labelled with the attribute (all images
    if none is); (3) the ``top`` concepts of each layer get ``n_refs`` reference images, dimmed
    outside their conditional heatmaps and cropped to the receptive field. ``concepts``
    (``"layer#channel"`` ids, e.g. the ones a local analysis found changed) are drawn instead of
    the ``top`` ranked ones; :func:`load_references` reads their images back.

    Everything is cached under ``out_dir/cache/<key>`` (key: model weights, data, attribute,
    layers, composite); a second call with the same inputs only redraws the figure. Writes
    ``out_dir/global_<attribute>.json`` and ``.png``; returns the JSON content (plus
    ``"figure"`` and ``"cache"`` paths).
    """
    idx = attribute_index(attribute)
    name = attribute_name(attribute)
    layers = resolve_layers(model, layers)
    data = (dataset if isinstance(dataset, PairDataset)
            else PairDataset(dataset, n, skip_unreadable=True))
    n = len(data)
    if n == 0:
        raise ValueError(f"no readable image among the first {len(data.unreadable)} records "
                         f"for the CRP global analysis" + (f": {data.unreadable[0][1]}"
                                                           if data.unreadable else ""))
    out_dir = Path(out_dir)
    key, info = _cache_key(model, data, idx, layers, composite, n_refs)
    cache = out_dir / "cache" / key
    cc = ChannelConcept()
    with preserved(model):
        att = CondAttribution(model)
        comp = get_composite(composite, model)
        fv = FeatureVisualization(att, data, {l: cc for l in layers}, targets=[idx],
                                  path=str(cache / "fv"))
        shares = _concept_shares(fv, comp, layers, n, batch_size, cache, info)
        labels = np.array([float(data.labels(i)[idx]) for i in range(n)])
        positive = labels > 0.5
        basis = positive if positive.any() else np.ones(n, bool)
        result = {"attribute": name, "n": n, "n_positive": int(positive.sum()),
                  "ranked_on": "positive" if positive.any() else "all", "layers": {},
                  "cache": str(cache), "settings": info,
                  "unreadable": [{"row": data.row_of_position(p), "reason": why}
                                 for p, why in data.unreadable]}
        rows = []
        if concepts is None:
            todo = [(l, c) for l in layers for c in np.argsort(-shares[l][basis].mean(0))[:top]]
        else:
            todo = [_parse_concept(c, layers) for c in concepts]
        bar = tqdm(todo, desc="reference images", disable=not progress, dynamic_ncols=True)
        for layer, c in bar:
            c = int(c)
            mean_share = shares[layer][basis].mean(0)
            ref_file = cache / "refs" / f"{layer}_{c}.npz"
            refs, ref_idx = _references(fv, comp, layer, c, n_refs, ref_file)
            entry = {"concept": concept_id(layer, c), "channel": c,
                     "reference_file": str(ref_file),
                     "mean_share": float(mean_share[c]),
                     "mean_share_all": float(shares[layer].mean(0)[c]),
                     "reference_rows": [data.row(i) for i in ref_idx]}
            result["layers"].setdefault(layer, []).append(entry)
            rows.append((f"{layer.removeprefix('net.')} #{c}\nshare {mean_share[c]:+.3f}", refs))
    return _write_global(result, rows, out_dir, figure)


def _concept_shares(fv: FeatureVisualization, comp, layers: list[str], n: int, batch_size: int,
                    cache: Path, info: dict) -> dict[str, np.ndarray]:
    """Per layer, the (n, channels) relevance shares of every image: run ``fv`` over the data
    and cache them (``concept_relevance.npz``, then ``done.json``), or read the cached ones."""
    done = cache / "done.json"
    if done.exists():
        with np.load(cache / "concept_relevance.npz") as z:
            return {l: z[l] for l in layers}
    fv.run(comp, 0, n, batch_size=batch_size, checkpoint=max(1, math.ceil(n / batch_size)))
    shares = {l: np.stack([fv.concept_relevance[l][i] for i in range(n)]) for l in layers}
    np.savez(cache / "concept_relevance.npz", **{l: s for l, s in shares.items()})
    write_json(done, info, indent=1)
    return shares


def _references(fv: FeatureVisualization, comp, layer: str, c: int, n_refs: int,
                ref_file: Path) -> tuple[list[np.ndarray], list[int]]:
    """The ``n_refs`` reference images of channel ``c`` of ``layer`` (:func:`vis_opaque_rgb`,
    cropped to the receptive field) and their dataset indices, cached in ``ref_file``."""
    if ref_file.exists():
        with np.load(ref_file) as z:
            return list(z["images"]), z["indices"].tolist()
    d_sorted, _, _ = load_maximization(fv.RelMax.PATH, layer)
    ref_idx = [int(i) for i in d_sorted[:n_refs, c]]
    ref = fv.get_max_reference([c], layer, "relevance", (0, n_refs), composite=comp,
                               rf=True, plot_fn=None, batch_size=n_refs)[c]
    refs = vis_opaque_rgb(ref[0], ref[1], rf=True)
    ref_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(ref_file, images=np.stack(refs), indices=np.array(ref_idx))
    return refs, ref_idx


def _write_global(result: dict, rows: list, out_dir: Path, figure: bool) -> dict:
    """Write ``global_<attribute>.json`` (and with ``figure`` the ``.png`` grid of ``rows``,
    whose path joins ``result``) in ``out_dir``; returns ``result``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name, n = result["attribute"], result["n"]
    stem = f"global_{name}"
    if figure:
        result["figure"] = str(image_grid_figure(
            rows, out_dir / f"{stem}.png",
            title=f"CRP: top concepts for {name} (n = {n}) and their reference images"))
    write_json(out_dir / f"{stem}.json", result, indent=1)
    return result


def _parse_concept(concept: str, layers: Sequence[str]) -> tuple[str, int]:
    """``"net.layer4#12"`` -> (``"net.layer4"``, 12); the layer must be one of ``layers``."""
    layer, sep, channel = str(concept).rpartition("#")
    if not sep or not channel.isdigit():
        raise ValueError(f"concept {concept!r} is not of the form 'layer#channel'")
    if layer not in layers:
        raise KeyError(f"concept {concept!r}: layer {layer!r} is not among the analysed layers "
                       f"{list(layers)}")
    return layer, int(channel)


def load_references(result: dict, concept: str) -> list[np.ndarray]:
    """The reference images (RGB uint8 arrays) :func:`global_analysis` drew for ``concept``."""
    for entries in result["layers"].values():
        for e in entries:
            if e["concept"] == concept:
                with np.load(e["reference_file"]) as z:
                    return list(z["images"])
    raise KeyError(f"concept {concept!r} has no reference images in this global analysis "
                   f"(drawn: {[e['concept'] for v in result['layers'].values() for e in v]})")
