"""Several counterfactuals per face (``--num-cfs``): the change mask and IoU by hand, the
keep-out rule of the samplers and of the rounds, ranking, the run folder and ``evaluate``."""
import json
import shutil

import numpy as np
import pytest
import torch

from dvce import diverse, runner
from dvce import samplers as S
from dvce.ldm import build_random_ldm
from dvce.metrics import change_mask, evaluate_run, mask_iou, mean_pairwise_iou
from dvce.runfolder import list_items
from toyfaces.ldm import toy_unet_config, toy_vq_config


class MeanClassifier(torch.nn.Module):
    """Attribute 31 = 'the image is bright'."""

    def forward(self, x):
        out = torch.zeros(len(x), 40, dtype=x.dtype)
        out[:, 31] = 20 * (x.flatten(1).mean(1) - 0.02)
        return out


@pytest.fixture(scope="module")
def problem():
    return S.Problem(build_random_ldm(toy_vq_config(64), toy_unet_config(16), seed=1),
                     MeanClassifier(), 31)


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 64, 64, generator=g) * 0.4 - 0.2).clamp(-1, 1)


# ------------------------------------------------------------------------------ masks and IoU
def test_change_mask_and_iou_by_hand():
    d = np.zeros((8, 8))
    d[0:2, 0:2] = 1.0      # the change
    d[4, 4] = 0.19         # below 0.2 × the peak: not part of it
    d[6, 6] = 0.2          # at 0.2 × the peak: part of it
    m = change_mask(d)
    assert m.sum() == 5 and m[0, 0] and m[6, 6] and not m[4, 4]
    assert not change_mask(np.zeros((4, 4))).any()  # nothing changed: an empty mask
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    c = np.zeros((4, 4), bool)
    a[:2], b[2:], c[1:3] = True, True, True
    assert mask_iou(a, b) == 0.0 and mask_iou(a, a) == 1.0
    assert mask_iou(a, c) == pytest.approx(4 / 12)  # 4 shared of 12 in the union
    assert mean_pairwise_iou([a, b, c]) == pytest.approx((0 + 4 / 12 + 4 / 12) / 3)
    assert np.isnan(mean_pairwise_iou([a])) and np.isnan(mask_iou(a & b, a & b))


# ------------------------------------------------------------------ keep_out in the samplers
@pytest.mark.parametrize("method", ["guided", "adaptive"])
def test_samplers_keep_the_keep_out_pixels(problem, method):
    """With a mask that is free to go anywhere (the classifier reads the mean brightness), the
    counterfactual changes pixels outside keep_out only, and still changes the image."""
    x = _images(2)
    keep = torch.zeros(2, 1, 64, 64)
    keep[:, :, :, :32] = 1  # the left half stays the original
    opts = {"guided": dict(num_steps=20, t_start=200, retry_scales=(), mask_fraction=0.3),
            "adaptive": dict(num_steps=20, levels=(100,), pre_t=200, pre_steps=5,
                             renoise_t=50)}[method]
    res = S.get_sampler(method)(problem, x, torch.ones(2), keep_out=keep, **opts)
    delta = (res.counterfactual - x).abs()
    assert torch.equal(res.counterfactual[..., :32], x[..., :32])
    assert float(delta[..., 32:].sum()) > 0
    free = S.get_sampler(method)(problem, x, torch.ones(2), **opts)
    assert float((free.counterfactual - x)[..., :32].abs().sum()) > 0  # without it, it would
    with pytest.raises(ValueError, match="keep_out must be"):
        S.get_sampler(method)(problem, x, torch.ones(2), keep_out=keep[:, :, :32], **opts)


# ----------------------------------------------------------------- the rounds and the ranking
QUADRANTS = [(slice(0, 32), slice(0, 32)), (slice(0, 32), slice(32, 64)),
             (slice(32, 64), slice(0, 32)), (slice(32, 64), slice(32, 64))]
AMOUNT = [0.5, 0.3, 0.8, 0.1]  # so the order made (TL, TR, BL, BR) is not the L1 order


