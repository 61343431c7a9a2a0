"""The cached toy world: datasets, classifiers and the oracle, made on first use and reused.

Everything lives under the cache folder (``$LDVCE_CACHE`` or ``<repo>/.cache/ldvce``):

    data/toy-train   classifier training data (seed 1)   data/toy-test   unseen-seed images (seed 7)
    models/toy_resnet.ckpt  toy_linear.ckpt  toy_oracle.ckpt
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "classifier"

# name -> config. The oracle differs in architecture (a plain ResNet18) and seed, like the
# published protocol's separately trained oracle.
TOY_CLASSIFIERS = {
    "toy_resnet": "toy_resnet.yaml",
    "toy_linear": "toy_linear.yaml",
    "toy_oracle": "toy_oracle.yaml",
}
TRAIN_DATA = ("toy-train", 12000, 1)
TEST_DATA = ("toy-test", 400, 7)


def cache_dir() -> Path:
    return Path(os.environ.get("LDVCE_CACHE", REPO / ".cache" / "ldvce"))


def toy_data(name_n_seed=TRAIN_DATA, progress: bool = True) -> Path:
    """A toyfaces folder from the cache, rendered if missing."""
    import toyfaces
    name, n, seed = name_n_seed
    path = cache_dir() / "data" / name
    if not toyfaces.is_complete(path):
        toyfaces.make_dataset(path, n=n, seed=seed, progress=progress)
    return path


def toy_classifier(name: str = "toy_resnet", quiet: bool = True) -> Path:
    """Checkpoint of a toy classifier, trained with the project's own training code if missing."""
    if name not in TOY_CLASSIFIERS:
        raise KeyError(f"unknown toy classifier {name!r}; choose from {list(TOY_CLASSIFIERS)}")
    ckpt = cache_dir() / "models" / f"{name}.ckpt"
    if ckpt.exists():
        return ckpt
    from classifier.train import main as train_main
    cfg = TOY_CLASSIFIERS[name]
    data = toy_data(TRAIN_DATA)
    root = cache_dir() / "runs" / name
    args = ["--config", str(CONFIGS / cfg), "--data.data_path", str(data),
            "--trainer.default_root_dir", str(root), "--run_name", name]
    if quiet:
        args += ["--trainer.enable_progress_bar", "false"]
    print(f"[ldvce] training the {name} classifier (cached afterwards at {ckpt}) …", flush=True)
    _, _, best = train_main(args)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    shutil.copy(best, tmp)
    tmp.replace(ckpt)
    return ckpt


def resolve_classifier(name_or_path: str) -> Path:
    """A toy classifier name (``toy_resnet``, ``toy_linear``, ``toy_oracle``) or a checkpoint path."""
    if str(name_or_path) in TOY_CLASSIFIERS:
        return toy_classifier(str(name_or_path))
    p = Path(name_or_path)
    if not p.exists():
        raise FileNotFoundError(f"classifier checkpoint not found: {p} (or use one of "
                                f"{', '.join(TOY_CLASSIFIERS)} for the toy world)")
    return p


def held_out_faces(n: int = 32, attribute: str = "Smiling"):
    """(images (n, 3, 64, 64) in [-1, 1], region masks (n, 64, 64) bool, rows): the first ``n``
    test-split faces of the training world (never trained on), with ``attribute``'s ground truth."""
    import torch
    import toyfaces
    from classifier import CelebHQAttrDataset
    folder = toy_data()
    lmdb, attr = toyfaces.paths(folder)
    rows = CelebHQAttrDataset(lmdb, attr, split="test").indices[:n]
    ds = CelebHQAttrDataset(lmdb, attr, indices=rows, image_size=64, augment=False)
    x = torch.stack([ds[i]["img"] for i in range(len(ds))])
    return x, toyfaces.load_masks(folder)[attribute][rows], rows
