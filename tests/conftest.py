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
    from toyfaces.world import toy_classifier
    return toy_classifier("toy_resnet")


@pytest.fixture(scope="session")
def toy_resnet(toy_resnet_ckpt):
    from classifier.models import load_classifier
    return load_classifier(toy_resnet_ckpt).requires_grad_(False)


@pytest.fixture(scope="session")
def study_run(tmp_path_factory, toy_resnet_ckpt) -> Path:
    """A small real `ldvce generate` run for the study app: 3 not-smiling toy faces made smiling
    by the guided sampler on the shipped toy LDM and the cached toy ResNet (a few seconds)."""
    import toyfaces
    from classifier.attributes import attribute_index
    from classifier.models import load_classifier
    from dvce import runner
    from dvce.ldm import load_ldm
    from dvce.samplers import Problem

    root = tmp_path_factory.mktemp("study_run")
    data = toyfaces.make_dataset(root / "faces", n=16, seed=UNSEEN_SEED + 1, progress=False)
    lmdb_path, attr_path = toyfaces.paths(data)
    k = attribute_index("Smiling")
    rows = [int(line.split()[0].split(".")[0]) for line in attr_path.read_text().splitlines()[2:]
            if line.split()[1 + k] == "-1"][:3]
    ldm = load_ldm("toy")
    clf = load_classifier(toy_resnet_ckpt).requires_grad_(False)
    out = root / "run"
    runner.run(runner.lmdb_items(lmdb_path, attr_path, rows, ldm.image_size), Problem(ldm, clf, k), out,
               method="guided", target=1, batch_size=3, options=dict(num_steps=10, retry_scales=()),
               settings={"attribute": "Smiling", "ldm": "toy", "classifier": "toy_resnet"}, progress=False)
    return out
