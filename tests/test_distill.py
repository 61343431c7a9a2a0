"""The distilled guidance decoder (dvce/distill.py, ``ldvce distill-decoder``): architecture,
files, the gradient cosine it reports, training that learns and resumes."""
from types import SimpleNamespace

import pytest
import torch

from dvce import distill as D
from dvce.diffusion import decode
from dvce.ldm import build_random_ldm
from toyfaces.ldm import toy_unet_config, toy_vq_config


@pytest.fixture(scope="module")
def tiny_ldm():
    return build_random_ldm(toy_vq_config(32), toy_unet_config(8), seed=3)


def test_small_decoder_matches_the_ldm_geometry_and_round_trips(tiny_ldm, tmp_path):
    model = D.small_decoder_for(tiny_ldm, width=8)
    z = torch.randn(2, *tiny_ldm.latent_shape)
    size = tiny_ldm.image_size
    assert model(z).shape == decode(tiny_ldm, z).shape == (2, 3, size, size)
    D.save_grad_decoder(model, tmp_path / "gd", {"note": "x"})
    back = D.load_grad_decoder(tmp_path / "gd")
    assert torch.equal(back(z), model.eval()(z))
    with pytest.raises(FileNotFoundError, match="not a grad decoder folder"):
        D.load_grad_decoder(tmp_path)
    assert D.resolve_grad_decoder(tiny_ldm, "full") is None
    assert D.resolve_grad_decoder(tiny_ldm, "auto", ldm_folder=tmp_path / "none") is None
    (tmp_path / "ldm").mkdir()
    D.save_grad_decoder(model, tmp_path / "ldm" / D.GRAD_DECODER_DIR)
    assert isinstance(D.resolve_grad_decoder(tiny_ldm, "auto", tmp_path / "ldm"), D.SmallDecoder)


class _Full(torch.nn.Module):
    """The full decoder dressed as a grad decoder: its gradients must agree with themselves."""

    def __init__(self, ldm):
        super().__init__()
        self.ldm, self.config = ldm, SimpleNamespace(out_channels=3)

    def forward(self, z):
        return decode(self.ldm, z)


def test_evaluation_gives_cosine_one_for_the_full_decoder_and_less_for_a_fresh_one(tiny_ldm):
    z = torch.randn(4, *tiny_ldm.latent_shape)
    same = D.evaluate_grad_decoder(_Full(tiny_ldm), tiny_ldm, z)
    assert same["decode_l1"] == pytest.approx(0.0, abs=1e-6)
    assert same["grad_cosine"] == pytest.approx(1.0, abs=1e-5)
    fresh = D.evaluate_grad_decoder(D.small_decoder_for(tiny_ldm, width=8), tiny_ldm, z)
    assert fresh["grad_cosine"] < 0.9 and fresh["decode_l1"] > 0.01


def test_distillation_learns_and_resumes(tiny_ldm, tmp_path):
    """A few steps on a random decoder: the gradients it gives turn toward the full decoder's
    and the images toward its images; a rerun with more steps resumes from the checkpoint."""
    latents = torch.randn(80, *tiny_ldm.latent_shape)
    cfg = D.DistillConfig(steps=16, batch_size=4, width=8, checkpoint_every=8, lr=1e-2)
    torch.manual_seed(cfg.seed)  # the initialisation distill_decoder starts from
    train, held = latents[:-16], latents[-16:]
    before = D.evaluate_grad_decoder(D.small_decoder_for(tiny_ldm, width=8), tiny_ldm, held)
    report = D.distill_decoder(tiny_ldm, train, tmp_path / "gd", cfg, held_out=held,
                               progress=False)
    assert report["grad_cosine"] > before["grad_cosine"] + 0.15
    assert report["decode_l1"] < before["decode_l1"]
    assert (tmp_path / "gd" / D.WEIGHTS).exists() and (tmp_path / "gd" / D.CONFIG).exists()
    assert torch.load(tmp_path / "gd" / D.CHECKPOINT, weights_only=True)["step"] == 16
    D.distill_decoder(tiny_ldm, train, tmp_path / "gd",
                      D.DistillConfig(**{**vars(cfg), "steps": 18}), held_out=held, progress=False)
    assert torch.load(tmp_path / "gd" / D.CHECKPOINT, weights_only=True)["step"] == 18


def _tiny_problem(ldm):
    from dvce.samplers import Problem
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.Flatten(),
                              torch.nn.LazyLinear(40))
    clf(torch.zeros(1, 3, ldm.image_size, ldm.image_size))
    return Problem(ldm, clf.eval().requires_grad_(False), 31)


