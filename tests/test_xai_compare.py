"""`ldvce xai compare`: the attribution-method registry (xai/attributions.py), deletion/insertion
and the randomised model (xai/faithfulness.py), the scores (experiments/compare/scoring.py),
Quantus agreeing with study.metrics, the comparison and its outputs, and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from classifier.attributes import attribute_index
from experiments.compare import scoring as S
from experiments.compare.data import CompareConfig, Faces
from study import metrics as M
from xai import attributions as A
from xai.faithfulness import aopc, curve_area, perturbation_curves, randomized_copy

SMILING = attribute_index("Smiling")
BOX = (slice(40, 56), slice(16, 48))  # the "mouth" of the box model (on the 8-px occlusion grid)


class BoxModel(nn.Module):
    """A classifier whose Smiling logit is the mean of its 1×1 convolution over a box (minus an
    offset): only the box's pixels matter, so a faithful map puts all its evidence there."""

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.layer4 = nn.Conv2d(3, 1, 1)
        nn.init.constant_(self.layer4.weight, 1.0)
        nn.init.zeros_(self.layer4.bias)
        mask = torch.zeros(64, 64)
        mask[BOX] = 1.0
        self.register_buffer("mask", mask)
        self.offset = offset

    def forward(self, x):
        a = self.layer4(x)[:, 0]
        logit = (a * self.mask).sum((1, 2)) / self.mask.sum() - self.offset
        out = torch.zeros(len(x), 40, dtype=x.dtype, device=x.device)
        return out.index_put((torch.arange(len(x)), torch.full((len(x),), SMILING)), logit)


def _images(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 64, 64, generator=g) * 2 - 1


def _box_mask(n):
    m = np.zeros((n, 64, 64), bool)
    m[(slice(None),) + BOX] = True
    return m


# ---------------------------------------------------------------------------- the registry
def test_every_family_is_registered_and_names_are_checked():
    fams = {m.family for m in A.METHODS.values()}
    assert fams == {"lrp", "gradient", "perturbation", "cam", "concept", "counterfactual"}
    assert {"epsilon_plus_flat", "gradient", "smoothgrad", "integrated_gradients", "occlusion",
            "gradcam", "crp_top", "cf_delta", "cf_lrp_diff"} <= set(A.METHODS)
    assert A.parse_methods("gradcam, occlusion") == ["gradcam", "occlusion"]
    with pytest.raises(ValueError, match="unknown method.*nope"):
        A.parse_methods("gradcam,nope")
    with pytest.raises(ValueError, match="already registered"):
        A.register_method("gradient", "G", "gradient")(lambda *a: None)
    with pytest.raises(ValueError, match="plain words"):
        A.register_method("a/b", "G", "gradient")


def test_adding_a_method_is_one_function(monkeypatch):
    monkeypatch.setattr(A, "METHODS", dict(A.METHODS))

    @A.register_method("box_oracle", "oracle", "gradient")
    def box_oracle(model, x, index, direction, counterfactuals=None):
        return torch.from_numpy(_box_mask(len(x))).double()

    maps = A.attribution_maps(BoxModel(), _images(2), "Smiling", "box_oracle")
    assert maps.shape == (2, 64, 64) and maps[0][BOX].all()


@pytest.mark.parametrize("method", ["gradient", "smoothgrad", "integrated_gradients", "occlusion"])
@pytest.mark.parametrize("offset", [-5.0, 5.0])  # both decisions: called smiling, and not
def test_gradient_and_perturbation_methods_find_the_box(method, offset):
    """Only the box moves the logit: every gradient/perturbation method puts (almost) all its
    positive evidence for the decision there, whichever way the decision goes (bright boxes
    for "smiling", dark ones for "not smiling", so the signed methods have evidence to show)."""
    model = BoxModel(offset)
    x = _images(3).abs() * (1.0 if offset < 0 else -1.0)
    d = A.decision_direction(model, x, "Smiling")
    assert (d == (-1.0 if offset > 0 else 1.0)).all()
    maps = A.attribution_maps(model, x, "Smiling", method)
    assert maps.shape == (3, 64, 64) and np.isfinite(maps).all()
    mass = [M.relevance_mass_accuracy(h, m) for h, m in zip(maps, _box_mask(3))]
    assert min(mass) > 0.95, mass


