"""CRP (xai.crp): each zennit-crp fix with a test that fails without it, the model left
unaltered, local (pair) analysis and global analysis on the toy world."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import crp.attribution
import crp.helper
import crp.image
import crp.visualization
from crp.concepts import ChannelConcept
from xai import crp as C
from xai.lrp import get_composite

SMILING = 31


def small_resnet(seed=0):
    from classifier.models import ResNet50Classifier
    torch.manual_seed(seed)
    return ResNet50Classifier(arch="resnet18", image_size=32).eval()


class RandomLabelled(torch.utils.data.Dataset):
    """(image, 40 labels as 0/1 integers) — what a multi-label dataset hands zennit-crp."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(int(i))
        labels = (torch.rand(40, generator=g) > 0.5).long()
        labels[SMILING] = 1
        return torch.rand(3, 32, 32, generator=g) * 2 - 1, labels


# ================================================================================ the fixes
def test_fix1_stat_targets_without_np_int(tmp_path):
    np.save(tmp_path / "targets.npy", np.array(["31", "7"]))
    with pytest.raises(AttributeError, match="int"):
        crp.helper.load_stat_targets(tmp_path)  # the library on numpy 2
    assert C.load_stat_targets(tmp_path).tolist() == [31, 7]


def test_fix1_fix2_feature_visualization_targets_and_stats(tmp_path):
    model = small_resnet()
    comp = get_composite("epsilon_plus_flat", model)
    layer_map = {"net.layer4": ChannelConcept()}
    # the library: 0/1 label vectors silently become the targets {0, 1}
    raw = crp.visualization.FeatureVisualization(C.CondAttribution(model), RandomLabelled(),
                                                 layer_map, path=str(tmp_path / "raw"))
    for part in (raw.RelMax, raw.ActMax, raw.RelStats, raw.ActStats):
        part.delete_result_arrays = C._dropper(part)  # speed only: skips crp's gc.collect()
    with pytest.warns(UserWarning):
        raw.run(comp, 0, 6, batch_size=3)
    raw_targets = np.load(tmp_path / "raw" / "RelStats_sum_normed" / "targets.npy").astype(int)
    assert sorted(raw_targets.tolist()) == [0, 1]
    # fixed: the chosen attribute on every image
    fv = C.FeatureVisualization(C.CondAttribution(model), RandomLabelled(), layer_map,
                                targets=[SMILING], path=str(tmp_path / "fix"))
    fv.run(comp, 0, 6, batch_size=3)
    assert C.load_stat_targets(fv.RelStats.PATH).tolist() == [SMILING]
    with pytest.raises(AttributeError, match="int"):
        crp.visualization.FeatureVisualization.compute_stats(fv, 3, "net.layer4")
    targets, values = fv.compute_stats(3, "net.layer4")
    assert targets.tolist() == [SMILING] and torch.isfinite(values).all()
    assert sorted(fv.concept_relevance["net.layer4"]) == list(range(6))


@pytest.mark.parametrize("exclude_parallel", [True, False])
def test_fix3_relevance_recorded_before_the_mask(exclude_parallel):
    model = small_resnet()
    comp = get_composite("epsilon_plus_flat", model)
    x = torch.rand(1, 3, 32, 32) * 2 - 1

    def layer4_relevance(att, conditions):
        res = att(x.clone().requires_grad_(True), conditions, comp, record_layer=["net.layer4"],
                  exclude_parallel=exclude_parallel)
        return res.relevances["net.layer4"].sum((2, 3))[0], res.heatmap

    free = [{"y": [SMILING]}]
    cond = [{"y": [SMILING], "net.layer4": [5]}]
    raw = crp.attribution.CondAttribution(model, no_param_grad=False)
    r_free, _ = layer4_relevance(raw, free)
    r_cond, _ = layer4_relevance(raw, cond)
    assert (r_cond != 0).sum() == 1  # the library on torch >= 2: only the masked channel
    if exclude_parallel:
        assert r_cond[5] == pytest.approx(2 * float(r_free[5]), rel=1e-4)  # ... counted twice
    fixed = C.CondAttribution(model)
    f_free, _ = layer4_relevance(fixed, free)
    f_cond, heat = layer4_relevance(fixed, cond)
    torch.testing.assert_close(f_cond, f_free)
    torch.testing.assert_close(f_free, r_free)
    # and the conditional heatmap holds that channel's relevance (conservation)
    assert float(heat.sum()) == pytest.approx(float(f_free[5]), rel=1e-3)


