"""Loading latent diffusion models: CompVis/ldm-celebahq-256 (hub id or local folder) or a
model registered under a short name (``"toy"``, registered by ``import toyfaces``).

The model exchange format is the diffusers folder (``model_index.json``, ``vqvae/``, ``unet/``,
``scheduler/``), exactly as CompVis publishes it. We own the sampling loop instead of using
``LDMPipeline`` because of the latent-scale trap (diffusers issue #6725): the CompVis VQ config
has no ``scaling_factor``, diffusers then assumes 0.18215, but the true scale is 1.0. Rule here:
the scale is the ``scaling_factor`` *written in* ``vqvae/config.json``, and 1.0 when the file
does not name one.

Registered names keep this module free of any one model's location: a package that ships a model
calls :func:`register_ldm` when it is imported (``toyfaces`` registers ``"toy"``; the ``ldvce``
command imports it). torch is imported only when a model is built, so registering costs nothing.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

COMPVIS_ID = "CompVis/ldm-celebahq-256"

# name -> resolver returning the diffusers folder of a registered model (see register_ldm)
_REGISTRY: dict[str, Callable[[], str | os.PathLike]] = {}
# names whose plug-in is known but maybe not imported: the error says what to import
_PLUGIN_HINTS = {"toy": "toyfaces"}

# CompVis's DDIM schedule for ldm-celebahq-256 (scheduler/scheduler_config.json).
COMPVIS_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=True,
                        steps_offset=0)

# The exact CompVis/ldm-celebahq-256 architectures (vqvae/config.json, unet/config.json); no
# scaling_factor on purpose (the real file has none).
COMPVIS_VQ_CONFIG = dict(in_channels=3, out_channels=3, act_fn="silu", latent_channels=3,
                         block_out_channels=(128, 256, 512), layers_per_block=2,
                         down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=32,
                         num_vq_embeddings=8192, sample_size=256, vq_embed_dim=3)
COMPVIS_UNET_CONFIG = dict(sample_size=64, in_channels=3, out_channels=3, act_fn="silu",
                           attention_head_dim=32, block_out_channels=(224, 448, 672, 896),
                           center_input_sample=False,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                             "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D",
                                           "UpBlock2D"),
                           downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
                           layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5,
                           norm_num_groups=32, time_embedding_type="positional")


class LDMNotAvailableError(RuntimeError):
    """The requested LDM weights are not on this machine (clear message with the way out)."""


def register_ldm(name: str, resolver: Callable[[], str | os.PathLike]) -> None:
    """Make ``load_ldm(name)`` (and ``--ldm name``) load the diffusers folder ``resolver()`` returns.

    ``resolver`` is called at load time, so it may check or fetch the files and raise
    :class:`LDMNotAvailableError` with the way to get them. Names must not contain ``/`` (they
    would read as hub ids); registering a name again replaces it.
    """
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"an LDM name must be a plain word, got {name!r}")
    if not callable(resolver):
        raise TypeError(f"resolver for {name!r} must be callable, got {type(resolver).__name__}")
    _REGISTRY[name] = resolver


def registered_ldms() -> list[str]:
    """The short names :func:`load_ldm` accepts besides hub ids and folders."""
    return sorted(_REGISTRY)


@dataclass
class LDM:
    """A latent diffusion model: VQ autoencoder, UNet and DDIM scheduler, plus its geometry."""
    vqvae: torch.nn.Module
    unet: torch.nn.Module
    scheduler: object
    latent_scale: float
    source: str
    folder: Path | None = None  # the diffusers folder it was loaded from (None: built in memory)

    @property
    def image_size(self) -> int:
        return int(self.vqvae.config.sample_size)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.downsample
        return (int(self.vqvae.config.latent_channels), s, s)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device=None, dtype=None) -> "LDM":
        for m in (self.vqvae, self.unet):
            m.to(device) if dtype is None else m.to(device=device, dtype=dtype)
        return self


def latent_scale_of(vq_config_path: Path | None, vqvae) -> float:
    """The latent scale *written* in the VQ config; 1.0 when absent (CompVis convention)."""
    if vq_config_path is not None and vq_config_path.exists():
        raw = json.loads(vq_config_path.read_text())
        return float(raw.get("scaling_factor", 1.0))
    # Built in memory: diffusers fills a default 0.18215 we must not trust unless set on purpose.
    return float(getattr(vqvae, "_ldvce_latent_scale", 1.0))


def _offline_choices() -> str:
    names = registered_ldms()
    if names:
        return "or use a registered offline model: " + ", ".join(f"--ldm {n}" for n in names)
    return "or register an offline model (`import toyfaces` registers --ldm toy)"


def _missing_message(source: str, err: Exception) -> str:
    return (f"cannot load the latent diffusion model {source!r}: the weights are not on this machine "
            f"and cannot be downloaded (offline or no network: {type(err).__name__}).\n"
            f"Get them once with network access:\n"
            f"    huggingface-cli download {COMPVIS_ID} --local-dir /path/to/ldm-celebahq-256\n"
            f"then pass that folder (--ldm /path/to/ldm-celebahq-256), {_offline_choices()}.")


def _check_folder(p: Path, source: str) -> Path:
    if not (p / "unet").is_dir() or not (p / "vqvae").is_dir():
        raise LDMNotAvailableError(f"{p} (from {source!r}) is not a diffusers LDM folder (needs "
                                   f"vqvae/, unet/, scheduler/ as in {COMPVIS_ID})")
    return p


def resolve_source(source: str | os.PathLike) -> tuple[str, Path | None]:
    """(description, local folder or None for a hub id).

    Order: a registered name (:func:`register_ldm`), an existing local folder, a hub id
    (``owner/name``).
    """
    s = str(source)
    if s in _REGISTRY:
        return s, _check_folder(Path(_REGISTRY[s]()), s)
    p = Path(s).expanduser()
    if p.exists():
        return s, _check_folder(p, s)
    if s.count("/") == 1 and not s.startswith((".", "/")):
        return s, None
    hint = ""
    if s in _PLUGIN_HINTS:
        hint = (f"; {s!r} is registered by the {_PLUGIN_HINTS[s]} package: `import "
                f"{_PLUGIN_HINTS[s]}` first (the ldvce command does)")
    known = ", ".join(registered_ldms()) or "none"
    raise LDMNotAvailableError(f"LDM source {s!r} is neither a registered name (registered: "
                               f"{known}), a local folder, nor a hub id{hint}")


def torch_dtype(name: str):
    """The torch dtype of a precision name the commands take (``fp32``, ``bf16``)."""
    import torch  # heavy: this module stays torch-free at import
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(dtypes)}")
    return dtypes[name]


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's bf16 path: AMX or AVX512-BF16)."""
    import torch
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no native path either
        return False


