"""Train the toyfaces latent diffusion model: a small VQModel (f4, 3 latent channels, like
CompVis's) and a small UNet2DModel with CompVis's DDIM schedule, saved as a diffusers folder.

Recipe (chosen to converge on 2 CPU cores in about 80 minutes):
1. VQ autoencoder warm-up *without* the quantiser (L1 + MSE, tiny latent penalty), cosine LR.
2. k-means initialisation of the codebook on encoder latents, then fine-tuning *with* the
   quantiser (straight-through) and dead-code resets, so the decoder learns quantised inputs.
3. Latent scale = 1 / std of the latents, written as ``scaling_factor`` in the VQ config.
4. UNet: epsilon prediction on scaled pre-quantisation latents (what CompVis's LDM does), EMA
   weights, horizontal-flip augmentation, cosine LR.
5. Decoder-only fine-tuning with an L1 weighted on edges and, in the toy world, on the detail
   regions the renderer knows (mouth, eyes, moustache): thin shapes such as the lips decide the
   attributes, and a plain L1 lets the decoder blur them. The encoder and codebook are frozen, so
   the UNet's latents stay valid.
Every phase checkpoints to ``OUT/checkpoints`` and resumes from there.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel, VQModel
from tqdm import tqdm

from classifier.dataset import CelebHQAttrDataset
from classifier.images import decode_image
from dvce.ldm import COMPVIS_SCHEDULE
from fileio import write_json
from toyfaces.data import load_masks
from toyfaces.ldm import toy_unet_config, toy_vq_config


@dataclass
class LDMTrainConfig:
    vq_warmup_steps: int = 1200
    vq_quant_steps: int = 400
    vq_batch: int = 32
    vq_lr: float = 2e-3
    unet_steps: int = 4000
    decoder_steps: int = 400  # decoder-only fine-tuning (encoder/codebook frozen: latents fixed)
    region_weight: float = 8.0  # extra L1 weight on the faces' detail regions (mouth, eyes)
    unet_batch: int = 64
    unet_lr: float = 1e-3
    ema: float = 0.999
    codebook: int = 512
    vq_widths: tuple = (32, 64, 64)  # (16, 32, 32) lost the lips on dark beards: 90 % decisions kept
    seed: int = 0
    threads: int = 2
    checkpoint_every: int = 200


def load_images_uint8(lmdb_path, attr_path, limit: int | None = None):
    """All training-split images as a uint8 tensor (N, 3, H, W), small enough for memory, and
    their LMDB rows (to look up per-image data such as the region masks)."""
    ds = CelebHQAttrDataset(lmdb_path, attr_path, split="train", augment=False)
    rows = ds.indices[:limit] if limit else ds.indices
    out = torch.empty((len(rows), 3, ds.image_size, ds.image_size), dtype=torch.uint8)
    for i, row in enumerate(tqdm(rows, desc="loading images", unit="img")):
        img = decode_image(ds.read_record(row), ds.image_size, source=f"{lmdb_path}[{row}]")
        out[i] = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    return out, list(rows)


def _batch(images: torch.Tensor, bs: int, gen: torch.Generator, regions=None):
    """A random, randomly mirrored batch in [-1, 1], and its detail-region masks (or None)."""
    idx = torch.randint(0, len(images), (bs,), generator=gen)
    x = images[idx].float().div(127.5).sub(1.0)
    flip = torch.rand(bs, generator=gen) < 0.5
    x[flip] = x[flip].flip(-1)
    if regions is None:
        return x, None
    r = regions[idx].float()
    r[flip] = r[flip].flip(-1)
    return x, r


def _cosine(step: int, total: int, lr: float, warmup: int = 50) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.05 * lr + 0.95 * lr * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Plain Lloyd k-means (x: (N, D)) for codebook initialisation."""
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        empty = counts == 0
        centres = torch.where(empty[:, None], x[torch.randint(0, len(x), (k,), generator=g)],
                              sums / counts.clamp(min=1)[:, None])
    return centres


