"""The toy latent diffusion model: its architectures and the shipped weights (``--ldm toy``).

Importing :mod:`toyfaces` registers the name ``"toy"`` with :func:`dvce.ldm.register_ldm`, so
``load_ldm("toy")`` loads ``toyfaces/weights/toy-ldm``. No torch is imported here.
"""
from __future__ import annotations

from pathlib import Path

from dvce.ldm import LDMNotAvailableError

TOY_LDM_NAME = "toy"
TOY_LDM_WEIGHTS = Path(__file__).resolve().parent / "weights" / "toy-ldm"


def toy_vq_config(codebook: int = 512, widths: tuple = (16, 32, 32)) -> dict:
    """Small VQModel with CompVis's structure (f4: three blocks, 3 latent channels)."""
    return dict(in_channels=3, out_channels=3, act_fn="silu", latent_channels=3,
                block_out_channels=widths, layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                norm_num_groups=8, num_vq_embeddings=codebook, sample_size=64, vq_embed_dim=3)


def toy_unet_config(latent_size: int = 16) -> dict:
    """Small UNet2DModel on the toy VQ latents (three levels, attention in the lower two)."""
    return dict(sample_size=latent_size, in_channels=3, out_channels=3, act_fn="silu",
                layers_per_block=1, block_out_channels=(64, 96, 128), attention_head_dim=32,
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=16,
                flip_sin_to_cos=True, freq_shift=0)


def toy_ldm_folder() -> Path:
    """The shipped toy LDM's diffusers folder (the resolver behind ``load_ldm("toy")``)."""
    if not (TOY_LDM_WEIGHTS / "unet").exists():
        raise LDMNotAvailableError(f"the toy LDM is missing at {TOY_LDM_WEIGHTS}; train it with "
                                   f"`ldvce toy train-ldm {TOY_LDM_WEIGHTS}`")
    return TOY_LDM_WEIGHTS
