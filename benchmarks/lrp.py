"""``ldvce bench lrp``: LRP relevance mass in the mouth box per composite, the toy ResNet (local
evidence, 23 px receptive field) beside the oracle (a plain stride-32 ResNet18) on the same
held-out faces."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from benchmarks.common import CONFIG, write_result
from classifier.devices import resolve_device
from classifier.models import load_classifier, receptive_field
from study.metrics import decision_relevance_mass
from toyfaces.world import held_out_faces, toy_classifier
from xai import parse_composites
from xai.lrp import COMPOSITES, attribute
from xai.render import colormap, save_figure, symmetric_vmax, to_uint8_image


def bench_lrp(n: int = 32, composites=None, figure=None, device="cpu") -> dict:
    """Relevance mass accuracy (decision-signed, mouth box) per composite and classifier.

    The toy ResNet reads Smiling from local evidence (23 px receptive field); the oracle is a
    plain ResNet18 whose last cells see the whole image. Same held-out faces for both.
    """
    x, masks, _ = held_out_faces(n)
    names = list(composites or COMPOSITES)
    if figure and "epsilon_plus_flat" not in names:
        names.append("epsilon_plus_flat")  # the figure shows its maps
    result = {"images": len(x), "mask_area": float(masks.mean()), "models": {}}
    maps = {}
    for model_name in CONFIG.lrp_models:
        model = load_classifier(toy_classifier(model_name), map_location=device)
        row = {"architecture": model.architecture,
               "receptive_field_px": receptive_field(model.net, 1024)}
        for c in names:
            res = attribute(model, x.to(device), "Smiling", c, full=True)
            heat, logit = res.heatmap.cpu().numpy(), res.logits[:, 31].cpu().numpy()
            mass = np.array([decision_relevance_mass(heat[i], logit[i], masks[i])
                             for i in range(len(x))])
            row[c] = float(np.nanmean(mass))
            if c == "epsilon_plus_flat":  # the figure shows the relevance for the decision
                maps[model_name] = (heat * np.sign(logit)[:, None, None], mass)
        result["models"][model_name] = row
    if figure:
        _lrp_figure(x, masks, maps, result, figure)
        result["figure"] = str(figure)
    return result


def _lrp_figure(x, masks, maps, result, path, columns: int = 8):
    """Faces (mouth box outlined) over the decision-signed LRP-EPF maps of both classifiers."""
    k = min(columns, len(x))
    fig = Figure(figsize=(1.5 * k, 1.6 * (1 + len(maps))))
    axes = fig.subplots(1 + len(maps), k, squeeze=False)
    for j in range(k):
        axes[0, j].imshow(to_uint8_image(x[j]))
        axes[0, j].contour(masks[j], levels=[0.5], colors="w", linewidths=0.8)
        for i, (name, (heat, mass)) in enumerate(maps.items(), start=1):
            v = symmetric_vmax(heat[j])
            axes[i, j].imshow(heat[j], cmap=colormap("bwr"), vmin=-v, vmax=v)
            axes[i, j].contour(masks[j], levels=[0.5], colors="k", linewidths=0.6)
            axes[i, j].set_title("–" if np.isnan(mass[j]) else f"{mass[j]:.2f}", fontsize=8)
    for i, name in enumerate(maps, start=1):
        row = result["models"][name]
        axes[i, 0].set_ylabel(f"{name}\nRF {row['receptive_field_px']} px\n"
                              f"mean {row['epsilon_plus_flat']:.2f}", fontsize=8)
    for a in axes.flat:
        a.set_xticks([]); a.set_yticks([])
    fig.suptitle("LRP-EpsilonPlusFlat for the decision (red = for it), mouth box outlined; "
                 "titles: share of positive relevance in the box", fontsize=9)
    save_figure(fig, path)


def print_lrp(r: dict) -> None:
    names = [k for k in next(iter(r["models"].values()))
             if k not in ("architecture", "receptive_field_px")]
    print(f"relevance mass in the mouth box ({r['images']} held-out faces; box = "
          f"{r['mask_area']:.1%} of the image, i.e. chance level)")
    print(f"{'composite':<22}" + "".join(f"{m:>12}" for m in r["models"]))
    for c in names:
        print(f"{c:<22}" + "".join(f"{row[c]:>12.3f}" for row in r["models"].values()))
    print(f"{'receptive field (px)':<22}" + "".join(f"{row['receptive_field_px']:>12}"
                                                    for row in r["models"].values()))
    for m, row in r["models"].items():
        print(f"{m}: {row['architecture']}")
    if r.get("figure"):
        print(f"wrote {r['figure']}")


def run_lrp(n: int = 32, composites: str | None = None, figure=None, json_path=None,
            device: str = "auto") -> dict:
    """What ``ldvce bench lrp`` does: :func:`bench_lrp` over the comma-separated
    ``composites`` (default: all), printed and optionally written."""
    try:
        names = parse_composites(composites) if composites else None
    except ValueError as e:
        raise SystemExit(f"ldvce bench lrp: {e}")
    r = bench_lrp(n, composites=names, figure=figure, device=resolve_device(device))
    print_lrp(r)
    write_result(r, json_path)
    return r

