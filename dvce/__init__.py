"""Latent diffusion visual counterfactuals: model loading, samplers, batch runner, metrics.

``dvce`` depends on ``classifier`` only (never on ``xai`` or ``study``); the ``ldvce`` command
orchestrates them together. Names are imported lazily, so ``dvce.runfolder`` (the run-folder
format, no torch) can be used by packages that do not load torch.
"""
from importlib import import_module

_EXPORTS = {
    "ddim_denoise": "dvce.diffusion", "ddim_invert": "dvce.diffusion", "decode": "dvce.diffusion",
    "encode": "dvce.diffusion", "reconstruct": "dvce.diffusion", "sample": "dvce.diffusion",
    "schedule": "dvce.diffusion",
    "COMPVIS_ID": "dvce.ldm", "LDM": "dvce.ldm", "LDMNotAvailableError": "dvce.ldm",
    "build_random_ldm": "dvce.ldm", "load_ldm": "dvce.ldm",
    "SAMPLERS": "dvce.samplers", "CFBatch": "dvce.samplers", "Problem": "dvce.samplers",
    "get_sampler": "dvce.samplers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dvce' has no attribute {name!r}")