def test_fix4_requires_grad_restored():
    model = small_resnet()
    model.net.layer1.requires_grad_(False)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    lib_model = small_resnet()
    crp.attribution.CondAttribution(lib_model)
    assert not any(p.requires_grad for p in lib_model.parameters())  # the library's side effect
    att = C.CondAttribution(model)
    assert [p.requires_grad for p in model.parameters()] == flags
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    att(x, [{"y": [SMILING]}], get_composite("epsilon_plus_flat", model))
    for _ in att.generate(x[:1].detach().requires_grad_(True),
                          [{"y": [SMILING], "net.layer4": [c]} for c in range(3)],
                          get_composite("epsilon_plus_flat", model), batch_size=2, verbose=False):
        assert not any(p.requires_grad for p in params)  # frozen while it runs
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.fixture
def pillow13(monkeypatch):
    """Simulate Pillow 13 (saving zennit's palette images raises TypeError; the
    deprecated ``fromarray(mode=...)`` is refused too). Pillow 12.3 is installed here."""
    from PIL import Image
    save, fromarray = Image.Image.save, Image.fromarray

    def strict_save(self, *args, **kwargs):
        if self.mode == "P":
            raise TypeError("palette images cannot be saved (simulated Pillow 13)")
        return save(self, *args, **kwargs)

    def strict_fromarray(obj, *args, **kwargs):
        if args or "mode" in kwargs:
            raise TypeError("fromarray() got an unexpected keyword argument 'mode' (simulated)")
        return fromarray(obj)

    monkeypatch.setattr(Image.Image, "save", strict_save)
    return monkeypatch, strict_fromarray


def test_fix5_no_palette_images(pillow13, tmp_path):
    import zennit.image
    from PIL import Image
    from xai import render
    monkeypatch, strict_fromarray = pillow13
    heat = torch.randn(16, 16)
    palette_img = zennit.image.imgify(heat, symmetric=True)  # built before fromarray is strict
    with pytest.raises(TypeError):
        palette_img.save(io.BytesIO(), format="PNG")  # the library path
    C.save_png(palette_img, tmp_path / "a.png")  # fixed: converted to RGB first
    monkeypatch.setattr(Image, "fromarray", strict_fromarray)
    with pytest.raises(TypeError):
        zennit.image.imgify(heat, symmetric=True)
    with pytest.raises(TypeError):
        crp.image.vis_opaque_img(torch.rand(2, 3, 32, 32), torch.rand(2, 32, 32))
    render.save_rgb(render.heatmap_rgb(heat.numpy()), tmp_path / "b.png")
    refs = C.vis_opaque_rgb(torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 32, 32), rf=True)
    C.save_png(refs[0], tmp_path / "c.png")
    render.heatmap_figure(heat.numpy(), tmp_path / "d.png", title="t")
    monkeypatch.undo()
    for name in "abcd":
        assert Image.open(tmp_path / f"{name}.png").mode in ("RGB", "RGBA")


# ==================================================================== model left unaltered
def test_crp_analyses_leave_model_unaltered():
    model = small_resnet()
    model.train()
    model.net.layer2.requires_grad_(False)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(n, p.requires_grad) for n, p in model.named_parameters()]
    x0, x1 = torch.rand(3, 32, 32) * 2 - 1, torch.rand(3, 32, 32) * 2 - 1
    C.local_analysis(model, x0, "Smiling", ["net.layer4"], top=2)
    C.pair_analysis(model, x0, x1, "Smiling", ["layer3", "layer4"], top=2)
    assert list(model.state_dict()) == list(sd)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == flags
    assert model.training and model.net.layer1.training


def test_resolve_layers():
    model = small_resnet()
    assert C.resolve_layers(model, "layer3, net.layer4") == ["net.layer3", "net.layer4"]
    assert C.resolve_layers(model.net, ["net.layer4"]) == ["layer4"]
    with pytest.raises(KeyError, match="layer9"):
        C.resolve_layers(model, ["layer9"])


# ============================================================================ toy world
@pytest.fixture(scope="module")
def toy(toy_resnet_ckpt):
    import toyfaces
    from classifier import CelebHQAttrDataset
    from classifier.models import load_classifier
    from toyfaces.world import toy_data
    lmdb, attr = toyfaces.paths(toy_data())
    test = CelebHQAttrDataset(lmdb, attr, split=(5400, 6000), image_size=64, augment=False)
    return load_classifier(toy_resnet_ckpt), test


def _pair(test):
    """A frowning test face and a smiling one: a stand-in original/counterfactual pair."""
    neg = next(i for i in range(len(test)) if test.labels[test.indices[i], SMILING] == 0)
    pos = next(i for i in range(len(test)) if test.labels[test.indices[i], SMILING] == 1)
    return test[neg]["img"], test[pos]["img"]


