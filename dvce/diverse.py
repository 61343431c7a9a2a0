"""Several different counterfactuals per face (``ldvce generate --num-cfs K``).

The rule: the first counterfactual is the sampler's usual one. Each next one is made by the same
sampler with ``keep_out`` — the union of the cores of the changes the earlier *flipping*
counterfactuals of that face made (:func:`dvce.metrics.change_mask` of |x′ − x| at
:data:`KEEP_OUT_REL` of its peak) — so it has to find another way to flip the decision: its mask (``guided``) or its pre-explanation and region (``adaptive``) come from
the rest of the face. A face whose latest counterfactual did not flip gets no further one (with
the same ``keep_out`` the sampler, deterministic, would make the same). The counterfactuals that
flip are then ranked by L1 (rank 1 is the smallest change); when none flips, the first one made is
the only one kept, as a run with one counterfactual per face does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dvce.metrics import change_mask
from dvce.samplers import DIVERSE, CFBatch, FrameRecorder, Problem

#: The pixels a later counterfactual must keep: where an earlier one changed the image by at least
#: this share of its largest change. It keeps out the core of the earlier edit and leaves its
#: fainter fringe (and the rest of the face) free. 0.7 since 2026-12-06's sixth round: with the
#: default ``adaptive``, sets of three on the hat-biased Clever-Hans classifier (24 faces each)
#: held a counterfactual that changes the hat most on 0.875 / 0.792 / 0.792 of the faces of seeds
#: 6161 (tuning) / 7272 / 8383, against 0.792 / 0.708 / 0.708 at 0.5, at a mean pairwise IoU of
#: 0.22-0.25 (0.12-0.14 at 0.5); 0.2, the change-mask threshold of the diversity metric, keeps
#: out too much (docs/results.md, "Several counterfactuals per face").
KEEP_OUT_REL = 0.7


@dataclass
class Candidate:
    """One counterfactual of one face: sample ``i`` of the sampler's batch ``res``, its frame
    sequence and logits, and the round ``made`` in (1 = the first, unconstrained one)."""
    res: CFBatch
    i: int
    frames: list[torch.Tensor]
    logits: list[float]
    made: int

    @property
    def failed(self) -> str | None:
        return self.res.failed[self.i]

    @property
    def flipped(self) -> bool:
        return bool(self.res.flipped[self.i])

    @property
    def counterfactual(self) -> torch.Tensor:
        return self.res.counterfactual[self.i].detach().cpu()

    def l1(self, x: torch.Tensor) -> float:
        return float((self.counterfactual.float() - x.detach().cpu().float()).abs().mean())


def check_method(method: str, num_cfs: int) -> None:
    """Raise a clear error when ``num_cfs`` is not possible with ``method``."""
    if num_cfs < 1:
        raise ValueError(f"--num-cfs must be at least 1, got {num_cfs}")
    if num_cfs > 1 and method not in DIVERSE:
        raise ValueError(f"--num-cfs {num_cfs} needs a method that can keep a region untouched "
                         f"({', '.join(DIVERSE)}); {method!r} cannot")


def counterfactual_rounds(problem: Problem, x: torch.Tensor, target: torch.Tensor,
                          sampler: Callable[..., CFBatch], options: dict,
                          num_cfs: int) -> list[list[Candidate]]:
    """Per face of ``x``, the counterfactuals made in order (see the module docstring). With
    ``num_cfs`` 1 this is exactly one call of the sampler, as a plain run makes."""
    b = len(x)
    made: list[list[Candidate]] = [[] for _ in range(b)]
    keep_out = torch.zeros(b, 1, *x.shape[-2:])
    rows = list(range(b))
    for k in range(num_cfs):
        if not rows:
            break
        recorder = FrameRecorder(len(rows))
        opts = dict(options) if k == 0 else {**options, "keep_out": keep_out[rows]}
        res = sampler(problem, x[rows], target[rows], callback=recorder, **opts)
        again = []
        for j, i in enumerate(rows):
            c = Candidate(res, j, recorder.frames[j], recorder.logits[j], k + 1)
            made[i].append(c)
            if c.failed is None and c.flipped:
                delta = (c.counterfactual.float() - x[i].detach().cpu().float()).abs().sum(0)
                core = change_mask(delta.numpy(), KEEP_OUT_REL)
                keep_out[i, 0] = torch.maximum(keep_out[i, 0], torch.from_numpy(core).float())
                again.append(i)
        rows = again
    return made


def ranked(candidates: list[Candidate], x: torch.Tensor) -> list[Candidate]:
    """The counterfactuals of one face to keep, rank 1 first: those that flipped, by L1; when none
    did, the first one made (failed ones never; empty when the first one failed)."""
    ok = [c for c in candidates if c.failed is None]
    flipped = sorted((c for c in ok if c.flipped), key=lambda c: c.l1(x))
    if flipped:
        return flipped
    first = candidates[0] if candidates else None
    return [first] if first is not None and first.failed is None else []
