"""The selection task: "pick the first frame in which the person smiles".

Each participant saw, per image, the frame sequence of an lDVCE run (0 = original,
1 = DDIM reconstruction, 2.. = optimisation steps) and picked a frame, or -1 for "nobody
smiles". This module counts those choices, finds outlier participants, compares the choices
with the frame at which the *classifier* switched, and draws the seed-style histograms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .export import StudyExport

NONE_CHOICE = -1
#: The original selection figures are 1720×1014 pixels (at 100 dpi).
SELECTION_FIGSIZE = (17.2, 10.14)


# ------------------------------------------------------------------------------- counts


def choice_counts(choices: Sequence[int], max_frame: int | None = None) -> dict[int, int]:
    """Counts of every choice from -1 to ``max_frame`` (zeros included, so bars line up).

    ``max_frame`` defaults to the largest choice made (the number of frames a run showed is
    not in the export); a larger value, e.g. from a run's frame count, extends the range.
    """
    choices = [int(c) for c in choices]
    top = max([max(choices, default=0)] + ([int(max_frame)] if max_frame is not None else []))
    counts = {c: 0 for c in range(NONE_CHOICE, top + 1)}
    for c in choices:
        counts[c] += 1
    return counts


def selection_counts(export: StudyExport, image: str, participants: Sequence[str] | None = None,
                     max_frame: int | None = None) -> dict[int, int]:
    """:func:`choice_counts` of one image, optionally restricted to ``participants``."""
    table = export.selections.get(image, {})
    wanted = table.keys() if participants is None else [p for p in participants if p in table]
    return choice_counts([table[p] for p in wanted], max_frame)


def participant_choices(export: StudyExport) -> dict[str, list[int]]:
    """Every participant's choices over the selection images (missing answers left out)."""
    out: dict[str, list[int]] = {pid: [] for pid in export.participant_ids}
    for img in export.selection_images:
        for pid, c in export.selections.get(img, {}).items():
            out.setdefault(pid, []).append(c)
    return out


def participant_means(export: StudyExport) -> dict[str, float | None]:
    """Mean raw choice per participant (as the seed: -1 enters the mean as -1). None if no answers."""
    return {pid: (float(np.mean(v)) if v else None) for pid, v in participant_choices(export).items()}


# ------------------------------------------------------------------------------- outliers


def _mean_zero(choices: Sequence[int]) -> bool:
    # The seed's rule. Exact integer arithmetic: "mean exactly 0" is "sum exactly 0".
    return len(choices) > 0 and sum(choices) == 0


def _all_original(choices: Sequence[int]) -> bool:
    # Stricter reading of the same intent: the participant always picked the unchanged original
    # (the seed's rule also fires on e.g. [-1, 1], which this one does not).
    return len(choices) > 0 and all(c == 0 for c in choices)


#: Outlier rules by name: ``rule(choices of one participant) -> is outlier``.
OUTLIER_RULES: dict[str, Callable[[Sequence[int]], bool]] = {
    "mean-zero": _mean_zero,
    "all-original": _all_original,
    "none": lambda choices: False,
}


def find_outliers(export: StudyExport, rule: str | Callable[[Sequence[int]], bool] = "mean-zero") -> list[str]:
    """Participant ids flagged by ``rule`` (a name from :data:`OUTLIER_RULES` or a callable)."""
    if isinstance(rule, str):
        if rule not in OUTLIER_RULES:
            raise ValueError(f"unknown outlier rule {rule!r}; choose from {sorted(OUTLIER_RULES)}")
        rule = OUTLIER_RULES[rule]
    return [pid for pid, v in participant_choices(export).items() if rule(v)]


# ------------------------------------------------------------------------------- runs


def switch_frame_from_result(result: Mapping | None) -> int | None:
    """The frame index at which the classifier's decision flipped, from a run's ``result.json``.

    Looked up, in order:

    1. ``result["switch_frame"]`` — an int index into the frame sequence (0 original,
       1 reconstruction, 2.. iterations); ``null`` means "never flipped".
    2. ``result["frames"]`` — a list of dicts with ``"prob"`` (the classifier's probability for
       the attribute) per frame, in sequence order. The switch is the first frame whose decision
       (``prob > 0.5``) points to the target: ``result["target"]`` if given (1/0 or a float
       target logit/probability, > 0.5 or > 0 meaning "attribute present"), otherwise the
       opposite of frame 0's decision.
    3. ``result["probs"]`` — the same as a bare list of floats.

    Returns None when none of these is usable.
    """
    if not result:
        return None
    sf = result.get("switch_frame")
    if sf is not None:
        try:
            return int(sf)
        except (TypeError, ValueError):
            pass
    probs = None
    frames = result.get("frames")
    if isinstance(frames, list) and frames and all(isinstance(f, Mapping) and "prob" in f for f in frames):
        probs = [f["prob"] for f in frames]
    elif isinstance(result.get("probs"), list):
        probs = result["probs"]
    if not probs:
        return None
    try:
        decisions = [float(p) > 0.5 for p in probs]
    except (TypeError, ValueError):
        return None
    target = result.get("target")
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        # A probability-like target (0/1, 0.9) and a logit-like one (1.0, -1.0) agree on > 0.5
        # except in (0, 0.5]; a logit target in that range is not used by this project.
        want = float(target) > 0.5 if 0 <= float(target) <= 1 else float(target) > 0
    elif isinstance(target, bool):
        want = target
    else:
        want = not decisions[0]
    for i, d in enumerate(decisions):
        if d == want:
            return i
    return None