def quadrant_sampler(problem, x, target, *, callback=None, keep_out=None, calls=None,
                     **later):
    """A sampler that brightens the first quadrant keep_out leaves free; a change of the last
    quadrant does not flip (the fourth round fails, so a fifth must never run)."""
    if calls is not None:
        calls.append(None if keep_out is None else keep_out.clone())
    if later and calls is not None:  # the later rounds' options, recorded for the test
        calls.append(later)
    state = S.SampleState(problem, x, target, callback, keep_out)
    cf, flipped = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    for i in range(len(x)):
        for q, (r, c) in enumerate(QUADRANTS):
            if keep_out is None or float(keep_out[i, 0, r, c].max()) == 0:
                cf[i, :, r, c] += AMOUNT[q]
                flipped[i] = q < 3
                break
    state.frame(1, torch.arange(len(x)), x, problem.logit(x))
    state.frame(2, torch.arange(len(x)), cf, problem.logit(cf))
    return S.CFBatch(cf, x.clone(), flipped, torch.ones(len(x), dtype=torch.long),
                     [None] * len(x), info={})


def test_rounds_keep_each_next_counterfactual_out_of_the_earlier_changes(problem):
    x = _images(2)
    calls = []
    made = diverse.counterfactual_rounds(problem, x, torch.ones(2), quadrant_sampler,
                                         {"calls": calls}, num_cfs=6)
    assert len(calls) == 4  # the 4th round did not flip: no 5th, though 6 were allowed
    assert calls[0] is None  # the first one is the sampler's usual one
    for k, keep in enumerate(calls[1:], start=1):  # round k+1 keeps out the first k quadrants
        for q, (r, c) in enumerate(QUADRANTS):
            assert bool((keep[:, 0, r, c] == 1).all()) == (q < k), (k, q)
    assert [c.made for c in made[0]] == [1, 2, 3, 4]
    kept = diverse.ranked(made[0], x[0])
    assert [c.made for c in kept] == [2, 1, 3]  # flipping ones by L1: TR 0.3, TL 0.5, BL 0.8
    nothing = [c for c in made[0] if not c.flipped]
    assert diverse.ranked(nothing, x[0]) == nothing[:1]  # none flips: the first one made


def test_the_next_round_keeps_out_the_core_of_a_change_not_its_faint_fringe(problem):
    """One change, strong in the top-left quadrant and fainter (just under KEEP_OUT_REL of the
    peak) in the top-right: the next round keeps out the top-left only, so it may edit the
    fringe again; a change at KEEP_OUT_REL of the peak or more is kept out."""
    x = _images(1)
    rel = diverse.KEEP_OUT_REL
    calls = []

    def graded(problem, x, target, *, callback=None, keep_out=None):
        calls.append(keep_out)
        cf = x.clone()
        cf[:, :, :32, :32] += 0.5
        cf[:, :, :32, 32:] += 0.5 * (rel - 0.05)
        cf[:, :, 32:, :32] += 0.5 * (rel + 0.05)
        return S.CFBatch(cf, x.clone(), torch.ones(len(x), dtype=torch.bool),
                         torch.ones(len(x), dtype=torch.long), [None] * len(x), info={})

    diverse.counterfactual_rounds(problem, x, torch.ones(1), graded, {}, num_cfs=2)
    keep = calls[1][0, 0]
    assert bool((keep[:32, :32] == 1).all()) and bool((keep[32:, :32] == 1).all())
    assert float(keep[:32, 32:].max()) == 0 and float(keep[32:, 32:].max()) == 0


def test_later_rounds_get_the_later_options_and_the_first_does_not(problem):
    x = _images(1)
    calls = []
    diverse.counterfactual_rounds(problem, x, torch.ones(1), quadrant_sampler, {"calls": calls},
                                  num_cfs=3, later_options={"region": False})
    # round 1: its keep_out (None) only; rounds 2 and 3: their keep_out, then the options
    assert calls[0] is None and calls[2] == {"region": False} and calls[4] == {"region": False}
    assert len(calls) == 5 and torch.is_tensor(calls[1]) and torch.is_tensor(calls[3])


def test_the_runner_hands_the_recorded_later_options_to_the_later_rounds(problem, tmp_path,
                                                                         monkeypatch):
    seen = []

    def recording(problem, x, target, *, callback=None, keep_out=None, **later):
        seen.append(later)
        return quadrant_sampler(problem, x, target, callback=callback, keep_out=keep_out)

    monkeypatch.setitem(S.SAMPLERS, "recording", recording)
    for module in (diverse, runner):
        monkeypatch.setattr(module, "DIVERSE", {"recording": {"marker": 1}})
    items = [runner.Item("0", lambda: _images(1)[0], {"index": 0})]
    runner.run(items, problem, tmp_path / "run", method="recording", target=1, num_cfs=3,
               progress=False)
    assert seen == [{}, {"marker": 1}, {"marker": 1}]
    made = json.loads((tmp_path / "run" / "0" / "result.json").read_text())
    assert made["later_options"] == {"marker": 1} and made["max_l1_ratio"] == 4.0


