import json
import subprocess
import sys

import numpy as np
import pytest

import toyfaces
from classifier import ATTRIBUTES, CelebHQAttrDataset
from toyfaces.render import mouth_geometry, render, sample_factors
from tests.conftest import UNSEEN_SEED


def test_cli_make_data_loads_through_dataset(tmp_path):
    out = tmp_path / "toy"
    subprocess.run([sys.executable, "-m", "ldvce.cli", "toy", "make-data", str(out), "--n", "40",
                    "--seed", str(UNSEEN_SEED + 1)], check=True, capture_output=True)
    lmdb_path, attr_path = toyfaces.paths(out)
    ds = CelebHQAttrDataset(lmdb_path, attr_path, split="all")
    assert len(ds) == 40
    assert ATTRIBUTES[31] == "Smiling" and ds.attribute_index("Smiling") == 31
    s = ds[3]
    assert s["img"].shape == (3, 64, 64) and -1 <= s["img"].min() and s["img"].max() <= 1
    assert s["labels"].shape == (40,) and s["index"] == 3
    meta = json.loads((out / "meta.json").read_text())
    smiles = np.array([f["smile"] for f in meta["factors"]])
    hats = np.array([f["hat"] for f in meta["factors"]])
    assert np.array_equal(ds.labels[:, 31].numpy() > 0, smiles > 0)
    assert np.array_equal(ds.labels[:, ATTRIBUTES.index("Wearing_Hat")].numpy() > 0, hats)
    # unmodelled attributes are constant -1 (label 0)
    assert ds.labels[:, ATTRIBUTES.index("Young")].sum() == 0


def test_masks_cover_the_region_they_name(toy_unseen):
    masks = toyfaces.load_masks(toy_unseen)
    factors = toyfaces.load_factors(toy_unseen)
    n = len(factors)
    for name in toyfaces.MODELLED:
        assert masks[name].shape == (n, 64, 64) and masks[name].dtype == bool
    geo = mouth_geometry(factors, 64)
    for i in range(n):
        mx, my, hw = geo[i]
        m = masks["Smiling"][i]
        ys, xs = np.nonzero(m)
        # the mouth mask is centred on the mouth and spans its width, nothing else
        assert abs(xs.mean() - mx) < 1.5 and abs(ys.mean() - my) < 2.5
        assert xs.max() - xs.min() >= 2 * hw
        assert m.sum() < 0.1 * m.size
        # the drawn lips (lip-coloured pixels) lie inside the mouth mask
    imgs = render(factors.take(slice(0, 16)), 64)
    lip = (imgs[..., 0] > 120) & (imgs[..., 1] < 60) & (imgs[..., 2] < 70)
    inside = (lip & masks["Smiling"][:16]).sum() / max(1, lip.sum())
    assert inside > 0.85  # hats can be red too; lips are the bulk


def test_render_is_deterministic_and_changes_only_the_mouth():
    f = sample_factors(8, seed=3)
    a, b = render(f, 64), render(sample_factors(8, seed=3), 64)
    assert np.array_equal(a, b)
    g = f.take(slice(0, 8))
    g.smile = -g.smile
    c, m = render(g, 64, with_masks=True)
    changed = np.abs(c.astype(int) - a.astype(int)).sum(-1) > 0
    assert (changed & ~m["Smiling"]).sum() == 0 and changed.any()


def test_spurious_correlation_is_planted():
    f = sample_factors(2000, seed=5, spurious=toyfaces.Spurious("Smiling", "Wearing_Hat", 0.9))
    lab = toyfaces.labels_of(f)
    smile, hat = lab[:, 31] > 0, lab[:, ATTRIBUTES.index("Wearing_Hat")] > 0
    assert (smile == hat).mean() > 0.9
    plain = toyfaces.labels_of(sample_factors(2000, seed=5))
    assert ((plain[:, 31] > 0) == (plain[:, ATTRIBUTES.index("Wearing_Hat")] > 0)).mean() < 0.7
    with pytest.raises(ValueError):
        toyfaces.Spurious("Smiling", "Young", 0.5)


def test_rendering_is_fast():
    import time
    t = time.perf_counter()
    render(sample_factors(500, seed=1), 64)
    # thousands per minute on 2 cores: 500 must take well under 30 s even on a loaded machine
    assert time.perf_counter() - t < 30


def test_render_rows_gives_the_dataset_rows_without_writing_it(tmp_path):
    """``render_rows`` is how held-out faces are made without rendering all 12000: the same
    pixels and masks as the dataset's rows."""
    import torch
    from PIL import Image
    from classifier.images import pil_to_tensor
    from toyfaces.world import held_out_faces
    folder = toyfaces.make_dataset(tmp_path / "d", n=50, seed=11, progress=False)
    rows = [47, 3, 20]
    images, masks = toyfaces.render_rows(50, 11, rows)
    ds = CelebHQAttrDataset(*toyfaces.paths(folder), indices=rows, augment=False)
    for i in range(len(rows)):
        assert torch.equal(ds[i]["img"], pil_to_tensor(Image.fromarray(images[i])))
    stored = toyfaces.load_masks(folder)
    assert all(np.array_equal(stored[a][rows], masks[a]) for a in toyfaces.MODELLED)
    x, m, held_rows = held_out_faces(4)
    assert x.shape == (4, 3, 64, 64) and m.shape == (4, 64, 64) and held_rows == [10800, 10801, 10802, 10803]