def switch_agreement(choices: Sequence[int], switch_frame: int | None) -> dict:
    """How participants' choices relate to the classifier's switch frame.

    Returns ``exact`` (share choosing the switch frame), ``within_one`` (|choice − switch| ≤ 1),
    ``none_smiles`` (share of -1), ``mean_offset`` (mean choice − switch over choices ≥ 0;
    positive = humans see the smile later than the classifier) and ``n``.
    """
    c = np.asarray([int(x) for x in choices])
    out = {"switch_frame": switch_frame, "n": int(c.size)}
    if switch_frame is None or c.size == 0:
        out.update(exact=None, within_one=None, none_smiles=None, mean_offset=None)
        return out
    seen = c[c >= 0]
    out.update(
        exact=float(np.mean(c == switch_frame)),
        within_one=float(np.mean((c >= 0) & (np.abs(c - switch_frame) <= 1))),
        none_smiles=float(np.mean(c == NONE_CHOICE)),
        mean_offset=float(np.mean(seen - switch_frame)) if seen.size else None,
    )
    return out


# ------------------------------------------------------------------------------- figure


def plot_selection_histogram(counts: Mapping[int, int], path, switch_frame: int | None = None,
                             thumbnails: Sequence | None = None, title: str | None = None):
    """Save the seed-style histogram of choices for one image.

    Bars from -1 ("none is smiling") to the last frame, dark-to-light by frame, the count over
    each bar; with ``thumbnails`` (one image per frame 0..) each frame is drawn above its bar,
    and the classifier's ``switch_frame`` is outlined in cyan.
    """
    # heavy: matplotlib loads only when figures are drawn (keeps `import study` fast)
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    xs = sorted(counts)
    ys = [counts[x] for x in xs]
    colors = colormaps["gist_heat"](np.linspace(0, 0.85, len(xs)))
    fig = Figure(figsize=SELECTION_FIGSIZE)
    ax = fig.add_subplot()
    ax.set_facecolor("#f0f0f0")
    ax.grid(True, linestyle="--", alpha=0.6)
    ax.set_axisbelow(True)
    bars = ax.bar(xs, ys, width=1.0, color=colors, edgecolor="white")
    ymax = max(ys + [1])
    for x, y in zip(xs, ys):
        ax.text(x, y, str(y), ha="center", va="bottom", fontsize=13)
    if switch_frame is not None and switch_frame in counts:
        b = bars[xs.index(switch_frame)]
        b.set_edgecolor("cyan")
        b.set_linewidth(3)
    if thumbnails:
        # Thumbnails sit on top of their bar (or above the legend line for tiny bars).
        for f, img in enumerate(thumbnails):
            if f not in counts or img is None:
                continue
            y0 = counts[f] + 0.08 * ymax
            ext = (f - 0.45, f + 0.45, y0, y0 + 0.3 * ymax)
            ax.imshow(img, extent=ext, aspect="auto", zorder=3)
            if f == switch_frame:
                ax.add_patch(Rectangle((ext[0], ext[2]), 0.9, 0.3 * ymax, fill=False,
                                           edgecolor="cyan", linewidth=3, zorder=4))
        ymax = max([ymax * 1.2] + [counts[f] + 0.4 * ymax for f in range(len(thumbnails)) if f in counts])
    else:
        ymax *= 1.2  # room for the legend above the tallest bar
    ax.set_xlim(xs[0] - 0.5, xs[-1] + 0.5)
    ax.set_ylim(0, ymax * 1.08)
    ax.set_xticks(xs)
    ax.set_xlabel("image number", fontsize=16)
    ax.set_ylabel("number of participants\nchosen this image", fontsize=16)
    ax.set_title(title or "histogram of 'human assumed' classifier switch", fontsize=20)
    ax.text(0.97, 0.95, f"-1: 'none is smiling'\n0-{xs[-1]}: image number", transform=ax.transAxes,
            ha="right", va="top", fontsize=13, bbox=dict(facecolor="white", alpha=0.7, edgecolor="gray"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
