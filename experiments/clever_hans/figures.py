"""Figures of the Clever-Hans experiment: the overview (faces, counterfactuals, changes, LRP,
the answer key, CRP concepts) and the two toy worlds."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import toyfaces
from experiments.clever_hans.data import CUE, DEFAULT, ROLES, TARGET
from toyfaces.render import render, sample_factors
from xai.render import (_figure, heatmap_rgb, image_grid_figure, save_figure, symmetric_vmax,
                        to_uint8_image)


def percent(v) -> str:
    """A rate as "NN %", "–" when missing or not finite."""
    return "–" if v is None or not np.isfinite(v) else f"{100 * v:.0f} %"


def overview_figure(out, results: dict, path, answer_key: dict | None = None,
                    rows: list[int] | None = None, n_show: int = 4, dpi: int = 130,
                    biased_label: str = "Biased (trained where every smiling face wears a hat)"):
    """The experiment in one picture: per face, the original, then for the biased and the clean
    classifier the counterfactual, |Δ| (hat region outlined cyan, mouth yellow) and the LRP
    map of the counterfactual, then (with ``answer_key`` from :func:`interventions` for
    ``rows``) the same face rendered with a hat and with a smile; below, each classifier's most
    relevant CRP concept for Smiling with its reference images. ``biased_label`` names what
    stands in the biased role in the title (another checkpoint, e.g. the hat-reading
    control)."""
    ids = [i for i in results["biased"]["maps"] if i in results["clean"]["maps"]][:n_show]
    crp_rows = [(role, results[role]["crp"]) for role in ROLES if results[role].get("crp")]
    key_cols = 2 if answer_key is not None and rows is not None else 0
    ncols, cell = 7 + key_cols, 1.3
    nrows = len(ids) + len(crp_rows)
    fig = _figure(ncols * cell + 0.3, nrows * (cell + 0.1) + 1.3)
    gs = fig.add_gridspec(nrows, ncols, wspace=0.06, hspace=0.32)
    heads = (["original"] + [f"{role}: {what}" for role in ROLES
                             for what in ("CF", "|Δ|", "LRP of CF")]
             + ["rendered + hat", "rendered + smile"][:key_cols])

    def show(ax, img, title=None, note=None, **kw):
        ax.imshow(img, interpolation="nearest", **kw)
        ax.set_xticks([]); ax.set_yticks([])
        if title:
            ax.set_title(title, fontsize=7)
        if note:
            ax.set_xlabel(note, fontsize=5.5, labelpad=1)
        return ax

    for r, image_id in enumerate(ids):
        b = results["biased"]["maps"][image_id]
        ax = show(fig.add_subplot(gs[r, 0]), to_uint8_image(b["original"]), heads[0] if r == 0 else None)
        ax.set_ylabel(f"row {image_id}", fontsize=7)
        for k, role in enumerate(ROLES):
            m = results[role]["maps"][image_id]
            e = results[role]["per_image"][image_id]
            c = 1 + 3 * k
            show(fig.add_subplot(gs[r, c]), to_uint8_image(m["counterfactual"]),
                 heads[c] if r == 0 else None, f"logit {e['logit_pre']:+.1f} → {e['logit_post']:+.1f}")
            ax = show(fig.add_subplot(gs[r, c + 1]), m["delta"], heads[c + 1] if r == 0 else None,
                      f"hat {e['hat_density']:.2f} · mouth {e['mouth_density']:.2f}", cmap="magma")
            ax.contour(m["hat"], levels=[0.5], colors="cyan", linewidths=0.6)
            ax.contour(m["mouth"], levels=[0.5], colors="yellow", linewidths=0.6)
            show(fig.add_subplot(gs[r, c + 2]),
                 heatmap_rgb(m["lrp_post"], symmetric_vmax(m["lrp_post"])),
                 heads[c + 2] if r == 0 else None)
        if key_cols:
            i = rows.index(int(image_id))
            for j, kind in enumerate(("hat", "smile")):
                lb, lc = (answer_key["logits"][role][kind][i] for role in ROLES)
                show(fig.add_subplot(gs[r, 7 + j]), answer_key["images"][kind][i],
                     heads[7 + j] if r == 0 else None, f"biased {lb:+.1f} · clean {lc:+.1f}")
    for j, (role, crp) in enumerate(crp_rows):
        r = len(ids) + j
        if not crp.get("top_concepts"):
            continue
        top = crp["top_concepts"][0]
        ax = fig.add_subplot(gs[r, 0])
        ax.axis("off")
        ax.text(1.0, 0.5, f"{role}: top CRP concept\nfor {TARGET}: "
                f"{top['concept'].removeprefix('net.')}\nrelevance on hat {top['hat_mass']:.2f}"
                f"\non mouth {top['mouth_mass']:.2f}\nreference images →", ha="right",
                va="center", fontsize=6.5, transform=ax.transAxes)
        for ci, img in enumerate(crp["references"].get(top["concept"], [])[:ncols - 1]):
            show(fig.add_subplot(gs[r, 1 + ci]), img)
    sb, sc = results["biased"], results["clean"]
    fig.suptitle(
        f"{biased_label} vs clean classifier, same faces\n"
        f"most change on the hat: {percent(sb['hat_change_rate'])} vs "
        f"{percent(sc['hat_change_rate'])} · on the mouth: {percent(sb['mouth_change_rate'])} vs "
        f"{percent(sc['mouth_change_rate'])} · oracle sees a hat appear: "
        f"{percent(sb['oracle_hat_flip_rate'])} vs {percent(sc['oracle_hat_flip_rate'])}, a smile: "
        f"{percent(sb['oracle_smile_flip_rate'])} vs {percent(sc['oracle_smile_flip_rate'])}\n"
        f"LRP of the counterfactual on the hat: {sb['lrp_hat_mass_post']:.2f} vs "
        f"{sc['lrp_hat_mass_post']:.2f}, on the mouth: {sb['lrp_mouth_mass_post']:.2f} vs "
        f"{sc['lrp_mouth_mass_post']:.2f}", fontsize=8)
    return save_figure(fig, path, dpi=dpi)


def counterfactuals_figure(results: dict, path, n_show: int = 8, dpi: int = 130):
    """Every counterfactual of each face (``num_cfs`` > 1), rank 1 (smallest change) first, for
    the biased and the clean classifier: under each its change per pixel on the hat and on the
    mouth (the larger one in capitals) and whether it flipped."""
    ids = [i for i in results["biased"]["maps"] if i in results["clean"]["maps"]][:n_show]
    k = {role: max(len(results[role]["maps"][i].get("counterfactuals", [])) for i in ids)
         for role in ROLES}
    ncols, cell = 1 + sum(k.values()), 1.25
    fig = _figure(ncols * cell + 0.3, len(ids) * (cell + 0.25) + 0.8)
    gs = fig.add_gridspec(len(ids), ncols, wspace=0.06, hspace=0.45)
    for r, image_id in enumerate(ids):
        ax = fig.add_subplot(gs[r, 0])
        ax.imshow(to_uint8_image(results["biased"]["maps"][image_id]["original"]))
        ax.set_xticks([]); ax.set_yticks([])
        ax.set_ylabel(f"row {image_id}", fontsize=7)
        if r == 0:
            ax.set_title("original", fontsize=7)
        c = 1
        for role in ROLES:
            imgs = results[role]["maps"][image_id].get("counterfactuals", [])
            ranks = results[role]["per_image"][image_id].get("ranks", [])
            for j in range(k[role]):
                ax = fig.add_subplot(gs[r, c + j])
                ax.set_xticks([]); ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{role}: CF {j + 1}", fontsize=7)
                if j >= len(imgs):
                    ax.axis("off")
                    continue
                e = ranks[j]
                ax.imshow(to_uint8_image(imgs[j]))
                hat, mouth = e["hat_density"], e["mouth_density"]
                where = f"HAT {hat:.2f} · mouth {mouth:.2f}" if hat > mouth else \
                    f"hat {hat:.2f} · MOUTH {mouth:.2f}"
                ax.set_xlabel(f"{where}\n{'flips' if e['flipped'] else 'no flip'}",
                              fontsize=5.5, labelpad=1)
            c += k[role]
    fig.suptitle("Several counterfactuals per face, each keeping the pixels the earlier ones "
                 "changed most\nat least one changes the hat most: "
                 f"biased {percent(results['biased'].get('any_hat_change_rate'))}, "
                 f"clean {percent(results['clean'].get('any_hat_change_rate'))}", fontsize=8)
    return save_figure(fig, path, dpi=dpi)


def world_figure(path, strength: float = DEFAULT.strength, n: int = 8, seed: int = 0):
    """Example faces of the biased training world (hats copy smiles with ``strength``) and of
    the decorrelated world, half smiling, half not, labelled; saved to ``path``."""
    rows = []
    for label, sp in ((f"biased training world\n(hat copies smile, p = {strength:g})",
                       toyfaces.Spurious(TARGET, CUE, strength)),
                      ("decorrelated world\n(hats independent)", None)):
        f = sample_factors(8 * n, seed, sp)
        smiling = np.flatnonzero(f.smile > 0.15)[: n // 2]
        frowning = np.flatnonzero(f.smile < -0.15)[: n - n // 2]
        rows.append((label + "\nsmiling | not smiling",
                     list(render(f.take(np.concatenate([smiling, frowning]))))))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return image_grid_figure(rows, path, title="The two toy worlds")

