"""Several attribute classifiers read as one (a committee): its logits are the mean of theirs.

Guidance by a committee needs a change that every member reads as the attribute. A change that
only one network's quirks respond to (pixel detail, an adversarial pattern) moves the mean by
a fraction of what a change all of them see does, so the committee's edits are the ones
independent networks agree on: ``ldvce shortcut --editor A,B`` edits the suspected cue with one.
"""
from __future__ import annotations

import torch
from torch import nn


class Committee(nn.Module):
    """``members`` (each images → (B, A) logits over the same attributes) as one classifier
    whose logits are the members' mean (the log of the geometric mean of their odds)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("a committee needs at least one classifier")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x).float() for m in self.members]
        widths = {o.shape[1] for o in outs}
        if len(widths) > 1:
            raise ValueError(f"the committee's classifiers predict different numbers of "
                             f"attributes ({sorted(widths)}); they must share one list")
        return torch.stack(outs).mean(0)