def test_a_counterfactual_far_larger_than_the_smallest_is_not_kept():
    """Hand-built: L1 0.1, 0.35, 0.45 and one of 0.02 that did not flip; with the cap at 4×
    the smallest flipping one (0.4), the set keeps 0.1 and 0.35."""
    x = torch.zeros(1, 3, 4, 4)

    def made(*changes):
        cf = torch.stack([torch.full((3, 4, 4), c) for c, _ in changes])
        return [diverse.Candidate(S.CFBatch(cf, cf, torch.tensor([f for _, f in changes]),
                                            torch.ones(len(changes), dtype=torch.long),
                                            [None] * len(changes), info={}), i, [], [], i + 1)
                for i in range(len(changes))]

    cands = made((0.45, True), (0.02, False), (0.1, True), (0.35, True))
    assert diverse.MAX_L1_RATIO == 4.0
    assert [round(c.l1(x[0]), 2) for c in diverse.ranked(cands, x[0])] == [0.1, 0.35]
    assert [c.made for c in diverse.ranked(cands[:2], x[0])] == [1]  # one flips: it alone
    assert [c.made for c in diverse.ranked(cands[1:2], x[0])] == [2]  # none flips: the first


def test_num_cfs_needs_a_sampler_that_keeps_regions():
    diverse.check_method("guided", 3)
    diverse.check_method("dime", 1)
    with pytest.raises(ValueError, match="cannot"):
        diverse.check_method("dime", 2)
    with pytest.raises(ValueError, match="at least 1"):
        diverse.check_method("guided", 0)


def test_run_folder_holds_every_rank_and_evaluate_reports_them(problem, tmp_path, monkeypatch):
    monkeypatch.setitem(S.SAMPLERS, "quadrants", quadrant_sampler)
    monkeypatch.setattr(diverse, "DIVERSE", {"quadrants": {}})
    monkeypatch.setattr(runner, "DIVERSE", {"quadrants": {}})
    items = [runner.Item(str(i), (lambda x=x: x), {"index": i}) for i, x in enumerate(_images(3))]
    summary = runner.run(items, problem, tmp_path / "run", method="quadrants", target=1,
                         num_cfs=3, progress=False)
    assert summary["flip_rate"] == 1.0
    for it in list_items(tmp_path / "run"):
        cfs = it.counterfactuals
        assert [c.rank for c in cfs] == [1, 2, 3] and [c.result["made"] for c in cfs] == [2, 1, 3]
        assert cfs[0].folder == it.folder and cfs[1].folder == it.folder / "cf2"
        assert it.result["l1"] == cfs[0].result["l1"] < cfs[1].result["l1"] < cfs[2].result["l1"]
        for c in cfs:
            assert c.counterfactual.is_file() and len(c.frame_paths()) == 3
            assert all(p.is_file() for p in c.frame_paths())
    m = evaluate_run(tmp_path / "run")
    assert set(m["per_rank"]) == {"1", "2", "3"} and m["per_rank"]["3"]["n"] == 3
    assert m["per_rank"]["1"]["l1"] == pytest.approx(m["l1"])
    assert m["per_rank"]["1"]["l1"] < m["per_rank"]["2"]["l1"] < m["per_rank"]["3"]["l1"]
    # the quadrants are disjoint: IoU 0; every image has three flipping counterfactuals
    assert m["diversity"]["mean_pairwise_iou"] == 0.0
    assert m["diversity"]["two_or_more_rate"] == 1.0 and m["diversity"]["mean_flipping"] == 3.0

    with pytest.raises(ValueError, match="num_cfs=3.*num_cfs=2.*new --out"):  # nothing mixed in
        runner.run(items, problem, tmp_path / "run", method="quadrants", target=1, num_cfs=2,
                   progress=False)

    plain = runner.run(items, problem, tmp_path / "plain", method="quadrants", target=1,
                       progress=False)  # one counterfactual: the layout and metrics of before
    assert plain["n"] == 3
    it = list_items(tmp_path / "plain")[0]
    assert "counterfactuals" not in it.result and not (it.folder / "cf2").exists()
    assert [c.rank for c in it.counterfactuals] == [1]
    assert "per_rank" not in evaluate_run(tmp_path / "plain")