def slow_precision_warning(name: str, device) -> str | None:
    """Why ``name`` will run slower than float32 on ``device``, or None when it should not.

    bfloat16 pays only where the hardware computes it natively: CUDA GPUs that support it, and
    CPUs with AMX or AVX512-BF16 (oneDNN's bf16 path). Elsewhere PyTorch emulates it: on a
    2-core AVX2 EPYC the toy samplers ran 10-21x *slower* in bf16 than in fp32
    (``ldvce bench generate --n 8 --dtype bf16``, docs/benchmarks.md)."""
    if name != "bf16":
        return None
    import torch
    dev = torch.device(device)
    if dev.type == "cuda":
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            return (f"{torch.cuda.get_device_name(dev)} has no native bfloat16: --dtype bf16 "
                    f"runs slower than fp32 there")
        return None
    if dev.type == "cpu" and not native_bf16_cpu():
        return (f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bfloat16 "
                f"(AMX or AVX512-BF16): --dtype bf16 is emulated and runs several times slower "
                f"than fp32 here")
    return None


def load_ldm(source: str | os.PathLike = COMPVIS_ID, device="cpu", dtype=None) -> LDM:
    """Load a latent diffusion model.

    Parameters
    ----------
    source : ``"CompVis/ldm-celebahq-256"`` (hub id, from the local HF cache when offline), a local
        diffusers folder, or a registered name (``"toy"``, the toyfaces LDM, once ``toyfaces`` is
        imported).
    device, dtype : where and in which precision (torch dtype, default float32) to put the
        networks.

    Raises
    ------
    LDMNotAvailableError
        When the weights are not available, with the command that gets them.
    """
    desc, folder = resolve_source(source)  # fails fast, before the heavy imports
    # heavy: torch and diffusers; this module is imported by `ldvce --help` and `import toyfaces`
    import torch
    from diffusers import DDIMScheduler, UNet2DModel, VQModel
    dtype = torch.float32 if dtype is None else dtype
    if folder is None:  # hub id: only what is in the local cache when offline
        try:
            from huggingface_hub import snapshot_download  # heavy as above; hub ids only
            folder = Path(snapshot_download(desc, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
        except Exception as e:  # noqa: BLE001 - every failure here means "weights not available"
            raise LDMNotAvailableError(_missing_message(desc, e)) from e
    try:
        kw = dict(torch_dtype=dtype, low_cpu_mem_usage=False)
        vqvae = VQModel.from_pretrained(folder / "vqvae", **kw)
        unet = UNet2DModel.from_pretrained(folder / "unet", **kw)
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    except (OSError, ValueError) as e:
        raise LDMNotAvailableError(_missing_message(desc, e)) from e
    scale = latent_scale_of(folder / "vqvae" / "config.json", vqvae)
    vqvae.eval().requires_grad_(False)
    unet.eval().requires_grad_(False)
    return LDM(vqvae, unet, scheduler, scale, desc, Path(folder)).to(device)


def build_random_ldm(vq_config: dict, unet_config: dict, latent_scale: float = 1.0,
                     seed: int = 0) -> LDM:
    """An LDM with random weights of a given architecture (tests, GPU timing benchmarks)."""
    # heavy: as in load_ldm
    import torch
    from diffusers import DDIMScheduler, UNet2DModel, VQModel
    torch.manual_seed(seed)
    vqvae, unet = VQModel(**vq_config), UNet2DModel(**unet_config)
    vqvae.eval().requires_grad_(False)
    unet.eval().requires_grad_(False)
    return LDM(vqvae, unet, DDIMScheduler(**COMPVIS_SCHEDULE), latent_scale, "random")
