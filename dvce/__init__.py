"""Latent diffusion visual counterfactuals: model loading, samplers, batch runner, metrics.

``dvce`` depends on ``classifier`` only (never on ``xai`` or ``study``); the ``ldvce`` command
orchestrates them together.
"""
from dvce.diffusion import ddim_denoise, ddim_invert, decode, encode, reconstruct, sample, schedule
from dvce.ldm import COMPVIS_ID, LDM, LDMNotAvailableError, build_random_ldm, load_ldm
from dvce.samplers import SAMPLERS, CFBatch, Problem, get_sampler

__all__ = ["load_ldm", "build_random_ldm", "LDM", "LDMNotAvailableError", "COMPVIS_ID", "encode",
           "decode", "ddim_invert", "ddim_denoise", "reconstruct", "sample", "schedule", "SAMPLERS",
           "CFBatch", "Problem", "get_sampler"]
