"""``ldvce bench generate --arch compvis``: one guided step of the exact CompVis/ldm-celebahq-256
architectures at 256² (random weights), part by part, with the full VQ decoder and with a freshly
initialised distilled guidance decoder (:class:`dvce.distill.SmallDecoder`) for the gradient.

Per part the median seconds of ``repeat`` calls (after a warm-up call on CUDA): UNet forward, VQ
decoder forward, VQ decoder forward + vector–Jacobian product, the small decoder's forward + VJP,
and the classifier (ResNet50) forward + backward through the guidance views; then the whole
guided step both ways (what :func:`dvce.samplers.guided` does per step), its FLOPs counted with
``torch.utils.flop_counter`` and, on CUDA, the achieved share of a given peak (model FLOP
utilisation) and peak memory. With ``rate`` it also runs the ``guided`` sampler (one pass, random
weights never flip) on ``n`` images both ways: counterfactuals per second.
"""
from __future__ import annotations

import copy
import resource
import statistics
import tempfile
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from classifier.models import ResNetClassifier
from dvce.diffusion import decode, predict_eps
from dvce.distill import save_grad_decoder, small_decoder_for
from dvce.ldm import (COMPVIS_UNET_CONFIG, COMPVIS_VQ_CONFIG, build_random_ldm,
                      slow_precision_warning, torch_dtype)
from dvce.samplers import Problem, _classifier_loss, get_sampler


def _timer(device: torch.device, repeat: int) -> Callable[[Callable], float]:
    def run(fn) -> float:
        if device.type == "cuda":  # the first call compiles kernels and grows the allocator
            fn()
            torch.cuda.synchronize()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return run


def bench_parts(n: int = 1, device: str = "cpu", dtype: str = "fp32", views: int = 4,
                repeat: int = 1, width: int = 64, blocks: int = 2, rate: bool | None = None,
                peak_tflops: float | None = None, vq_config: dict = COMPVIS_VQ_CONFIG,
                unet_config: dict = COMPVIS_UNET_CONFIG, image_size: int = 256) -> dict:
    """The per-part profile (see the module docstring); ``rate`` defaults to on for CUDA only
    (on a CPU one counterfactual at 256² takes minutes). ``vq_config``/``unet_config``/
    ``image_size``: other architectures (the tests use the toy ones)."""
    dev, dt = torch.device(device), torch_dtype(dtype)
    if dev.type == "cuda":  # "fp32" means TF32 tensor cores for matmuls and convolutions (say so in the report)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    ldm = build_random_ldm(vq_config, unet_config).to(dev, dt)
    arch = "resnet50" if image_size >= 128 else "resnet18"
    clf = ResNetClassifier(arch=arch, image_size=image_size).eval().requires_grad_(False).to(dev, dt)
    # The sampler keeps the small decoder in float32 and feeds it a float32 latent under bf16 too.
    small_fp32 = small_decoder_for(ldm, width, blocks).to(dev).eval().requires_grad_(False)
    small = lambda z_: small_fp32(z_.float())  # noqa: E731
    problem = Problem(ldm, clf, 31)
    f = ldm.downsample
    z = torch.randn(n, int(ldm.vqvae.config.latent_channels), image_size // f, image_size // f,
                    device=dev, dtype=dt)
    x = (torch.rand(n, 3, image_size, image_size, device=dev) * 2 - 1).to(dt)
    target = torch.ones(n, device=dev)

    def vjp(decoder):
        z_ = z.detach().requires_grad_(True)
        img = decoder(z_)
        img.backward(torch.ones_like(img))  # .backward: FlopCounterMode's hooks reject autograd.grad

    def step(decoder):  # one guided step: ε, then x̂0 decoded with a gradient to the classifier
        with torch.no_grad():
            predict_eps(ldm, z, 500)
        z_ = z.detach().requires_grad_(True)
        loss, _ = _classifier_loss(problem, decoder(z_), x, target, 1.0, views)
        loss.sum().backward()

    def classifier_views():
        img = x.detach().requires_grad_(True)
        loss, _ = _classifier_loss(problem, img, x, target, 1.0, views)
        loss.sum().backward()

    full = lambda z_: decode(ldm, z_)  # noqa: E731
    t = _timer(dev, repeat)
    with torch.no_grad():
        parts = {"unet_forward": t(lambda: predict_eps(ldm, z, 500)),
                 "vq_decoder_forward": t(lambda: decode(ldm, z))}
    parts["vq_decoder_forward_vjp"] = t(lambda: vjp(full))
    parts["small_decoder_forward_vjp"] = t(lambda: vjp(small))
    parts["classifier_views_forward_backward"] = t(classifier_views)
    steps, flops, memory = {}, {}, {}
    for name, decoder in (("full", full), ("distilled", small)):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        steps[name] = t(lambda: step(decoder))
        if dev.type == "cuda":
            memory[name] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        with FlopCounterMode(display=False) as counter:
            step(decoder)
        flops[name] = counter.get_total_flops()
    out = {"device": torch.cuda.get_device_name(dev) + (" (TF32)" if dt == torch.float32 else "")
           if dev.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "dtype": dtype, "n": n, "views": views,
           "image_size": image_size, "small_decoder": {"width": width, "blocks": blocks},
           "seconds": parts, "step_seconds": steps,
           "step_speedup": steps["full"] / steps["distilled"],
           "step_tflop": {k: v / 1e12 for k, v in flops.items()},
           "achieved_tflops": {k: flops[k] / steps[k] / 1e12 for k in steps},
           "precision_warning": slow_precision_warning(dtype, dev)}
    if peak_tflops:
        out["mfu"] = {k: v / peak_tflops for k, v in out["achieved_tflops"].items()}
    if memory:
        out["peak_memory_gib"] = memory
    else:  # the process's peak resident memory (Linux: KiB)
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    if rate if rate is not None else dev.type == "cuda":
        out["counterfactuals_per_second"] = _cf_rate(problem, x, small_fp32, dev)
    return out


