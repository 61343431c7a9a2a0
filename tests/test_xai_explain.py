"""``ldvce explain`` / ``ldvce crp`` (experiments.explain.run_explain / run_crp) and the pictures
(xai.render) on tiny fake runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from classifier.images import save_image
from xai import render

COMPS = ["lrp0", "epsilon_plus_flat"]


# ---------------------------------------------------------------------------------- render
def test_heatmap_rgb_symmetric_scale():
    h = np.array([[-2.0, 0.0, 1.0, 2.0]])
    rgb = render.heatmap_rgb(h).astype(int)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.int64
    assert (rgb[0, 1] > 240).all()  # 0 is white
    assert rgb[0, 0, 2] > 200 and rgb[0, 0, 0] < 60  # -max full blue
    assert rgb[0, 3, 0] > 200 and rgb[0, 3, 2] < 60  # +max full red
    assert rgb[0, 2, 0] > rgb[0, 2, 2]  # +max/2: lighter red
    np.testing.assert_array_equal(render.heatmap_rgb(h, vmax=4.0)[0, 1], render.heatmap_rgb(h)[0, 1])
    assert render.symmetric_vmax(np.zeros((2, 2))) == 1.0  # all-zero maps stay drawable


def test_panel_figure_variants(tmp_path):
    img = torch.rand(3, 16, 16) * 2 - 1
    heat = np.random.default_rng(0).normal(size=(16, 16))
    rows = [render.PanelRow("a", img, img.flip(-1), {c: (heat, -heat) for c in COMPS},
                            hrh=np.ones((8, 8)), note="-1.0 → 2.0"),
            render.PanelRow("b", img, img, {c: (heat, heat) for c in COMPS})]
    p = render.panel_figure(rows, COMPS, tmp_path / "panel.png", title="t")
    w, h = Image.open(p).size
    assert w > h > 100
    plain = [render.PanelRow("c", img, None, {c: (heat, None) for c in COMPS})]
    p2 = render.panel_figure(plain, COMPS, tmp_path / "plain.png")
    assert Image.open(p2).size[0] < w  # fewer columns without counterfactuals and HRH


# ------------------------------------------------------------------------------ fake runs
@pytest.fixture(scope="module")
def toy_images():
    """Four test-split toy faces: two frowning, two smiling (stand-in counterfactuals)."""
    import toyfaces
    from classifier import CelebHQAttrDataset
    from toyfaces.world import toy_data
    lmdb, attr = toyfaces.paths(toy_data())
    ds = CelebHQAttrDataset(lmdb, attr, split=(5400, 5440), image_size=64, augment=False)
    neg = [ds[i]["img"] for i in range(len(ds)) if ds[i]["labels"][31] == 0][:2]
    pos = [ds[i]["img"] for i in range(len(ds)) if ds[i]["labels"][31] == 1][:2]
    return neg, pos


@pytest.fixture
def fake_run(tmp_path, toy_images):
    neg, pos = toy_images
    run = tmp_path / "run"
    for k, (x0, x1) in enumerate(zip(neg, pos)):
        d = run / f"img{k}"
        d.mkdir(parents=True)
        save_image(x0, d / "original.png")
        save_image(x1, d / "counterfactual.png")
        (d / "result.json").write_text(json.dumps({
            "image": f"img{k}", "attribute": "Smiling", "target": 1, "flipped": True,
            "logit_before": -3.0, "logit_after": 2.0}))
    (run / "manifest.jsonl").write_text("".join(
        json.dumps({"image": i, "status": "ok"}) + "\n" for i in ("img1", "img0")))
    (run / "summary.json").write_text("{}")
    return run


def test_explain_command_on_a_run(fake_run, toy_resnet_ckpt, tmp_path):
    from experiments.explain import run_explain
    hrh = tmp_path / "hrh"
    hrh.mkdir()
    np.save(hrh / "img0.npy", np.pad(np.ones((8, 16), np.int32), ((20, 4), (8, 8))))  # 32×32
    s = run_explain(fake_run, toy_resnet_ckpt, composites=",".join(COMPS), hrh=hrh)
    assert s["n"] == 2 and [e["image"] for e in s["images"]] == ["img1", "img0"]  # manifest order
    for k in range(2):
        d = fake_run / f"img{k}"
        for c in COMPS:
            for when in ("pre", "post"):
                a = np.load(d / f"heatmap_{c}_{when}.npy")
                assert a.shape == (64, 64) and a.dtype == np.float32 and np.isfinite(a).all()
                assert Image.open(d / f"heatmap_{c}_{when}.png").mode in ("RGB", "RGBA")
            # start="logit": the frowning original's relevance is negative, the smile's positive
            assert np.load(d / f"heatmap_{c}_pre.npy").sum() < 0 < np.load(d / f"heatmap_{c}_post.npy").sum()
    assert (fake_run / "panel.png").exists() and s["panels"] == [str(fake_run / "panel.png")]
    summary = json.loads((fake_run / "explain_summary.json").read_text())
    assert summary["mean_logit_before"] < 0 < summary["mean_logit_after"]
    entry = {e["image"]: e for e in summary["images"]}
    assert entry["img0"]["composites"]["lrp0"]["hrh_mass_pre"] is not None
    assert "hrh_mass_pre" not in entry["img1"]["composites"]["lrp0"]


def test_explain_plain_folder_and_linear_model(tmp_path, toy_images):
    from classifier.models import LinearClassifier, export_safetensors
    from experiments.explain import run_explain
    folder = tmp_path / "imgs"
    folder.mkdir()
    neg, pos = toy_images
    save_image(neg[0], folder / "a.png")
    save_image(pos[0], folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    torch.manual_seed(0)
    ckpt = export_safetensors(LinearClassifier(input_dim=32, hidden=32), tmp_path / "lin.safetensors")
    out = tmp_path / "out"
    s = run_explain(folder, ckpt, composites="epsilon_plus_flat", out=out)
    assert s["kind"] == "folder" and s["n"] == 2
    for i in ("a", "b"):
        a = np.load(out / i / "heatmap_epsilon_plus_flat_pre.npy")
        assert a.shape == (32, 32) and a.std() > 0  # not the constant map of a Flat rule
        assert not (out / i / "heatmap_epsilon_plus_flat_post.npy").exists()
    assert (out / "panel.png").exists()


def test_crp_command_local_on_a_run(fake_run, toy_resnet_ckpt, tmp_path):
    from experiments.explain import run_crp
    s = run_crp("local", toy_resnet_ckpt, run=fake_run, out=tmp_path / "crp", top=3)
    out = tmp_path / "crp" / "local"
    assert s["kind"] == "pairs" and s["n"] == 2
    for k in range(2):
        js = json.loads((out / f"img{k}_crp.json").read_text())
        assert js["logit_before"] < 0 < js["logit_after"]
        changed = js["changed_overall"]
        assert len(changed) == 3 and all(e["concept"].startswith("net.layer") for e in changed)
        assert js["layers"]["net.layer4"]["gained"][0]["delta"] > 0
        assert (out / f"img{k}_crp.png").exists()
    assert s["most_often_changed"]


def test_crp_command_global_on_toyfaces(toy_resnet_ckpt, tmp_path):
    from experiments.explain import run_crp
    from toyfaces.world import toy_data
    r = run_crp("global", toy_resnet_ckpt, data=toy_data(), layers="net.layer4", n=24, top=2,
                out=tmp_path / "g")
    out = tmp_path / "g" / "global"
    assert r["n"] == 24 and len(r["layers"]["net.layer4"]) == 2
    assert (out / "global_Smiling.png").exists() and (out / "global_Smiling.json").exists()


def test_library_calls_as_the_demo_makes_them(fake_run, toy_resnet_ckpt, tmp_path):
    """explain_run with a loaded model and a panel path; run_crp with a loaded model and
    ``max_pairs`` (how experiments.demo and the notebooks call them)."""
    from classifier.models import load_classifier
    from experiments.explain import explain_run, run_crp
    clf = load_classifier(toy_resnet_ckpt)
    s = explain_run(fake_run, clf, ["epsilon_plus_flat"], "Smiling", "logit",
                    panel_path=tmp_path / "overview.png", progress=False)
    assert s["panels"] == [str(tmp_path / "overview.png")] and (tmp_path / "overview.png").exists()
    r = run_crp("local", clf, run=fake_run, layers="net.layer4", top=2, out=tmp_path / "crp",
                max_pairs=1)
    assert r["n"] == 1 and len(list((tmp_path / "crp" / "local").glob("*_crp.png"))) == 1