def _save_ckpt(path: Path, **state):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train_vq(images, cfg: LDMTrainConfig, ckpt_dir: Path, log, regions=None):
    """Autoencoder warm-up, k-means codebook, then quantised training with dead-code resets.

    The loss weights shape edges and the detail regions (``regions``: mouth, eyes, mustache)
    from the first step: with a plain L1 the small encoder spent its capacity on the large,
    easy areas and lost thin lips on dark beards."""
    vq = VQModel(**toy_vq_config(cfg.codebook, tuple(cfg.vq_widths)))
    opt = torch.optim.Adam(vq.parameters(), lr=cfg.vq_lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, ckpt = 0, ckpt_dir / "vq.pt"
    total = cfg.vq_warmup_steps + cfg.vq_quant_steps
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        vq.load_state_dict(st["model"]); opt.load_state_dict(st["opt"])
        step = st["step"]; gen.set_state(st["gen"])
    usage = torch.zeros(cfg.codebook)
    bar = tqdm(total=total, initial=step, desc="VQ autoencoder", unit="step")
    while step < total:
        quantise = step >= cfg.vq_warmup_steps
        if step == cfg.vq_warmup_steps:  # k-means codebook init on encoder latents
            with torch.no_grad():
                lat = torch.cat([vq.encode(_batch(images, 64, gen)[0]).latents for _ in range(8)])
                pts = lat.permute(0, 2, 3, 1).reshape(-1, lat.shape[1])
                vq.quantize.embedding.weight.data.copy_(kmeans(pts, cfg.codebook, seed=cfg.seed))
        for group in opt.param_groups:
            group["lr"] = _cosine(step if not quantise else step - cfg.vq_warmup_steps,
                                  cfg.vq_warmup_steps if not quantise else cfg.vq_quant_steps,
                                  cfg.vq_lr if not quantise else cfg.vq_lr * 0.25)
        x, r = _batch(images, cfg.vq_batch, gen, regions)
        h = vq.encode(x).latents
        if quantise:
            out = vq.decode(h, force_not_quantize=False, return_dict=True)
            rec, extra = out.sample, out.commit_loss.mean()
            with torch.no_grad():
                _, _, (_, _, ids) = vq.quantize(h)
                usage += torch.bincount(ids.flatten(), minlength=cfg.codebook).float()
        else:
            rec = vq.decode(h, force_not_quantize=True).sample
            extra = 1e-4 * h.pow(2).mean()
        l1 = (rec - x).abs().mean()
        loss = (_pixel_weight(x, r, cfg) * (rec - x).abs()).mean() + 0.5 * F.mse_loss(rec, x) + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{l1.item():.4f}", q=int(quantise))
        if quantise and step % 100 == 0:  # dead-code reset: unused codes jump to live latents
            with torch.no_grad():
                dead = usage == 0
                if dead.any():
                    pts = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])
                    pick = pts[torch.randint(0, len(pts), (int(dead.sum()),), generator=gen)]
                    vq.quantize.embedding.weight.data[dead] = pick
                log({"phase": "vq", "step": step, "l1": l1.item(), "codes_used": int((~dead).sum())})
                usage.zero_()
        elif step % 100 == 0:
            log({"phase": "vq", "step": step, "l1": l1.item()})
        if step % cfg.checkpoint_every == 0 or step == total:
            _save_ckpt(ckpt, model=vq.state_dict(), opt=opt.state_dict(), step=step, gen=gen.get_state())
    bar.close()
    return vq


def _edge_weight(x: torch.Tensor, k: float = 4.0) -> torch.Tensor:
    """1 + k·|∇x| (normalised): weights pixels on shape boundaries."""
    gx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(1, keepdim=True)
    gy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(1, keepdim=True)
    g = F.pad(gx, (0, 1, 0, 0)) + F.pad(gy, (0, 0, 0, 1))
    return 1 + k * g / g.flatten(1).mean(1).clamp(min=1e-6).view(-1, 1, 1, 1) / 4


def _pixel_weight(x: torch.Tensor, regions, cfg: LDMTrainConfig) -> torch.Tensor:
    """Per-pixel L1 weight: edges everywhere, plus ``cfg.region_weight`` on the detail regions."""
    w = _edge_weight(x)
    return w if regions is None else w + cfg.region_weight * regions


DETAIL_REGIONS = ("Smiling", "Eyeglasses", "Mustache")


def load_region_masks(lmdb_path, rows) -> torch.Tensor | None:
    """Union of the detail regions for ``rows`` when the data is a toyfaces folder, else None."""
    folder = Path(lmdb_path).parent
    if not (folder / "masks.npz").exists():
        return None
    m = load_masks(folder)
    union = np.zeros_like(m[DETAIL_REGIONS[0]])
    for name in DETAIL_REGIONS:
        union |= m[name]
    return torch.from_numpy(union[list(rows)]).unsqueeze(1)