def test_guided_takes_its_gradient_through_the_grad_decoder(tiny_ldm, tmp_path):
    """``grad_decoder`` changes the gradient (so the counterfactual), never the final decoding:
    with a grad decoder the result differs from the full decoder's, and the final image is the
    VQ decoder's (its logit is the classifier's on it)."""
    from dvce.samplers import get_sampler
    D.save_grad_decoder(D.small_decoder_for(tiny_ldm, width=8), tmp_path / "gd")
    problem = _tiny_problem(tiny_ldm)
    x = torch.rand(2, 3, tiny_ldm.image_size, tiny_ldm.image_size) * 2 - 1
    opts = dict(num_steps=10, t_start=200, retry_scales=(), views=1)
    full = get_sampler("guided")(problem, x, torch.ones(2), **opts)
    small = get_sampler("guided")(problem, x, torch.ones(2), grad_decoder=str(tmp_path / "gd"),
                                  **opts)
    assert full.info["grad_decoder"] == "full" and small.info["grad_decoder"] == str(tmp_path / "gd")
    assert not torch.allclose(full.counterfactual, small.counterfactual)
    assert torch.isfinite(small.counterfactual).all()
    # "auto" on an LDM without a grad_decoder/ folder is the full decoder
    auto = get_sampler("guided")(problem, x, torch.ones(2), grad_decoder="auto", **opts)
    assert auto.info["grad_decoder"] == "full" and torch.equal(auto.counterfactual,
                                                               full.counterfactual)
    with pytest.raises(FileNotFoundError, match="not a grad decoder folder"):
        get_sampler("guided")(problem, x, torch.ones(2), grad_decoder=str(tmp_path), **opts)


def test_the_toy_ldm_ships_a_grad_decoder_that_auto_finds():
    import toyfaces  # noqa: F401  (registers the toy LDM)
    from dvce.ldm import load_ldm
    ldm = load_ldm("toy")
    gd = D.resolve_grad_decoder(ldm, "auto")
    assert isinstance(gd, D.SmallDecoder)
    z = torch.randn(2, *ldm.latent_shape)
    assert gd(z).shape == decode(ldm, z).shape


@pytest.mark.integration
def test_guided_steps_at_256_with_a_fresh_small_decoder(tmp_path):
    """The exact CompVis architectures (random weights) at 256²: a few guided steps whose
    gradient goes through a freshly initialised small decoder, the final image through the VQ
    decoder."""
    from classifier.models import ResNet50Classifier
    from dvce.ldm import COMPVIS_UNET_CONFIG, COMPVIS_VQ_CONFIG, build_random_ldm
    from dvce.samplers import Problem, get_sampler
    ldm = build_random_ldm(COMPVIS_VQ_CONFIG, COMPVIS_UNET_CONFIG)
    gd = D.small_decoder_for(ldm, width=16)
    assert gd.config.upsamples == 2 and gd(torch.randn(1, 3, 64, 64)).shape == (1, 3, 256, 256)
    D.save_grad_decoder(gd, tmp_path / "gd")
    clf = ResNet50Classifier(arch="resnet50").eval().requires_grad_(False)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    out = get_sampler("guided")(Problem(ldm, clf, 31), x, torch.ones(1), num_steps=10,
                                t_start=200, retry_scales=(), views=1,
                                grad_decoder=str(tmp_path / "gd"))
    assert out.counterfactual.shape == (1, 3, 256, 256)
    assert torch.isfinite(out.counterfactual).all()


def test_step_profile_counts_the_distilled_step_cheaper():
    """`ldvce bench generate --arch compvis`'s profile, on the toy architectures (fast): every
    part is timed, and the counted FLOPs of a guided step fall with the small decoder."""
    from benchmarks.parts import bench_parts
    r = bench_parts(n=1, device="cpu", views=2, width=8, blocks=1, rate=True,
                    vq_config=toy_vq_config(64), unet_config=toy_unet_config(16), image_size=64,
                    peak_tflops=1.0)
    assert set(r["seconds"]) == {"unet_forward", "vq_decoder_forward", "vq_decoder_forward_vjp",
                                 "small_decoder_forward_vjp", "classifier_views_forward_backward"}
    assert all(v > 0 for v in r["seconds"].values())
    assert 0 < r["step_tflop"]["distilled"] < r["step_tflop"]["full"]
    assert r["mfu"]["full"] == pytest.approx(r["achieved_tflops"]["full"])
    assert r["counterfactuals_per_second"]["full"] > 0 and r["peak_rss_gib"] > 0
