"""The ``ldvce`` command: one entry point for the whole toolkit (orchestration only).

Run ``ldvce <command> --help`` for each command's options. Heavy imports happen inside the
handlers so that ``ldvce --help`` answers at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")

from ldvce.devices import resolve_device as _device  # noqa: E402

EPILOG = """examples:
  ldvce demo --out runs/demo                      whole pipeline on the offline toy world
  ldvce toy make-data data/toy --n 2000 --seed 3  render a toyfaces dataset (CelebA-HQ formats)
  ldvce train --config configs/classifier/toy_resnet.yaml
  ldvce generate --lmdb data/celebahq256.lmdb --attr-file data/CelebAMask-HQ-attribute-anno.txt \\
        --indices 27300 27398 --classifier res50.ckpt --ldm CompVis/ldm-celebahq-256 --out runs/cf
  ldvce evaluate runs/cf --oracle oracle.ckpt
  ldvce explain runs/cf --classifier res50.ckpt --composites lrp0,epsilon_plus_flat
  ldvce study eval --export studyentries.csv --images data/test_counterfactual --out runs/study
"""


class _Fmt(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _sub(subparsers, name, help_, description=None, add_help=True):
    return subparsers.add_parser(name, help=help_, description=description or help_,
                                 formatter_class=_Fmt, add_help=add_help)



# ---------------------------------------------------------------------------------------- toy
def cmd_toy_make_data(a):
    import toyfaces
    spurious = None
    if a.spurious:
        target, cue, strength = a.spurious.split(":")
        spurious = toyfaces.Spurious(target, cue, float(strength))
    out = toyfaces.make_dataset(a.out_dir, n=a.n, seed=a.seed, size=a.size, spurious=spurious)
    print(f"wrote {a.n} toy faces to {out}")


def cmd_toy_train_ldm(a):
    import toyfaces
    from toyfaces.train_ldm import LDMTrainConfig, train_ldm
    data = Path(a.data)
    if not toyfaces.is_complete(data):
        print(f"rendering {a.n} training faces (seed {a.data_seed}) into {data}")
        toyfaces.make_dataset(data, n=a.n, seed=a.data_seed)
    cfg = LDMTrainConfig(vq_warmup_steps=a.vq_warmup_steps, vq_quant_steps=a.vq_quant_steps,
                         unet_steps=a.unet_steps, decoder_steps=a.decoder_steps, seed=a.seed,
                         threads=a.threads)
    out = train_ldm(a.out_dir, *toyfaces.paths(data), cfg)
    print(f"saved the toy LDM to {out}")


def cmd_toy_sample(a):
    import torch
    from classifier.images import save_image
    from dvce.diffusion import sample
    from dvce.ldm import load_ldm
    ldm = load_ldm(a.ldm, device=_device(a.device))
    imgs = sample(ldm, a.n, num_steps=a.steps, generator=torch.Generator().manual_seed(a.seed))
    k = int(a.n ** 0.5)
    grid = imgs[: k * k].cpu().reshape(k, k, *imgs.shape[1:]).permute(2, 0, 3, 1, 4)
    save_image(grid.reshape(3, k * imgs.shape[2], k * imgs.shape[3]), a.out)
    print(f"wrote a {k}x{k} sample grid to {a.out}")


# --------------------------------------------------------------------------------------- data
def cmd_data_build_lmdb(a):
    from classifier.images import encode_png, load_pil, UnreadableImageError
    from fileio import list_image_files
    from classifier.lmdb_store import write_lmdb
    import numpy as np
    files = list_image_files(a.images_dir)
    kept, skipped = [], []

    def gen():
        for p in files:
            try:
                img = load_pil(p, a.size)
            except UnreadableImageError as e:
                skipped.append(str(e))
                continue
            kept.append(p.name)
            yield encode_png(np.asarray(img))

    n = write_lmdb(a.out, gen(), size=a.size)
    (Path(a.out) / "filenames.txt").write_text("\n".join(kept) + "\n")
    for s in skipped:
        print(f"skipped: {s}", file=sys.stderr)
    print(f"wrote {n} images to {a.out} (keys {a.size}-00000…; order in filenames.txt)")


# ----------------------------------------------------------------------------------- classifier
def cmd_train(a, rest):
    """All options go to LightningCLI (see `ldvce train --help`), plus --logger and --export."""
    from classifier.train import main as train_main
    train_main(rest)


def cmd_classifier_evaluate(a):
    from classifier.evaluate import evaluate_checkpoint
    from ldvce.toyworld import resolve_classifier
    try:
        checkpoint = resolve_classifier(a.checkpoint)
    except FileNotFoundError as e:
        raise SystemExit(f"ldvce classifier evaluate: {e}")
    evaluate_checkpoint(checkpoint, a.data, a.attr_file, split=a.split, attribute=a.attribute,
                        export_misclassified=a.export_misclassified, batch_size=a.batch_size,
                        device=_device(a.device))


# --------------------------------------------------------------------------------- generation
def cmd_generate(a):
    import torch
    from classifier.attributes import attribute_index, attribute_name
    from classifier.models import load_classifier
    from dvce import runner
    from dvce.ldm import load_ldm
    from dvce.samplers import Problem
    torch.manual_seed(a.seed)
    several = a.devices is not None  # Lightning Fabric processes (dvce/distributed.py)
    if several and a.device != "auto":
        raise SystemExit("ldvce generate: --device picks one device; with --devices use "
                         "--accelerator (cpu/gpu) instead")
    dev = torch.device("cpu") if several else _device(a.device)  # each process moves its copy
    ldm = load_ldm(a.ldm, device=dev)
    clf = load_classifier(a.classifier, map_location=dev).requires_grad_(False)
    size = ldm.image_size
    if a.images:
        items = runner.folder_items(a.images, size)
    else:
        attr = a.attr_file or _sibling_attr_file(a.lmdb)
        items = runner.lmdb_items(a.lmdb, attr, a.indices, size)
    options = _method_options(a)
    problem = Problem(ldm, clf, attribute_index(a.attribute))
    settings = {"attribute": attribute_name(a.attribute), "ldm": str(a.ldm),
                "classifier": str(a.classifier), "seed": a.seed}
    if several:
        summary = _generate_distributed(a, items, problem, options, settings)
        if summary is None:
            return  # not rank 0: rank 0 reports
    else:
        summary = runner.run(items, problem, a.out, method=a.method, target=a.target,
                             batch_size=a.batch_size, options=options, settings=settings)
    print(f"{summary['n']} images: flip rate {summary['flip_rate']:.3f}, mean L1 "
          f"{summary['mean_l1'] or float('nan'):.4f}, {summary['seconds_per_image'] or 0:.2f} s/image "
          f"-> {a.out}")


def _generate_distributed(a, items, problem, options, settings):
    """``generate --devices N [--num-nodes M]``: the same run on several processes."""
    from dvce.distributed import run_distributed
    try:
        return run_distributed(items, problem, a.out, method=a.method, target=a.target,
                               batch_size=a.batch_size, options=options, settings=settings,
                               devices=a.devices, num_nodes=a.num_nodes,
                               accelerator=a.accelerator, strategy=a.strategy)
    except ValueError as e:
        raise SystemExit(f"ldvce generate: {e}")


def _add_distributed_arguments(s) -> None:
    """``generate``'s flags for several processes (GPUs, nodes, SLURM tasks)."""
    from dvce.distributed import ACCELERATORS, STRATEGIES
    g = s.add_argument_group(
        "several processes (Lightning Fabric)",
        "With --devices the images are cut into batches as one process would cut them and\n"
        "the batches are dealt out to the processes: per-image results equal a one-process\n"
        "run with the same --batch-size. On one machine Lightning starts the processes itself;\n"
        "under SLURM start one task per device with srun (docs/slurm_generate.sbatch). A killed\n"
        "run resumes: finished folders are skipped before the work is split.")
    g.add_argument("--devices", type=int, metavar="N",
                   help="processes per node: GPUs with --accelerator gpu, CPU processes with "
                        "--accelerator cpu (the cores are shared out among them unless "
                        "OMP_NUM_THREADS is set); under SLURM equal to --ntasks-per-node")
    g.add_argument("--num-nodes", type=int, default=1, metavar="M",
                   help="nodes: under SLURM equal to --nodes; without SLURM run the same "
                        "command on every node with NODE_RANK, MASTER_ADDR and MASTER_PORT set")
    g.add_argument("--accelerator", default="auto", choices=ACCELERATORS,
                   help="auto uses the GPUs when there are any")
    g.add_argument("--strategy", default="auto", choices=STRATEGIES,
                   help="auto is ddp for more than one process (gloo on CPU, NCCL on GPUs)")


