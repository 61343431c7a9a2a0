import json
import time

import pytest
import torch

from dvce import diffusion
from dvce.ldm import (COMPVIS_ID, COMPVIS_UNET_CONFIG, COMPVIS_VQ_CONFIG, LDMNotAvailableError,
                      build_random_ldm, latent_scale_of, load_ldm)
from toyfaces.ldm import toy_unet_config, toy_vq_config


@pytest.fixture(scope="module")
def tiny_ldm():
    return build_random_ldm(toy_vq_config(64), toy_unet_config(16))


def test_compvis_offline_fails_fast_with_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    t = time.perf_counter()
    with pytest.raises(LDMNotAvailableError) as e:
        load_ldm(COMPVIS_ID)
    assert time.perf_counter() - t < 20
    msg = str(e.value)
    assert "huggingface-cli download CompVis/ldm-celebahq-256" in msg and "--ldm toy" in msg
    assert "config.json" not in msg  # not diffusers' misleading message


def test_local_folder_must_be_a_diffusers_ldm(tmp_path):
    with pytest.raises(LDMNotAvailableError, match="vqvae"):
        load_ldm(tmp_path)


def test_compvis_scale_is_one_not_diffusers_default(tmp_path):
    """The CompVis VQ config has no scaling_factor; diffusers would assume 0.18215 (#6725)."""
    from diffusers import VQModel
    cfg = dict(COMPVIS_VQ_CONFIG)
    vq = VQModel(**cfg)
    vq.save_pretrained(tmp_path / "vqvae")
    raw = json.loads((tmp_path / "vqvae" / "config.json").read_text())
    raw.pop("scaling_factor", None)  # as in the CompVis repository
    (tmp_path / "vqvae" / "config.json").write_text(json.dumps(raw))
    reloaded = VQModel.from_pretrained(tmp_path / "vqvae")
    assert abs(reloaded.config.scaling_factor - 0.18215) < 1e-6  # the trap exists
    assert latent_scale_of(tmp_path / "vqvae" / "config.json", reloaded) == 1.0
    raw["scaling_factor"] = 0.5
    (tmp_path / "vqvae" / "config.json").write_text(json.dumps(raw))
    assert latent_scale_of(tmp_path / "vqvae" / "config.json", reloaded) == 0.5


def test_decode_path_uses_the_latent_scale(tiny_ldm):
    z = torch.randn(1, *tiny_ldm.latent_shape)
    ref = tiny_ldm.vqvae.decode(z).sample
    tiny_ldm.latent_scale = 2.0
    try:
        assert torch.allclose(diffusion.decode(tiny_ldm, 2.0 * z), ref, atol=1e-5)
        x = torch.rand(1, 3, 64, 64) * 2 - 1
        assert torch.allclose(diffusion.encode(tiny_ldm, x), 2.0 * tiny_ldm.vqvae.encode(x).latents)
    finally:
        tiny_ldm.latent_scale = 1.0


def test_schedule_and_inversion_mirror(tiny_ldm):
    ts = diffusion.schedule(780, 100)
    assert ts[0] == 0 and ts[-1] == 780 and len(ts) == 79
    with pytest.raises(ValueError):
        diffusion.schedule(785, 100)
    z0 = diffusion.encode(tiny_ldm, torch.rand(2, 3, 64, 64) * 2 - 1)
    zT, traj = diffusion.ddim_invert(tiny_ldm, z0, ts, keep=True)
    assert len(traj) == len(ts) and torch.equal(traj[-1], zT)
    back = diffusion.ddim_denoise(tiny_ldm, zT, ts)
    assert back.shape == z0.shape and torch.isfinite(back).all()
    # a single step each way is an exact DDIM inverse when ε is the same
    z1, _, eps = diffusion.ddim_step(tiny_ldm, traj[1], ts, 1)
    assert z1.shape == traj[0].shape
    # continuing an inversion that stopped at ts[40] (adaptive's later attempts) gives the
    # latents of inverting all the way at once; continuing from the clean latent would not
    zc, tail = diffusion.ddim_invert(tiny_ldm, traj[40], ts[41:], keep=True, from_t=ts[40])
    assert len(tail) == len(ts) - 41
    assert torch.allclose(zc, zT, atol=1e-5) and torch.allclose(tail[0], traj[41], atol=1e-5)
    wrong = diffusion.ddim_invert(tiny_ldm, traj[40], ts[41:])
    assert not torch.allclose(wrong, zT, atol=1e-3)


def test_straight_through_quantised_decode_passes_gradients(tiny_ldm):
    z = torch.randn(1, *tiny_ldm.latent_shape, requires_grad=True)
    with torch.enable_grad():
        tiny_ldm.vqvae.requires_grad_(False)
        diffusion.decode(tiny_ldm, z, quantize=True).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_shipped_toy_ldm_loads_offline_and_samples_a_grid_quickly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ldm = load_ldm("toy")
    assert ldm.latent_shape == (3, 16, 16) and ldm.image_size == 64 and ldm.latent_scale != 0.18215
    t = time.perf_counter()
    imgs = diffusion.sample(ldm, 16, num_steps=20, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (16, 3, 64, 64) and time.perf_counter() - t < 60


@pytest.mark.integration
def test_exact_compvis_architecture_step_and_decode_at_256():
    ldm = build_random_ldm(COMPVIS_VQ_CONFIG, COMPVIS_UNET_CONFIG)
    assert ldm.latent_shape == (3, 64, 64) and ldm.image_size == 256
    assert sum(p.numel() for p in ldm.unet.parameters()) > 200e6
    with torch.no_grad():
        z = torch.randn(1, 3, 64, 64)
        z, x0, _ = diffusion.ddim_step(ldm, z, diffusion.schedule(780, 100), 78)
        img = diffusion.decode(ldm, x0)
    assert img.shape == (1, 3, 256, 256) and torch.isfinite(img).all()


def test_schedule_refuses_noise_levels_and_grids_off_the_range():
    from dvce.diffusion import schedule
    assert schedule(300, 10) == [0, 100, 200, 300]
    for t, n, says in ((1500, 10, "t_start"), (-100, 10, "t_start"), (300, 0, "num_steps"),
                       (350, 10, "not on the 10-step grid")):
        with pytest.raises(ValueError, match=says):
            schedule(t, n)
