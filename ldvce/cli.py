"""The ``ldvce`` command: one entry point for the whole toolkit (orchestration only).

Each command is the function below registered under its name (``@CLI.command("toy make-data")``):
its typed, documented parameters are the command's arguments (see :mod:`ldvce.cliparse`), and
its body one call into the library. ``ldvce generate`` also gets one option group per sampler,
from the sampler's own signature and docstring (``--guided.scale 6``). Heavy imports happen
inside the functions so that ``ldvce --help`` answers at once. Run ``ldvce <command> --help``.

To add a command: write a function with keyword parameters, a numpy-style docstring entry for
each (the help) and a one-line summary, and decorate it with ``@CLI.command("name")`` (or
``"group action"`` after ``CLI.group("group", help)``). A script module that owns an argparse
parser (``add_arguments``/``run``, like ``study/evalstudy.py``) is registered with
:func:`_script_command`. ``ldvce train`` hands its arguments to LightningCLI unparsed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

os.environ.setdefault("WANDB_MODE", "offline")

from ldvce.cliparse import Registry, build_parser as _build, parse, selected_path  # noqa: E402
from classifier.attributes import attribute_name  # noqa: E402
from classifier.devices import resolve_device as _device  # noqa: E402

DESCRIPTION = ("Latent diffusion visual counterfactual explanations (lDVCE), LRP/CRP explanations "
               "and human relevance heatmaps. Everything runs offline on the toyfaces world; real "
               "runs use CelebA-HQ and CompVis/ldm-celebahq-256.")

EPILOG = """examples:
  ldvce demo --out runs/demo                      whole pipeline on the offline toy world
  ldvce demo --spurious                           a classifier with a spurious cue, exposed
  ldvce toy make-data data/toy --n 2000 --seed 3  render a toyfaces dataset (CelebA-HQ formats)
  ldvce train --config configs/classifier/toy_resnet.yaml
  ldvce generate --lmdb data/celebahq256.lmdb --attr-file data/CelebAMask-HQ-attribute-anno.txt \\
        --indices 27300 27398 --classifier res50.ckpt --ldm CompVis/ldm-celebahq-256 --out runs/cf
  ldvce generate --images imgs --classifier toy_resnet --ldm toy --out runs/cf \\
        --method guided --guided.scale 0.6 --guided.retry_scales '[]'
  ldvce evaluate runs/cf --oracle oracle.ckpt
  ldvce explain runs/cf --classifier res50.ckpt --composites lrp0,epsilon_plus_flat
  ldvce study eval --export studyentries.csv --images data/test_counterfactual --out runs/study
  ldvce study serve runs/cf --db study.sqlite --port 8000 --admin-token "$TOKEN"