def test_counterfactual_methods_need_counterfactuals_and_read_them():
    model, x = BoxModel(), _images(2)
    with pytest.raises(ValueError, match="needs counterfactuals"):
        A.attribution_maps(model, x, "Smiling", "cf_delta")
    cf = x.clone()
    cf[(slice(None), slice(None)) + BOX] += 0.5
    maps = A.attribution_maps(model, x, "Smiling", "cf_delta", counterfactuals=cf)
    assert np.allclose(maps[0][BOX], 1.5) and np.allclose(maps[0].sum(), 1.5 * 16 * 32)


def test_learned_classifier_methods_give_finite_maps(toy_resnet):
    """Every non-counterfactual method runs on the toy ResNet (frozen parameters, as the
    fixture holds it) and leaves it as it was."""
    from toyfaces.world import held_out_faces
    x, masks, _ = held_out_faces(2)
    flags = [p.requires_grad for p in toy_resnet.parameters()]
    for name, m in A.METHODS.items():
        if m.needs_counterfactual or name.startswith(("lrp_", "epsilon_gamma", "epsilon_alpha")):
            continue
        maps = A.attribution_maps(toy_resnet, x, "Smiling", name)
        assert maps.shape == (2, 64, 64) and np.isfinite(maps).all(), name
        assert np.abs(maps).sum() > 0, name
    assert [p.requires_grad for p in toy_resnet.parameters()] == flags
    with pytest.raises(KeyError, match="unknown method"):
        A.attribution_maps(toy_resnet, x, "Smiling", "nope")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        A.attribution_maps(toy_resnet, x[0], "Smiling", "gradient")


# ----------------------------------------------------------------------------- faithfulness
def test_deletion_of_the_box_first_kills_the_decision():
    model, x = BoxModel(-0.2), _images(2).abs()
    d = A.decision_direction(model, x, "Smiling")
    good = _box_mask(2).astype(float)
    bad = 1.0 - good
    cg = perturbation_curves(model, x, "Smiling", good, d, steps=8)
    cb = perturbation_curves(model, x, "Smiling", bad, d, steps=8)
    assert cg["deletion"].shape == (2, 9)
    assert np.allclose(cg["deletion"][:, 0], cg["insertion"][:, -1])  # the original image
    assert (curve_area(cg["deletion"]) < curve_area(cb["deletion"])).all()
    assert (curve_area(cg["insertion"]) > curve_area(cb["insertion"])).all()
    assert (aopc(cg["deletion"]) > aopc(cb["deletion"])).all()
    with pytest.raises(ValueError, match="maps must be"):
        perturbation_curves(model, x, "Smiling", good[:1], d)


def test_curve_area_and_aopc_by_hand():
    c = np.array([[1.0, 0.5, 0.0]])
    assert curve_area(c)[0] == pytest.approx(0.5)  # (0.75 + 0.25) / 2
    assert aopc(c)[0] == pytest.approx((0 + 0.5 + 1.0) / 3)


def test_randomized_copy_changes_the_weights_not_the_model(toy_resnet):
    before = {k: v.clone() for k, v in toy_resnet.state_dict().items()}
    rnd = randomized_copy(toy_resnet, seed=1)
    assert all(torch.equal(v, toy_resnet.state_dict()[k]) for k, v in before.items())
    w, rw = toy_resnet.net.fc.weight, rnd.net.fc.weight
    assert not torch.allclose(w, rw)
    again = randomized_copy(toy_resnet, seed=1)
    assert torch.equal(again.net.fc.weight, rw)  # seeded
    with pytest.raises(ValueError, match="no layer"):
        randomized_copy(nn.ReLU())


