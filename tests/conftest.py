"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1, WANDB_MODE=offline) on the toy world."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
UNSEEN_SEED = 4242  # never used for training anything


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "seed").is_dir():
        pytest.skip("../shared/seed is not present beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def toy_unseen(tmp_path_factory) -> Path:
    """A small toyfaces dataset from a seed no model was trained on."""
    import toyfaces
    out = tmp_path_factory.mktemp("toy_unseen")
    return toyfaces.make_dataset(out, n=96, seed=UNSEEN_SEED, progress=False)


@pytest.fixture(scope="session")
def toy_resnet_ckpt() -> Path:
    """The toy ResNet classifier (the weights shipped in toyfaces/weights/classifiers)."""
    from ldvce.toyworld import toy_classifier
    return toy_classifier("toy_resnet")


@pytest.fixture(scope="session")
def toy_resnet(toy_resnet_ckpt):
    from classifier.models import load_classifier
    return load_classifier(toy_resnet_ckpt).requires_grad_(False)
