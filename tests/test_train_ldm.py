"""The toy-LDM training recipe (toyfaces/train_ldm.py) end to end at a tiny size: every phase
runs, the result is a diffusers folder that ``load_ldm`` loads, and a rerun resumes from the
checkpoints instead of training again."""
import json

import pytest
import torch

from toyfaces.train_ldm import LDMTrainConfig, _batch, load_region_masks, train_ldm

TINY = LDMTrainConfig(vq_warmup_steps=4, vq_quant_steps=2, vq_batch=4, unet_steps=3, unet_batch=4,
                      decoder_steps=2, codebook=16, vq_widths=(8, 16, 16), threads=1,
                      checkpoint_every=2)


@pytest.mark.integration
def test_tiny_training_run_saves_a_loadable_ldm_and_resumes(toy_unseen, tmp_path):
    import toyfaces
    from dvce import diffusion
    from dvce.ldm import load_ldm
    out = tmp_path / "ldm"
    train_ldm(out, *toyfaces.paths(toy_unseen), TINY, limit=32)
    ldm = load_ldm(out)
    assert ldm.vqvae.config.block_out_channels == [8, 16, 16]
    assert ldm.latent_shape == (3, 16, 16) and ldm.latent_scale > 0
    with torch.no_grad():
        x = diffusion.sample(ldm, 2, num_steps=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 64, 64) and torch.isfinite(x).all()
    phases = [json.loads(line)["phase"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert phases[-1] == "done"
    saved = json.loads((out / "training.json").read_text())
    assert saved["config"]["vq_widths"] == [8, 16, 16] and saved["images"] == 32

    # A second run with the same config finds every phase's final checkpoint: no new steps.
    n_lines = len(phases)
    train_ldm(out, *toyfaces.paths(toy_unseen), TINY, limit=32)
    again = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()][n_lines:]
    assert [r["phase"] for r in again] == ["done"]


def test_region_masks_are_mirrored_with_their_images(toy_unseen):
    import toyfaces
    lmdb, _ = toyfaces.paths(toy_unseen)
    regions = load_region_masks(lmdb, range(8))
    assert regions.shape == (8, 1, 64, 64) and regions.any()
    # Encode each image's index in its pixels so the batch shows which image (and which side) it is.
    images = torch.zeros(8, 3, 64, 64, dtype=torch.uint8)
    images[:, 0] = torch.arange(8, dtype=torch.uint8).view(8, 1, 1) * 20
    images[:, 1, :, :32] = 255  # left half marked: a mirrored image has it on the right
    x, r = _batch(images, 16, torch.Generator().manual_seed(0), regions)
    for xi, ri in zip(x, r):
        i = int(round((float(xi[0, 0, 0]) + 1) * 127.5 / 20))
        mirrored = bool(xi[1, 0, 0] < 0)
        expect = regions[i].flip(-1) if mirrored else regions[i]
        assert torch.equal(ri.bool(), expect)
