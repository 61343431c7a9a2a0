"""The toy world's cached parts: datasets, and the toy classifiers (shipped, or trained here).

The toy ResNet and the oracle are shipped with the package (``toyfaces/weights/classifiers/``,
safetensors + hyper-parameters), so nothing is trained unless asked for. ``import toyfaces``
registers every name of :data:`TOY_CLASSIFIERS` with :func:`classifier.registry.register_classifier`,
so ``--classifier toy_resnet`` works in every command. Everything made here lives under the
cache folder (``$LDVCE_CACHE`` or ``<repo>/.cache/ldvce``):

    data/toy-train   classifier training data (seed 1)   data/toy-test   unseen-seed images (seed 7)
    models/<name>.ckpt   classifiers trained on this machine (retrain=True, or toy_linear)
"""
from __future__ import annotations

import fcntl
import os
import shutil
from functools import partial
from pathlib import Path

from classifier.registry import register_classifier
from fileio import atomic_write_bytes

# ``import toyfaces`` imports this module (to register the classifiers), so the toyfaces package
# is imported inside the functions, and torch, Lightning and the renderer only where they run:
# registering must stay free of torch (``ldvce --help``).

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "classifier"

# name -> config. The oracle differs in architecture (a plain, narrow ResNet18) and seed, like the
# published protocol's separately trained oracle.
TOY_CLASSIFIERS = {
    "toy_resnet": "toy_resnet.yaml",
    "toy_linear": "toy_linear.yaml",
    "toy_resnet18": "toy_resnet18.yaml",
    "toy_oracle": "toy_oracle.yaml",
}
TRAIN_DATA = ("toy-train", 12000, 1)
TEST_DATA = ("toy-test", 400, 7)


def cache_dir() -> Path:
    return Path(os.environ.get("LDVCE_CACHE", REPO / ".cache" / "ldvce"))


def shipped_classifier(name: str) -> Path:
    """Where the shipped weights of toy classifier ``name`` are (the file may not exist:
    ``toy_linear``, 50 MB of weights, is not shipped)."""
    import toyfaces
    return toyfaces.WEIGHTS / "classifiers" / f"{name}.safetensors"


def toy_data(name_n_seed=TRAIN_DATA, progress: bool = True, spurious=None) -> Path:
    """A toyfaces folder from the cache, rendered if missing (with a ``toyfaces.Spurious`` cue
    planted when given)."""
    import toyfaces
    name, n, seed = name_n_seed
    path = cache_dir() / "data" / name
    if toyfaces.is_complete(path):
        return path
    # Rendered beside the cache entry and moved in whole: two processes asking for the same
    # world at once (parallel benchmark jobs) must not write into, or read, a half-made folder.
    tmp = path.with_name(f"{name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    toyfaces.make_dataset(tmp, n=n, seed=seed, progress=progress, spurious=spurious)
    if toyfaces.is_complete(path):  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        return path
    shutil.rmtree(path, ignore_errors=True)  # an interrupted, incomplete render
    try:
        os.replace(tmp, path)
    except OSError:  # another process moved its copy in between
        shutil.rmtree(tmp, ignore_errors=True)
        if not toyfaces.is_complete(path):
            raise
    return path


def toy_classifier(name: str = "toy_resnet", quiet: bool = True, retrain: bool = False) -> Path:
    """Weights of a toy classifier: the shipped ones, or trained on this machine.

    Parameters
    ----------
    name : one of :data:`TOY_CLASSIFIERS` (the Clever-Hans classifier ``toy_biased_hat`` is
        in :data:`SHIPPED_ALIASES` instead).
    retrain : train now with the project's training code (``configs/classifier/<name>.yaml`` on
        the rendered ``toy-train`` data, several minutes on 2 cores) instead of using the shipped
        weights; the result replaces ``<cache>/models/<name>.ckpt``. A classifier that is not
        shipped is trained once and then taken from the cache.
    quiet : hide the training progress bar.
    """
    if name not in TOY_CLASSIFIERS:
        raise KeyError(f"unknown toy classifier {name!r}; choose from {list(TOY_CLASSIFIERS)}")
    return shipped_or_trained(name, TOY_CLASSIFIERS[name], lambda: toy_data(TRAIN_DATA),
                              retrain=retrain, quiet=quiet)


def shipped_or_trained(name: str, config: str, data, retrain: bool = False, quiet: bool = True,
                       extra_args: tuple[str, ...] = ()) -> Path:
    """Weights of classifier ``name``: the shipped file (:func:`shipped_classifier`), else the
    cached ``<cache>/models/<name>.ckpt``, else (and always with ``retrain``) trained now with
    the project's training code on ``configs/classifier/<config>`` and ``data()`` (a callable
    returning the dataset folder, called only when training), ``extra_args`` added to the
    training command line. The cache never holds half a checkpoint."""
    shipped = shipped_classifier(name)
    if not retrain and shipped.exists():
        return shipped
    ckpt = cache_dir() / "models" / f"{name}.ckpt"
    if not retrain and ckpt.exists():
        return ckpt
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with open(ckpt.with_suffix(".lock"), "w") as lock:
        # One training per classifier at a time: a second process asking for it (parallel
        # benchmark jobs) waits and takes the first one's checkpoint.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not retrain and ckpt.exists():
            return ckpt
        return _train_into(ckpt, name, config, data, quiet, extra_args)


def _train_into(ckpt: Path, name: str, config: str, data, quiet: bool,
                extra_args: tuple[str, ...]) -> Path:
    from classifier.train import main as train_main  # heavy: Lightning, only when training
    root = cache_dir() / "runs" / name
    args = ["--config", str(CONFIGS / config), "--data.data_path", str(data()), *extra_args,
            "--trainer.default_root_dir", str(root), "--run_name", name]
    shutil.rmtree(root, ignore_errors=True)  # a fresh run: no version_N of an earlier one
    if quiet:
        args += ["--trainer.enable_progress_bar", "false"]
    print(f"[ldvce] training the {name} classifier (cached afterwards at {ckpt}) …", flush=True)
    _, _, best = train_main(args)
    atomic_write_bytes(ckpt, Path(best).read_bytes())
    return ckpt


def held_out_faces(n: int = 32, attribute: str = "Smiling"):
    """(images (n, 3, 64, 64) in [-1, 1], region masks (n, 64, 64) bool, rows): the first ``n``
    test-split faces of the training world (never trained on), with ``attribute``'s ground truth.

    Rendered directly (the same pixels as the rows of the ``toy-train`` dataset), so the 12000
    training faces need not exist.
    """
    import numpy as np
    import torch
    import toyfaces
    from classifier.dataset import split_range
    _, total, seed = TRAIN_DATA
    rows = list(split_range("test", total))[:n]
    images, masks = toyfaces.render_rows(total, seed, rows)
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2).sub(0.5).div(0.5)
    return x.contiguous(), masks[attribute], rows


#: Shipped classifiers registered under a short name but trained elsewhere: the Clever-Hans
#: experiment's biased toy ResNet (``experiments.clever_hans.data.biased_classifier``).
SHIPPED_ALIASES = {"toy_biased_hat": "toy_resnet_wearing_hat_1"}


def register_toy_classifiers() -> None:
    """``--classifier NAME`` for every toy classifier (called by ``import toyfaces``)."""
    for name in TOY_CLASSIFIERS:
        register_classifier(name, partial(toy_classifier, name))
    for name, file in SHIPPED_ALIASES.items():
        register_classifier(name, partial(shipped_classifier, file))
