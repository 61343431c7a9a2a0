"""Heatmap-vs-HRH metrics on tiny hand-computed cases, and the slow obvious way."""

import itertools
import math

import numpy as np
import pytest

from study import metrics as M
from study.hrh import hrh_from_masks, leave_one_out_hrhs, rasterize_polygon


def test_relevance_mass_accuracy_hand():
    h = np.array([[1.0, 2.0], [3.0, -4.0]])
    m = np.array([[1, 0], [0, 1]], bool)
    # positive relevance 1+2+3 = 6, inside the mask 1 (the -4 counts as 0)
    assert M.relevance_mass_accuracy(h, m) == pytest.approx(1 / 6)
    assert math.isnan(M.relevance_mass_accuracy(-np.ones((2, 2)), m))


def test_relevance_rank_accuracy_hand_and_ties():
    assert M.relevance_rank_accuracy([4, 3, 2, 1], [1, 0, 1, 0]) == pytest.approx(0.5)  # top-2 = {0,1}
    assert M.relevance_rank_accuracy([4, 3, 2, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    # constant map: K = 1 pixel drawn at random among 4, hits the mask with probability 1/4
    assert M.relevance_rank_accuracy([1, 1, 1, 1], [1, 0, 0, 0]) == pytest.approx(0.25)
    # [5, 3, 3, 0], mask {1, 3}: K = 2 -> pixel 0 sure, one of the two 3s: expected hits 0.5
    assert M.relevance_rank_accuracy([5, 3, 3, 0], [0, 1, 0, 1]) == pytest.approx(0.25)
    assert math.isnan(M.relevance_rank_accuracy([1, 2], [0, 0]))


def test_pointing_game_hand():
    assert M.pointing_game([0, 5, 1, 2], [0, 1, 0, 0]) == 1.0
    assert M.pointing_game([0, 5, 1, 2], [1, 0, 1, 1]) == 0.0
    assert M.pointing_game([0, 5, 1, 5], [0, 1, 0, 0]) == pytest.approx(0.5)  # two maxima, one inside


def test_auc_hand_and_against_pair_counting():
    assert M.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # ties: pos {1, 2} vs neg {1, 0}: pairs 0.5 + 1 + 1 + 1 = 3.5 of 4
    assert M.auc([1, 1, 2, 0], [1, 0, 1, 0]) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = rng.integers(0, 4, 30)
        y = rng.random(30) < 0.4
        pos, neg = s[y], s[~y]
        slow = np.mean([(p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg)])
        assert M.auc(s, y) == pytest.approx(slow)
    assert math.isnan(M.auc([1, 2, 3], [1, 1, 1]))


def test_spearman_hand():
    # ranks of b: [1, 2, 3.5, 5, 3.5]; cov 8, var 10 and 9.5
    assert M.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert M.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(M.spearman([1, 1, 1], [1, 2, 3]))


def test_top10_iou_dice_hand():
    h = np.arange(20.0)  # top 10 % = 2 pixels: 19 and 18
    m = np.zeros(20, bool)
    m[[19, 0, 1]] = True  # intersection 1, |top| 2, |mask| 3
    assert M.iou_top(h, m) == pytest.approx(1 / 4)
    assert M.dice_top(h, m) == pytest.approx(2 / 5)


def test_average_ranks_integer_path_matches_sort_path():
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 6, 200)
    slow = np.array([np.sum(x < v) + (np.sum(x == v) + 1) / 2 for v in x])
    assert np.allclose(M.average_ranks(x), slow)
    assert np.allclose(M.average_ranks(x.astype(float)), slow)


def test_threshold_hrh():
    hrh = np.array([0, 1, 2, 3, 4])
    t = M.threshold_hrh(hrh, 5)
    assert t["ge1"].tolist() == [False, True, True, True, True]
    assert t["ge50"].tolist() == [False, False, False, True, True]  # >= 2.5 -> 3
    assert M.threshold_hrh(hrh, 4)["ge50"].tolist() == [False, False, True, True, True]


def test_scorer_equals_single_functions():
    rng = np.random.default_rng(2)
    for h in (rng.normal(size=(16, 16)), rng.integers(0, 3, (16, 16))):
        scorer = M.HeatmapScorer(h)
        for _ in range(3):
            m = rng.random((16, 16)) < 0.3
            fast, slow = scorer.score(m), M.mask_metrics(h, m)
            for k in M.MASK_METRICS:
                assert fast[k] == pytest.approx(slow[k]), k
        g = rng.integers(0, 5, (16, 16))
        assert scorer.spearman(g) == pytest.approx(M.spearman(h, g))


def test_perfect_heatmap_scores_one():
    hrh = np.zeros((20, 20), int)
    hrh[5:10, 5:10] = 3
    hrh[6:8, 6:8] = 5
    r = M.compare_with_hrh(hrh.astype(float), hrh, n_annotators=5)
    for t in M.THRESHOLDS:
        assert r[t]["mass_accuracy"] == 1.0
        assert r[t]["auc"] == 1.0
        assert r[t]["pointing_game"] == 1.0
    assert r["ge50"]["rank_accuracy"] == 1.0  # ge50 = the 25 pixels >= 3
    assert r["spearman"] == pytest.approx(1.0)


def test_resize_map():
    h = np.array([[1.0, 2.0], [3.0, 4.0]])
    up = M.resize_map(h, 4)
    assert up.shape == (4, 4) and up[0, 0] == up[1, 1] == 1 and up[3, 3] == 4
    down = M.resize_map(up, 2)
    assert np.allclose(down, h)
    assert M.resize_map(np.ones((3, 6, 6)), 6).shape == (6, 6)  # channels summed
    assert M.resize_map(np.ones((5, 5)), 8).shape == (8, 8)  # non-integer ratio: bilinear


def test_bootstrap_ci_seeded():
    groups = {f"p{i}": [i, i + 1.0] for i in range(10)}
    a = M.bootstrap_ci(groups, 200, seed=3)
    b = M.bootstrap_ci(groups, 200, seed=3)
    assert a == b
    assert a["mean"] == pytest.approx(5.0) and a["n"] == 20 and a["n_participants"] == 10
    assert a["ci"][0] < 5.0 < a["ci"][1]
    assert M.bootstrap_ci({"a": [1.0, float("nan")]}, 100)["ci"] is None  # one participant: no CI


def test_rasterize_square_and_scaling():
    # Centres (j+0.5, i+0.5) inside [2, 6]^2 -> rows/cols 2..5
    m = rasterize_polygon([(2, 2), (6, 2), (6, 6), (2, 6)], display_size=8, analysis_size=8,
                          raster="centre")
    ref = np.zeros((8, 8), bool)
    ref[2:6, 2:6] = True
    assert (m == ref).all()
    m2 = rasterize_polygon([(4, 4), (12, 4), (12, 12), (4, 12)], display_size=16, analysis_size=8,
                           raster="centre")
    assert (m2 == ref).all()
    two = [(0, 0), (5, 5)]  # two vertices: a line in the original's rule, no area in "enclosed"
    assert not rasterize_polygon(two, 8, 8, raster="enclosed").any()
    line = rasterize_polygon(two, 8, 8)
    assert line.sum() == 6 and all(line[i, i] for i in range(6))


def test_leave_one_out_hand():
    masks = np.zeros((3, 2, 2), bool)
    masks[0, 0, 0] = masks[1, 0, 0] = masks[2, 1, 1] = True
    assert hrh_from_masks(masks).tolist() == [[2, 0], [0, 1]]
    loo = {i: h.tolist() for i, h, _ in leave_one_out_hrhs(masks)}
    assert loo[0] == [[1, 0], [0, 1]] and loo[2] == [[2, 0], [0, 0]]
    # participant 0 is predicted by the others: all positive LOO mass at (0,0) is half of it
    assert M.relevance_mass_accuracy(np.array(loo[0]), masks[0]) == pytest.approx(0.5)


def _slow_inside(px, py, pts):
    """Textbook even-odd crossing test with the half-open rule, one point at a time."""
    inside = False
    for (xa, ya), (xb, yb) in zip(pts, pts[1:] + pts[:1]):
        if min(ya, yb) <= py < max(ya, yb):
            if xa + (py - ya) * (xb - xa) / (yb - ya) > px:
                inside = not inside
    return inside


def test_rasterize_equals_slow_rule_on_grid_aligned_vertices():
    # Vertices on pixel centres and edges through centres: the cases where conventions differ.
    rng = np.random.default_rng(4)
    for _ in range(10):
        pts = [tuple(map(float, p)) for p in rng.integers(0, 16, (int(rng.integers(3, 8)), 2)) + 0.5 * rng.integers(0, 2, 2)]
        fast = rasterize_polygon(pts, display_size=16, analysis_size=16, raster="centre")
        slow = np.array([[_slow_inside(j + 0.5, i + 0.5, pts) for j in range(16)] for i in range(16)])
        assert (fast == slow).all()