def _sibling_attr_file(lmdb):
    p = Path(lmdb).parent / "CelebAMask-HQ-attribute-anno.txt"
    if not p.exists():
        raise SystemExit(f"--attr-file is required (no {p})")
    return p


def _method_options(a) -> dict:
    """``--option key=value`` pairs; values are Python literals (numbers, tuples, True) or text."""
    import ast
    opts = {}
    for kv in a.option or []:
        k, _, v = kv.partition("=")
        try:
            opts[k] = ast.literal_eval(v) if v else True
        except (ValueError, SyntaxError):
            opts[k] = v
    return opts


def cmd_evaluate(a):
    from classifier.models import load_classifier
    from dvce.metrics import evaluate_run, format_table, write_metrics
    oracle = load_classifier(a.oracle).requires_grad_(False) if a.oracle else None
    masks = None
    oracle_attrs = None
    if a.masks:
        import toyfaces
        from classifier.attributes import attribute_index
        masks = toyfaces.load_masks(a.masks)
        oracle_attrs = [attribute_index(n) for n in toyfaces.MODELLED]
    m = evaluate_run(a.run, oracle=oracle, masks=masks, attribute=a.attribute,
                     oracle_attributes=oracle_attrs)
    path = write_metrics(a.run, m)
    print(format_table(m))
    print(f"wrote {path}")