def test_pair_analysis_names_the_concepts_that_changed(toy, tmp_path):
    model, test = toy
    x0, x1 = _pair(test)
    res = C.pair_analysis(model, x0, x1, "Smiling", ["net.layer3", "net.layer4"], top=4)
    assert res["logit_before"] < 0 < res["logit_after"]
    for layer in ("net.layer3", "net.layer4"):
        info = res["layers"][layer]
        # the logit rises from < 0 to > 0, so some concept must gain relevance; none may lose
        # (with start="logit" every channel can move up together)
        assert info["gained"] and len(info["changed"]) == 4
        for e in info["gained"]:
            assert e["delta"] > 0 and e["concept"] == f"{layer}#{e['channel']}"
        for e in info["lost"]:
            assert e["delta"] < 0
        # channel relevances decompose the layer's total; the changes decompose its change
        deltas = [e["delta"] for e in info["changed"]]
        assert max(abs(d) for d in deltas) == pytest.approx(abs(deltas[0]))
        assert res["heatmaps"][layer].shape == (2, 4, 64, 64)
        maps = res["heatmaps"][layer]  # conditional heatmaps differ from concept to concept
        assert np.abs(maps).sum() > 0 and not np.allclose(maps[1, 0], maps[1, 1])
    # the layer-4 totals follow the logits (start="logit")
    assert res["layers"]["net.layer4"]["sum_after"] - res["layers"]["net.layer4"]["sum_before"] \
        == pytest.approx(res["logit_after"] - res["logit_before"], rel=0.25)
    js = C.json_ready(res)
    json.dumps(js)
    assert js["changed_overall"][0]["concept"].startswith("net.layer")
    path = C.pair_figure(res, x0, x1, tmp_path / "pair.png")
    assert path.stat().st_size > 1000


def test_local_analysis_top_concepts(toy, tmp_path):
    model, test = toy
    x = test[0]["img"]
    res = C.local_analysis(model, x, "Smiling", ["net.layer4"], top=3)
    info = res["layers"]["net.layer4"]
    assert len(info["channels"]) == 3 and info["heatmaps"].shape == (3, 64, 64)
    rel = np.abs(info["relevance"])
    assert (np.diff(rel) <= 1e-12).all()  # sorted by |relevance|
    C.local_figure(res, x, tmp_path / "local.png")
    assert (tmp_path / "local.png").exists()


def test_global_analysis_200_toy_images_cached(toy, tmp_path):
    import time
    model, test = toy
    t0 = time.time()
    r = C.global_analysis(model, test, "Smiling", ["net.layer3", "net.layer4"], tmp_path, n=200,
                          top=4, n_refs=6, progress=False)
    seconds = time.time() - t0
    print(f"global CRP over 200 toy images: {seconds:.1f} s")
    assert r["n"] == 200 and 0 < r["n_positive"] < 200
    for layer in ("net.layer3", "net.layer4"):
        entries = r["layers"][layer]
        assert len(entries) == 4
        shares = [e["mean_share"] for e in entries]
        assert shares == sorted(shares, reverse=True) and shares[0] > 0
        assert all(5400 <= row < 5600 for e in entries for row in e["reference_rows"])
    assert (tmp_path / "global_Smiling.png").stat().st_size > 1000
    first = json.loads((tmp_path / "global_Smiling.json").read_text())
    t1 = time.time()
    again = C.global_analysis(model, test, "Smiling", ["layer3", "layer4"], tmp_path, n=200,
                              top=4, n_refs=6, progress=False)
    assert again["layers"] == first["layers"] and again["cache"] == first["cache"]
    assert time.time() - t1 < seconds / 2  # from the cache


def test_global_analysis_draws_the_concepts_asked_for(toy, tmp_path):
    """``concepts=`` (e.g. those a local analysis found changed) replaces the top ranking, and
    :func:`load_references` reads their images back; a malformed or foreign concept is named."""
    model, test = toy
    r = C.global_analysis(model, test, "Smiling", ["net.layer3", "net.layer4"], tmp_path, n=32,
                          n_refs=3, concepts=["net.layer4#5", "net.layer3#7"], progress=False)
    assert [e["concept"] for e in r["layers"]["net.layer4"]] == ["net.layer4#5"]
    assert [e["concept"] for e in r["layers"]["net.layer3"]] == ["net.layer3#7"]
    refs = C.load_references(r, "net.layer3#7")
    assert len(refs) == 3 and refs[0].dtype == np.uint8 and refs[0].shape[-1] == 3
    with pytest.raises(KeyError, match="net.layer4#6"):
        C.load_references(r, "net.layer4#6")
    with pytest.raises(ValueError, match="layer#channel"):
        C.global_analysis(model, test, "Smiling", ["net.layer4"], tmp_path, n=32, concepts=["x"])
    with pytest.raises(KeyError, match="net.layer2"):
        C.global_analysis(model, test, "Smiling", ["net.layer4"], tmp_path, n=32,
                          concepts=["net.layer2#1"])