def finetune_decoder(vq, images, cfg: LDMTrainConfig, ckpt_dir: Path, log, regions=None):
    """Fine-tune ``post_quant_conv`` + decoder on quantised latents of the frozen encoder."""
    params = list(vq.decoder.parameters()) + list(vq.post_quant_conv.parameters())
    opt = torch.optim.Adam(params, lr=cfg.vq_lr * 0.25)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    step, ckpt = 0, ckpt_dir / "decoder.pt"
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        vq.load_state_dict(st["model"]); opt.load_state_dict(st["opt"])
        step = st["step"]; gen.set_state(st["gen"])
    bar = tqdm(total=cfg.decoder_steps, initial=step, desc="VQ decoder fine-tune", unit="step")
    while step < cfg.decoder_steps:
        for group in opt.param_groups:
            group["lr"] = _cosine(step, cfg.decoder_steps, cfg.vq_lr * 0.25, warmup=20)
        idx = torch.randint(0, len(images), (cfg.vq_batch,), generator=gen)
        x = images[idx].float().div(127.5).sub(1.0)
        w = _pixel_weight(x, None if regions is None else regions[idx].float(), cfg)
        with torch.no_grad():
            h = vq.encode(x).latents
        rec = vq.decode(h).sample
        loss = (w * (rec - x).abs()).mean() + 0.5 * F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % 100 == 0:
            log({"phase": "decoder", "step": step, "l1": (rec - x).abs().mean().item()})
        if step % cfg.checkpoint_every == 0 or step == cfg.decoder_steps:
            _save_ckpt(ckpt, model=vq.state_dict(), opt=opt.state_dict(), step=step, gen=gen.get_state())
    bar.close()
    return vq


@torch.no_grad()
def encode_all(vq, images, bs: int = 256) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(images), bs), desc="encoding latents"):
        out.append(vq.encode(images[i:i + bs].float().div(127.5).sub(1.0)).latents)
    return torch.cat(out)


def train_unet(latents: torch.Tensor, cfg: LDMTrainConfig, ckpt_dir: Path, log):
    unet = UNet2DModel(**toy_unet_config(latents.shape[-1]))
    ema = UNet2DModel(**toy_unet_config(latents.shape[-1]))
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    sched = DDIMScheduler(**COMPVIS_SCHEDULE)
    acp = sched.alphas_cumprod
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.unet_lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    step, ckpt = 0, ckpt_dir / "unet.pt"
    if ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(st["model"]); ema.load_state_dict(st["ema"]); opt.load_state_dict(st["opt"])
        step = st["step"]; gen.set_state(st["gen"])
    bar = tqdm(total=cfg.unet_steps, initial=step, desc="UNet (diffusion)", unit="step")
    while step < cfg.unet_steps:
        for group in opt.param_groups:
            group["lr"] = _cosine(step, cfg.unet_steps, cfg.unet_lr, warmup=100)
        idx = torch.randint(0, len(latents), (cfg.unet_batch,), generator=gen)
        z0 = latents[idx]
        flip = torch.rand(len(z0), generator=gen) < 0.5
        z0 = torch.where(flip[:, None, None, None], z0.flip(-1), z0)
        t = torch.randint(0, 1000, (len(z0),), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps  # q(z_t | z_0)
        loss = F.mse_loss(unet(zt, t).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + step) / (10 + step))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 100 == 0:
            log({"phase": "unet", "step": step, "loss": loss.item()})
        if step % cfg.checkpoint_every == 0 or step == cfg.unet_steps:
            _save_ckpt(ckpt, model=unet.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
                       step=step, gen=gen.get_state())
    bar.close()
    return ema


def train_ldm(out_dir, lmdb_path, attr_path, cfg: LDMTrainConfig | None = None, limit=None) -> Path:
    """Train both stages and save a diffusers folder (``vqvae/ unet/ scheduler/``) in ``out_dir``."""
    cfg = cfg or LDMTrainConfig()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train_log.jsonl", "a")
    t0 = time.time()

    def log(rec):
        rec["elapsed_s"] = round(time.time() - t0, 1)
        logf.write(json.dumps(rec) + "\n"); logf.flush()

    images, rows = load_images_uint8(lmdb_path, attr_path, limit)
    regions = load_region_masks(lmdb_path, rows)
    vq = train_vq(images, cfg, ckpt_dir, log, regions).eval()
    latents = encode_all(vq, images)
    scale = float(1.0 / latents.std())
    vq.register_to_config(scaling_factor=scale)
    unet = train_unet(latents * scale, cfg, ckpt_dir, log).eval()
    vq = finetune_decoder(vq.train(), images, cfg, ckpt_dir, log, regions=regions).eval()
    vq.save_pretrained(out / "vqvae", safe_serialization=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    DDIMScheduler(**COMPVIS_SCHEDULE).save_pretrained(out / "scheduler")
    write_json(out / "model_index.json", {
        "_class_name": "LDMPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DModel"],
        "vqvae": ["diffusers", "VQModel"]})
    write_json(out / "training.json",
               {"config": asdict(cfg), "latent_scale": scale, "seconds": round(time.time() - t0, 1),
                "lmdb": str(lmdb_path), "images": len(images)})
    log({"phase": "done"})
    return out