"""

CLI = Registry()


# ---------------------------------------------------------------------------------------- toy
CLI.group("toy", "the offline toyfaces world: data, LDM training, samples")


@CLI.command("toy make-data")
def toy_make_data(out_dir: str, *, n: int = 2000, seed: int = 0, size: int = 64,
                  spurious: str | None = None) -> None:
    """Render a toyfaces dataset (LMDB + attribute file + masks + meta.json).

    Parameters
    ----------
    out_dir : str
        Output folder.
    n : int
        Number of faces.
    seed : int
        Random seed (same seed, same faces).
    size : int
        Image size in pixels.
    spurious : str
        Plant a correlation TARGET:CUE:STRENGTH, e.g. Smiling:Wearing_Hat:0.9.
    """
    import toyfaces
    plant = None
    if spurious:
        try:
            target, cue, strength = spurious.split(":")
            plant = toyfaces.Spurious(target, cue, float(strength))
        except ValueError:
            raise SystemExit(f"--spurious must be TARGET:CUE:STRENGTH, got {spurious!r}")
    out = toyfaces.make_dataset(out_dir, n=n, seed=seed, size=size, spurious=plant)
    print(f"wrote {n} toy faces to {out}")


@CLI.command("toy train-ldm")
def toy_train_ldm(out_dir: str, *, data: str, n: int = 12000, data_seed: int = 1000,
                  vq_warmup_steps: int = 1200, vq_quant_steps: int = 400, unet_steps: int = 4000,
                  decoder_steps: int = 400, seed: int = 0, threads: int = 2) -> None:
    """Train the toy VQ autoencoder + UNet; saves a diffusers folder (resumable).

    Parameters
    ----------
    out_dir : str
        Output folder (the diffusers model; checkpoints while training).
    data : str
        Toyfaces folder to train on (rendered first when missing).
    n : int
        Images to render when --data is missing.
    data_seed : int
        Seed of the rendered training faces.
    vq_warmup_steps : int
        VQ autoencoder steps without quantisation.
    vq_quant_steps : int
        VQ autoencoder steps with the quantiser.
    unet_steps : int
        UNet (denoiser) training steps.
    decoder_steps : int
        Decoder-only fine-tuning steps (latents fixed).
    seed : int
        Seed of the training run.
    threads : int
        CPU threads for torch.
    """
    import toyfaces
    from toyfaces.train_ldm import LDMTrainConfig, train_ldm
    folder = Path(data)
    if not toyfaces.is_complete(folder):
        print(f"rendering {n} training faces (seed {data_seed}) into {folder}")
        toyfaces.make_dataset(folder, n=n, seed=data_seed)
    cfg = LDMTrainConfig(vq_warmup_steps=vq_warmup_steps, vq_quant_steps=vq_quant_steps,
                         unet_steps=unet_steps, decoder_steps=decoder_steps, seed=seed,
                         threads=threads)
    print(f"saved the toy LDM to {train_ldm(out_dir, *toyfaces.paths(folder), cfg)}")


@CLI.command("toy sample")
def toy_sample(*, ldm: str = "toy", n: int = 16, steps: int = 50, seed: int = 0,
               device: str = "auto", out: str = "samples.png") -> None:
    """Unconditional DDIM samples of an LDM as a grid PNG.

    Parameters
    ----------
    ldm : str
        toy, a diffusers folder or a hub id.
    n : int
        Number of samples (the grid shows the largest square number of them).
    steps : int
        DDIM steps.
    seed : int
        Seed of the initial noise (same seed, same samples).
    device : str
        auto, cpu, cuda or cuda:N.
    out : str
        PNG file to write.
    """
    import torch
    from classifier.images import save_image
    from dvce.diffusion import sample
    from dvce.ldm import load_ldm
    model = load_ldm(ldm, device=_device(device))
    imgs = sample(model, n, num_steps=steps, generator=torch.Generator().manual_seed(seed))
    k = int(n ** 0.5)
    grid = imgs[: k * k].cpu().reshape(k, k, *imgs.shape[1:]).permute(2, 0, 3, 1, 4)
    save_image(grid.reshape(3, k * imgs.shape[2], k * imgs.shape[3]), out)
    print(f"wrote a {k}x{k} sample grid to {out}")


# --------------------------------------------------------------------------------------- data
CLI.group("data", "CelebA-HQ data tools")


@CLI.command("data build-lmdb")
def data_build_lmdb(images_dir: str, out: str, *, size: int = 256) -> None:
    """Build a diffae-layout LMDB ({size}-{idx:05d} keys) from an image folder.

    Parameters
    ----------
    images_dir : str
        Folder of images (PNG/JPEG/WebP…); unreadable files are skipped and reported.
    out : str
        LMDB to write; filenames.txt beside it records the order.
    size : int
        Resize + centre-crop to this size.
    """
    import numpy as np
    from classifier.images import UnreadableImageError, encode_png, load_pil
    from classifier.lmdb_store import write_lmdb
    from fileio import list_image_files
    files = list_image_files(images_dir)
    kept, skipped = [], []

    def gen():
        for p in files:
            try:
                img = load_pil(p, size)
            except UnreadableImageError as e:
                skipped.append(str(e))
                continue
            kept.append(p.name)
            yield encode_png(np.asarray(img))

    if not files:
        raise SystemExit(f"ldvce data build-lmdb: no image files in {images_dir}")
    n = write_lmdb(out, gen(), size=size)
    for s in skipped:
        print(f"skipped: {s}", file=sys.stderr)
    if n == 0:
        import shutil
        shutil.rmtree(out, ignore_errors=True)
        raise SystemExit(f"ldvce data build-lmdb: none of the {len(files)} files in {images_dir} "
                         "is a readable image; nothing written")
    (Path(out) / "filenames.txt").write_text("\n".join(kept) + "\n")
    print(f"wrote {n} images to {out} (keys {size}-00000…; order in filenames.txt)")


# ----------------------------------------------------------------------------------- classifier
@CLI.command("train", passthrough=True)
def train(argv: list[str]) -> None:
    """Train a classifier: --config configs/classifier/<name>.yaml [LightningCLI options].

    All options go to LightningCLI (see ``ldvce train --help``), plus ``--logger csv|wandb|none``
    and ``--export PATH.safetensors``.
    """
    from classifier.train import main as train_main
    train_main(argv)


CLI.group("classifier", "classifier tools")


@CLI.command("classifier evaluate")
def classifier_evaluate(checkpoint: str, *, data: str, attr_file: str | None = None,
                        split: str = "test", attribute: str = "Smiling",
                        export_misclassified: str | None = None, batch_size: int = 64,
                        device: str = "auto") -> None:
    """Per-attribute accuracy / balanced accuracy / AUROC of a checkpoint.

    Parameters
    ----------
    checkpoint : str
        Checkpoint (.ckpt/.safetensors) or a registered name: toy_resnet, toy_linear, toy_oracle…
    data : str
        LMDB or toyfaces folder.
    attr_file : str
        CelebAMask-HQ-attribute-anno.txt (not needed for toyfaces).
    split : str
        train, val, test or all.
    attribute : str
        Attribute highlighted in the table (and exported with --export-misclassified).
    export_misclassified : str
        Folder: write {idx}_{gt}_misclassified.png for the attribute's errors.
    batch_size : int
        Images per forward pass.
    device : str
        auto, cpu, cuda or cuda:N.
    """
    from classifier.evaluate import evaluate_checkpoint
    from classifier.registry import resolve_classifier
    try:
        path = resolve_classifier(checkpoint)
    except FileNotFoundError as e:
        raise SystemExit(f"ldvce classifier evaluate: {e}")
    evaluate_checkpoint(path, data, attr_file, split=split, attribute=attribute,
                        export_misclassified=export_misclassified, batch_size=batch_size,
                        device=_device(device))


# --------------------------------------------------------------------------------- generation
def _sampler_groups(parser) -> None:
    """``ldvce generate``: --method's choices and default, and one option group per sampler
    generated from its signature and docstring (``--guided.scale``, ``--seed.max_iter``…)."""
    from dvce.samplers import DEFAULT_METHOD, NOT_OPTIONS, SAMPLERS
    for action in parser._actions:
        if action.dest == "method":
            action.choices = list(SAMPLERS)
    parser.set_defaults(method=DEFAULT_METHOD)
    for name, sampler in SAMPLERS.items():
        parser.add_function_arguments(sampler, nested_key=name,
                                      skip={"problem", "x", "target", *NOT_OPTIONS})


@CLI.command("generate", extend=_sampler_groups)
def generate(*, images: str | None = None, lmdb: str | None = None,
             attr_file: str | None = None, indices: list[int] | None = None, classifier: str,
             ldm: str = "CompVis/ldm-celebahq-256", attribute: str = "Smiling",
             target: Literal["auto", "0", "1"] = "auto", method: str | None = None, out: str,
             batch_size: int = 8, device: str = "auto", devices: int | None = None,
             num_nodes: int = 1, accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto",
             strategy: Literal["auto", "ddp"] = "auto", num_cfs: int = 1,
             dtype: Literal["fp32", "bf16"] = "fp32", **sampler_options) -> dict | None:
    """Generate counterfactuals (one folder per image, resumable).

    Give --images or --lmdb. The chosen --method's options are its group below (e.g.
    --guided.scale); the options of the other methods must stay at their defaults.

    Parameters
    ----------
    images : str
        Folder of images (PNG/JPEG/WebP…).
    lmdb : str
        CelebA-HQ LMDB or toyfaces .lmdb.
    attr_file : str
        Attribute file for --lmdb (default: beside the LMDB).
    indices : list of int
        LMDB rows to use (default: all).
    classifier : str
        Classifier checkpoint (.ckpt/.safetensors) or a toy name (toy_resnet…).
    ldm : str
        Hub id, diffusers folder or 'toy'.
    attribute : str
        Attribute name or index.
    target : str
        auto flips the current decision; 0 or 1 asks for that class.
    method : str
        The sampler (method).
    out : str
        Output folder (an earlier run there is resumed).
    batch_size : int
        Images per sampler call.
    device : str
        auto, cpu, cuda or cuda:N (one process; with --devices use --accelerator).
    devices : int
        Several processes (Lightning Fabric): processes per node, GPUs with --accelerator gpu,
        CPU processes with --accelerator cpu; under SLURM equal to --ntasks-per-node. The images
        are cut into batches as one process would cut them and the batches dealt out, so
        per-image results equal a one-process run with the same --batch-size; finished folders
        are skipped before the work is split (docs/slurm_generate.sbatch).
    num_nodes : int
        Nodes: under SLURM equal to --nodes; without SLURM run the same command on every node
        with NODE_RANK, MASTER_ADDR and MASTER_PORT set.
    accelerator : str
        With --devices: auto uses the GPUs when there are any.
    strategy : str
        With --devices: auto is ddp for more than one process (gloo on CPU, NCCL on GPUs).
    num_cfs : int
        Up to this many different counterfactuals per image (guided, adaptive): each next one
        must keep the pixels the earlier flipping ones changed most (|Δ| at least 0.7 of its
        peak, dvce.diverse.KEEP_OUT_REL), so it flips the decision elsewhere (adaptive's
        later ones edit anywhere else, without an evidence region); ranked by L1, rank 1 in
        the image's folder, rank r in cf<r>/; one with more than 4× rank 1's L1 (a repaint,
        dvce.diverse.MAX_L1_RATIO) is dropped.
        `ldvce evaluate` then reports every rank and their diversity.
    dtype : str
        Precision of the LDM and the classifier: bf16 where the hardware computes it natively
        (GPUs; CPUs with AMX or AVX512-BF16): measured 1.3-1.5x faster on the toy world and
        2.9x per guided step of the CompVis architecture on such a CPU, at a slightly larger
        change (docs/benchmarks.md). Elsewhere (e.g. AVX2-only CPUs) bf16 is emulated and
        several times slower than fp32: a warning says so. The DDIM arithmetic stays in
        float32; images are written as usual.
    """
    from dvce import runner
    from dvce.samplers import DEFAULT_METHOD
    method = method or DEFAULT_METHOD
    if (images is None) == (lmdb is None):
        raise SystemExit("ldvce generate: give exactly one of --images or --lmdb")
    options = _method_options(method, sampler_options)
    from dvce.diverse import check_method
    try:
        check_method(method, num_cfs)  # before anything is loaded
    except ValueError as e:
        raise SystemExit(f"ldvce generate: {e}")
    several = devices is not None  # Lightning Fabric processes (dvce/distributed.py)
    if several and device != "auto":
        raise SystemExit("ldvce generate: --device picks one device; with --devices use "
                         "--accelerator (cpu/gpu) instead")
    source = Path(images or lmdb)  # named before any model loads
    if images and not source.is_dir():
        raise SystemExit(f"ldvce generate: --images must be a folder of images; {source} "
                         f"{'is a file' if source.exists() else 'was not found'}")
    if lmdb and not source.exists():
        raise SystemExit(f"ldvce generate: --lmdb not found: {source}")
    # with --devices each process moves its own copy from the CPU to its accelerator
    runs_on = _device("cpu" if accelerator == "cpu" else "auto") if several else None
    problem = _problem(ldm, classifier, attribute, _device("cpu" if several else device), dtype,
                       runs_on=runs_on)
    size = problem.ldm.image_size
    if images:
        items = runner.folder_items(images, size)
    else:
        items = runner.lmdb_items(lmdb, attr_file or _sibling_attr_file(lmdb), indices, size)
    settings = {"attribute": attribute_name(attribute), "ldm": str(ldm),
                "classifier": str(classifier), "dtype": dtype}
    if several:
        from dvce.distributed import run_distributed
        try:
            summary = run_distributed(items, problem, out, method=method, target=target,
                                      batch_size=batch_size, options=options, settings=settings,
                                      devices=devices, num_nodes=num_nodes,
                                      accelerator=accelerator, strategy=strategy,
                                      num_cfs=num_cfs)
        except ValueError as e:
            raise SystemExit(f"ldvce generate: {e}")
        if summary is None:
            return None  # not rank 0: rank 0 reports
    else:
        try:
            summary = runner.run(items, problem, out, method=method, target=target,
                                 batch_size=batch_size, options=options, settings=settings,
                                 num_cfs=num_cfs)
        except ValueError as e:
            raise SystemExit(f"ldvce generate: {e}")
    _report_generation(summary, method, out, items, size)
    return summary


def _problem(ldm: str, classifier: str, attribute: str, device, dtype: str = "fp32",
             runs_on=None):
    """The LDM and the classifier on ``device`` in ``dtype`` (fp32, bf16), as a sampler's
    ``Problem``; warns when ``dtype`` is emulated where the work ``runs_on`` (default:
    ``device``; the processes of ``--devices`` move their copies to their own devices)."""
    from classifier.attributes import attribute_index
    from classifier.models import load_classifier
    from classifier.registry import resolve_classifier
    from dvce.ldm import load_ldm, slow_precision_warning, torch_dtype
    from dvce.samplers import Problem
    precision = torch_dtype(dtype)
    slow = slow_precision_warning(dtype, runs_on or device)
    if slow:
        print(f"warning: {slow}")
    # the cheap checks first: nothing loads before a misspelt attribute or path is named (main()
    # reports the errors)
    index = attribute_index(attribute)
    clf = load_classifier(resolve_classifier(classifier), map_location=device)
    model = load_ldm(ldm, device=device, dtype=precision)
    return Problem(model, clf.requires_grad_(False).to(precision), index)


def _converted_inputs(paths: list[str], size: int | None) -> list[str]:
    """``"name W×H MODE"`` of each readable image file that is not ``size``² RGB (read from the
    file headers only; unreadable ones are reported by the run)."""
    from PIL import Image
    odd = []
    for p in paths:
        try:
            with Image.open(p) as im:
                if im.mode != "RGB" or (size and im.size != (size, size)) or im.width != im.height:
                    odd.append(f"{Path(p).name} {im.width}×{im.height} {im.mode}")
        except Exception:  # noqa: BLE001 - unreadable: the manifest says why
            continue
    return odd


def _report_generation(summary: dict, method: str, out, items, size: int | None = None) -> None:
    """Print a generation run's outcome, the input files that had to be cropped, resized or
    converted to ``size``² RGB, then every unreadable input (where it came from) and every
    failed image (why)."""
    from dvce import runfolder
    l1 = summary["mean_l1"]
    print(f"{summary['n_generated']} counterfactuals ({method}): flip rate "
          f"{summary['flip_rate']:.3f}, mean L1 {float('nan') if l1 is None else l1:.4f}, "
          f"{summary['seconds_per_image'] or 0:.2f} s/image; {summary['n_failed']} failed, "
          f"{summary['n_unreadable']} unreadable -> {out}")
    sources = {it.image_id: it.source for it in items}
    converted = _converted_inputs([s["path"] for s in sources.values() if "path" in s],
                                  size)
    if converted:
        print(f"note: {len(converted)} input(s) were not square RGB at the model's size and were "
              f"centre-cropped, resized and converted: {', '.join(converted[:5])}"
              f"{' …' if len(converted) > 5 else ''}")
    for e in runfolder.read_manifest(out).values():
        if e["status"] == "unreadable":
            src = sources.get(e["image"], {})
            where = src.get("path") or f"{src.get('lmdb')}[{src.get('index')}]"
            reason = e.get("reason") or ""
            print(f"unreadable: {reason if reason.startswith(where) else f'{where}: {reason}'}")
        elif e["status"] == "failed":
            print(f"failed: {e['image']}: {e.get('reason')}")


def _method_options(method: str, groups: dict) -> dict:
    """The chosen sampler's options; another sampler's option set away from its default is an
    error (it would do nothing)."""
    from dvce.samplers import get_sampler, sampler_defaults
    try:
        get_sampler(method)
    except KeyError as e:
        raise SystemExit(f"ldvce generate: {e.args[0]}")
    for name, values in groups.items():
        if name == method or not values:
            continue
        defaults = sampler_defaults(name)
        changed = [k for k, v in values.items() if k in defaults and v != defaults[k]]
        if changed:
            raise SystemExit(f"ldvce generate: --{name}.{changed[0]} is an option of --method "
                             f"{name}, but --method is {method}")
    return dict(groups.get(method) or {})


def _sibling_attr_file(lmdb):
    p = Path(lmdb).parent / "CelebAMask-HQ-attribute-anno.txt"
    if not p.exists():
        raise SystemExit(f"--attr-file is required (no {p})")
    return p


@CLI.command("distill-decoder")
def distill_decoder(*, ldm: str = "toy", data: str, out: str, n: int = 4000, steps: int = 1500,
                    batch_size: int = 32, lr: float = 2e-3, vjp_weight: float = 0.5,
                    noise: float = 0.3, width: int = 32, blocks: int = 1, seed: int = 0,
                    checkpoint_every: int = 250, devices: int | None = None,
                    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto",
                    device: str = "auto") -> dict | None:
    """Distil a small guidance decoder from an LDM's VQ decoder (for the samplers' grad_decoder).

    Trains a small convolutional decoder (TAESD-style) on the LDM's latents of --data to
    reproduce the VQ decoder's images and its vector-Jacobian products (the classifier's
    gradient goes through it). Writes OUT/model.safetensors and OUT/config.json (with the
    held-out decode error and gradient cosine); resumes from OUT/checkpoint.pt. Put OUT at
    LDM_FOLDER/grad_decoder: the default sampler's pre-explanation then uses it
    (--adaptive.pre_grad_decoder auto), and so do --adaptive.grad_decoder auto and
    --guided.grad_decoder auto; or pass OUT itself to those options.

    Parameters
    ----------
    ldm : str
        Hub id, diffusers folder or 'toy'.
    data : str
        Dataset folder or LMDB (train split), or a folder of images.
    out : str
        Output folder (resumed when it holds a checkpoint).
    n : int
        Training images (64 more are held out for the report).
    steps : int
        Optimisation steps.
    batch_size : int
        Latents per step (shared out over --devices).
    lr : float
        Adam learning rate.
    vjp_weight : float
        Weight of 1 - cosine between the two decoders' vector-Jacobian products (0: pixels only).
    noise : float
        Latents are perturbed by up to this many latent standard deviations.
    width : int
        Channels of the small decoder.
    blocks : int
        Residual blocks at latent resolution.
    seed : int
        Seed of the initialisation and the batches.
    checkpoint_every : int
        Steps between checkpoints.
    devices : int
        Several processes (Lightning Fabric), as ldvce generate --devices.
    accelerator : str
        With --devices: auto uses the GPUs when there are any.
    device : str
        auto, cpu, cuda or cuda:N (one process).
    """
    from dvce.distill import DistillConfig, distill_from_data
    cfg = DistillConfig(steps=steps, batch_size=batch_size, lr=lr, vjp_weight=vjp_weight,
                        noise=noise, width=width, blocks=blocks, seed=seed,
                        checkpoint_every=checkpoint_every)
    try:
        report = distill_from_data(ldm, data, out, n, cfg, devices=devices,
                                   accelerator=accelerator, device=_device(device))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"ldvce distill-decoder: {e}")
    if report:
        print(f"decode L1 {report['decode_l1']:.4f}, gradient cosine {report['grad_cosine']:.3f} "
              f"(smooth directions {report['grad_cosine_smooth']:.3f}) on {report['held_out']} "
              f"held-out latents; {report['parameters']} parameters -> {out}")
    return report


@CLI.command("evaluate")
def evaluate(run: str | None = None, *, oracle: str | None = None, masks: str | None = None,
             attribute: str | None = None, protocol: Literal["basic", "full"] = "basic",
             fid_features: str = "oracle", face_model: str = "oracle",
             classifier: str | None = None, train_attr_file: str | None = None,
             sfid_seed: int = 0, no_cache: bool = False, device: str = "auto",
             compare: list[str] | None = None) -> dict | None:
    """Metrics of a generation run: flip rate, L1/L2/SSIM, MNAC, localisation; --protocol full adds FID, sFID, FVA, FS, CD, COUT.

    Written to RUN/metrics.json; with ``--oracle`` (basic protocol), the flips the oracle does
    not confirm are drawn in RUN/oracle_disagreements.png (original, counterfactual, change;
    what the oracle saw change instead; rank 1 of a ``--num-cfs`` run). ``--protocol full`` adds the published protocol
    (DiME/ACE/MaskDiME): FR; FID and sFID (all originals vs the successful counterfactuals);
    FVA/FS (face verification of each pair); MNAC and CD (an attribute oracle); COUT (insertion
    curves of the explained classifier). A missing weight file is named in the error; features
    are cached per image content in RUN/.features. ``--compare`` prints evaluated runs beside
    the published table.

    Parameters
    ----------
    run : str
        Output folder of `ldvce generate`.
    oracle : str
        Attribute oracle (MNAC, CD): classifier checkpoint or toy name; with --protocol full also
        steex:PATH or steex-mnac:PATH (the published 40-attribute oracle).
    masks : str
        Toyfaces folder with masks.npz (for localisation).
    attribute : str
        Attribute to evaluate (default: the run's).
    protocol : str
        basic: flip rate, L1/L2/SSIM, MNAC, localisation; full: the published protocol as well.
    fid_features : str
        FID/sFID feature network: inception:PATH (published), oracle[:CKPT] (the oracle's
        penultimate features, the offline default) or torchvision:ARCH:PATH.
    face_model : str
        FVA/FS face embedding: vggface2:PATH (published), dlib[:DIR] (real photos, offline) or
        oracle[:CKPT] (the toy world).
    classifier : str
        Explained classifier for COUT (default: the run's classifier).
    train_attr_file : str
        Attribute file of the training data (CD's reference correlations).
    sfid_seed : int
        Seed of sFID's random half split.
    no_cache : bool
        Do not read or write the feature cache RUN/.features.
    device : str
        auto, cpu, cuda or cuda:N.
    compare : list[str]
        Print these evaluated runs beside the published numbers (no RUN needed).
    """
    if compare or protocol == "full":
        from experiments.protocol import evaluate_command
        return evaluate_command(run=run, compare=compare, fid_features=fid_features,
                                face_model=face_model, oracle=oracle, classifier=classifier,
                                train_attr_file=train_attr_file, attribute=attribute,
                                masks=masks, sfid_seed=sfid_seed, device=device,
                                no_cache=no_cache)
    if not run:
        raise SystemExit("ldvce evaluate: give a run folder (or --compare RUN_A RUN_B …)")
    from classifier.models import load_classifier
    from dvce.metrics import evaluate_run, format_table, write_metrics
    from classifier.registry import resolve_classifier
    model = load_classifier(resolve_classifier(oracle)).requires_grad_(False) if oracle else None
    region, oracle_attrs = None, None
    if masks:
        import toyfaces
        from classifier.attributes import attribute_index
        region = toyfaces.load_masks(masks)
        oracle_attrs = [attribute_index(a) for a in toyfaces.MODELLED]
    m = evaluate_run(run, oracle=model, masks=region, attribute=attribute,
                     oracle_attributes=oracle_attrs)
    path = write_metrics(run, m)
    print(format_table(m))
    state = m["run"]
    if not state["finished"]:
        print(f"warning: {run} has no summary.json: the run stopped before its end (or is still "
              f"running); these metrics cover the {m['n']} images finished so far")
    if state["broken"]:
        print(f"warning: {len(state['broken'])} item folder(s) without a readable result.json "
              f"or without their images were left out: {', '.join(state['broken'][:10])}")
    print(f"wrote {path}")
    from experiments.disagreements import disagreement_figure
    figure = disagreement_figure(run, m)  # without an oracle: removes a figure now stale
    if figure:
        print(f"wrote {figure} (the flips the oracle does not confirm)")
    return m


# ------------------------------------------------------------------------------- explanations
@CLI.command("explain")
def explain(run: str, *, classifier: str, attribute: str = "Smiling",
            composites: str = "lrp0,epsilon_plus_flat", start: Literal["logit", "one"] = "logit",
            hrh: str | None = None, size: int | None = None, out: str | None = None,
            device: str = "auto") -> dict:
    """LRP heatmaps of originals and counterfactuals + panel figure.

    Parameters
    ----------
    run : str
        Generation run folder, or a plain image folder.
    classifier : str
        Classifier checkpoint or toy name.
    attribute : str
        Attribute name or index whose logit is explained.
    composites : str
        Comma-separated LRP composite names.
    start : str
        Start relevance: the logit (sign follows the decision) or one.
    hrh : str
        Folder of human relevance heatmaps <image_id>.npy (panel column and mass in them).
    size : int
        Image size for a plain folder (default: the classifier's).
    out : str
        Output folder for a plain image folder (default: in place).
    device : str
        auto, cpu, cuda or cuda:N.
    """
    from experiments.explain import run_explain
    return run_explain(run, classifier, attribute=attribute, composites=composites, start=start,
                       hrh=hrh, size=size, out=out, device=device)


@CLI.command("crp")
def crp(mode: Literal["local", "global"], *, classifier: str, attribute: str = "Smiling",
        run: str | None = None, data: str | None = None, attr_file: str | None = None,
        layers: str = "net.layer3,net.layer4", top: int = 6, n: int = 200, out: str,
        device: str = "auto") -> dict:
    """Concept relevance (CRP): local pair analysis and global reference images.

    Parameters
    ----------
    mode : str
        local: concepts of each image / what changed per original-counterfactual pair;
        global: reference images of the attribute's top concepts over a dataset.
    classifier : str
        Classifier checkpoint or toy name.
    attribute : str
        Attribute name or index.
    run : str
        local: generation run folder (original vs counterfactual) or an image folder.
    data : str
        global: LMDB or toyfaces folder.
    attr_file : str
        global: attribute file for an LMDB (default: beside it).
    layers : str
        Comma-separated layer names.
    top : int
        Concepts per layer.
    n : int
        global: images to analyse.
    out : str
        Output folder (local/ and global/ inside).
    device : str
        auto, cpu, cuda or cuda:N.
    """
    from experiments.explain import run_crp
    return run_crp(mode, classifier, out=out, attribute=attribute, run=run, data=data,
                   attr_file=attr_file, layers=layers, top=top, n=n, device=device)


@CLI.command("shortcut")
def shortcut(*, classifier: str, cue: str, editor: str, data: str, n: int = 24, out: str,
             target: str = "Smiling", control: str | None = "Eyeglasses",
             oracle: str | None = None, ldm: str = "toy", method: str | None = None,
             options: str | None = None, margin: float = 5.0, batch_size: int = 16,
             split: str = "all", bootstrap: int = 1000, seed: int = 0,
             device: str = "auto") -> dict:
    """Shortcut test: add/remove a suspected cue with counterfactuals and measure the decision shift.

    Faces the editor calls without --cue get it added, faces with it get it removed; each edit
    is a counterfactual of the editor's --cue output (past its boundary by --margin). Several
    editors separated by commas guide together by their mean logit: edits that independent
    networks all read as the cue, which an oracle confirms far more often than the edits of
    one. The explained classifier's --target decision is read before and after: the share of
    faces whose decision flips and the mean change in probability, with bootstrap 95 %
    intervals, per direction, beside the same edits of --control. With --oracle, edits it
    does not confirm are counted apart. Writes OUT/shortcut.json, OUT/shortcut.png,
    OUT/report.html and one run folder per edit under OUT/edits/. Example (toy world):
    ldvce shortcut --classifier toy_biased_hat --cue Wearing_Hat --editor
    toy_resnet,toy_resnet18 --oracle toy_oracle --data .cache/ldvce/data/toy-eval-400-7272
    --out runs/shortcut

    Parameters
    ----------
    classifier : str
        The explained classifier: checkpoint or registered name.
    cue : str
        The suspected shortcut attribute (name or index), e.g. Wearing_Hat.
    editor : str
        Another classifier of --cue whose gradient makes the edits, or several separated by
        commas (a committee: their mean logit), none of them the explained one (toy world:
        toy_resnet,toy_resnet18).
    data : str
        Dataset folder (one *.lmdb + CelebAMask-HQ-attribute-anno.txt), e.g. a toyfaces folder.
    n : int
        Faces per direction and attribute.
    out : str
        Output folder (the edits resume when run again).
    target : str
        The explained decision.
    control : str
        An attribute that should not matter, edited the same way ('' for none).
    oracle : str
        A third classifier that confirms each edit (checkpoint or registered name).
    ldm : str
        Hub id, diffusers folder or 'toy'.
    method : str
        Sampler of the edits (default: the default method, with its defaults but --margin
        and, for adaptive, recurrence 1 and cause_from 0: EDIT_RECURRENCE and EDIT_CAUSE_FROM
        in experiments.shortcut.run).
    options : str
        The sampler's options as a JSON object, e.g. '{"margin": 6}' (the default
        method's; `ldvce generate --help` lists each method's).
    margin : float
        The sampler's margin option for the edits, where the method has one (an --options
        margin wins). For adaptive and guided: how far past its decision boundary the
        editor's --cue logit must go, so that an edit leaves no doubt that the cue is there
        (their default for counterfactuals is 3); for seed: the logit its loss aims at.
    batch_size : int
        Images per sampler call.
    split : str
        Dataset split the faces come from (all for an unseen toy folder, test on CelebA-HQ).
    bootstrap : int
        Bootstrap resamples of the faces for the 95 % intervals.
    seed : int
        Seed of the bootstrap.
    device : str
        auto, cpu, cuda or cuda:N.
    """
    import json
    from experiments.shortcut.run import run_shortcut
    try:
        opts = json.loads(options) if options else {}
    except json.JSONDecodeError as e:
        raise SystemExit(f"ldvce shortcut: --options is not JSON: {e}")
    try:
        return run_shortcut(classifier=classifier, cue=cue, editor=editor, data=data, n=n,
                            out=out, target=target, control=control or None, oracle=oracle,
                            ldm=ldm, method=method, options=opts, margin=margin,
                            batch_size=batch_size,
                            split=split, n_bootstrap=bootstrap, seed=seed,
                            device=_device(device))
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise SystemExit(f"ldvce shortcut: {e}")


# ---------------------------------------------------------------------------------------- xai
CLI.group("xai", "attribution methods compared: ground truth, faithfulness, sanity, humans")


@CLI.command("xai compare")
def xai_compare(*, classifier: str, data: str | None = None, n: int = 32, out: str,
                methods: str | None = None, metrics: str | None = None,
                attribute: str = "Smiling", region: str | None = None,
                faces_with: str | None = None, run: str | None = None,
                hrh_export: str | None = None, bootstrap: int = 1000,
                device: str = "auto") -> dict:
    """Which heatmap to trust: methods x metrics (compare.json/.csv, grid.png, report.html).

    Parameters
    ----------
    classifier : str
        Classifier checkpoint or registered name.
    data : str
        A toyfaces folder (ground-truth masks; default: the toy world's unseen test set), or
        with --hrh-export the folder of the study's images.
    n : int
        Faces (the folder's first rows).
    out : str
        Output folder.
    methods : str
        Comma-separated methods of xai.attributions.METHODS (default:
        epsilon_plus_flat,gradient,gradcam,occlusion,cf_delta).
    metrics : str
        Comma-separated metric groups: localisation, faithfulness, sanity, humans (default all).
    attribute : str
        Attribute whose decision is explained.
    region : str
        Ground-truth region scored (default: the attribute's), e.g. Wearing_Hat.
    faces_with : str
        Only faces labelled with this attribute, e.g. Wearing_Hat.
    run : str
        Run folder with the faces' counterfactuals (default: made with the default sampler).
    hrh_export : str
        A real study's export CSV: score against its HRHs (images from --data).
    bootstrap : int
        Bootstrap resamples of the faces for the 95 % intervals.
    device : str
        auto, cpu, cuda or cuda:N.
    """
    from experiments.compare.data import CompareConfig
    from experiments.compare.run import run_compare
    try:
        config = CompareConfig(attribute=attribute, region=region, faces_with=faces_with,
                               n_bootstrap=bootstrap)
        return run_compare(classifier, out, data=data, n=n, methods=methods, metrics=metrics,
                           run=run, hrh_export=hrh_export, config=config,
                           device=_device(device))
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise SystemExit(f"ldvce xai compare: {e}")


# -------------------------------------------------------------------------------------- study
CLI.group("study", "user study: serve it in a browser, evaluate its export")


def _script_command(path: str, module: str, summary: str) -> None:
    """Register a command whose options and handler a script module owns, argparse style:
    ``DESCRIPTION``, ``EPILOG``, ``add_arguments(parser)`` and ``run(args) -> exit code``."""
    from importlib import import_module

    def extend(parser) -> None:
        m = import_module(module)  # only when this command is parsed
        parser.description, parser.epilog = m.DESCRIPTION, m.EPILOG
        m.add_arguments(parser)

    def handler(**options) -> None:
        import argparse
        code = import_module(module).run(argparse.Namespace(**options))
        if code:
            raise SystemExit(code)

    handler.__doc__ = summary
    CLI.command(path, extend=extend)(handler)


_script_command("study eval", "study.evalstudy",
                "Evaluate a study export (as python study/evalstudy.py).")
_script_command("study serve", "study.serve.server",
                "Serve the study web app over `ldvce generate` runs (SQLite, admin export).")
_script_command("study withdraw", "study.serve.withdraw",
                "Withdraw a study participant: delete their answers, record the withdrawal.")


# ------------------------------------------------------------------------------------ demo
@CLI.command("demo")
def demo(*, out: str | None = None, quick: bool = False, retrain: bool = False,
         spurious: bool = False, config: str | None = None, data_seed: int | None = None,
         n: int | None = None, hat_reader: bool = False) -> dict:
    """The whole pipeline on the toy world; writes overview.png, report.html.

    Parameters
    ----------
    out : str
        Output folder (default runs/demo, or runs/spurious with --spurious).
    quick : bool
        Fewer images (used by tests).
    retrain : bool
        Train the toy classifier and the oracle here (renders the 12000 training faces; several
        minutes) instead of using the weights shipped in toyfaces/weights/classifiers; with
        --spurious, the biased classifier.
    spurious : bool
        Instead: a classifier trained where every smiling face wears a hat vs the clean toy
        ResNet, exposed by their counterfactuals, LRP and CRP and scored on the toy world's
        ground truth (overview.png, report.html, summary.json with a "spurious" block).
    config : str
        Experiment settings: a name in configs/experiment/ or a YAML file (default demo, or
        clever-hans with --spurious).
    data_seed : int
        With --spurious: the seed of the unseen test world (default: the config's).
    n : int
        Faces to make smile (default: the config's images, or quick_images with --quick).
    hat_reader : bool
        With --spurious: the control in the biased classifier's place, a Smiling decision that
        reads only the hat (the clean toy ResNet's own Wearing_Hat output), to see what the
        counterfactuals show when the hat is the whole decision (default out
        runs/spurious-hat-reader).
    """
    if hat_reader and not spurious:
        raise SystemExit("ldvce demo: --hat-reader goes with --spurious (it replaces the biased "
                         "classifier of the Clever-Hans experiment)")
    if spurious:  # the Clever Hans experiment: experiments/clever_hans/
        from experiments.clever_hans.run import run_demo as run_spurious
        default_out = "runs/spurious-hat-reader" if hat_reader else "runs/spurious"
        return run_spurious(out or default_out, quick=quick, retrain=retrain,
                            config=config or "clever-hans", data_seed=data_seed, n=n,
                            hat_reader=hat_reader)
    if data_seed is not None:
        raise SystemExit("ldvce demo: --data-seed goes with --spurious (the demo's faces are the "
                         "toy world's unseen test set)")
    from experiments.demo.run import run_demo
    return run_demo(out or "runs/demo", quick=quick, n_images=n, retrain=retrain,
                    config=config or "demo")


# ----------------------------------------------------------------------------------- bench
CLI.group("bench", "benchmarks that print side-by-side ratios")


@CLI.command("bench generate")
def bench_generate(*, n: int | None = None, json: str | None = None, gpu: bool = False,
                   device: str = "auto", protocol: Literal["basic", "full"] = "basic",
                   out: str = "runs/bench-protocol", devices: int | None = None,
                   batch_size: int = 2, arch: Literal["toy", "compvis"] = "toy",
                   dtype: Literal["fp32", "bf16"] = "fp32", peak_tflops: float | None = None):
    """Seed-faithful lDVCE vs every other sampler with its defaults, same images.

    Parameters
    ----------
    n : int
        Images: toy faces the classifier calls not smiling (the counterfactual makes them
        smile). Default 16 for the speed comparison (at 8 faces one face that needs a third
        attempt moves the default sampler's ratio by about a tenth), 8 for the other modes.
    json : str
        Also write the results here.
    gpu : bool
        Time the exact CompVis architecture at 256² on CUDA (random weights) instead
        (--device is not used then).
    device : str
        auto, cpu, cuda or cuda:N.
    protocol : str
        full: write the seed-faithful and the default sampler's runs under --out (both
        directions, --n faces) and print the published protocol's table for them (toy-oracle
        networks) instead of the speed comparison.
    out : str
        Where --protocol full writes its run folders.
    devices : int
        Instead: throughput of `ldvce generate` on 1 vs N CPU processes (one thread each) and
        1 process with N threads, same toy images.
    batch_size : int
        With --devices: images per batch (batches are what the processes share out).
    arch : str
        compvis: instead, one guided step of the exact CompVis/ldm-celebahq-256 architectures at
        256² (random weights) on --device, part by part (UNet, VQ decoder forward and
        forward + VJP, a fresh distilled decoder, the ResNet50 through 4 views), the whole step
        with the full and with the distilled decoder, its FLOPs and peak memory; on CUDA also
        counterfactuals per second (--n images, one guided pass).
    dtype : str
        With --arch compvis: fp32 or bf16. On the toy comparison, bf16 adds a row per sampler
        with the LDM and the classifier in bfloat16 (ldvce generate --dtype bf16), its speed-up
        measured against the same seed-faithful run.
    peak_tflops : float
        With --arch compvis: the device's peak TFLOP/s for this dtype, to report model FLOP
        utilisation (e.g. 989 for an H100 in bf16, 495 in TF32).
    """
    if n is None:
        from benchmarks.generate import TOY_FACES
        comparison = arch == "toy" and not gpu and protocol == "basic" and not devices
        n = TOY_FACES if comparison else 8
    if arch == "compvis":
        from benchmarks.common import write_result
        from benchmarks.parts import bench_parts, print_parts
        from classifier.devices import resolve_device
        r = bench_parts(n, resolve_device(device), dtype, peak_tflops=peak_tflops)
        print_parts(r)
        write_result(r, json)
        return r
    from benchmarks.generate import run_generate
    return run_generate(n, json_path=json, gpu=gpu, device=device, protocol=protocol, out=out,
                        devices=devices or 0, batch_size=batch_size, dtype=dtype)


@CLI.command("bench ldm")
def bench_ldm(*, n: int = 200, json: str | None = None) -> dict:
    """Toy LDM quality: VQ round trip, classifier agreement, DDIM inversion.

    Parameters
    ----------
    n : int
        Unseen toy images.
    json : str
        Also write the results here.
    """
    from benchmarks.ldm import run_ldm
    return run_ldm(n, json_path=json)


@CLI.command("bench lrp")
def bench_lrp(*, n: int = 32, composites: str | None = None, figure: str | None = None,
              json: str | None = None, device: str = "auto") -> dict:
    """LRP relevance mass in the mouth per composite: toy ResNet vs oracle.

    Parameters
    ----------
    n : int
        Held-out toy faces.
    composites : str
        Comma-separated registry names (default: all).
    figure : str
        Also write a figure of faces and LRP-EPF maps here (PNG).
    json : str
        Also write the results here.
    device : str
        auto, cpu, cuda or cuda:N.
    """
    from benchmarks.lrp import run_lrp
    return run_lrp(n, composites=composites, figure=figure, json_path=json, device=device)


# ------------------------------------------------------------------------------------- main
def build_parser(argv: list[str] | tuple[str, ...] = ()):
    """The ``ldvce`` parser; the extensions of the command ``argv`` names are added."""
    return _build(CLI, "ldvce", DESCRIPTION, EPILOG, selected=selected_path(CLI, list(argv)))


#: Errors that describe bad input (a missing file, an unknown name, a malformed value): the CLI
#: prints their message as one line instead of a traceback; ``LDVCE_TRACEBACK=1`` shows it.
INPUT_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, KeyError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    path = selected_path(CLI, argv)
    command = CLI.commands.get(path)
    if command is not None and command.passthrough:  # e.g. train: LightningCLI parses the rest
        command.function(argv[argv.index(path[-1]) + 1:])
        return 0
    command, kwargs = parse(CLI, build_parser(argv), argv)
    try:
        command.function(**kwargs)
    except Exception as e:
        ldm = sys.modules.get("dvce.ldm")  # not imported by every command (study: no torch)
        known = INPUT_ERRORS + ((ldm.LDMNotAvailableError,) if ldm else ())
        if not isinstance(e, known) or os.environ.get("LDVCE_TRACEBACK"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise SystemExit(f"ldvce {' '.join(path)}: {message}\n"
                         "(LDVCE_TRACEBACK=1 shows where it was raised)") from e
    return 0


if __name__ == "__main__":
    sys.exit(main())