# ---------------------------------------------------------------------------------- scores
def test_scores_use_the_study_metrics():
    rng = np.random.default_rng(0)
    maps, masks = rng.normal(size=(4, 16, 16)), rng.random((4, 16, 16)) < 0.2
    loc = S.localisation(maps, masks)
    assert loc["mass_accuracy"][2] == M.relevance_mass_accuracy(maps[2], masks[2])
    assert loc["auc"][1] == M.auc(maps[1], masks[1])
    assert np.allclose(S.randomisation_similarity(maps, -maps), 1.0)  # |map| is compared
    s = S.summarise([0.2, 0.4, 0.6, 0.8], 200, 0)
    assert s["mean"] == pytest.approx(0.5) and s["ci"][0] < 0.5 < s["ci"][1]


def test_human_scores_and_ceiling():
    region = np.zeros((16, 16), bool)
    region[4:8, 4:10] = True
    people = {"a": np.stack([region] * 4)}
    hum = S.humans(region[None].astype(float), people, ["a"], 16)
    assert hum["mass_accuracy"][0] == 1.0 and hum["auc"][0] == 1.0
    ceiling = S.human_ceiling(people, 50, 0)
    assert ceiling["mass_accuracy"]["mean"] == 1.0 and ceiling["rank_accuracy"]["mean"] == 1.0


def test_quantus_agrees_with_the_study_metrics():
    """Where Quantus implements the same localisation metric, its numbers are ours (maps with
    distinct, non-negative values: no ties, no sign convention in play)."""
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(3)
    n = 6
    a = rng.random((n, 1, 16, 16))
    s = np.zeros((n, 1, 16, 16))
    for i in range(n):
        y, x = rng.integers(0, 10, 2)
        s[i, 0, y:y + 5, x:x + 6] = 1
    x_batch, y_batch = rng.random((n, 1, 16, 16)), np.zeros(n, int)
    kw = dict(disable_warnings=True, normalise=False, abs=False)
    ours = {"mass_accuracy": M.relevance_mass_accuracy, "rank_accuracy": M.relevance_rank_accuracy,
            "pointing_game": M.pointing_game, "auc": M.auc}
    theirs = {"mass_accuracy": quantus.RelevanceMassAccuracy(**kw),
              "rank_accuracy": quantus.RelevanceRankAccuracy(**kw),
              "pointing_game": quantus.PointingGame(**kw), "auc": quantus.AUC(**kw)}
    for name, metric in theirs.items():
        q = metric(model=None, x_batch=x_batch, y_batch=y_batch, a_batch=a, s_batch=s)
        mine = [ours[name](a[i, 0], s[i, 0] > 0) for i in range(n)]
        assert np.allclose(np.asarray(q, float), mine), (name, q, mine)


# ------------------------------------------------------------------------------ comparison
def test_compare_scores_every_group(toy_resnet, tmp_path):
    from experiments.compare.data import simulated_hrhs
    from experiments.compare.run import compare, csv_text, format_table
    from toyfaces.world import held_out_faces
    x, masks, rows = held_out_faces(4)
    faces = Faces(x, [str(r) for r in rows], masks, rows)
    cfg = CompareConfig(n_bootstrap=50, participants=4)
    people = simulated_hrhs(faces, cfg.participants)
    r = compare(toy_resnet, faces, ["epsilon_plus_flat", "gradcam"], None, cfg, people=people)
    for name, m in r["methods"].items():
        assert m["randomisation"] in ("pass", "fail")
        assert m["seconds_per_image"] > 0 and m["maps"].shape == (4, 64, 64)
        for key in ("mass_accuracy", "auc", "deletion_auc", "aopc", "randomisation_similarity",
                    "hrh_mass_accuracy", "hrh_spearman"):
            s = m["metrics"][key]
            assert np.isfinite(s["mean"]) and s["ci"][0] <= s["mean"] <= s["ci"][1], (name, key)
    # the toy ResNet reads the mouth: LRP's mass there is well above chance (box ≈ 5 %)
    assert r["methods"]["epsilon_plus_flat"]["metrics"]["mass_accuracy"]["mean"] > 0.5
    assert 0 < r["human_ceiling"]["mass_accuracy"]["mean"] <= 1
    text = csv_text(r)
    assert text.splitlines()[0].startswith("method,label,seconds_per_image,randomisation")
    assert len(text.splitlines()) == 3 and "human ceiling" in format_table(r)
    with pytest.raises(ValueError, match="unknown metric group"):
        compare(toy_resnet, faces, ["gradient"], "localisation,speed", cfg)