# ------------------------------------------------------------------------------- explanations
def cmd_explain(a):
    from ldvce.explain import explain_command
    return explain_command(a)


def cmd_crp(a):
    from ldvce.explain import crp_command
    return crp_command(a)


def cmd_study(a):
    from study.evalstudy import run
    code = run(a)
    if code:
        raise SystemExit(code)


def cmd_demo(a):
    from ldvce.demo import run_demo
    run_demo(a.out, quick=a.quick)


def cmd_bench(a):
    from ldvce.bench import bench_command
    bench_command(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ldvce", formatter_class=_Fmt, epilog=EPILOG,
        description="Latent diffusion visual counterfactual explanations (lDVCE), LRP/CRP "
                    "explanations and human relevance heatmaps. Everything runs offline on the "
                    "toyfaces world; real runs use CelebA-HQ and CompVis/ldm-celebahq-256.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    toy = _sub(sub, "toy", "the offline toyfaces world: data, LDM training, samples")
    tsub = toy.add_subparsers(dest="toy_command", metavar="ACTION", required=True)
    s = _sub(tsub, "make-data", "render a toyfaces dataset (LMDB + attribute file + masks + meta.json)")
    s.add_argument("out_dir")
    s.add_argument("--n", type=int, default=2000, help="number of faces")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same faces)")
    s.add_argument("--size", type=int, default=64, help="image size in pixels")
    s.add_argument("--spurious", metavar="TARGET:CUE:STRENGTH",
                   help="plant a correlation, e.g. Smiling:Wearing_Hat:0.9")
    s.set_defaults(func=cmd_toy_make_data)
    s = _sub(tsub, "train-ldm", "train the toy VQ autoencoder + UNet; saves a diffusers folder")
    s.add_argument("out_dir")
    s.add_argument("--data", required=True, help="toyfaces folder (rendered if missing)")
    s.add_argument("--n", type=int, default=12000, help="images to render when --data is missing")
    s.add_argument("--data-seed", type=int, default=1000)
    s.add_argument("--vq-warmup-steps", type=int, default=1200)
    s.add_argument("--vq-quant-steps", type=int, default=400)
    s.add_argument("--unet-steps", type=int, default=4000)
    s.add_argument("--decoder-steps", type=int, default=400, help="decoder-only fine-tuning")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=2)
    s.set_defaults(func=cmd_toy_train_ldm)
    s = _sub(tsub, "sample", "unconditional DDIM samples of an LDM as a grid PNG")
    s.add_argument("--ldm", default="toy", help="toy, a diffusers folder or a hub id")
    s.add_argument("--n", type=int, default=16)
    s.add_argument("--steps", type=int, default=50, help="DDIM steps")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", default="samples.png")
    s.set_defaults(func=cmd_toy_sample)

    data = _sub(sub, "data", "CelebA-HQ data tools")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = _sub(dsub, "build-lmdb", "build a diffae-layout LMDB ({size}-{idx:05d} keys) from an image folder")
    s.add_argument("images_dir")
    s.add_argument("out")
    s.add_argument("--size", type=int, default=256, help="resize + centre-crop to this size")
    s.set_defaults(func=cmd_data_build_lmdb)

    s = _sub(sub, "train", "train a classifier: --config configs/classifier/<name>.yaml [LightningCLI "
             "options]", add_help=False)
    s.set_defaults(func=cmd_train, passthrough=True)

    clf = _sub(sub, "classifier", "classifier tools")
    csub = clf.add_subparsers(dest="classifier_command", metavar="ACTION", required=True)
    s = _sub(csub, "evaluate", "per-attribute accuracy / balanced accuracy / AUROC of a checkpoint")
    s.add_argument("checkpoint", help="checkpoint (.ckpt/.safetensors) or a toy name: toy_resnet, "
                                      "toy_linear, toy_oracle")
    s.add_argument("--data", required=True, help="LMDB or toyfaces folder")
    s.add_argument("--attr-file", help="CelebAMask-HQ-attribute-anno.txt (not needed for toyfaces)")
    s.add_argument("--split", default="test", help="train, val, test or all")
    s.add_argument("--attribute", default="Smiling", help="highlighted attribute")
    s.add_argument("--export-misclassified", metavar="DIR",
                   help="write {idx}_{gt}_misclassified.png for the attribute's errors")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_classifier_evaluate)

    s = _sub(sub, "generate", "generate counterfactuals (one folder per image, resumable)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of images (PNG/JPEG/WebP…)")
    src.add_argument("--lmdb", help="CelebA-HQ LMDB or toyfaces .lmdb")
    s.add_argument("--attr-file", help="attribute file for --lmdb (default: beside the LMDB)")
    s.add_argument("--indices", type=int, nargs="+", help="LMDB rows to use (default: all)")
    s.add_argument("--classifier", required=True, help="classifier checkpoint (.ckpt/.safetensors)")
    s.add_argument("--ldm", default="CompVis/ldm-celebahq-256", help="hub id, diffusers folder or 'toy'")
    s.add_argument("--attribute", default="Smiling", help="attribute name or index")
    s.add_argument("--target", default="auto", choices=["auto", "0", "1"],
                   help="auto flips the current decision")
    s.add_argument("--method", default="guided", help="sampler: seed | guided")
    s.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="sampler option, repeatable (e.g. max_iter=10, scale=6.0)")
    s.add_argument("--out", required=True)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0)
    _add_distributed_arguments(s)
    s.set_defaults(func=cmd_generate)

    s = _sub(sub, "evaluate", "metrics of a generation run: flip rate, L1/L2/SSIM, MNAC, localisation")
    s.add_argument("run", help="output folder of `ldvce generate`")
    s.add_argument("--oracle", help="oracle classifier checkpoint (for MNAC)")
    s.add_argument("--masks", help="toyfaces folder with masks.npz (for localisation)")
    s.add_argument("--attribute", help="default: the run's attribute")
    s.set_defaults(func=cmd_evaluate)

    s = _sub(sub, "explain", "LRP heatmaps of originals and counterfactuals + panel figure")
    s.add_argument("run", help="generation run folder, or a plain image folder")
    s.add_argument("--classifier", required=True)
    s.add_argument("--attribute", default="Smiling")
    s.add_argument("--composites", default="lrp0,epsilon_plus_flat", help="comma-separated names")
    s.add_argument("--start", default="logit", choices=["logit", "one"], help="start relevance")
    s.add_argument("--hrh", help="folder of human relevance heatmaps <image_id>.npy (panel column)")
    s.add_argument("--size", type=int, help="image size for a plain folder (default: model's)")
    s.add_argument("--out", help="output folder for a plain image folder (default: in place)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_explain)

    s = _sub(sub, "crp", "concept relevance (CRP): local pair analysis and global reference images")
    s.add_argument("mode", choices=["local", "global"])
    s.add_argument("--classifier", required=True)
    s.add_argument("--attribute", default="Smiling")
    s.add_argument("--run", help="local: generation run folder (original vs counterfactual)")
    s.add_argument("--data", help="global: LMDB or toyfaces folder")
    s.add_argument("--attr-file")
    s.add_argument("--layers", default="net.layer3,net.layer4", help="comma-separated layer names")
    s.add_argument("--top", type=int, default=6, help="concepts per layer")
    s.add_argument("--n", type=int, default=200, help="global: images to analyse")
    s.add_argument("--out", required=True)
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_crp)

    st = _sub(sub, "study", "user-study evaluation")
    ssub = st.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    from study import evalstudy  # light: numpy/matplotlib only
    s = ssub.add_parser("eval", help="evaluate a study export (as python study/evalstudy.py)",
                        description=evalstudy.DESCRIPTION, epilog=evalstudy.EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    evalstudy.add_arguments(s)
    s.set_defaults(func=cmd_study)

    s = _sub(sub, "demo", "the whole pipeline on the toy world; writes overview.png, report.html")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--quick", action="store_true", help="fewer images (used by tests)")
    s.set_defaults(func=cmd_demo)

    s = _sub(sub, "bench", "benchmarks that print side-by-side ratios")
    bsub = s.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    b = _sub(bsub, "generate", "seed-faithful lDVCE vs the best configuration, same images")
    b.add_argument("--n", type=int, default=8, help="toy images")
    b.add_argument("--json", help="also write the results here")
    b.add_argument("--gpu", action="store_true",
                   help="time the exact CompVis architecture at 256² on CUDA (random weights)")
    b.add_argument("--device", default="auto")
    b.add_argument("--devices", type=int, metavar="N",
                   help="instead: throughput of `ldvce generate` on 1 vs N CPU processes (one "
                        "thread each) and 1 process with N threads, same toy images")
    b.add_argument("--batch-size", type=int, default=2, help="with --devices: images per batch "
                   "(batches are what the processes share out)")
    b.set_defaults(func=cmd_bench)
    b = _sub(bsub, "ldm", "toy LDM quality: VQ round trip, classifier agreement, DDIM inversion")
    b.add_argument("--n", type=int, default=200)
    b.add_argument("--json")
    b.set_defaults(func=cmd_bench)
    b = _sub(bsub, "lrp", "LRP relevance mass in the mouth per composite: toy ResNet vs oracle")
    b.add_argument("--n", type=int, default=32, help="held-out toy faces")
    b.add_argument("--composites", help="comma-separated registry names (default: all)")
    b.add_argument("--figure", help="also write a figure of faces and LRP-EPF maps here (PNG)")
    b.add_argument("--json", help="also write the results here")
    b.add_argument("--device", default="auto")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if getattr(args, "passthrough", False):
        args.func(args, rest)
    else:
        args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
