"""The latent-diffusion building blocks every sampler uses: encode/decode in [-1, 1] image space
and deterministic DDIM (eta = 0) inversion and denoising, owned here instead of LDMPipeline.

Notation (DDIM, Song et al. 2021): ``a_t`` = alphas_cumprod[t];
x̂0 = (z_t - sqrt(1 - a_t) ε) / sqrt(a_t);  z_s = sqrt(a_s) x̂0 + sqrt(1 - a_s) ε.
A schedule is the ascending list of timesteps ``[0, k, 2k, …, t_start]`` with ``k = 1000 // steps``;
the clean latent sits below its first entry (a = 1). Inversion walks the list up, denoising walks
it down, so inverting to ``t_start`` and denoising from ``t_start`` are exact mirrors (the seed
inverted to 780 but denoised as if at 790).
"""
from __future__ import annotations

from typing import Callable

import torch

from dvce.ldm import LDM


def encode(ldm: LDM, x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> scaled pre-quantisation latents (what the UNet sees), in float32
    whatever the networks' dtype (the DDIM arithmetic needs it)."""
    x = x.to(ldm.device, ldm.dtype)
    z = ldm.vqvae.encode(x).latents * ldm.latent_scale
    return z if z.dtype == torch.float64 else z.float()


def decode(ldm: LDM, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Scaled latents -> images in [-1, 1]; the quantiser is straight-through, so gradients pass."""
    z = (z / ldm.latent_scale).to(ldm.dtype)
    return ldm.vqvae.decode(z, force_not_quantize=not quantize).sample


def schedule(t_start: int, num_steps: int = 100, num_train: int = 1000) -> list[int]:
    """Ascending DDIM timesteps ``[0, k, …, t_start]`` with ``k = num_train // num_steps``."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"num_steps must be in 1..{num_train}, got {num_steps}")
    if not 0 <= t_start < num_train:
        raise ValueError(f"t_start (a noise level) must be in 0..{num_train - 1}, got {t_start}")
    k = num_train // num_steps
    if t_start % k:
        raise ValueError(f"t_start={t_start} is not on the {num_steps}-step grid (multiples of {k})")
    return list(range(0, t_start + 1, k))


def _alpha(ldm: LDM, t: int | None, like: torch.Tensor) -> torch.Tensor:
    """a_t as a float32 (or float64) scalar: in bfloat16 a_0 = 0.9985 would round to 1 and
    sqrt(1 - a_0) to 0, so the schedule arithmetic never runs in half precision; latents are
    cast to the networks' dtype at their inputs only."""
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    if t is None:  # below the first timestep: the clean latent
        return torch.ones((), device=like.device, dtype=dtype)
    return ldm.scheduler.alphas_cumprod[t].to(like.device, dtype)


def predict_eps(ldm: LDM, z: torch.Tensor, t: int) -> torch.Tensor:
    tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
    return ldm.unet(z.to(ldm.dtype), tt).sample.to(z.dtype)


def x0_from_eps(z: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """Tweedie / DDIM one-step estimate x̂0 = (z_t - sqrt(1 - a_t) ε) / sqrt(a_t)."""
    return (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def eps_from_x0(z: torch.Tensor, x0: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The ε that makes z_t = sqrt(a_t) x̂0 + sqrt(1 - a_t) ε hold for a given (moved) x̂0."""
    return (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()


def ddim_move(x0: torch.Tensor, eps: torch.Tensor, a_to: torch.Tensor) -> torch.Tensor:
    """z_s = sqrt(a_s) x̂0 + sqrt(1 - a_s) ε (deterministic DDIM, eta = 0)."""
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def renoise_step(ldm: LDM, z: torch.Tensor, ts: list[int], i: int,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
    """Latents at ``ts[i - 1]`` carried back up to ``ts[i]`` with fresh Gaussian noise (the
    forward process q(z_t | z_s): z_t = sqrt(a_t / a_s) z_s + sqrt(1 - a_t / a_s) ε).

    The self-recurrence of Universal Guidance (Bansal et al., 2023) takes a guided step, puts
    this noise back and takes the step again: each repetition lets the model redraw what the
    guidance pushed off its manifold. ``noise``: the ε to use (default: a fresh draw)."""
    ratio = _alpha(ldm, ts[i], z) / _alpha(ldm, ts[i - 1], z)
    if noise is None:
        noise = torch.randn_like(z)
    return ratio.sqrt() * z + (1 - ratio).sqrt() * noise


@torch.no_grad()
def ddim_invert(ldm: LDM, z0: torch.Tensor, ts: list[int], keep: bool = False,
                from_t: int | None = None):
    """Run DDIM backwards from the clean latent ``z0`` up to ``ts[-1]``.

    Returns the latent at ``ts[-1]`` and, with ``keep``, the list of latents at every timestep of
    ``ts`` (index i = latent at ts[i]), used by samplers that restore the original outside a mask.
    ``from_t``: ``z0`` is not clean but already inverted to ``from_t`` (the last timestep of an
    earlier inversion on the same grid); ``ts`` are the timesteps after it. Continuing gives the
    same latents as inverting from the clean one again (DDIM inversion is deterministic).
    """
    z, traj = z0, []
    prev = from_t
    for t in ts:
        # ε is evaluated at the current point (the usual DDIM-inversion approximation).
        eps = predict_eps(ldm, z, t if prev is None else prev)
        a_from, a_to = _alpha(ldm, prev, z), _alpha(ldm, t, z)
        z = ddim_move(x0_from_eps(z, eps, a_from), eps, a_to)
        traj.append(z)
        prev = t
    return (z, traj) if keep else z


def ddim_step(ldm: LDM, z: torch.Tensor, ts: list[int], i: int, eps: torch.Tensor | None = None,
              x0_hook: Callable | None = None):
    """One denoising step from ``ts[i]`` to ``ts[i-1]`` (or to the clean latent when i == 0).

    Parameters
    ----------
    ldm : the latent diffusion model.
    z : latents at ``ts[i]``.
    ts : ascending schedule (:func:`schedule`).
    i : index into ``ts`` of the current timestep.
    eps : the UNet's ε at (z, ts[i]) when the caller already has it (e.g. computed without grad).
    x0_hook : ``x0_hook(x0, i, a_t) -> x0 | None``, called with the one-step estimate x̂0 before
        the step. Guidance lives here: a returned tensor replaces x̂0, and ε is re-derived from it
        (:func:`eps_from_x0`) so the step stays a DDIM step; ``None`` leaves the step unguided.

    Returns
    -------
    (z_prev, x̂0, ε): the next latents and the x̂0 and ε the step used.
    """
    t = ts[i]
    if eps is None:
        eps = predict_eps(ldm, z, t)
    a_t = _alpha(ldm, t, z)
    a_prev = _alpha(ldm, ts[i - 1] if i > 0 else None, z)
    x0 = x0_from_eps(z, eps, a_t)
    if x0_hook is not None:
        moved = x0_hook(x0, i, a_t)
        if moved is not None:
            x0, eps = moved, eps_from_x0(z, moved, a_t)
    return ddim_move(x0, eps, a_prev), x0, eps


def ddim_denoise(ldm: LDM, z: torch.Tensor, ts: list[int], grad: bool = False,
                 checkpoint: bool = False) -> torch.Tensor:
    """Denoise from ``ts[-1]`` to the clean latent.

    ``grad=False``: the UNet runs under ``no_grad`` and gradients flow only through the linear DDIM
    updates (the seed's choice). ``grad=True`` backpropagates through the UNet too, with
    ``checkpoint`` trading compute for memory.
    """
    for i in range(len(ts) - 1, -1, -1):
        if grad:
            if checkpoint:
                eps = torch.utils.checkpoint.checkpoint(predict_eps, ldm, z, ts[i], use_reentrant=False)
            else:
                eps = predict_eps(ldm, z, ts[i])
        else:
            with torch.no_grad():
                eps = predict_eps(ldm, z, ts[i])
        z, _, _ = ddim_step(ldm, z, ts, i, eps)
    return z


@torch.no_grad()
def reconstruct(ldm: LDM, x: torch.Tensor, t_start: int = 780, num_steps: int = 100) -> torch.Tensor:
    """Encode, DDIM-invert to ``t_start``, denoise back and decode: the DDIM round trip."""
    ts = schedule(t_start, num_steps)
    z = ddim_invert(ldm, encode(ldm, x), ts)
    return decode(ldm, ddim_denoise(ldm, z, ts))


@torch.no_grad()
def sample(ldm: LDM, n: int, num_steps: int = 50, generator: torch.Generator | None = None):
    """Unconditional DDIM samples (images in [-1, 1])."""
    ts = schedule(1000 - 1000 // num_steps, num_steps)
    z = torch.randn((n, *ldm.latent_shape), generator=generator).to(ldm.device, ldm.dtype)
    return decode(ldm, ddim_denoise(ldm, z, ts)).clamp(-1, 1)
