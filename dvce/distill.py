"""A distilled guidance decoder: a small convolutional decoder that stands in for the VQ decoder
when the classifier's gradient is taken (TAESD-style), trained to reproduce the full decoder's
images *and* its vector–Jacobian products (the gradient is what it is for).

Every guided step decodes the latent estimate x̂0 and back-propagates the classifier's gradient
through the decoder; at CompVis's 256² scale that decoder is most of a step's cost. A sampler
given a grad decoder (``--guided.grad_decoder``) decodes through it for the gradient only: the
final images are always decoded by the full decoder and the flip is checked on them, so a wrong
gradient can cost attempts, never validity.

On disk a grad decoder is a folder ``config.json`` + ``model.safetensors``; an LDM folder that
holds one in ``grad_decoder/`` has it picked by ``grad_decoder="auto"`` (the toy LDM ships one).
``ldvce distill-decoder`` trains one (:func:`distill_decoder`: progress bar, resumable, Lightning
Fabric for several devices) and reports its decode error and the cosine between its gradients
and the full decoder's (:func:`evaluate_grad_decoder`).
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from classifier.images import load_folder
from dvce.diffusion import decode, encode
from dvce.ldm import LDM, load_ldm
from fileio import atomic_write_bytes, write_json

#: Sub-folder of an LDM folder that holds its distilled guidance decoder.
GRAD_DECODER_DIR = "grad_decoder"
CONFIG, WEIGHTS, CHECKPOINT = "config.json", "model.safetensors", "checkpoint.pt"


@dataclass(frozen=True)
class SmallDecoderConfig:
    """Architecture of :class:`SmallDecoder` (written to ``config.json``)."""
    latent_channels: int = 3
    out_channels: int = 3
    width: int = 32
    upsamples: int = 2
    blocks: int = 1


class _Block(nn.Module):
    """conv–SiLU–conv with a skip (TAESD's block, no normalisation)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1))

    def forward(self, x):
        return F.silu(x + self.conv(x))


class SmallDecoder(nn.Module):
    """Latents (as :func:`dvce.diffusion.decode` takes them, scale included) → images in
    [-1, 1]: a stem, ``blocks`` blocks, then per upsampling level nearest ×2, a conv and a block."""

    def __init__(self, config: SmallDecoderConfig = SmallDecoderConfig()):
        super().__init__()
        self.config = config
        w = config.width
        layers = [nn.Conv2d(config.latent_channels, w, 3, padding=1), nn.SiLU()]
        layers += [_Block(w) for _ in range(config.blocks)]
        for _ in range(config.upsamples):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(w, w, 3, padding=1), _Block(w)]
        layers.append(nn.Conv2d(w, config.out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def small_decoder_for(ldm: LDM, width: int = 32, blocks: int = 1) -> SmallDecoder:
    """A freshly initialised small decoder with ``ldm``'s latent channels and downsampling."""
    levels = ldm.downsample.bit_length() - 1
    cfg = SmallDecoderConfig(int(ldm.vqvae.config.latent_channels),
                             int(ldm.vqvae.config.out_channels), width, levels, blocks)
    return SmallDecoder(cfg).to(ldm.device)


# ----------------------------------------------------------------------------- files
def save_grad_decoder(model: SmallDecoder, folder, report: dict | None = None) -> Path:
    """``folder/model.safetensors`` and ``folder/config.json`` (architecture + ``report``);
    the weights are written first, so a folder with a config is complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS}.partial"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(folder / WEIGHTS)
    write_json(folder / CONFIG, {"architecture": asdict(model.config), **(report or {})})
    return folder


def load_grad_decoder(folder, device="cpu") -> SmallDecoder:
    """A saved grad decoder (:func:`save_grad_decoder`); a clear error when it is not one."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} is not a grad decoder folder (needs {CONFIG} and "
                                f"{WEIGHTS}; make one with `ldvce distill-decoder`)")
    cfg = SmallDecoderConfig(**json.loads((folder / CONFIG).read_text())["architecture"])
    model = SmallDecoder(cfg)
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval().requires_grad_(False)


def resolve_grad_decoder(ldm: LDM, spec: str | None, ldm_folder=None):
    """The module to take the gradient through: ``None`` for ``"full"`` (the VQ decoder),
    a loaded :class:`SmallDecoder` for a folder, and for ``"auto"`` the LDM folder's
    (``ldm_folder``, default ``ldm.folder``) ``grad_decoder/`` when it has one (else ``None``)."""
    if spec in (None, "", "full"):
        return None
    if spec == "auto":
        ldm_folder = ldm_folder or getattr(ldm, "folder", None)
        found = Path(ldm_folder) / GRAD_DECODER_DIR if ldm_folder else None
        return load_grad_decoder(found, ldm.device) if found and (found / CONFIG).exists() else None
    return load_grad_decoder(spec, ldm.device)


# -------------------------------------------------------------------------- training
def _targets_and_vjp(ldm: LDM, z: torch.Tensor, v: torch.Tensor):
    """The full decoder's images of ``z`` and its vector–Jacobian product with ``v``."""
    with torch.enable_grad():
        zg = z.detach().requires_grad_(True)
        img = decode(ldm, zg)
        vjp, = torch.autograd.grad((img * v).sum(), zg)
    return img.detach(), vjp.detach()


def distill_loss(model: SmallDecoder, ldm: LDM, z: torch.Tensor, vjp_weight: float,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Pixel L1 to the full decoder's images + ``vjp_weight`` · (1 − cosine) between the two
    decoders' vector–Jacobian products for a random image-space direction per sample."""
    v = torch.randn(z.shape[0], model.config.out_channels, *_image_hw(ldm, z), device=z.device,
                    generator=generator)
    target, vjp_full = _targets_and_vjp(ldm, z, v)
    zg = z.detach().requires_grad_(True)
    img = model(zg)
    pixel = (img - target).abs().mean()
    loss, stats = pixel, {"pixel_l1": float(pixel.detach())}
    if vjp_weight > 0:
        vjp, = torch.autograd.grad((img * v).sum(), zg, create_graph=True)
        cos = F.cosine_similarity(vjp.flatten(1), vjp_full.flatten(1), dim=1).mean()
        loss = loss + vjp_weight * (1 - cos)
        stats["grad_cosine"] = float(cos.detach())
    return loss, stats


def _image_hw(ldm: LDM, z: torch.Tensor) -> tuple[int, int]:
    return z.shape[-2] * ldm.downsample, z.shape[-1] * ldm.downsample


@torch.no_grad()
def encode_images(ldm: LDM, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Latents of (N, 3, H, W) images in [-1, 1], as the samplers start from them."""
    return torch.cat([encode(ldm, images[i:i + batch_size].to(ldm.device))
                      for i in range(0, len(images), batch_size)])


@dataclass(frozen=True)
class DistillConfig:
    """How :func:`distill_decoder` trains (``ldvce distill-decoder`` options)."""
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    vjp_weight: float = 0.5
    noise: float = 0.3           # latents are perturbed by up to this many latent stds
    width: int = 32
    blocks: int = 1
    seed: int = 0
    checkpoint_every: int = 250


def distill_decoder(ldm: LDM, latents: torch.Tensor, out, cfg: DistillConfig = DistillConfig(),
                    held_out: torch.Tensor | None = None, fabric=None,
                    progress: bool = True) -> dict:
    """Train a :class:`SmallDecoder` on ``latents`` (N, C, h, w) of ``ldm``; write it to ``out``.

    Each step takes a batch of latents, perturbed by Gaussian noise of a random strength up to
    ``cfg.noise`` latent standard deviations (guidance moves x̂0 off the encoder's manifold),
    and minimises :func:`distill_loss`. ``out/checkpoint.pt`` is written every
    ``cfg.checkpoint_every`` steps and a rerun resumes from it. ``fabric`` (Lightning Fabric,
    launched) spreads the batches over its processes. Returns the report of
    :func:`evaluate_grad_decoder` on ``held_out`` (default: the last 64 latents, not trained on).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if held_out is None:
        latents, held_out = latents[:-64], latents[-64:]
    model = small_decoder_for(ldm, cfg.width, cfg.blocks)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step = _resume(out / CHECKPOINT, model, opt)
    if fabric is not None:
        model, opt = fabric.setup(model, opt)
    rank = fabric.global_rank if fabric is not None else 0
    world = fabric.world_size if fabric is not None else 1
    std = float(latents.std())
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * step + rank)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="distilling the decoder",
               disable=not progress or rank != 0, dynamic_ncols=True)
    stats = {}
    while step < cfg.steps:
        idx = torch.randint(0, len(latents), (cfg.batch_size // world or 1,), generator=gen)
        z = latents[idx].to(ldm.device)
        sigma = torch.rand(len(z), 1, 1, 1, generator=gen).to(z) * cfg.noise * std
        z = z + sigma * torch.randn(z.shape, generator=gen).to(z)
        loss, stats = distill_loss(model, ldm, z, cfg.vjp_weight, None)
        opt.zero_grad()
        fabric.backward(loss) if fabric is not None else loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{stats['pixel_l1']:.3f}", cos=f"{stats.get('grad_cosine', 0):.2f}")
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            _checkpoint(out / CHECKPOINT, model, opt, step)
    bar.close()
    if rank != 0:
        return {}
    plain = getattr(model, "module", model)
    report = evaluate_grad_decoder(plain, ldm, held_out.to(ldm.device))
    report.update(training=asdict(cfg), seconds=round(time.perf_counter() - t0, 1),
                  latent_std=std, final_batch=stats)
    save_grad_decoder(plain, out, report)
    return report


def _checkpoint(path: Path, model, opt, step: int) -> None:
    buf = io.BytesIO()  # written whole or not at all (atomic rename)
    plain = getattr(model, "module", model)
    torch.save({"model": plain.state_dict(), "opt": opt.state_dict(), "step": step}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _resume(path: Path, model, opt) -> int:
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    return int(state["step"])


def evaluate_grad_decoder(model: nn.Module, ldm: LDM, latents: torch.Tensor,
                          seed: int = 0) -> dict:
    """How well ``model`` stands in for ``ldm``'s decoder on ``latents``: mean |Δ| of the images
    (``decode_l1``), and the mean cosine between the two decoders' vector–Jacobian products for
    random directions (``grad_cosine``) and for a classifier-like smooth direction
    (``grad_cosine_smooth``: a blurred random map, closer to what a classifier sends back)."""
    gen = torch.Generator().manual_seed(seed)
    model = model.eval()
    l1, cos, cos_smooth = [], [], []
    for i in range(0, len(latents), 32):
        z = latents[i:i + 32]
        h, w = _image_hw(ldm, z)
        for kind in ("random", "smooth"):
            v = torch.randn(len(z), model.config.out_channels, h, w, generator=gen).to(z)
            if kind == "smooth":
                v = F.avg_pool2d(v, 9, stride=1, padding=4)
            target, vjp_full = _targets_and_vjp(ldm, z, v)
            with torch.enable_grad():
                zg = z.detach().requires_grad_(True)
                img = model(zg)
                vjp, = torch.autograd.grad((img * v).sum(), zg)
            c = F.cosine_similarity(vjp.flatten(1), vjp_full.flatten(1), dim=1)
            (cos if kind == "random" else cos_smooth).append(c)
            if kind == "random":
                l1.append((img.detach() - target).abs().flatten(1).mean(1))
    return {"held_out": len(latents), "decode_l1": float(torch.cat(l1).mean()),
            "grad_cosine": float(torch.cat(cos).mean()),
            "grad_cosine_smooth": float(torch.cat(cos_smooth).mean()),
            "parameters": sum(p.numel() for p in model.parameters())}


# ----------------------------------------------------------------------- entry point
def read_images(data, n: int, size: int) -> torch.Tensor:
    """Up to ``n`` training images of ``data``: a dataset folder or an LMDB with its attribute
    file beside it (the ``train`` split), or a plain image folder (unreadable files skipped)."""
    from classifier.evaluate import dataset_for  # heavy (Lightning); only when distilling
    data = Path(data)
    is_dataset = data.suffix == ".lmdb" or any(data.glob("*.lmdb"))
    if is_dataset:
        attr = data.parent / "CelebAMask-HQ-attribute-anno.txt" if data.suffix == ".lmdb" else None
        ds = dataset_for(data, attr, split="train", image_size=size)
        return torch.stack([ds.read_image(r) for r in ds.indices[:n]])
    loaded = load_folder(data, size)
    if not loaded.ids:
        raise FileNotFoundError(f"no images in {data} (give a dataset folder, an LMDB or an "
                                "image folder)")
    return torch.stack(loaded.images[:n])


def distill_from_data(ldm_source, data, out, n: int = 4000, cfg: DistillConfig = DistillConfig(),
                      devices: int | None = None, accelerator: str = "auto",
                      device="cpu", progress: bool = True) -> dict:
    """What ``ldvce distill-decoder`` does: load the LDM, encode ``n`` images of ``data``, and
    :func:`distill_decoder` into ``out`` (on ``devices`` Fabric processes when given)."""
    fabric = None
    if devices is not None:
        from lightning_fabric import Fabric  # heavy; only for several processes
        fabric = Fabric(accelerator=accelerator, devices=devices)
        fabric.launch()
        device = fabric.device
    ldm = load_ldm(ldm_source, device=device)
    images = read_images(data, n + 64, ldm.image_size)
    if len(images) < 128:
        raise ValueError(f"{data}: {len(images)} images are too few to distil a decoder (need "
                         "at least 128; 64 are held out for the report)")
    latents = encode_images(ldm, images)
    return distill_decoder(ldm, latents, out, cfg, fabric=fabric, progress=progress)