def test_cli_writes_every_output(tmp_path):
    import toyfaces
    from ldvce.cli import main
    data = toyfaces.make_dataset(tmp_path / "toy", n=6, seed=4242, progress=False)
    out = tmp_path / "out"
    main(["xai", "compare", "--classifier", "toy_resnet", "--data", str(data), "--n", "3",
          "--out", str(out), "--methods", "gradient,gradcam", "--metrics",
          "localisation,sanity,humans", "--bootstrap", "20", "--device", "cpu"])
    for f in ("compare.json", "compare.csv", "grid.png", "report.html"):
        assert (out / f).is_file(), f
    res = json.loads((out / "compare.json").read_text())
    assert set(res["methods"]) == {"gradient", "gradcam"} and res["n"] == 3
    assert "maps" not in res["methods"]["gradient"] and "deletion_auc" not in \
        res["methods"]["gradient"]["metrics"]
    assert "Which heatmap?" in (out / "report.html").read_text()
    with pytest.raises(SystemExit, match="unknown method"):
        main(["xai", "compare", "--classifier", "toy_resnet", "--data", str(data), "--n", "2",
              "--out", str(out), "--methods", "nope"])
    with pytest.raises(SystemExit, match="not a toyfaces folder"):
        main(["xai", "compare", "--classifier", "toy_resnet", "--data", str(tmp_path), "--n", "2",
              "--out", str(out)])


def test_a_real_study_export_is_scored_against_its_hrhs(tmp_path):
    """--hrh-export: the study's images from --data, the HRHs and the ceiling from the export; no
    ground truth, so no localisation."""
    from classifier.images import save_image
    from experiments.compare.run import run_compare
    from study import write_export
    from study.synthetic import random_study
    from toyfaces.world import held_out_faces
    pids, sel, polys = random_study(seed=2, annotation_images=("100", "101"))
    write_export(tmp_path / "export.csv", sel, polys, pids)
    x, _, _ = held_out_faces(2)
    images = tmp_path / "images"
    for img, face in zip(("100", "101"), x):
        save_image(face, images / f"{img}_1.0_misclassified.png")
    r = run_compare("toy_resnet", tmp_path / "out", data=images, methods="gradient",
                    metrics="localisation,humans", hrh_export=tmp_path / "export.csv",
                    config=CompareConfig(n_bootstrap=20), quiet=True)
    m = r["methods"]["gradient"]["metrics"]
    assert "mass_accuracy" not in m and 0 <= m["hrh_mass_accuracy"]["mean"] <= 1
    assert r["hrh"] == "export" and r["human_ceiling"]["auc"]["mean"] > 0.5
    with pytest.raises(FileNotFoundError, match="not found"):
        run_compare("toy_resnet", tmp_path / "out", data=tmp_path, methods="gradient",
                    hrh_export=tmp_path / "export.csv", quiet=True)


def test_counterfactuals_are_read_from_a_run_folder(tmp_path):
    """A run folder's items are matched to the faces by dataset row; a missing one is an error
    that names the face."""
    from classifier.images import load_image, save_image
    from dvce import runfolder
    from experiments.compare.data import counterfactuals
    x = _images(2)
    faces = Faces(x, ["7", "9"], _box_mask(2), [7, 9])
    run = tmp_path / "run"
    for row, face in ((9, x[1]), (7, x[0])):
        with runfolder.writing_item(run, f"item{row}") as folder:
            save_image(-face, folder / runfolder.COUNTERFACTUAL)
            runfolder.write_result(folder, {"source": {"index": row}})
    cf = counterfactuals(None, faces, "Smiling", CompareConfig(), run=run)
    assert torch.allclose(cf[0], load_image(run / "item7" / runfolder.COUNTERFACTUAL, 64))
    assert torch.allclose(cf, -x, atol=0.01)
    with pytest.raises(FileNotFoundError, match="no counterfactual of face 3"):
        counterfactuals(None, Faces(x[:1], ["3"], None, [3]), "Smiling", CompareConfig(), run=run)
