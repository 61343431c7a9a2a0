"""Counterfactual samplers. One signature for all (k-diffusion style):

    sampler(problem: Problem, x: Tensor(B, 3, H, W) in [-1, 1], target: Tensor(B,) of 0/1,
            **options) -> CFBatch

A new method is one new function registered in :data:`SAMPLERS`. Every sampler is batch-first
with per-sample stopping, deterministic on CPU (no randomness: DDIM with eta = 0), and marks a
sample whose values turn non-finite as failed without touching the rest of the batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from dvce.diffusion import (_alpha, ddim_denoise, ddim_invert, ddim_move, ddim_step, decode,
                            encode, predict_eps, schedule, x0_from_eps)
from dvce.ldm import LDM


@dataclass
class Problem:
    """What to explain: an LDM, a classifier (images in [-1, 1] -> logits) and the attribute index."""
    ldm: LDM
    classifier: torch.nn.Module
    attribute: int

    def logit(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images.to(self.ldm.dtype))[:, self.attribute].float()


@dataclass
class CFBatch:
    """Sampler output for a batch; per-sample lists where lengths differ."""
    counterfactual: torch.Tensor                 # (B, 3, H, W)
    reconstruction: torch.Tensor                 # (B, 3, H, W) DDIM round trip, no guidance
    frames: list[list[torch.Tensor]]             # per sample: original, reconstruction, iterations…
    frame_logits: list[list[float]]
    flipped: torch.Tensor                        # (B,) bool
    iterations: torch.Tensor                     # (B,) int
    failed: list[str | None]                     # per sample: None or the reason
    info: dict = field(default_factory=dict)     # sampler-specific extras (e.g. masks, scales)


def _toward(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """True where the decision (sigmoid > 0.5) agrees with the target class."""
    return (logit > 0) == (target > 0.5)


def _finite(*ts: torch.Tensor) -> torch.Tensor:
    ok = None
    for t in ts:
        f = torch.isfinite(t.reshape(t.shape[0], -1)).all(1) if t.dim() > 1 else torch.isfinite(t)
        ok = f if ok is None else ok & f
    return ok


def _initial_failures(x: torch.Tensor, logit0: torch.Tensor) -> list[str | None]:
    """Samples that are broken before we start (non-finite input or classifier output)."""
    ok = _finite(x, logit0)
    return [None if bool(o) else "non-finite values in the input or its classifier logit"
            for o in ok]


def _init_frames(x, logit0, rec, logit_rec):
    return ([[x[i].cpu(), rec[i].cpu()] for i in range(len(x))],
            [[float(logit0[i]), float(logit_rec[i])] for i in range(len(x))])


# ------------------------------------------------------------------------------------------------
def seed_ldvce(problem: Problem, x: torch.Tensor, target: torch.Tensor, *, lr: float = 0.01,
               max_iter: int = 20, l1_weight: float = 10.0, margin: float = 1.0,
               num_steps: int = 100, t_start: int = 780, full_backprop: bool = False,
               checkpoint: bool = True, progress: Callable | None = None) -> CFBatch:
    """The seed's lDVCE: Adam on the DDIM-inverted start latent through the whole
    DDIM chain; loss |logit - (±margin)| + l1_weight · mean|x' - x|; stop at the first flip.

    The UNet runs under ``no_grad`` unless ``full_backprop`` (then with gradient checkpointing).
    Adam(lr) with cosine annealing (T_max 50) as in the seed; frames: original, reconstruction,
    then one decoded image per optimisation iteration.
    """
    ldm = problem.ldm
    x = x.to(ldm.device, ldm.dtype)
    target = target.to(ldm.device).float()
    goal = (2 * target - 1) * margin
    ts = schedule(t_start, num_steps)
    with torch.no_grad():
        logit0 = problem.logit(x)
        z_start = ddim_invert(ldm, encode(ldm, x), ts)
    z = torch.nn.Parameter(z_start.clone())
    opt = torch.optim.Adam([z], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
    b = len(x)
    failed = _initial_failures(x, logit0)
    active = torch.tensor([f is None for f in failed], dtype=torch.bool, device=x.device)
    cf = torch.zeros_like(x)
    rec = torch.zeros_like(x)
    flipped = torch.zeros(b, dtype=torch.bool)
    iters = torch.zeros(b, dtype=torch.long)
    frames, frame_logits = [[x[i].cpu()] for i in range(b)], [[float(logit0[i])] for i in range(b)]
    for it in range(max_iter + 1):  # iteration 0 decodes the untouched start: the reconstruction
        idx = active.nonzero().flatten()
        if len(idx) == 0:
            break
        with torch.enable_grad():
            z_act = z[idx]
            z0 = ddim_denoise(ldm, z_act, ts, grad=full_backprop, checkpoint=checkpoint)
            img = decode(ldm, z0)
            logit = problem.logit(img)
            l1 = (img - x[idx]).abs().flatten(1).mean(1)
            loss = (logit - goal[idx]).abs() + l1_weight * l1
        ok = _finite(img, logit)
        done = _toward(logit.detach(), target[idx])
        for j, i in enumerate(idx.tolist()):
            frames[i].append(img[j].detach().cpu())
            frame_logits[i].append(float(logit[j].detach()))
            if it == 0:
                rec[i] = img[j].detach()
            if not bool(ok[j]):
                failed[i] = "non-finite values in the counterfactual or its logit"
                active[i] = False
            elif bool(done[j]) or it == max_iter:
                cf[i] = img[j].detach()
                flipped[i] = bool(done[j])
                iters[i] = it
                active[i] = False
        if it == max_iter or not active.any():
            break
        opt.zero_grad(set_to_none=True)
        (loss * ok.float()).nan_to_num(0.0).sum().backward()
        if z.grad is not None:
            z.grad.nan_to_num_(0.0)
        opt.step()
        sched.step()
        if progress:
            progress(it)
    return CFBatch(cf, rec, frames, frame_logits, flipped, iters, failed,
                   info={"t_start": t_start, "num_steps": num_steps})


# ------------------------------------------------------------------------------------------------
def _blur(m: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 1:
        return m
    return F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)


def guided(problem: Problem, x: torch.Tensor, target: torch.Tensor, *, scale: float = 0.3,
           retry_scales: tuple[float, ...] = (0.6, 1.2), l1_weight: float = 1.0,
           num_steps: int = 20, t_start: int = 500, mask: bool = True,
           mask_fraction: float = 0.025, mask_dilate: int = 3, mask_from: int = 3,
           guide_tail: int = 0, progress: Callable | None = None) -> CFBatch:
    """Latent guided DDIM (FastDiME / MaskDiME / LDCE ideas in latent space).

    Invert to ``t_start`` once, then denoise with classifier guidance on the decoded one-step
    estimate x̂0 (no nested chain): g = ∇_{x̂0} [BCE(logit(D(x̂0)), target) + l1_weight·|D(x̂0) − x|],
    normalised per sample to unit RMS (every sample moves alike whatever its gradient norm, as
    LDCE's same-norm guidance), and x̂0 ← x̂0 − scale·sqrt(1 − a_t)·g; ε is re-derived from the
    moved x̂0 so the DDIM step stays consistent. With ``mask``, the accumulated |g| (the
    self-optimised mask: top ``mask_fraction`` of latent positions, dilated) keeps the inverted
    original trajectory outside the changing region (after ``mask_from`` steps, once the
    gradient has settled), and the original pixels outside it in the final image. The last
    ``guide_tail`` steps run unguided, so the denoiser settles the edited region on its learnt
    manifold instead of keeping adversarial detail. Unflipped samples are retried with the larger
    ``retry_scales`` (DiME's 8 → 10 → 15 idea).
    """
    ldm = problem.ldm
    x = x.to(ldm.device, ldm.dtype)
    target = target.to(ldm.device).float()
    ts = schedule(t_start, num_steps)
    b = len(x)
    with torch.no_grad():
        logit0 = problem.logit(x)
        z_clean = encode(ldm, x)
        z_T, traj = ddim_invert(ldm, z_clean, ts, keep=True)
        rec = decode(ldm, ddim_denoise(ldm, z_T, ts))
        logit_rec = problem.logit(rec)
    frames, frame_logits = _init_frames(x, logit0, rec, logit_rec)
    cf = rec.clone()
    flipped = torch.zeros(b, dtype=torch.bool)
    iters = torch.zeros(b, dtype=torch.long)
    failed = _initial_failures(x, logit0)
    used_scale = torch.zeros(b)
    pixel_masks = torch.zeros((b, 1, *x.shape[-2:]))
    todo = torch.tensor([i for i in range(b) if failed[i] is None], dtype=torch.long,
                        device=x.device)
    for attempt, s in enumerate((scale, *retry_scales)):
        if len(todo) == 0:
            break
        out = _guided_pass(problem, x[todo], target[todo], z_T[todo], [t[todo] for t in traj], ts,
                           s, l1_weight, mask, mask_fraction, mask_dilate, mask_from, guide_tail)
        img, logit, pm, step_frames, step_logits = out
        ok = _finite(img, logit)
        done = _toward(logit, target[todo])
        keep = []
        for j, i in enumerate(todo.tolist()):
            frames[i] = frames[i][:2] + [f[j] for f in step_frames]
            frame_logits[i] = frame_logits[i][:2] + [float(v[j]) for v in step_logits]
            cf[i], used_scale[i], iters[i] = img[j], s, (attempt + 1) * len(ts)
            pixel_masks[i] = pm[j].cpu()
            if not bool(ok[j]):
                failed[i] = "non-finite values in the counterfactual or its logit"
            elif bool(done[j]):
                flipped[i] = True
            else:
                keep.append(j)
        todo = todo[keep] if keep else todo[:0]
        if progress:
            progress(attempt)
    return CFBatch(cf, rec, frames, frame_logits, flipped, iters, failed,
                   info={"scale": used_scale.tolist(), "mask": pixel_masks, "t_start": t_start,
                         "num_steps": num_steps})


def _guided_pass(problem, x, target, z_T, traj, ts, scale, l1_weight, use_mask, fraction,
                 dilate, mask_from, guide_tail=0):
    ldm = problem.ldm
    z = z_T.clone()
    saliency = torch.zeros_like(z[:, :1], dtype=torch.float32)  # float32 also under bf16
    latent_mask = torch.ones_like(saliency)
    step_frames, step_logits = [], []
    for n, i in enumerate(range(len(ts) - 1, -1, -1)):
        t = ts[i]
        a_t = _alpha(ldm, t, z)
        a_prev = _alpha(ldm, ts[i - 1] if i > 0 else None, z)
        with torch.no_grad():
            eps = predict_eps(ldm, z, t)
            x0 = x0_from_eps(z, eps, a_t)
        if i < guide_tail:  # unguided tail: plain DDIM, the mask still holds the original
            with torch.no_grad():
                img = decode(ldm, x0)
                logit = problem.logit(img)
                z = ddim_move(x0, eps, a_prev)
                if use_mask and i > 0:
                    m = latent_mask.to(z.dtype)
                    z = m * z + (1 - m) * traj[i - 1]
            step_frames.append(img.clamp(-1, 1).cpu())
            step_logits.append(logit.cpu())
            continue
        with torch.enable_grad():
            x0g = x0.detach().requires_grad_(True)
            img = decode(ldm, x0g)
            logit = problem.logit(img)
            loss = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
            loss = loss + l1_weight * (img - x).abs().flatten(1).mean(1)
            grad, = torch.autograd.grad(loss.sum(), x0g)
        grad = grad.nan_to_num(0.0)
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12).view(-1, 1, 1, 1)
        grad = grad / rms
        # Step on the one-step estimate, larger while noise is high; ε follows from the moved x̂0.
        x0 = x0 - scale * (1 - a_t).sqrt() * grad
        eps = (z - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        z = ddim_move(x0, eps, a_prev)
        if use_mask:
            with torch.no_grad():
                saliency += grad.abs().mean(1, keepdim=True).float()
                if n + 1 >= mask_from:
                    latent_mask = _top_mask(saliency, fraction, dilate)
                    if i > 0:  # keep the original trajectory outside the changing region
                        m = latent_mask.to(z.dtype)
                        z = m * z + (1 - m) * traj[i - 1]
        step_frames.append(img.detach().clamp(-1, 1).cpu())
        step_logits.append(logit.detach().cpu())
    with torch.no_grad():
        img = decode(ldm, z).clamp(-1, 1)
        if use_mask:
            pm = _blur(F.interpolate(latent_mask, size=x.shape[-2:], mode="bilinear",
                                     align_corners=False), 5).to(img.dtype)
            img = pm * img + (1 - pm) * x  # original pixels outside the changing region
        else:
            pm = torch.ones_like(img[:, :1])
        logit = problem.logit(img)
    step_frames.append(img.cpu())
    step_logits.append(logit.cpu())
    return img, logit, pm, step_frames, step_logits


def _top_mask(saliency: torch.Tensor, fraction: float, dilate: int) -> torch.Tensor:
    """1 on the top ``fraction`` of positions of a (B, 1, h, w) saliency map, dilated."""
    thr = torch.quantile(saliency.flatten(1), 1 - fraction, dim=1).view(-1, 1, 1, 1)
    m = (saliency >= thr).float()
    if dilate > 1:
        m = F.max_pool2d(m, dilate, stride=1, padding=dilate // 2)
    return m


SAMPLERS: dict[str, Callable[..., CFBatch]] = {"seed": seed_ldvce, "guided": guided}


def get_sampler(name: str) -> Callable[..., CFBatch]:
    if name not in SAMPLERS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]
