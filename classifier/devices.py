"""Device names from the command line and notebooks ("auto", "cpu", "cuda:1") to torch devices."""
from __future__ import annotations


def resolve_device(name: str | None = "auto"):
    """``"auto"`` (or None) picks CUDA when available, else the CPU; anything else is passed on."""
    import torch  # heavy: `ldvce --help` imports this module and must not load torch
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