def test_explain_and_the_study_show_every_counterfactual(problem, tmp_path, monkeypatch):
    from dvce.runfolder import get_item
    from experiments.explain import explain_run
    from study.serve.design import build_study, load_config, validate_config
    monkeypatch.setitem(S.SAMPLERS, "quadrants", quadrant_sampler)
    monkeypatch.setattr(diverse, "DIVERSE", {"quadrants": {}})
    monkeypatch.setattr(runner, "DIVERSE", {"quadrants": {}})
    items = [runner.Item(str(i), (lambda x=x: x), {"index": i}) for i, x in enumerate(_images(2))]
    run = tmp_path / "run"
    runner.run(items, problem, run, method="quadrants", target=1, num_cfs=2, progress=False)

    summary = explain_run(run, MeanClassifier(), ["lrp0"], attribute=31, panel=False,
                          progress=False, size=64)
    assert [e["image"] for e in summary["images"]] == ["0", "0/cf2", "1", "1/cf2"]
    post1 = np.load(run / "0" / "heatmap_lrp0_post.npy")
    post2 = np.load(run / "0" / "cf2" / "heatmap_lrp0_post.npy")
    assert post1.shape == post2.shape == (64, 64) and not np.allclose(post1, post2)

    cfg = validate_config({**load_config(None), "counterfactuals": "all"})
    study = build_study([run], cfg)
    assert study.selection_images == ["0", "0.cf2", "1", "1.cf2"]
    assert study.annotation_images == ["0", "1"]  # the original is drawn on once
    cf2 = study.images["0.cf2"]
    assert cf2.original == run / "0" / "original.png"
    assert cf2.all_frames[-1] == run / "0" / "cf2" / "sequence" / "002.png"
    assert get_item(run, "0.cf2").counterfactual == run / "0" / "cf2" / "counterfactual.png"
    assert build_study([run]).selection_images == ["0", "1"]  # the default: rank 1 only
    from study.evaluate import _shown_item  # what `ldvce study eval --runs` draws the frames from
    assert _shown_item(run / "0", "0.cf2").frame_paths()[-1] == run / "0" / "cf2" / "sequence" / "002.png"
    assert _shown_item(run / "0", "0").frame_paths()[-1] == run / "0" / "sequence" / "002.png"
    assert _shown_item(run / "0", "0.cf3") is None  # a rank the run does not have shows nothing
    ranked = get_item(run, "0.cf2")
    assert [c.rank for c in ranked.counterfactuals] == [2] and "path" not in ranked.result
    assert ranked.counterfactuals[0].folder == run / "0" / "cf2"
    bare = tmp_path / "other_tool" / "5"  # another tool's folder: frames, no result.json
    bare.mkdir(parents=True)
    for k in range(2):
        shutil.copy(run / "0" / "sequence" / f"00{k}.png", bare / f"frame_{k}.png")
    assert [p.name for p in _shown_item(bare, "5").frame_paths()] == ["frame_0.png", "frame_1.png"]


@pytest.mark.integration
def test_sets_of_three_hold_a_hat_most_counterfactual_on_unseen_faces(tmp_path):
    """The issue's toy-world check on 8 faces of the unseen seed-7272 world (the rule was chosen
    on seed 6161; docs/results.md has 24 faces of each of three seeds: 0.958 on all three): a set
    of three of the hat-biased classifier holds a counterfactual that changes the hat more than
    the mouth (per pixel) on >= 7 of 8 faces, and the set's changes overlap little (mean
    pairwise IoU <= 0.5)."""
    import toyfaces
    from classifier import load_classifier
    from classifier.images import load_image
    from dvce.ldm import load_ldm
    from dvce.metrics import load_run
    from experiments.clever_hans import data as D
    from experiments.clever_hans.run import generate
    from experiments.clever_hans.scoring import every_counterfactual
    models = {role: load_classifier(p).requires_grad_(False)
              for role, p in (("biased", D.biased_classifier()), ("clean", D.clean_classifier()))}
    world = D.test_sets(seed=7272, progress=False)["decorrelated"]
    rows = D.pick_faces(models, world, 8)
    assert len(rows) == 8
    generate(tmp_path / "run", models["biased"], load_ldm("toy"), world, rows, "adaptive",
             progress=False, num_cfs=3)
    items = load_run(tmp_path / "run")
    x = torch.stack([load_image(it.original, None) for it in items])
    masks = toyfaces.load_masks(world)
    at = [it.source_index for it in items]
    scores = every_counterfactual(items, x, masks[D.CUE][at], masks[D.TARGET][at],
                                  {it.image_id: {} for it in items},
                                  {it.image_id: {} for it in items})
    assert scores["any_hat_change_rate"] >= 7 / 8, scores
    assert scores["mean_pairwise_iou"] <= 0.5
