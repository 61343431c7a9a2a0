"""Classifier training: a thin LightningCLI wrapper (YAML configs, no paths in code).

``python classifier/train_classifier.py --config configs/classifier/toy_resnet.yaml`` and
``ldvce train --config …`` both call :func:`main`. Extra options on top of LightningCLI's:
``--logger csv|wandb|none`` (wandb defaults to offline mode without an account) and
``--export PATH.safetensors`` (best checkpoint's weights as safetensors).
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from classifier.datamodule import CelebHQDataModule
from classifier.models import AttributeClassifier, export_safetensors, load_classifier


def _make_logger(kind: str, save_dir: str, name: str):
    if kind == "none":
        return False
    if kind == "wandb":
        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"  # no account: log locally, `wandb sync` later
        return WandbLogger(project="ldvce", name=name, save_dir=save_dir)
    if kind == "csv":
        return CSVLogger(save_dir=save_dir, name=name)
    raise SystemExit(f"--logger must be csv, wandb or none, got {kind!r}")


def _pop_option(argv: list[str], name: str, default=None):
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i:i + 2]
            return value
        if a.startswith(name + "="):
            del argv[i]
            return a.split("=", 1)[1]
    return default


class _CLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_argument("--run_name", default="classifier", help="name of the run (log folder)")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="evaluate the best checkpoint on the test split after training")


def main(argv: list[str] | None = None):
    """Train a classifier from a YAML config; returns (trainer, model, best checkpoint path)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # DDP re-launches this script with the same sys.argv, so our own options stay in sys.argv and
    # LightningCLI gets the filtered copy; silence its warning about that.
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
    logger_kind = _pop_option(argv, "--logger", "csv")
    export = _pop_option(argv, "--export")
    checkpoint = ModelCheckpoint(monitor="val/loss", mode="min", save_last=True,
                                 filename="best-{epoch}-{step}")
    cli = _CLI(AttributeClassifier, CelebHQDataModule, subclass_mode_model=True, run=False,
               args=argv, save_config_kwargs={"overwrite": True},
               trainer_defaults={"callbacks": [checkpoint], "default_root_dir": "runs/classifier"},
               seed_everything_default=0)
    cfg = cli.config
    trainer = cli.trainer
    if logger_kind != "csv" or not trainer.loggers:
        trainer.loggers = []
        lg = _make_logger(logger_kind, trainer.default_root_dir, cfg.get("run_name", "classifier"))
        if lg:
            trainer.loggers = [lg]
    trainer.fit(cli.model, cli.datamodule)
    best = checkpoint.best_model_path or checkpoint.last_model_path
    if cfg.get("test_after_fit", True) and best:  # every rank: test is collective under DDP
        trainer.test(cli.model, cli.datamodule, ckpt_path=best, verbose=False)
    if export and best and trainer.is_global_zero:
        export_safetensors(load_classifier(best), export)
    if trainer.is_global_zero and best:
        print(f"best checkpoint: {best}")
    return trainer, cli.model, Path(best) if best else None