def _cf_rate(problem: Problem, x: torch.Tensor, small, dev) -> dict:
    """The ``guided`` sampler's defaults, one pass (no retries), on ``x``: counterfactuals per
    second with the full decoder and with ``small`` for the gradient."""
    guided = get_sampler("guided")
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        save_grad_decoder(copy.deepcopy(small).float().cpu(), folder)
        for name, spec in (("full", "full"), ("distilled", folder)):
            run = lambda: guided(problem, x, torch.ones(len(x)), retry_scales=(),  # noqa: E731
                                 grad_decoder=spec)
            out[name] = len(x) / _timer(dev, 1)(run)
    return out


def print_parts(r: dict) -> None:
    print(f"exact CompVis architectures at {r['image_size']}², batch {r['n']}, {r['dtype']}, "
          f"{r['device']} ({r['threads']} threads), {r['views']} classifier views")
    for k, v in r["seconds"].items():
        print(f"  {k:<36}{v * 1000:>10.1f} ms")
    for k in ("full", "distilled"):
        line = (f"  guided step, {k + ' decoder':<24}{r['step_seconds'][k] * 1000:>10.1f} ms"
                f"  {r['step_tflop'][k]:.3f} TFLOP  {r['achieved_tflops'][k]:.2f} TFLOP/s")
        if "mfu" in r:
            line += f"  MFU {r['mfu'][k]:.1%}"
        if "peak_memory_gib" in r:
            line += f"  peak {r['peak_memory_gib'][k]:.2f} GiB"
        print(line)
    print(f"  distilled step is {r['step_speedup']:.2f}x cheaper than the full-decoder step")
    if "peak_rss_gib" in r:
        print(f"  process peak memory {r['peak_rss_gib']:.2f} GiB")
    if "counterfactuals_per_second" in r:
        c = r["counterfactuals_per_second"]
        print(f"  counterfactuals per second (guided, one pass): full {c['full']:.2f}, "
              f"distilled {c['distilled']:.2f}")
    if r.get("precision_warning"):
        print(f"  warning: {r['precision_warning']}")
