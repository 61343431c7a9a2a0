"""What every benchmark shares: its settings (``configs/experiment/bench.yaml``), the
seed-faithful configuration (``configs/experiment/seed-faithful.yaml``), the sampler
configurations compared, the toy setup and writing the result."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import toyfaces
from classifier.evaluate import dataset_for, pick_not_smiling
from classifier.models import load_classifier
from classifier.registry import resolve_classifier
from dvce.ldm import load_ldm
from dvce.samplers import DEFAULT_METHOD, SAMPLERS, sampler_defaults
from experiments.config import load_config
from fileio import write_json
from toyfaces.world import toy_data


@dataclass(frozen=True)
class BenchConfig:
    """``configs/experiment/bench.yaml`` (documented there)."""
    batch_size: int = 16
    data: tuple[str, int, int] = ("toy-test", 400, 7)
    classifier: str = "toy_resnet"
    lrp_models: tuple[str, ...] = ("toy_resnet", "toy_oracle")


@dataclass(frozen=True)
class SamplerConfig:
    """One sampler run as a benchmark runs it: method, batch size and options."""
    method: str
    batch_size: int
    options: dict = field(default_factory=dict)


CONFIG = load_config(BenchConfig, "bench")
#: The original lDVCE as it ran (``configs/experiment/seed-faithful.yaml``), as a dict.
SEED_FAITHFUL = vars(load_config(SamplerConfig, "seed-faithful"))
#: Batch size of the batched samplers (the defaults of the method come from its signature).
BATCH_SIZE = CONFIG.batch_size


def sampler_configs() -> list[dict]:
    """Every sampler but the seed's (which runs as :data:`SEED_FAITHFUL`) with its own defaults,
    the default method first."""
    names = [DEFAULT_METHOD] + [m for m in SAMPLERS if m not in (DEFAULT_METHOD, "seed")]
    return [dict(method=m, batch_size=BATCH_SIZE, options=sampler_defaults(m)) for m in names]


def toy_setup(device):
    """(test data folder, explained classifier, toy LDM, region masks) of the benchmarks."""
    data = toy_data(tuple(CONFIG.data))
    clf = load_classifier(resolve_classifier(CONFIG.classifier),
                          map_location=device).requires_grad_(False)
    ldm = load_ldm("toy", device=device)
    return data, clf, ldm, toyfaces.load_masks(data)


def bench_faces(clf, data, n: int, device) -> tuple[list[int], torch.Tensor]:
    """The rows and images (on ``device``) of the first ``n`` faces of ``data`` that ``clf``
    calls not smiling: the faces every toy sampler benchmark explains."""
    rows = pick_not_smiling(clf, data, n, device)
    ds = dataset_for(data, split="all")
    return rows, torch.stack([ds.read_image(r) for r in rows]).to(device)


def write_result(r: dict, path) -> None:
    """Also write a benchmark's result to ``path`` (JSON) when one is given."""
    if path:
        write_json(path, r)
        print(f"wrote {path}")
