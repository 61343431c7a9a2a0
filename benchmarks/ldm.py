"""``ldvce bench ldm``: quality of the shipped toy LDM on unseen toy images (VQ round trip,
classifier agreement, DDIM inversion round trip, sample confidence)."""
from __future__ import annotations

import torch

from benchmarks.common import toy_setup, write_result
from classifier.evaluate import dataset_for
from dvce import diffusion


@torch.no_grad()
def bench_ldm(n: int = 200, device="cpu") -> dict:
    """Toy LDM quality on unseen toy images (issue thresholds in parentheses)."""
    data, clf, ldm, _ = toy_setup(device)
    ds = dataset_for(data, split="all")
    x = torch.stack([ds.read_image(r) for r in range(min(n, len(ds)))]).to(device)
    rec, inv = [], []
    for i in range(0, len(x), 50):
        xb = x[i:i + 50]
        z = diffusion.encode(ldm, xb)
        rec.append(diffusion.decode(ldm, z).clamp(-1, 1))
        ts = diffusion.schedule(780, 100)
        inv.append(diffusion.decode(ldm, diffusion.ddim_denoise(
            ldm, diffusion.ddim_invert(ldm, z, ts), ts)).clamp(-1, 1))
    rec, inv = torch.cat(rec), torch.cat(inv)
    agree = ((clf(x)[:, 31] > 0) == (clf(rec)[:, 31] > 0)).float().mean()
    samples = diffusion.sample(ldm, 64, num_steps=50, generator=torch.Generator().manual_seed(0))
    p = torch.sigmoid(clf(samples)[:, 31])
    return {"images": len(x),
            "vq_roundtrip_l1": float((rec - x).abs().mean()),
            "smiling_agreement_on_reconstruction": float(agree),
            "ddim_780_roundtrip_l1_vs_vq": float((inv - rec).abs().mean()),
            "ddim_780_roundtrip_l1_vs_original": float((inv - x).abs().mean()),
            "samples_confident_smiling_share": float(((p < 0.1) | (p > 0.9)).float().mean()),
            "thresholds": {"vq_roundtrip_l1": "<= 0.05", "smiling_agreement_on_reconstruction": ">= 0.95",
                           "ddim_780_roundtrip_l1_vs_vq": "<= 0.05"}}


def run_ldm(n: int = 200, json_path=None) -> dict:
    """What ``ldvce bench ldm`` does: :func:`bench_ldm`, printed and optionally written."""
    r = bench_ldm(n)
    for k, v in r.items():
        print(f"{k:<40} {v}")
    write_result(r, json_path)
    return r

