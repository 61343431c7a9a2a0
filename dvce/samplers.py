"""Counterfactual samplers. One signature for all (k-diffusion style):

    sampler(problem: Problem, x: Tensor(B, 3, H, W) in [-1, 1], target: Tensor(B,) of 0/1,
            *, callback=None, **options) -> CFBatch

A new method is one new function registered in :data:`SAMPLERS`; its keyword options carry
their defaults (the ``ldvce generate`` flags, the demo and the benchmarks read them from the
signature) and a numpy-style docstring entry each (the flags' help). Every sampler is
batch-first with per-sample stopping, deterministic on CPU (no randomness: DDIM with eta = 0),
and marks a sample whose values turn non-finite as failed without touching the rest of the batch.
:class:`SampleState` holds the per-sample bookkeeping, so a sampler is its loop and nothing else.

Frames (the image sequence a selection study shows) are reported through ``callback``:
``callback({"i": frame index, "samples": batch indices, "img": images, "logit": logits,
"x0": latents or None})`` with frame 0 the original, 1 the DDIM reconstruction and 2.. the
steps. :class:`FrameRecorder` collects them per sample.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from dvce.diffusion import (ddim_denoise, ddim_invert, ddim_step, decode, encode, predict_eps,
                            renoise_step, schedule)
from dvce.distill import resolve_grad_decoder
from dvce.ldm import LDM

#: The method ``ldvce generate``, the demo and the benchmarks use unless told otherwise.
#: ``adaptive`` since it flipped more faces, with more of them confirmed by the independent
#: oracle, than ``guided`` on two unseen toy seeds and three classifiers
#: (docs/results_adaptive.md); ``guided`` keeps its defaults, so older runs reproduce.
DEFAULT_METHOD = "adaptive"

#: Keyword arguments of a sampler that are not options of a method (no flag, no config key):
#: the frame ``callback``, and ``keep_out`` — a (B, 1, H, W) pixel mask, 1 where the
#: counterfactual must keep the original (the regions earlier counterfactuals of the same face
#: changed, ``ldvce generate --num-cfs``). Samplers in :data:`DIVERSE` accept it. ``adaptive``
#: also takes ``edit_region``, a (B, 1, H, W) pixel mask of where it may edit (a region the
#: caller knows, instead of the one its pre-explanation finds; ``benchmarks/hat_ceiling.py``).
NOT_OPTIONS = ("callback", "keep_out", "edit_region")

NON_FINITE = "non-finite values in the counterfactual or its logit"


@dataclass
class Problem:
    """What to explain: an LDM, a classifier (images in [-1, 1] -> logits) and the attribute index."""
    ldm: LDM
    classifier: torch.nn.Module
    attribute: int

    def outputs(self, images: torch.Tensor) -> torch.Tensor:
        """(B, A) float logits of every attribute the classifier predicts."""
        return self.classifier(images.to(self.ldm.dtype)).float()

    def logit(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs(images)[:, self.attribute]


@dataclass
class CFBatch:
    """Sampler output for a batch (frames go to the sampler's ``callback``)."""
    counterfactual: torch.Tensor                 # (B, 3, H, W)
    reconstruction: torch.Tensor                 # (B, 3, H, W) DDIM round trip, no guidance
    flipped: torch.Tensor                        # (B,) bool
    iterations: torch.Tensor                     # (B,) int
    failed: list[str | None]                     # per sample: None or the reason
    info: dict = field(default_factory=dict)     # sampler-specific extras (e.g. masks, scales)


class FrameRecorder:
    """A sampler ``callback`` that keeps each sample's frames (CPU tensors) and logits.

    A frame reported again at index ``i`` replaces it and everything after it: a retry restarts
    the sequence there.
    """

    def __init__(self, n: int):
        self.frames: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self.logits: list[list[float]] = [[] for _ in range(n)]

    def __call__(self, event: dict) -> None:
        i = event["i"]
        img, logit = event["img"].detach().cpu(), event["logit"].detach().cpu()
        for j, s in enumerate(event["samples"].tolist()):
            if len(self.frames[s]) < i:
                raise ValueError(f"sample {s}: frame {i} reported before frame {len(self.frames[s])}")
            del self.frames[s][i:], self.logits[s][i:]
            self.frames[s].append(img[j])
            self.logits[s].append(float(logit[j]))


def _toward(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """True where the decision (sigmoid > 0.5) agrees with the target class."""
    return (logit > 0) == (target > 0.5)


def _finite(*ts: torch.Tensor) -> torch.Tensor:
    ok = None
    for t in ts:
        f = torch.isfinite(t.reshape(t.shape[0], -1)).all(1) if t.dim() > 1 else torch.isfinite(t)
        ok = f if ok is None else ok & f
    return ok


class SampleState:
    """Per-sample bookkeeping shared by the samplers: the inputs on the model's device, which
    samples still run, their outcome (counterfactual, flipped, iterations, failure reason), and
    the frame reports to the callback.

    Creating it classifies the input and reports frame 0 (the original); samples whose input or
    logit is non-finite are failed from the start. ``keep_out``: see :data:`NOT_OPTIONS`.
    """

    def __init__(self, problem: Problem, x: torch.Tensor, target: torch.Tensor,
                 callback: Callable[[dict], None] | None = None,
                 keep_out: torch.Tensor | None = None):
        ldm = problem.ldm
        self.problem, self.callback = problem, callback
        self.x = x.to(ldm.device, ldm.dtype)
        if keep_out is not None and tuple(keep_out.shape) != (len(x), 1, *x.shape[-2:]):
            raise ValueError(f"keep_out must be (B, 1, H, W) = {(len(x), 1, *x.shape[-2:])}, "
                             f"got {tuple(keep_out.shape)}")
        self.keep_out = None if keep_out is None else keep_out.to(ldm.device).float()
        self.target = target.to(ldm.device).float()
        with torch.no_grad():
            self.outputs0 = problem.outputs(self.x)  # every attribute (for ``preserve``)
        self.logit0 = self.outputs0[:, problem.attribute]
        b = len(self.x)
        self.failed: list[str | None] = [
            None if bool(o) else "non-finite values in the input or its classifier logit"
            for o in _finite(self.x, self.logit0)]
        self.running = torch.tensor([f is None for f in self.failed], dtype=torch.bool,
                                    device=self.x.device)
        self.counterfactual = torch.zeros_like(self.x)
        self.reconstruction = torch.zeros_like(self.x)
        self.flipped = torch.zeros(b, dtype=torch.bool)
        self.iterations = torch.zeros(b, dtype=torch.long)
        self._flipped_below_margin: dict[int, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._last_frame = [0] * b
        self.frame(0, torch.arange(b), self.x, self.logit0)

    def todo(self) -> torch.Tensor:
        """Indices of the samples still running."""
        return self.running.nonzero().flatten()

    def frame(self, i: int, samples: torch.Tensor, img: torch.Tensor, logit: torch.Tensor,
              x0: torch.Tensor | None = None) -> None:
        """Report frame ``i`` of ``samples`` (rows of ``img``/``logit``) to the callback."""
        for k in samples.tolist():
            self._last_frame[k] = i
        if self.callback is not None:
            self.callback({"i": i, "samples": samples, "img": img.detach(),
                           "logit": logit.detach(), "x0": None if x0 is None else x0.detach()})

    def settle(self, samples: torch.Tensor, img: torch.Tensor, logit: torch.Tensor,
               iterations: int, last: bool, margin: float = 0.0,
               accept: torch.Tensor | None = None) -> torch.Tensor:
        """Record a try of ``samples``: non-finite ones fail, ones whose logit passed the
        decision boundary by ``margin`` toward the target (all of them on the ``last`` try)
        finish with ``img`` as counterfactual, the others keep running. ``flipped`` records
        whether the decision flipped at all; a sample whose last try did not flip falls back to
        its first try that did (below the margin). ``accept`` (per row, bool) adds a sampler's
        own condition for finishing a flipped sample (e.g. a robustness check). Returns the
        per-row finiteness mask."""
        img, logit = img.detach(), logit.detach()
        ok = _finite(img, logit)
        target = self.target[samples]
        flipped = _toward(logit, target)
        done = flipped & ((2 * target - 1) * logit >= margin)
        if accept is not None:
            done = done & accept.to(done.device)
        for j, i in enumerate(samples.tolist()):
            if bool(ok[j]) and not (bool(done[j]) or last):
                if bool(flipped[j]) and i not in self._flipped_below_margin:
                    # flipped, but not by the margin: kept in case no later try flips
                    self._flipped_below_margin[i] = (img[j], logit[j], iterations)
                continue
            self.counterfactual[i], self.iterations[i] = img[j], iterations
            self.running[i] = False
            if bool(ok[j]):
                self.flipped[i] = bool(flipped[j])
                if not self.flipped[i] and i in self._flipped_below_margin:
                    fb_img, fb_logit, self.iterations[i] = self._flipped_below_margin[i]
                    self.counterfactual[i], self.flipped[i] = fb_img, True
                    # the sequence ends with the image kept, so its last frame is the result
                    self.frame(self._last_frame[i] + 1, torch.tensor([i]), fb_img[None],
                               fb_logit[None])
            else:
                self.failed[i] = NON_FINITE
        return ok

    def result(self, **info) -> CFBatch:
        return CFBatch(self.counterfactual, self.reconstruction, self.flipped, self.iterations,
                       self.failed, info=info)


#: Fixed views for guidance through augmentations: (horizontal flip, shift x, shift y) in pixels.
#: Fixed, not random, so that a sample's result depends neither on a seed nor on its batch.
VIEWS = ((False, 0, 0), (True, 0, 0), (False, 2, 0), (False, -2, 0), (False, 0, 2),
         (False, 0, -2), (True, 2, 2), (True, -2, -2))


def _view(img: torch.Tensor, flip: bool, dx: int, dy: int) -> torch.Tensor:
    """The image mirrored and/or shifted by (dx, dy) pixels, edges replicated."""
    if flip:
        img = img.flip(-1)
    if dx or dy:
        p = max(abs(dx), abs(dy))
        h, w = img.shape[-2:]
        img = F.pad(img, (p, p, p, p), mode="replicate")[..., p - dy:p - dy + h, p - dx:p - dx + w]
    return img


#: How close to its decision boundary another attribute's logit may come before ``preserve``
#: penalises it (logit units): drift of a confident decision is free, a decision about to flip
#: is not.
PRESERVE_MARGIN = 2.0


def _classifier_loss(problem: Problem, img: torch.Tensor, x: torch.Tensor, target: torch.Tensor,
                     l1_weight: float, views: int = 1, preserve: float = 0.0,
                     outputs0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample BCE(logit, target) + l1_weight · mean|img − x|, and the logit.

    With ``views`` > 1 the BCE is averaged over the first ``views`` of :data:`VIEWS` (expectation
    over transformations): a change must move the classifier on shifted and mirrored copies too,
    which favours evidence over pixel-exact adversarial detail. The logit returned is the
    unaugmented one. With ``preserve`` > 0 and the originals' logits of every attribute
    (``outputs0``), :func:`_preserve_penalty` × ``preserve`` is added."""
    out = problem.outputs(img)
    logit = out[:, problem.attribute]
    loss = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    if preserve > 0:
        loss = loss + preserve * _preserve_penalty(out, outputs0, problem.attribute)
    if views > 1:
        for flip, dx, dy in VIEWS[1:views]:
            loss = loss + F.binary_cross_entropy_with_logits(
                problem.logit(_view(img, flip, dx, dy)), target, reduction="none")
        loss = loss / views
    return loss + l1_weight * (img - x).abs().flatten(1).mean(1), logit


def _preserve_penalty(out: torch.Tensor, out0: torch.Tensor, attribute: int,
                      margin: float = PRESERVE_MARGIN) -> torch.Tensor:
    """(B,): how far the attributes other than ``attribute`` came toward flipping the decision
    the classifier made on the original: per attribute with original logit l0 and now l, the
    hinge max(0, min(s·l0, margin) − s·l) with s = sign(l0), summed. Zero while every other
    decision stays at least ``margin`` (or its original confidence, if lower) on its side."""
    s = torch.where(out0 >= 0, 1.0, -1.0)
    hinge = F.relu((s * out0).clamp(max=margin) - s * out)
    others = torch.ones(out.shape[1], dtype=torch.bool, device=out.device)
    others[attribute] = False
    return hinge[:, others].sum(1)


def _invert(state: SampleState, ts: list[int]):
    """Encode and DDIM-invert to ``ts[-1]``; the unguided round trip is the reconstruction
    (frame 1) and the starting counterfactual. Returns the start latents and the trajectory."""
    ldm, problem = state.problem.ldm, state.problem
    with torch.no_grad():
        z_T, traj = ddim_invert(ldm, encode(ldm, state.x), ts, keep=True)
        rec = decode(ldm, ddim_denoise(ldm, z_T, ts))
        logit_rec = problem.logit(rec)
    state.reconstruction, state.counterfactual = rec, rec.clone()
    state.frame(1, torch.arange(len(rec)), rec, logit_rec)
    return z_T, traj


# ------------------------------------------------------------------------------------------------
def seed_ldvce(problem: Problem, x: torch.Tensor, target: torch.Tensor, *, lr: float = 0.01,
               max_iter: int = 20, l1_weight: float = 10.0, margin: float = 1.0,
               num_steps: int = 100, t_start: int = 780, full_backprop: bool = False,
               checkpoint: bool = True, callback: Callable | None = None) -> CFBatch:
    """The original lDVCE: Adam on the DDIM-inverted start latent through the whole DDIM chain.

    Encode, DDIM-invert to ``t_start`` and make that latent a parameter; each iteration runs the
    whole DDIM chain to t = 0, decodes (straight-through quantiser) and classifies; the loss
    |logit − (±margin)| + l1_weight · mean|x' − x| moves the start latent with Adam (cosine
    annealing, T_max 50); a sample stops at its first flip. Frames: original, reconstruction
    (iteration 0, the untouched start), then one decoded image per iteration.

    Parameters
    ----------
    lr : float
        Adam learning rate on the start latent (0.01 for the CompVis LDM).
    max_iter : int
        Optimisation iterations at most; unflipped samples end after this many.
    l1_weight : float
        Weight of the pixel L1 distance to the original (images in [-1, 1]).
    margin : float
        Logit the loss pulls toward: +margin for target 1, -margin for target 0.
    num_steps : int
        DDIM steps over the full 1000-step range (the schedule's grid is 1000 // num_steps).
    t_start : int
        Timestep the image is inverted to and denoised from (on the grid).
    full_backprop : bool
        Backpropagate through the UNet too (otherwise only through the linear DDIM updates,
        with the UNet under no_grad, as the original did).
    checkpoint : bool
        With full_backprop: gradient checkpointing of the UNet calls (less memory, more time).
    callback : callable
        Receives each frame (see the module docstring); not a command-line option.
    """
    state = SampleState(problem, x, target, callback)
    ldm, x, target = problem.ldm, state.x, state.target
    goal = (2 * target - 1) * margin
    ts = schedule(t_start, num_steps)
    with torch.no_grad():
        z_start = ddim_invert(ldm, encode(ldm, x), ts)
    z = torch.nn.Parameter(z_start.clone())
    opt = torch.optim.Adam([z], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
    for it in range(max_iter + 1):  # iteration 0 decodes the untouched start: the reconstruction
        idx = state.todo()
        if len(idx) == 0:
            break
        with torch.enable_grad():
            z0 = ddim_denoise(ldm, z[idx], ts, grad=full_backprop, checkpoint=checkpoint)
            img = decode(ldm, z0)
            logit = problem.logit(img)
            l1 = (img - x[idx]).abs().flatten(1).mean(1)
            loss = (logit - goal[idx]).abs() + l1_weight * l1
        state.frame(1 + it, idx, img, logit, x0=z0)
        if it == 0:
            state.reconstruction[idx] = img.detach()
        ok = state.settle(idx, img, logit, it, last=it == max_iter)
        if it == max_iter or not state.running.any():
            break
        opt.zero_grad(set_to_none=True)
        (loss * ok.float()).nan_to_num(0.0).sum().backward()
        if z.grad is not None:
            z.grad.nan_to_num_(0.0)
        opt.step()
        sched.step()
    return state.result(t_start=t_start, num_steps=num_steps)


# ------------------------------------------------------------------------------------------------
def _blur(m: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 1:
        return m
    return F.avg_pool2d(m, k, stride=1, padding=k // 2, count_include_pad=False)


def _top_mask(saliency: torch.Tensor, fraction: float, dilate: int) -> torch.Tensor:
    """1 on the top ``fraction`` of positions of a (B, 1, h, w) saliency map, dilated."""
    thr = torch.quantile(saliency.flatten(1), 1 - fraction, dim=1).view(-1, 1, 1, 1)
    m = (saliency >= thr).float()
    if dilate > 1:
        m = F.max_pool2d(m, dilate, stride=1, padding=dilate // 2)
    return m


@dataclass(frozen=True)
class Guidance:
    """The options of one guided pass (see :func:`guided`)."""
    scale: float
    l1_weight: float
    mask: bool
    mask_fraction: float
    mask_dilate: int
    mask_from: int
    guide_tail: int
    views: int = 1
    grad_decoder: torch.nn.Module | None = None  # decodes x̂0 for the gradient (None: the VQ decoder)
    preserve: float = 0.0  # weight of keeping the other attributes' decisions (_preserve_penalty)
    recurrence: int = 1  # each step taken this many times, re-noised in between (_guided_pass)


@dataclass
class PassResult:
    img: torch.Tensor     # (b, 3, H, W) final images of the pass
    logit: torch.Tensor   # (b,)
    mask: torch.Tensor    # (b, 1, H, W) pixel mask of the changing region (ones without a mask)


def guided(problem: Problem, x: torch.Tensor, target: torch.Tensor, *, scale: float = 0.3,
           retry_scales: tuple[float, ...] = (0.6, 1.2, 2.4), l1_weight: float = 1.0,
           num_steps: int = 10, t_start: int = 600, mask: bool = True,
           mask_fraction: float = 0.04, mask_dilate: int = 1, mask_from: int = 3,
           guide_tail: int = 0, margin: float = 3.0, views: int = 4, grad_decoder: str = "full",
           callback: Callable | None = None, keep_out: torch.Tensor | None = None) -> CFBatch:
    """Latent guided DDIM: classifier guidance on the one-step estimate x̂0 with a self-optimised mask.

    FastDiME / MaskDiME / LDCE ideas in latent space. Invert to ``t_start`` once, then denoise
    with guidance on the decoded one-step estimate x̂0 (no nested chain):
    g = ∇_{x̂0} [BCE(logit(D(x̂0)), target) + l1_weight·|D(x̂0) − x|], normalised per sample to
    unit RMS (every sample moves alike whatever its gradient norm, as LDCE's same-norm guidance),
    and x̂0 ← x̂0 − scale·sqrt(1 − a_t)·g; the DDIM step re-derives ε from the moved x̂0. With
    ``mask``, the accumulated |g| (the self-optimised mask) keeps the inverted original
    trajectory outside the changing region, and the original pixels outside it in the final
    image. Unflipped samples are retried with the larger ``retry_scales`` (DiME's 8 → 10 → 15).

    The defaults aim at changes an independent observer also sees (the toy world's oracle
    judged, never guided): a logit ``margin`` of 3 instead of stopping at the sign change,
    guidance through 4 fixed views (mirror, shifts) instead of one image, an undilated mask of
    4 % of the latent positions, and a coarse chain of 6 DDIM steps from t = 600
    (``num_steps`` 10) instead of 11 from t = 500, which halves the decoder passes. On 48 unseen
    toy faces (toy ResNet) they give flip 1.00, oracle agreement 0.96 (0.92 with the first
    defaults), localisation 0.87 (0.68), MNAC 0.29 (0.42) and L1 0.006 (0.009), at 21× the
    seed-faithful speed (docs/results.md, "Counterfactuals an observer also sees").

    Parameters
    ----------
    scale : float
        Guidance step on x̂0 per unit of sqrt(1 − a_t) (the gradient has unit RMS).
    retry_scales : tuple of float
        Larger scales tried in turn for samples that did not flip; empty for a single pass.
    l1_weight : float
        Weight of the pixel L1 distance to the original in the guidance loss.
    num_steps : int
        DDIM steps over the full 1000-step range (the schedule's grid is 1000 // num_steps).
    t_start : int
        Timestep the image is inverted to and denoised from (on the grid).
    mask : bool
        Restrict the change to a self-optimised mask: the top mask_fraction of latent
        positions by accumulated |gradient|, dilated.
    mask_fraction : float
        Share of latent positions in the mask before dilation.
    mask_dilate : int
        Dilation of the latent mask (max-pool kernel size; 1 = none).
    mask_from : int
        Guided steps before the mask applies (the gradient settles first).
    guide_tail : int
        Last steps run unguided, so the denoiser settles the edited region on its learnt
        manifold instead of keeping adversarial detail (the mask still holds the original).
    margin : float
        A sample is done when its logit passed the decision boundary by this much toward the
        target; below it, it is retried with the next scale (the last try is kept either way).
    views : int
        Guide through this many fixed views of the decoded image (mirror, ±2-pixel shifts;
        1 = the image only), averaging the classifier loss over them.
    grad_decoder : str
        What x̂0 is decoded with for the gradient: full (the VQ decoder), a folder made by
        `ldvce distill-decoder`, or auto (the LDM's own grad_decoder/ when it ships one, else
        full). Final images are always decoded by the VQ decoder and the flip is checked on
        them; the intermediate frames are the grad decoder's previews.
    callback : callable
        Receives each frame (see the module docstring); not a command-line option.
    keep_out : Tensor
        Pixels to keep (see :data:`NOT_OPTIONS`): the mask is chosen, and the change made, only
        outside them; not a command-line option.
    """
    state = SampleState(problem, x, target, callback, keep_out)
    ts = schedule(t_start, num_steps)
    if not 1 <= views <= len(VIEWS):
        raise ValueError(f"views must be in 1..{len(VIEWS)}, got {views}")
    z_T, traj = _invert(state, ts)
    b = len(state.x)
    used_scale = torch.zeros(b)
    pixel_masks = torch.zeros((b, 1, *state.x.shape[-2:]))
    options = Guidance(scale, l1_weight, mask, mask_fraction, mask_dilate, mask_from, guide_tail,
                       views, resolve_grad_decoder(problem.ldm, grad_decoder))
    scales = (scale, *retry_scales)
    for attempt, s in enumerate(scales):
        todo = state.todo()
        if len(todo) == 0:
            break
        out = _guided_pass(state, todo, z_T[todo], [t[todo] for t in traj], ts,
                           replace(options, scale=s))
        used_scale[todo.cpu()] = s
        pixel_masks[todo.cpu()] = out.mask.cpu().to(pixel_masks.dtype)
        state.settle(todo, out.img, out.logit, (attempt + 1) * len(ts),
                     last=attempt == len(scales) - 1, margin=margin)
    return state.result(scale=used_scale.tolist(), mask=pixel_masks, t_start=t_start,
                        num_steps=num_steps,
                        grad_decoder="full" if options.grad_decoder is None else grad_decoder)


def _guided_pass(state: SampleState, idx: torch.Tensor, z: torch.Tensor,
                 traj: list[torch.Tensor], ts: list[int], g: Guidance,
                 region: torch.Tensor | None = None, frame0: int = 2) -> PassResult:
    """One denoising pass from ``z`` (latents at ts[-1]) for the samples ``idx``.

    ``region``: a fixed (b, 1, h, w) latent mask to use from the first step instead of the
    self-optimised one (``g.mask`` must be set). Frames are reported from index ``frame0``.
    The state's ``keep_out`` pixels are kept: a latent position touching one is never edited."""
    problem = state.problem
    ldm, x, target = problem.ldm, state.x[idx], state.target[idx]
    z = z.clone()
    saliency = torch.zeros_like(z[:, :1], dtype=torch.float32)  # float32 also under bf16
    allowed = None if state.keep_out is None else \
        1 - F.adaptive_max_pool2d(state.keep_out[idx], saliency.shape[-2:])
    masked = g.mask or allowed is not None
    latent_mask = torch.ones_like(saliency) if region is None else region.float()
    if allowed is not None:
        latent_mask = latent_mask * allowed
    last_grad = {}
    report = {"on": True}

    def guide(x0, i, a_t):
        n = len(ts) - 1 - i
        if i < g.guide_tail:  # unguided tail: plain DDIM (the frame is still shown)
            if report["on"]:
                with torch.no_grad():
                    img = decode(ldm, x0)
                    state.frame(frame0 + n, idx, img.clamp(-1, 1), problem.logit(img), x0=x0)
            return None
        with torch.enable_grad():
            x0g = x0.detach().requires_grad_(True)
            img = (decode(ldm, x0g) if g.grad_decoder is None
                   else g.grad_decoder(x0g.float()))
            loss, logit = _classifier_loss(problem, img, x, target, g.l1_weight, g.views,
                                           g.preserve, state.outputs0[idx])
            grad, = torch.autograd.grad(loss.sum(), x0g)
        if report["on"]:
            state.frame(frame0 + n, idx, img.clamp(-1, 1), logit, x0=x0)
        grad = grad.nan_to_num(0.0)
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12).view(-1, 1, 1, 1)
        last_grad["g"] = grad = grad / rms
        # Step on the one-step estimate, larger while noise is high.
        return x0 - g.scale * (1 - a_t).sqrt() * grad

    for n, i in enumerate(range(len(ts) - 1, -1, -1)):
        repeats = g.recurrence if i > 0 else 1
        for r in range(repeats):
            if r:  # self-recurrence: back to ts[i] with fresh noise, then the step again
                with torch.no_grad():
                    z = renoise_step(ldm, z, ts, i, _recurrence_noise(z, idx, ts[i], r))
                    if masked:
                        m = latent_mask.to(z.dtype)
                        z = m * z + (1 - m) * traj[i]
            with torch.no_grad():
                eps = predict_eps(ldm, z, ts[i])
            report["on"] = r == repeats - 1  # one frame per step: the last repetition's
            z, _, _ = ddim_step(ldm, z, ts, i, eps, x0_hook=guide)
        if not masked:
            continue
        with torch.no_grad():
            if g.mask and region is None and i >= g.guide_tail:  # a guided step: accumulate the self-optimised mask
                saliency += last_grad["g"].abs().mean(1, keepdim=True).float()
                if n + 1 >= g.mask_from:
                    latent_mask = _top_mask(saliency if allowed is None else saliency * allowed,
                                            g.mask_fraction, g.mask_dilate)
                    if allowed is not None:
                        latent_mask = latent_mask * allowed
                elif allowed is None:
                    continue
            if i > 0:  # keep the original trajectory outside the changing region
                m = latent_mask.to(z.dtype)
                z = m * z + (1 - m) * traj[i - 1]
    with torch.no_grad():
        img = decode(ldm, z).clamp(-1, 1)
        if masked:
            pm = _blur(F.interpolate(latent_mask, size=x.shape[-2:], mode="bilinear",
                                     align_corners=False), 5).to(img.dtype)
            if allowed is not None:
                pm = pm * (1 - state.keep_out[idx]).to(img.dtype)
            img = pm * img + (1 - pm) * x  # original pixels outside the changing region
        else:
            pm = torch.ones_like(img[:, :1])
        logit = problem.logit(img)
    state.frame(frame0 + len(ts), idx, img, logit, x0=z)
    return PassResult(img, logit, pm)


def _recurrence_noise(z: torch.Tensor, idx: torch.Tensor, t: int, repeat: int) -> torch.Tensor:
    """The fresh noise of one self-recurrence, drawn per face from a seed of (its row in the
    batch, timestep, repetition): a face's noise does not depend on which other faces are still
    being edited, and a run repeats exactly."""
    rows = [torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(
        (int(k) * 1000 + t) * 16 + repeat), dtype=torch.float32) for k in idx.tolist()]
    return torch.stack(rows).to(z.device, z.dtype)


# ------------------------------------------------------------------------------------------------
def _signed(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The logit signed toward the target: positive where the decision agrees with it."""
    return (2 * target - 1) * logit


@torch.no_grad()
def _renoised(ldm: LDM, img: torch.Tensor, t: int, num_steps: int) -> torch.Tensor:
    """``img`` encoded, DDIM-inverted to ``t`` and denoised back, decoded: the image after a
    small round trip through the diffusion model (adversarial pixel detail does not survive it)."""
    ts = schedule(t, num_steps)
    z = ddim_invert(ldm, encode(ldm, img), ts)
    return decode(ldm, ddim_denoise(ldm, z, ts)).clamp(-1, 1)


def _attribution(problem: Problem, a: torch.Tensor, b: torch.Tensor, target: torch.Tensor,
                 points: int = 4) -> torch.Tensor:
    """(n, 1, H, W): how much each pixel of the change a → b moved the logit toward the target
    (integrated gradients on the straight path, ``points`` points; positive part, channels
    summed). Changes the classifier does not use (drift of the whole face) get little."""
    total = torch.zeros_like(a)
    sign = (2 * target - 1).view(-1)
    for k in range(points):
        p = (a + (k + 0.5) / points * (b - a)).detach().requires_grad_(True)
        with torch.enable_grad():
            g, = torch.autograd.grad((sign * problem.logit(p)).sum(), p)
        total += g.nan_to_num(0.0)
    return ((b - a) * total / points).sum(1, keepdim=True).clamp(min=0).detach()


def _smoothed(evidence: torch.Tensor, size: tuple[int, int], blur: int = 3) -> torch.Tensor:
    """A (b, 1, H, W) evidence map pooled to the (h, w) latent grid and blurred (``blur``)."""
    return _blur(F.adaptive_avg_pool2d(evidence.float(), size), blur)


def _evidence_region(delta: torch.Tensor, size: tuple[int, int], threshold: float,
                     blur: int = 3) -> torch.Tensor:
    """A (b, 1, h, w) latent mask from a (b, 1, H, W) change map: the positions whose smoothed
    change is at least ``threshold`` × its maximum, so its size follows the evidence (one compact
    part for a local cue, a large region for a large one)."""
    d = _smoothed(delta, size, blur)
    peak = d.flatten(1).amax(1).view(-1, 1, 1, 1)
    # no evidence at all (nothing moved the logit): the whole image
    return ((d >= threshold * peak) | (peak <= 0)).float()


def _clusters(region: torch.Tensor, weight: torch.Tensor, iters: int = 20,
              assign: torch.Tensor | None = None) -> torch.Tensor:
    """(b, 2, h, w): each face's latent ``region`` ((b, 1, h, w)) cut in two spatial clusters of
    its ``weight`` (evidence-weighted 2-means on the positions, started at the evidence's peak
    and at the region's position farthest from it). With ``assign`` ((b, 1, h, w), e.g. a
    wider region), the parts cover it instead: each of its positions goes to the nearer centre.
    A region of one position gives it and an empty part."""
    b, _, h, w = region.shape
    yx = torch.stack(torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                    torch.arange(w, dtype=torch.float32), indexing="ij"), -1)
    out = torch.zeros((b, 2, h, w), device=region.device)
    for i in range(b):
        on = region[i, 0] > 0.5
        pts, wt = yx[on.cpu()], weight[i, 0][on].float().cpu().clamp(min=1e-12)
        if len(pts) < 2:
            out[i, 0] = on.float()
            continue
        first = pts[wt.argmax()]
        centres = torch.stack([first, pts[((pts - first) ** 2).sum(1).argmax()]])
        for _ in range(iters):
            label = ((pts[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
            new = torch.stack([(pts[label == j] * wt[label == j, None]).sum(0)
                               / wt[label == j].sum() if bool((label == j).any()) else centres[j]
                               for j in range(2)])
            if torch.equal(new, centres):
                break
            centres = new
        on_a = (on if assign is None else assign[i, 0] > 0.5).cpu()
        label = ((yx[on_a][:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(2):
            part = torch.zeros((h, w))
            part[on_a] = (label == j).float()
            out[i, j] = part.to(out.device)
    return out


def _split_attempt(state: SampleState, todo: torch.Tensor, z_T: torch.Tensor, traj, ts, opts,
                   region: torch.Tensor, weight: torch.Tensor, wider: torch.Tensor,
                   margin: float, views: int, renoise_t: int, num_steps: int):
    """:func:`adaptive`'s split attempt: the guided pass (start latents ``z_T``, trajectory
    ``traj``, options ``opts``) runs in the latent ``region`` and, for the same faces, in each
    of the region's two evidence clusters alone, assigned over the ``wider`` region
    (:func:`_clusters`); per face the robust result with the least L1 among the three is kept,
    the whole region's when none is. The candidates run as one batch, in chunks of at most the
    sampler's batch size: the three candidates of a face left alone in a late attempt cost about
    60 % of three passes of one (toy world, CPU), and the memory stays what the first attempt
    used. The frames the callback gets are those of each face's kept candidate.

    Returns the result, which rows are robust, the latent region each kept result edited, per
    row which one was kept (0: the whole region, 1: the cluster started at the evidence's peak,
    2: the other), and how many part passes ran (for the iteration count)."""
    b = len(todo)
    parts = _clusters(region, weight, assign=wider)
    rows, regions, passes = [torch.arange(b)], [region], 0
    for j in range(2):
        part = parts[:, j:j + 1]
        # a part that is empty or the whole region itself (a one-position region) has nothing
        # smaller to offer
        r = ((part.flatten(1).sum(1) > 0)
             & (part != (region > 0.5).float()).flatten(1).any(1)).nonzero().flatten().cpu()
        passes += int(len(r) > 0)
        rows.append(r)
        regions.append(part[r.to(part.device)])
    face = torch.cat(rows)                    # each candidate's face (row of todo)
    cand_region = torch.cat(regions)
    callback, events = state.callback, []
    outs, oks = [], []
    step = max(len(state.x), 1)
    for lo in range(0, len(face), step):
        f = face[lo:lo + step]
        state.callback = events.append if callback is not None else None
        try:
            out = _guided_pass(state, todo[f], z_T[f], [t[f] for t in traj], ts, opts,
                               region=cand_region[lo:lo + step])
        finally:
            state.callback = callback
        outs.append(out)
        oks.append(_robust(state, todo[f], out, margin, views, renoise_t, num_steps))
    img = torch.cat([o.img for o in outs])
    logit, mask, ok = torch.cat([o.logit for o in outs]), torch.cat([o.mask for o in outs]), \
        torch.cat(oks)
    x = state.x[todo]
    # L1 in float32: under bf16 its rounding (0.4 %) would settle near-ties
    l1 = (img.float() - x[face.to(x.device)].float()).abs().flatten(1).mean(1)
    pick = torch.arange(b)                    # the kept candidate of each face: its whole region
    best = torch.where(ok[:b], l1[:b], torch.full((b,), float("inf"), device=l1.device))
    which = torch.zeros(b, dtype=torch.long)
    start = b
    for j, r in enumerate(rows[1:]):
        for k, i in enumerate(r.tolist()):
            c = start + k
            if bool(ok[c]) and float(l1[c]) < float(best[i]):
                pick[i], best[i], which[i] = c, l1[c], j + 1
        start += len(r)
    if callback is not None:
        _replay_frames(state, events, pick, len(face))
    sel = pick.to(img.device)
    kept_region = cand_region[pick.to(cand_region.device)]
    return (PassResult(img[sel], logit[sel], mask[sel]), ok[sel], kept_region, which, passes)


def _cause_attempt(state: SampleState, todo: torch.Tensor, rows: torch.Tensor, z_T: torch.Tensor,
                   traj, ts, opts: Guidance, region: torch.Tensor, weight: torch.Tensor,
                   wider: torch.Tensor, out: PassResult, accept: torch.Tensor,
                   part: torch.Tensor, margin: float, views: int, renoise_t: int,
                   num_steps: int, passes: int, grow: float):
    """:func:`adaptive`'s cause attempt (``cause_from``). The ``rows`` of ``todo`` flipped
    robustly with their whole latent ``region`` edited. For each, ask which of the region's two
    evidence clusters (:func:`_clusters`, ``weight`` the smoothed evidence, each cluster
    reaching over the ``wider`` region as the split attempt's do) the flip needs most: putting
    the original back in that cluster costs the logit most. Then guide again in that cluster
    alone (start latents ``z_T``, trajectory ``traj``, options ``opts``), the scale multiplied
    by ``grow``, ``grow`` ** 2, … for up to ``passes`` passes. The first robust result
    replaces the whole-region one, whatever its L1; a face none of whose passes is robust keeps
    it. A flip that needs one cue most then shows that cue alone, not that cue plus whatever
    else was cheap to change on the way.

    Returns the result, acceptance, latent regions and parts of the faces of ``todo`` (as
    :func:`_split_attempt`; a replaced face's part is its cluster, 1 or 2) and how many passes
    ran (for the iteration count)."""
    problem = state.problem
    parts = _clusters(region[rows], weight[rows], assign=wider[rows])
    idx = todo[rows]
    x, tgt = state.x[idx], state.target[idx]
    with torch.no_grad():  # what undoing each cluster's change costs the logit
        need = []
        for j in range(2):
            pm = _pixel_mask(parts[:, j:j + 1], x.shape[-2:])
            if state.keep_out is not None:
                pm = pm * (1 - state.keep_out[idx])
            undone = pm * x + (1 - pm) * out.img[rows]
            need.append(_signed(out.logit[rows], tgt) - _signed(problem.logit(undone), tgt))
        need = torch.stack(need, 1)                              # (n, 2)
    cause = need.argmax(1)
    cluster = parts[torch.arange(len(rows)), cause][:, None]     # (n, 1, h, w)
    # a cluster that is empty or the whole region, or two clusters the flip needs alike, leave
    # nothing to choose
    smaller = (cluster.flatten(1).sum(1) > 0) & (
        cluster != (region[rows] > 0.5).float()).flatten(1).any(1)
    go = (smaller & (need.max(1).values > need.min(1).values)).to(rows.device)
    run, cluster, cause = rows[go], cluster[go.to(cluster.device)], cause[go.to(cause.device)]
    out = PassResult(out.img.clone(), out.logit.clone(), out.mask.clone())
    accept, region, part, ran = accept.clone(), region.clone(), part.clone(), 0
    callback = state.callback
    for e in range(1, passes + 1):
        if len(run) == 0:
            break
        events = []
        state.callback = events.append if callback is not None else None
        try:
            res = _guided_pass(state, todo[run], z_T[run], [t[run] for t in traj], ts,
                               replace(opts, scale=opts.scale * grow ** e), region=cluster)
        finally:
            state.callback = callback
        ran += 1
        ok = _robust(state, todo[run], res, margin, views, renoise_t, num_steps)
        if callback is not None and bool(ok.any()):  # the frames of the passes kept only
            _forward_frames(callback, events, set(todo[run[ok]].tolist()))
        won = run[ok]
        out.img[won], out.logit[won], out.mask[won] = res.img[ok], res.logit[ok], res.mask[ok]
        accept[won] = True
        region[won] = cluster[ok].to(region.dtype)
        part[won.cpu()] = cause[ok.to(cause.device)].cpu() + 1
        run, cluster, cause = run[~ok], cluster[~ok], cause[~ok.to(cause.device)]
    return out, accept, region, part, ran


def _forward_frames(callback: Callable, events: list[dict], samples: set[int]) -> None:
    """Send ``callback`` the frames of ``events`` that belong to ``samples``."""
    for ev in events:
        keep = torch.tensor([s in samples for s in ev["samples"].tolist()])
        if bool(keep.any()):
            k = keep.to(ev["img"].device)
            callback({"i": ev["i"], "samples": ev["samples"][keep.to(ev["samples"].device)],
                      "img": ev["img"][k], "logit": ev["logit"][k],
                      "x0": None if ev["x0"] is None else ev["x0"][k]})


def _replay_frames(state: SampleState, events: list[dict], pick: torch.Tensor, n: int) -> None:
    """Send each face the frames of its kept candidate: ``events`` are the frames the
    candidates' passes reported (in chunks of consecutive candidates, each chunk every frame
    index once), ``pick`` each face's candidate among the ``n``."""
    by_frame: dict[int, list[dict]] = {}
    for e in events:
        by_frame.setdefault(e["i"], []).append(e)
    for i, es in by_frame.items():
        if sum(len(e["samples"]) for e in es) != n:
            continue  # a frame not every candidate reported (none in a guided pass)
        cat = lambda key: torch.cat([e[key] for e in es])  # noqa: E731
        x0 = None if es[0]["x0"] is None else cat("x0")
        sel = pick.to(es[0]["img"].device)
        state.callback({"i": i, "samples": cat("samples")[sel], "img": cat("img")[sel],
                        "logit": cat("logit")[sel], "x0": None if x0 is None else x0[sel]})


def _components(m: torch.Tensor) -> list[torch.Tensor]:
    """The 8-connected components of one (1, h, w) binary mask, as (1, h, w) masks."""
    h, w = m.shape[-2:]
    on = m[0] > 0.5
    big = h * w + 1
    labels = torch.where(on, torch.arange(h * w, dtype=torch.float32).view(h, w),
                         torch.full((h, w), float(big)))
    while True:  # propagate the smallest label through each component
        low = -F.max_pool2d(-labels[None, None], 3, stride=1, padding=1)[0, 0]
        new = torch.where(on, torch.minimum(labels, low), labels)
        if torch.equal(new, labels):
            break
        labels = new
    return [(labels == v).float()[None] for v in labels[on].unique().tolist()]


def _pixel_mask(latent_mask: torch.Tensor, size) -> torch.Tensor:
    """The blurred pixel mask of a latent mask, as :func:`_guided_pass` composites with."""
    return _blur(F.interpolate(latent_mask.float(), size=size, mode="bilinear",
                               align_corners=False), 5)


def _cells(part: torch.Tensor, grid: int) -> list[torch.Tensor]:
    """One (1, h, w) region part cut by a ``grid`` × ``grid`` lattice over the latent (the
    non-empty pieces); ``grid`` 0 leaves it whole."""
    if grid <= 0:
        return [part]
    h, w = part.shape[-2:]
    rows = torch.arange(h).mul(grid).div(h, rounding_mode="floor")
    cols = torch.arange(w).mul(grid).div(w, rounding_mode="floor")
    cell = (rows[:, None] * grid + cols[None, :]).to(part.device)
    pieces = [part * (cell == c).to(part.dtype) for c in cell[part[0] > 0.5].unique().tolist()]
    return pieces or [part]


def _put_back(edited: torch.Tensor, original: torch.Tensor, keep_out: torch.Tensor | None,
              latent_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``edited`` inside the (1, h, w) ``latent_mask`` (blurred to pixels), ``original``
    elsewhere, and the pixel mask used."""
    pm = _pixel_mask(latent_mask[None].clamp(max=1), original.shape[-2:])
    if keep_out is not None:  # the blurred edge must not reach kept pixels
        pm = pm * (1 - keep_out).to(pm.dtype)
    return pm * edited + (1 - pm) * original, pm


def _prune(state: SampleState, idx: torch.Tensor, out: PassResult, region: torch.Tensor,
           evidence: torch.Tensor, accept: torch.Tensor, margin: float, views: int,
           renoise_t: int, num_steps: int, frame: int, grid: int = 0) -> PassResult:
    """:func:`adaptive`'s pruning: for each accepted sample, put the original back in the pieces
    of its latent ``region`` whose change the flip does not need. The pieces are the region's
    connected components, each cut by a ``grid`` × ``grid`` lattice (0: whole components).
    Whole components are tried least pixel ``evidence`` first; lattice pieces in the order in
    which putting each one back alone costs the logit least (ties: least evidence). A piece
    stays put back when the logit keeps the ``margin`` and every view stays on the target side
    (and, with ``renoise_t``, the pruned image survives re-noising)."""
    problem, x = state.problem, state.x[idx]
    img, logit, mask = out.img.clone(), out.logit.clone(), out.mask.clone()
    size = x.shape[-2:]
    with torch.no_grad():
        for j in accept.nonzero().flatten().tolist():
            parts = [c for p in _components(region[j]) for c in _cells(p, grid)]
            if len(parts) < 2:
                continue
            tgt = state.target[idx[j:j + 1]]
            keep_out = None if state.keep_out is None else state.keep_out[idx[j:j + 1]]
            composite = partial(_put_back, out.img[j:j + 1], x[j:j + 1], keep_out)
            mass = [float((_pixel_mask(p[None], size) * evidence[j:j + 1]).sum()) for p in parts]
            order = sorted(range(len(parts)), key=lambda c: mass[c])
            if grid > 0:  # the pieces whose own return costs the logit least go first
                alone = torch.cat([composite((region[j] - p).clamp(min=0))[0] for p in parts])
                cost = (-_signed(problem.logit(alone), tgt.expand(len(parts)))).tolist()
                order = sorted(order, key=lambda c: cost[c])
            keep = list(range(len(parts)))
            best = (img[j:j + 1], logit[j:j + 1], mask[j:j + 1])
            for c in order:
                trial = [k for k in keep if k != c]
                if not trial:
                    break
                cand, pm = composite(sum(parts[k] for k in trial))
                lg = problem.logit(cand)
                ok = bool(_signed(lg, tgt) >= margin)
                for flip, dx, dy in VIEWS[1:views]:
                    ok = ok and bool(_signed(problem.logit(_view(cand, flip, dx, dy)), tgt) > 0)
                if ok:
                    keep, best = trial, (cand, lg, pm.to(mask.dtype))
            if len(keep) < len(parts) and renoise_t > 0:  # the pruned image must survive it too
                cand, pm = best[0], best[2]
                r = _renoised(problem.ldm, cand, renoise_t, num_steps)
                if not bool(_signed(problem.logit(pm * r + (1 - pm) * x[j:j + 1]), tgt) > 0):
                    continue
            img[j:j + 1], logit[j:j + 1], mask[j:j + 1] = best
    if not torch.equal(img, out.img):  # the pass's last frame is now the pruned image
        state.frame(frame, idx, img, logit)
    return PassResult(img, logit, mask)


def adaptive(problem: Problem, x: torch.Tensor, target: torch.Tensor, *,
             levels: tuple[int, ...] = (300, 500, 700, 900, 900), scale: float = 0.3,
             l1_weight: float = 1.0, num_steps: int = 10, pre_t: int = 800,
             pre_steps: int = 5, pre_scale: float = 2.0, pre_views: int = 1,
             pre_grad_decoder: str = "auto", region: bool = True,
             evidence_from: str = "attribution", region_threshold: float = 0.4,
             region_grow: float = 0.6, scale_grow: float = 2.0,
             region_dilate: bool = False, margin: float = 3.0,
             views: int = 4, check_views: bool = True, check_renoise: bool = True,
             renoise_t: int = 200, prune: bool = True, prune_grid: int = 0,
             split_from: int = 4, fine_from: int = 4, fine_steps: int = 50,
             recurrence: int = 3, preserve: float = 0.5, preserve_levels: int = 2,
             cause_from: int = 3, cause_passes: int = 2,
             grad_decoder: str = "full",
             callback: Callable | None = None, keep_out: torch.Tensor | None = None,
             edit_region: torch.Tensor | None = None) -> CFBatch:
    """Adaptive latent guided DDIM: where and how strongly to edit follow what this face needs.

    1. **Where** (``region``): a pre-explanation (ACE, Jeanneret et al. CVPR 2023) — a short
       unmasked guided pass from ``pre_t`` on a coarse grid — shows what the classifier needs
       changed on this face. The evidence is how much each pixel of that change moved the
       target logit (integrated gradients; ``evidence_from``); smoothed on the latent grid, it
       gives the edit region: every position with at least ``region_threshold`` × the largest
       evidence. A local cue (a mouth) gives a small region, a large one a large region. The
       threshold is multiplied by ``region_grow`` after each attempt that did not flip
       robustly, so the region grows only while it must.
    2. **How much noise**: the first attempt starts at the lowest of ``levels``; a face that did
       not flip robustly gets the next level, the grown region and ``scale_grow`` × the
       guidance scale; each attempt is one guided pass (as :func:`guided`, through ``views``
       views) with the region fixed, the original trajectory kept outside it and the original
       pixels outside it at the end. A level given twice (the default's last, 900) is a last
       try at that noise level with the region grown and the scale raised once more.
    3. **Robust, not adversarial**: an attempt counts only when the logit passed the boundary
       by ``margin``, every one of the ``views`` views is on the target side
       (``check_views``), and the flip survives re-noising (``check_renoise``: the
       counterfactual inverted to ``renoise_t`` and denoised back, original pixels outside the
       region). Otherwise the next attempt runs; the last attempt is kept when it flipped at all
       (robust or not), else the first attempt that flipped (as :func:`guided` does below its
       margin). With ``prune``, parts of the region an accepted flip does not need are then put
       back to the original.
    4. **Split** (``split_from``): from attempt ``split_from`` on (default 4), a region grown
       over two separate cues is also tried one cluster of its evidence at a time, and the
       smallest robust edit is kept.
    5. **A finer grid for the late attempts** (``fine_from``): from attempt 4 on, the attempts
       run on a 50-step DDIM grid, so the strong pushes at t = 900 draw objects, not smears;
       each of their guided steps is retaken with fresh noise (``recurrence``), so the LDM
       finishes what the pushes started.
    6. **The cause** (``cause_from``): from attempt 3 on, a robust flip of the whole region is
       asked which of the region's two evidence clusters it needs (putting the original back
       in each in turn), and is made again in the one it needs most alone, with a stronger
       push (``cause_passes``); a robust result replaces it even when it is larger. A
       classifier that reads a hat then gets a hat, not a hat plus the smile that was cheap to
       change on the way.

    Measured (docs/results_adaptive.md): on 48 faces of each unseen toy seed measured (four for
    the toy ResNet and the MLP, three for the ResNet18) it flips every face of the toy ResNet,
    the plain toy ResNet18 and the toy MLP, most in the first attempt at t = 300; for the toy
    ResNet with oracle agreement 0.92–0.98, localisation 0.75–0.81 and MNAC 0.25–0.40 (on two
    seeds 0.25 / 0.27 against 0.33 / 0.48 with ``preserve`` 0). It flips every face of the
    Clever-Hans classifier (24 each of five seeds) and, with the split attempts
    (``split_from``), the fine grid of its late attempts (``fine_from``, ``recurrence``) and
    the cause attempt (``cause_from``), changes the hat most on 0.67–0.92 of them (0.42–0.75
    without the cause attempt; 0.50–0.58 on the three seeds measured with the 10-step grid, at
    about twice the L1; a third without the split).

    ``info``: per face the ``attempts`` run, the noise level ``t_start`` of the kept result, the
    ``region_fraction`` of the image it edited, whether it was ``robust``, its
    ``region_part`` (0: the whole region; 1, 2: one of its evidence clusters, ``split_from``
    and ``cause_from``) and its ``grid_steps`` (the DDIM grid it ran on, ``num_steps`` or
    ``fine_steps``).

    Parameters
    ----------
    levels : tuple of int
        Noise levels (timesteps on the ``num_steps`` grid) tried in turn, lowest first; one
        may repeat. The default tries 900 twice: faces of the hat-biased toy classifier that
        no attempt had flipped flip in the fifth (biased flip 0.83–0.88 → 1.00 on three toy
        seeds); faces that flip earlier never reach it.
    scale : float
        Guidance step on x̂0 per unit of sqrt(1 − a_t) in the attempts (unit-RMS gradient).
    l1_weight : float
        Weight of the pixel L1 distance to the original in the guidance loss.
    num_steps : int
        DDIM steps over the full 1000-step range for the attempts (grid 1000 // num_steps).
    pre_t : int
        Noise level of the pre-explanation (on the ``pre_steps`` grid).
    pre_steps : int
        DDIM grid of the pre-explanation (1000 // pre_steps apart; coarse: it only locates).
    pre_scale : float
        Guidance scale of the pre-explanation (unmasked).
    pre_views : int
        Views the pre-explanation's guidance averages over.
    pre_grad_decoder : str
        Decoder the pre-explanation's gradient goes through (as ``guided``'s ``grad_decoder``:
        ``full``, a distilled decoder's folder, or ``auto``: the LDM's own distilled decoder
        when it ships one, else the full one). The pre-explanation only locates, so a cheaper,
        slightly wrong gradient does not matter there (measured: a fifth of the sampler's time
        on the toy world, no loss in flips or oracle agreement); its final image, from which
        the evidence comes, is always decoded with the full decoder; the attempts' gradient
        follows ``grad_decoder``.
    region : bool
        Edit only inside the region from the pre-explanation (False: no pre-explanation, the
        attempts edit the whole latent).
    evidence_from : str
        ``attribution``: each pixel's share in moving the logit along the pre-explanation's
        change (integrated gradients, positive part); ``change``: the plain change |x̂′ − x̂|
        against the unguided round trip (ACE).
    region_threshold : float
        Share of the largest smoothed evidence a latent position needs to be in the region.
    region_grow : float
        Factor on the threshold after each attempt that did not flip robustly (< 1 grows).
    scale_grow : float
        Factor on the guidance scale after each attempt that did not flip robustly.
    region_dilate : bool
        Also dilate the region by one latent position per attempt after the first.
    margin : float
        Logit past the decision boundary an attempt must reach.
    views : int
        Fixed views (mirror, ±2-pixel shifts) the guidance averages over and the check uses.
    check_views : bool
        Require every view's decision on the target side.
    check_renoise : bool
        Require the flip to survive re-noising: the counterfactual inverted to ``renoise_t``
        and denoised back (original pixels outside the region) must still be on the target side.
    renoise_t : int
        Noise level of the re-noising check (on the ``num_steps`` grid).
    prune : bool
        After a robust flip, put the original back in each separate part of the region the
        flip does not need (least evidence first), as long as every check still passes: the
        smallest change among the parts the evidence proposed.
    prune_grid : int
        Also cut each part by a ``prune_grid`` × ``prune_grid`` lattice over the latent before
        pruning, so that a region grown into one piece (a hat and a mouth joined across the
        face) can still lose the pieces the flip does not need; pieces are tried in the order
        in which putting one back alone costs the logit least. 0 (default): whole connected
        parts only, as in earlier runs.
    split_from : int
        From this attempt on (1-based; 0: never), each attempt also runs its pass in each of
        the region's two spatial clusters of evidence alone (evidence-weighted 2-means, each
        part reaching over the region grown two steps further), and per face keeps the robust
        result with the least L1 among the whole region and its two parts. A region grown over
        two separate cues (a hat and a mouth, joined across the face) then still yields the
        smaller edit of one cue alone. The three candidates run as one batch (in chunks of the
        sampler's batch size). The default, 4 (t = 900), is reached by no face of the toy
        classifiers (so it costs them nothing) and by most of the hat-biased one's: hat-most
        0.33–0.38 → 0.50–0.58 on three seeds at three quarters of the L1; 3 (t = 700 on)
        gives 0.50–0.83 (its gain on one seed of three) and runs the toy bench at 16.5–17.5×
        the seed-faithful speed against 19.7–20.7× for 4 (docs/results_adaptive.md, tenth and
        eleventh rounds).
        ``info["region_part"]`` says which was kept (0: the whole region, 1: the cluster
        started at the evidence's peak, 2: the other).
    fine_from : int
        From this attempt on (1-based; 0: never; default 4, t = 900), the attempt runs on the
        DDIM grid of ``fine_steps`` instead of ``num_steps`` (its checks and pruning too). The
        late attempts start from t = 900 with the guidance scale raised three or four times; on
        the 10-step grid their 9 steps leave the LDM too few denoising steps to pull such pushes
        back to faces, and the counterfactuals become smears. On a finer grid the same attempts
        draw objects (a hat, a smile) at about half the L1. Faces of the toy classifiers never
        reach a fourth attempt, so it costs them nothing.
    fine_steps : int
        The fine grid (DDIM steps over the full 1000-step range); every level from attempt
        ``fine_from`` on must lie on it.
    recurrence : int
        In the attempts on the fine grid (``fine_from``), each guided step but the last is
        taken this many times, with fresh noise put back to the step's level in between
        (self-recurrence, Universal Guidance, Bansal et al. 2023), so the LDM redraws what the
        strong late pushes moved off its faces. The noise is seeded per face (its row in the
        batch), timestep and repetition, so a run repeats exactly. Costs that many times the
        late attempts' denoising (2.0–2.6× the hat-biased classifier's time per face); 1 turns
        it off.
        The default 3 since the fifteenth round: on the hat-biased toy classifier (24 faces of
        each of five seeds, four of them unseen) the oracle sees a hat on 0.29–0.54 of the
        faces instead of 0.25–0.38 (more on every seed), and the hat changes most on 0.42–0.75
        instead of 0.50–0.71 (more on three seeds, fewer on two; the mean of the unseen seeds
        0.615 against 0.594) (docs/results_adaptive.md, fifteenth and fourteenth rounds).
        Faces of the toy classifiers never reach the fine grid.
    preserve : float
        Weight of keeping the classifier's decisions on its *other* attributes in the attempts'
        guidance: a hinge on each other logit coming within 2 of its decision boundary (or
        losing its original confidence, if that was lower) is added to the loss. The edit then
        changes the target without also changing what the classifier believes about, e.g., an
        open mouth (fewer attributes changed, MNAC). 0.5 (default) is the measured choice; it
        costs about an eighth more time (more faces need a later attempt). 0 turns it off, as
        the default was in runs whose ``result.json`` has no ``sampler_options``. It also
        quiets the classifier's own cue detectors in those attempts: a classifier that uses a
        hat for its target and also predicts Wearing_Hat is steered away from the hat there,
        which is why only the first ``preserve_levels`` attempts use it (measured: the
        hat-biased toy classifier's counterfactuals are unchanged).
    preserve_levels : int
        How many of the first attempts (noise levels) use ``preserve``; later attempts, for the
        faces that could not flip while keeping every other decision, guide without it.
    cause_from : int
        From this attempt on (1-based; 0: never; default 3, t = 700), every face whose attempt
        flipped robustly with its whole region edited gets a cause attempt: the region is cut
        into the two spatial clusters of its evidence (as for ``split_from``, each reaching
        over the region grown two steps further), each cluster's change is put back to the
        original in turn (in the whole-region result), and the cluster
        whose return costs the logit most is the one the flip needs. The attempt's pass then
        runs again in that cluster alone, at ``scale_grow`` and ``scale_grow`` ² × the
        attempt's scale (``cause_passes``), and the first robust result replaces the
        whole-region one, whatever its L1 (``info["region_part"]`` names the cluster). Faces
        whose clusters are needed alike, or none of whose passes is robust, keep the
        whole-region result. On the hat-biased toy classifier the flips of the third attempt
        (t = 700, a region grown over the hat and the mouth) were mostly a partial cap plus a
        smile; made again in the cluster the flip needs, they are a cap and the unchanged
        mouth. The toy classifiers rarely reach a third attempt (0–6 faces of 48).
    cause_passes : int
        Passes of the cause attempt, each at ``scale_grow`` × the previous one's scale
        (0: no cause attempt).
    grad_decoder : str
        Decoder the attempts' gradient goes through (``full``, a distilled decoder's folder,
        or ``auto``; as ``guided``'s). ``full`` by default: on the toy world the distilled
        decoder's gradient cost ``guided`` flips and oracle agreement; on the CompVis model,
        where the decoder is about 80 % of a guided step, ``auto`` is the speed lever. Final
        images and every check always use the full decoder.
    callback : callable
        Receives each frame (see the module docstring); not a command-line option.
    keep_out : Tensor
        Pixels to keep (see :data:`NOT_OPTIONS`): the pre-explanation, the region and every
        attempt stay outside them, so the evidence comes from the rest of the face; not a
        command-line option.
    edit_region : Tensor
        (B, 1, H, W) pixel mask, 1 where every attempt may edit: a region the caller knows
        (e.g. where a suspected cue lives) used instead of the pre-explanation's, fixed over
        the attempts (no growth) and not pruned; not a command-line option.
    """
    _check_ranges(scale=(scale, scale > 0, "above 0"),
                  pre_scale=(pre_scale, pre_scale >= 0, "at least 0"),
                  region_threshold=(region_threshold, 0 < region_threshold <= 1, "in (0, 1]"),
                  region_grow=(region_grow, 0 < region_grow <= 1, "in (0, 1]"),
                  scale_grow=(scale_grow, scale_grow >= 1, "at least 1"),
                  margin=(margin, margin >= 0, "at least 0"),
                  l1_weight=(l1_weight, l1_weight >= 0, "at least 0"),
                  preserve=(preserve, preserve >= 0, "at least 0"),
                  preserve_levels=(preserve_levels, preserve_levels >= 0, "at least 0"),
                  prune_grid=(prune_grid, prune_grid >= 0, "at least 0"),
                  split_from=(split_from, split_from >= 0, "at least 0"),
                  fine_from=(fine_from, fine_from >= 0, "at least 0"),
                  fine_steps=(fine_steps, fine_steps >= 1, "at least 1"),
                  recurrence=(recurrence, recurrence >= 1, "at least 1"),
                  cause_from=(cause_from, cause_from >= 0, "at least 0"),
                  cause_passes=(cause_passes, cause_passes >= 0, "at least 0"),
                  views=(views, 1 <= views <= len(VIEWS), f"in 1..{len(VIEWS)}"))
    state = SampleState(problem, x, target, callback, keep_out)
    levels = tuple(sorted(levels))
    if not levels:
        raise ValueError("levels must name at least one noise level")
    # each attempt's DDIM grid (the fine one from attempt ``fine_from`` on) and its timesteps,
    # made before any work so that a level off its grid is refused at once
    fine = [bool(fine_from) and k + 1 >= fine_from for k in range(len(levels))]
    grids = [fine_steps if f else num_steps for f in fine]
    schedules = [schedule(t_start, steps) for t_start, steps in zip(levels, grids)]
    if edit_region is not None and tuple(edit_region.shape) != (len(x), 1, *x.shape[-2:]):
        raise ValueError(f"edit_region must be (B, 1, H, W) = {(len(x), 1, *x.shape[-2:])}, "
                         f"got {tuple(edit_region.shape)}")
    attempt_decoder = resolve_grad_decoder(problem.ldm, grad_decoder)
    evidence = latent_hw = None
    if edit_region is not None:
        region, prune = True, False
        given = edit_region.to(state.x.device).float()
    elif region:  # the pre-explanation: a short unmasked guided pass at a higher noise level
        evidence, latent_hw = _pre_explanation(
            state, pre_t, pre_steps, pre_scale, pre_views, l1_weight, evidence_from,
            resolve_grad_decoder(problem.ldm, pre_grad_decoder))
    kept = _AttemptLog.empty(len(state.x), state.x.shape[-2:])
    # what the robustness checks (and pruning, which keeps them passing) use
    checked_views = views if check_views else 1
    checked_renoise = renoise_t if check_renoise else 0
    iters = 0
    inverted = _Inversion([], [])
    for k, t_start in enumerate(levels):
        todo = state.todo()
        if len(todo) == 0:
            break
        steps, ts = grids[k], schedules[k]
        z_T, traj = _invert_attempt(state, todo, ts, k == 0 and not region, inverted)
        m = None
        if edit_region is not None:  # latent positions at least a quarter inside the given region
            m = (F.adaptive_avg_pool2d(given[todo], z_T.shape[-2:]) > 0.25).float()
        elif region:
            m = _evidence_region(evidence[todo], latent_hw, region_threshold * region_grow ** k)
            if region_dilate and k:  # grown: one latent position more around it per attempt
                m = F.max_pool2d(m, 2 * k + 1, stride=1, padding=k)
        opts = Guidance(scale * scale_grow ** k, l1_weight, region, 0.0, 1, 0, 0, views,
                        attempt_decoder, preserve if k < preserve_levels else 0.0,
                        recurrence if fine[k] else 1)
        iters += len(ts)
        part = torch.zeros(len(todo), dtype=torch.long)
        if evidence is not None:  # for the split and cause attempts' clusters of the evidence
            weight = _smoothed(evidence[todo], latent_hw)
            # a cluster covers the region two growth steps further, so that it reaches as far
            # as its cue would by the time the whole region had grown there
            wider = torch.maximum(m, _evidence_region(
                evidence[todo], latent_hw, region_threshold * region_grow ** (k + 2)))
        if split_from and k + 1 >= split_from and evidence is not None:
            out, accept, m, part, passes = _split_attempt(
                state, todo, z_T, traj, ts, opts, m, weight, wider, margin, checked_views,
                checked_renoise, steps)
            iters += passes * len(ts)  # the part passes are denoising steps too
        else:
            out = _guided_pass(state, todo, z_T, traj, ts, opts, region=m)
            accept = _robust(state, todo, out, margin, checked_views, checked_renoise, steps)
        if cause_from and k + 1 >= cause_from and evidence is not None and cause_passes:
            rows = (accept & (part == 0).to(accept.device)).nonzero().flatten()
            if len(rows):  # robust flips of the whole region: the cluster they need most alone
                out, accept, m, part, ran = _cause_attempt(
                    state, todo, rows, z_T, traj, ts, opts, m, weight, wider, out, accept, part,
                    margin, checked_views, checked_renoise, steps, cause_passes, scale_grow)
                iters += ran * len(ts)
        if prune and m is not None and bool(accept.any()):
            out = _prune(state, todo, out, m, evidence[todo], accept, margin, checked_views,
                         checked_renoise, steps, 2 + len(ts), prune_grid)
        kept.record(todo.cpu(), k, t_start, steps, out, accept,
                    _toward(out.logit, state.target[todo]), part)
        state.settle(todo, out.img, out.logit, iters, last=k == len(levels) - 1, accept=accept)
    kept.fall_back_to_first_flips()
    return state.result(attempts=kept.attempts.tolist(), t_start=kept.t_start.tolist(),
                        region_fraction=kept.fraction.tolist(), robust=kept.robust.tolist(),
                        region_part=kept.part.tolist(), grid_steps=kept.steps.tolist(),
                        mask=kept.masks, num_steps=num_steps)


def _check_ranges(**options: tuple[object, bool, str]) -> None:
    """Raise a ValueError naming the first option outside its range, given as
    ``name=(value, in_range, "the range in words")``: a negative scale or a threshold above 1
    would run and quietly flip nothing."""
    for name, (value, ok, allowed) in options.items():
        if not ok:
            raise ValueError(f"{name} must be {allowed}, got {value}")


def _pre_explanation(state: SampleState, pre_t: int, pre_steps: int, pre_scale: float,
                     pre_views: int, l1_weight: float, evidence_from: str,
                     grad_decoder: torch.nn.Module | None = None):
    """:func:`adaptive`'s step 1: a short unmasked guided pass from ``pre_t`` and the evidence
    it gives per pixel ((B, 1, H, W)), with the latent grid's size."""
    problem = state.problem
    pts = schedule(pre_t, pre_steps)
    z_pre, traj_pre = _invert(state, pts)
    pre = _guided_pass(state, torch.arange(len(state.x), device=state.x.device), z_pre,
                       traj_pre, pts, Guidance(pre_scale, l1_weight, False, 0.0, 1, 0, 0, pre_views,
                                                   grad_decoder))
    if evidence_from == "attribution":
        evidence = _attribution(problem, state.x, pre.img, state.target)
    elif evidence_from == "change":
        evidence = (pre.img - state.reconstruction).abs().sum(1, keepdim=True)
    else:
        raise ValueError(f"evidence_from must be 'attribution' or 'change', got {evidence_from!r}")
    if state.keep_out is not None:  # the region is chosen among the pixels that may change
        evidence = evidence * (1 - state.keep_out)
    return evidence, tuple(z_pre.shape[-2:])


@dataclass
class _Inversion:
    """The latest attempt's inversion: its timesteps and, per timestep, the latents of every
    face (rows of the whole batch; only the rows it inverted are filled). A later attempt on the
    same grid continues it instead of encoding and inverting again from t = 0."""
    ts: list[int]
    traj: list[torch.Tensor]

    def store(self, todo: torch.Tensor, ts: list[int], traj: list[torch.Tensor], b: int):
        full = [torch.zeros((b, *z.shape[1:]), dtype=z.dtype, device=z.device) for z in traj]
        for f, z in zip(full, traj):
            f[todo] = z
        self.ts, self.traj = list(ts), full


def _invert_attempt(state: SampleState, todo: torch.Tensor, ts: list[int], reconstruct: bool,
                    done: _Inversion):
    """The samples ``todo`` inverted to ``ts[-1]`` (start latents and trajectory); with
    ``reconstruct`` (first attempt without a pre-explanation) their round trip is frame 1.
    ``done`` holds the previous attempt's inversion (``todo`` only shrinks between attempts):
    when ``ts`` extends its timesteps, the inversion continues from its last latent; ``done`` is
    then updated to this one."""
    ldm, problem = state.problem.ldm, state.problem
    with torch.no_grad():
        if done.traj and ts[:len(done.ts)] == done.ts:
            head = [z[todo] for z in done.traj]
            z_T, tail = ddim_invert(ldm, head[-1], ts[len(done.ts):], keep=True,
                                    from_t=done.ts[-1])
            traj = head + tail
        else:
            z_T, traj = ddim_invert(ldm, encode(ldm, state.x[todo]), ts, keep=True)
        done.store(todo, ts, traj, len(state.x))
        if reconstruct:
            rec = decode(ldm, ddim_denoise(ldm, z_T, ts))
            state.reconstruction = state.reconstruction.clone()
            state.reconstruction[todo] = rec
            state.frame(1, todo, rec, problem.logit(rec))
    return z_T, traj


@torch.no_grad()
def _robust(state: SampleState, todo: torch.Tensor, out: PassResult, margin: float, views: int,
            renoise_t: int, num_steps: int) -> torch.Tensor:
    """(b,) bool: the attempt's logit passed the boundary by ``margin``, every one of the
    ``views`` views is on the target side, and (``renoise_t`` > 0) the flip survives re-noising
    to ``renoise_t`` and back with the original pixels outside the edited region."""
    problem, tgt = state.problem, state.target[todo]
    accept = _signed(out.logit, tgt) >= margin
    for flip, dx, dy in VIEWS[1:views]:
        accept &= _signed(problem.logit(_view(out.img, flip, dx, dy)), tgt) > 0
    if renoise_t and bool(accept.any()):  # the round trip only for the rows still accepted
        rows = accept.nonzero().flatten()
        r = _renoised(problem.ldm, out.img[rows], renoise_t, num_steps)
        m = out.mask[rows]
        r = m * r + (1 - m) * state.x[todo[rows]]
        accept[rows] = _signed(problem.logit(r), tgt[rows]) > 0
    return accept


@dataclass
class _AttemptLog:
    """What :func:`adaptive` reports per face: attempts run, and the noise level, edited share,
    pixel mask and region part (0: the whole region; 1, 2: one of its evidence clusters, see
    ``split_from``) of the result kept (this attempt's, unless it did not flip and an earlier
    one did: the state falls back to the first flip)."""
    attempts: torch.Tensor
    t_start: torch.Tensor
    fraction: torch.Tensor
    robust: torch.Tensor
    masks: torch.Tensor
    last_flipped: torch.Tensor
    part: torch.Tensor
    steps: torch.Tensor
    first_flip: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, b: int, hw) -> "_AttemptLog":
        return cls(torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long),
                   torch.ones(b), torch.zeros(b, dtype=torch.bool), torch.ones((b, 1, *hw)),
                   torch.zeros(b, dtype=torch.bool), torch.zeros(b, dtype=torch.long),
                   torch.zeros(b, dtype=torch.long))

    def record(self, rows: torch.Tensor, k: int, t_start: int, steps: int, out: PassResult,
               accept: torch.Tensor, flipped: torch.Tensor, part: torch.Tensor) -> None:
        flipped = flipped.cpu()
        frac = (out.mask > 0.5).float().flatten(1).mean(1).cpu()  # share of the image edited
        pm = out.mask.cpu().to(self.masks.dtype)
        for j, i in enumerate(rows.tolist()):
            self.attempts[i] = k + 1
            self.robust[i], self.last_flipped[i] = bool(accept[j]), bool(flipped[j])
            if bool(flipped[j]) or i not in self.first_flip:
                self.t_start[i], self.fraction[i], self.masks[i] = t_start, frac[j], pm[j]
                self.part[i], self.steps[i] = part[j], steps
            if bool(flipped[j]) and i not in self.first_flip:
                self.first_flip[i] = (t_start, frac[j], pm[j], part[j], steps)

    def fall_back_to_first_flips(self) -> None:
        for i, (t_kept, f_kept, m_kept, p_kept, s_kept) in self.first_flip.items():
            if not self.robust[i] and not self.last_flipped[i]:  # settle kept the first flip
                self.t_start[i], self.fraction[i], self.masks[i] = t_kept, f_kept, m_kept
                self.part[i], self.steps[i] = p_kept, s_kept


# ------------------------------------------------------------------------------------------------
def dime(problem: Problem, x: torch.Tensor, target: torch.Tensor, *, scale: float = 1.0,
         retry_scales: tuple[float, ...] = (2.0, 4.0), l1_weight: float = 1.0,
         num_steps: int = 20, t_start: int = 500, callback: Callable | None = None) -> CFBatch:
    """DiME (Jeanneret et al., ACCV 2022) in latent space: guidance through the nested chain.

    Invert to ``t_start`` once; at every denoising step, estimate the clean latent with the whole
    nested DDIM chain from z_t to t = 0 (a realistic image, not the blurry one-step x̂0), decode
    it, and take the gradient of BCE(logit, target) + l1_weight·|D(·) − x| back through the
    chain to z_t (the UNet frozen, as in the original lDVCE). It guides the step as classifier
    guidance on ε, ε̂ = ε + scale·sqrt(1 − a_t)·∇, i.e. x̂0 ← x̂0 − scale·(1 − a_t)/sqrt(a_t)·∇.
    No mask. Unflipped samples are retried with the larger ``retry_scales`` (DiME's 8 → 10 → 15).

    Parameters
    ----------
    scale : float
        Classifier-guidance scale on ε (the raw gradient of the loss, not normalised).
    retry_scales : tuple of float
        Larger scales tried in turn for samples that did not flip; empty for a single pass.
    l1_weight : float
        Weight of the pixel L1 distance to the original in the guidance loss: with no mask,
        the only term that keeps the change small.
    num_steps : int
        DDIM steps over the full 1000-step range (grid 1000 // num_steps); a pass over the
        n steps from t_start costs about n²/2 UNet calls.
    t_start : int
        Timestep the image is inverted to and denoised from (on the grid).
    callback : callable
        Receives each frame (see the module docstring); not a command-line option.
    """
    state = SampleState(problem, x, target, callback)
    ts = schedule(t_start, num_steps)
    z_T, _ = _invert(state, ts)
    used_scale = torch.zeros(len(state.x))
    scales = (scale, *retry_scales)
    for attempt, s in enumerate(scales):
        todo = state.todo()
        if len(todo) == 0:
            break
        img, logit = _dime_pass(state, todo, z_T[todo], ts, s, l1_weight)
        used_scale[todo.cpu()] = s
        state.settle(todo, img, logit, (attempt + 1) * len(ts), last=attempt == len(scales) - 1)
    return state.result(scale=used_scale.tolist(), t_start=t_start, num_steps=num_steps)


def _dime_pass(state: SampleState, idx: torch.Tensor, z: torch.Tensor, ts: list[int],
               scale: float, l1_weight: float):
    problem = state.problem
    ldm, x, target = problem.ldm, state.x[idx], state.target[idx]
    for n, i in enumerate(range(len(ts) - 1, -1, -1)):
        with torch.no_grad():
            eps = predict_eps(ldm, z, ts[i])
        with torch.enable_grad():
            zt = z.detach().requires_grad_(True)
            # the nested chain: this step with the ε above, then the rest down to t = 0
            clean, _, _ = ddim_step(ldm, zt, ts, i, eps)
            clean = ddim_denoise(ldm, clean, ts[:i]) if i > 0 else clean
            img = decode(ldm, clean)
            loss, logit = _classifier_loss(problem, img, x, target, l1_weight)
            grad, = torch.autograd.grad(loss.sum(), zt)
        state.frame(2 + n, idx, img.clamp(-1, 1), logit, x0=clean)
        grad = grad.nan_to_num(0.0)
        z, _, _ = ddim_step(ldm, z, ts, i, eps,
                            x0_hook=lambda x0, _i, a_t: x0 - scale * (1 - a_t) / a_t.sqrt() * grad)
    with torch.no_grad():
        img = decode(ldm, z).clamp(-1, 1)
        logit = problem.logit(img)
    state.frame(2 + len(ts), idx, img, logit, x0=z)
    return img, logit


SAMPLERS: dict[str, Callable[..., CFBatch]] = {"seed": seed_ldvce, "guided": guided, "dime": dime,
                                               "adaptive": adaptive}
#: The samplers that take ``keep_out`` and so can make several counterfactuals per face, with the
#: options their later rounds run with (:mod:`dvce.diverse`): ``adaptive``'s edit anywhere
#: outside ``keep_out``, since its evidence region would point back at the cue kept out (with
#: the region, sets of three on the hat-biased toy classifier held a hat-most counterfactual
#: on 0.79–0.88 of the faces of three seeds, without it on 0.96 of each; docs/results.md).
DIVERSE: dict[str, dict] = {"guided": {}, "adaptive": {"region": False}}


def get_sampler(name: str) -> Callable[..., CFBatch]:
    if name not in SAMPLERS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


#: Options that make each sampler run one pass only (no retries, no later attempts): for models
#: that rarely flip, where further passes would only time or repeat failures (the randomisation
#: test of ``ldvce xai compare``, random-weight GPU timing).
ONE_PASS = {"seed": {}, "guided": {"retry_scales": ()}, "dime": {"retry_scales": ()},
            "adaptive": {"levels": (300,)}}


def sampler_defaults(name: str) -> dict:
    """The keyword options of sampler ``name`` with their defaults (:data:`NOT_OPTIONS` left out)."""
    return {k: p.default for k, p in inspect.signature(get_sampler(name)).parameters.items()
            if p.kind is p.KEYWORD_ONLY and k not in NOT_OPTIONS}


def check_options(name: str, options: dict) -> None:
    """Raise a ValueError naming every option of ``options`` that sampler ``name`` does not
    have, before any model loads (a JSON ``--options`` of another method, a misspelling)."""
    known = sampler_defaults(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"method {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options: {', '.join(known)}")
