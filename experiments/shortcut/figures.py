"""The shortcut test's figure: originals and edited faces with the explained classifier's
probability before and after, a few faces per attribute and direction."""
from __future__ import annotations

from pathlib import Path

from classifier.images import load_image
from dvce import runfolder
from xai.render import _figure, save_figure, to_uint8_image


def shortcut_figure(out, result: dict, path, per_row: int = 4, dpi: int = 120) -> Path:
    """One row per attribute and direction: ``per_row`` pairs (original | edited), each titled
    with the explained classifier's p(target) before → after; edits left out of the statistics
    (editor or oracle did not confirm) are marked ✗."""
    rows = [(attr, d, e) for attr, dirs in result["attributes"].items()
            for d, e in dirs.items() if e["faces"]["rows"]]
    ncols = 2 * per_row
    fig = _figure(1.2 * ncols + 1.4, 1.35 * max(len(rows), 1) + 0.6)
    gs = fig.add_gridspec(max(len(rows), 1), ncols, wspace=0.05, hspace=0.45,
                          left=1.3 / (1.2 * ncols + 1.4))
    for r, (attr, direction, e) in enumerate(rows):
        f = e["faces"]
        done = {it.image_id: it for it in runfolder.list_items(Path(out) / e["run"])}
        for j, row in enumerate(f["rows"][:per_row]):
            it = done[str(row)]
            for c, (img, label) in enumerate(((it.original, "original"),
                                               (it.counterfactual, f"{direction} {attr}"))):
                ax = fig.add_subplot(gs[r, 2 * j + c])
                ax.imshow(to_uint8_image(load_image(img, None)), interpolation="nearest")
                ax.set_xticks([]); ax.set_yticks([])
                p = f["p_before"][j] if c == 0 else f["p_after"][j]
                mark = "" if c == 0 or f["used"][j] else " ✗"
                ax.set_title(f"p {p:.2f}{mark}", fontsize=7)
                if j == 0 and c == 0:
                    ax.set_ylabel(f"{direction}\n{attr}", fontsize=7)
    fig.suptitle(f"{result['classifier']}: p({result['target']}) before and after editing "
                 f"(editor {result['editor']}; ✗ = edit not confirmed, not counted)", fontsize=8)
    return save_figure(fig, path, dpi=dpi)
