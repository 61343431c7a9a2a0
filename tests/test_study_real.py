"""The real 38-participant export of the seed (../shared/seed/study); skipped when absent.

Every expected number is recomputed here independently with the csv module, so the parser's
counts are checked "exactly" against the raw file, not against itself.
"""

import collections
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from PIL import Image, ImageDraw

from study import compute_hrh, find_outliers, participant_means, read_export, selection_counts

SHARED = Path(__file__).resolve().parents[2] / "shared"
EXPORT = SHARED / "seed" / "study" / "studyentries.csv"
pytestmark = pytest.mark.skipif(not EXPORT.is_file(), reason=f"real study export not available ({EXPORT})")


@pytest.fixture(scope="module")
def export():
    return read_export(EXPORT)


@pytest.fixture(scope="module")
def raw():
    with open(EXPORT, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def raw_polygons(raw, img):
    """{participant: [[(x, y), ...], ...]} for one image, straight from the raw cells."""
    out = {}
    for row in raw:
        polys = collections.defaultdict(dict)
        for col, v in row.items():
            parts = col.split("/")
            if col.startswith("ImageAnnotations") and parts[5].split("_")[0] == img and parts[7] == "points" and v:
                polys[int(parts[6])].setdefault(int(parts[8]), {})[parts[9]] = float(v)
        if polys:
            out[row["id"]] = [[(p[k]["x"], p[k]["y"]) for k in sorted(p)] for _, p in sorted(polys.items())]
    return out


def test_shape_of_the_study(export):
    assert len(export.participants) == 38
    assert len(export.selection_images) == 17 and len(export.annotation_images) == 17
    # The real file is clean: the only notes are the 7 two-vertex polygons that enclose nothing.
    assert len(export.issues) == 7 and all("degenerate" in i.reason for i in export.issues)


def test_selection_counts_equal_raw_csv_counts(export, raw):
    for img in export.selection_images:
        raw_counts = collections.Counter(int(r[f"ImageSelection/{img}/selection"]) for r in raw)
        mine = selection_counts(export, img)
        assert {k: v for k, v in mine.items() if v} == dict(raw_counts), img
        assert sum(mine.values()) == 38
    assert dict(selection_counts(export, "27300")) == {-1: 1, 0: 2, 1: 2, 2: 7, 3: 15, 4: 6, 5: 5}


def test_participant_means_and_outliers(export, raw):
    cols = [c for c in raw[0] if c.startswith("ImageSelection/")]
    means = participant_means(export)
    for r in raw:
        assert means[r["id"]] == pytest.approx(sum(int(r[c]) for c in cols) / len(cols))
    assert find_outliers(export, "mean-zero") == [r["id"] for r in raw if sum(int(r[c]) for c in cols) == 0]
    assert find_outliers(export, "none") == []


def test_hrh_against_independent_rasterisations(export, raw):
    yy, xx = np.mgrid[0:256, 0:256]
    centres = np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5]
    mass_near_mouth, total_mass, argmax_at_mouth = 0, 0, 0
    for img in export.annotation_images:
        h = compute_hrh(export, img, raster="centre")
        polys = raw_polygons(raw, img)
        assert h.dtype == np.int32 and h.shape == (256, 256)
        assert 0 <= h.min() and h.max() <= 38 and h.max() <= len(polys)
        # Same rule, other implementation (matplotlib): equal up to centres lying exactly on an edge.
        ref = np.zeros(256 * 256, int)
        # A seed-style rasteriser (PIL, integer pixel centres, outline painted): edges may move.
        pil = np.zeros((256, 256), int)
        for plist in polys.values():
            cover = np.zeros(256 * 256, bool)
            canvas = Image.new("1", (256, 256))
            for pts in plist:
                p = np.asarray(pts) / 2.0
                if len(p) >= 3:
                    cover |= MplPath(p).contains_points(centres)
                    ImageDraw.Draw(canvas).polygon([tuple(q) for q in p - 0.5], fill=1)
            ref += cover
            pil += np.asarray(canvas, dtype=int)
        ref = ref.reshape(256, 256)
        # Wherever the two differ, the pixel centre lies exactly on a polygon edge (the real
        # export has many half-pixel coordinates), where the two implementations' conventions differ.
        segs = [(np.asarray(pts[i]) / 2, np.asarray(pts[(i + 1) % len(pts)]) / 2)
                for plist in polys.values() for pts in plist if len(pts) >= 3 for i in range(len(pts))]
        a, b = np.array([s[0] for s in segs]), np.array([s[1] for s in segs])
        d = b - a
        for r, c in np.argwhere(h != ref):
            q = np.array([c + 0.5, r + 0.5])
            t = np.clip(((q - a) * d).sum(1) / np.maximum((d * d).sum(1), 1e-12), 0, 1)
            assert np.hypot(*(a + t[:, None] * d - q).T).min() < 1e-9, (img, r, c)
        assert np.abs(h - ref).sum() <= 0.02 * ref.sum(), img
        inter = np.minimum(h, pil).sum()
        assert inter / np.maximum(h, pil).sum() > 0.9, img  # weighted IoU with the seed-like rasteriser
        total_mass += h.sum()
        mass_near_mouth += h[140:230, 60:200].sum()
        r, c = np.unravel_index(h.argmax(), h.shape)
        argmax_at_mouth += 150 <= r < 230 and 70 <= c < 190
    # Smiling lives at the mouth: most of the human relevance is in the lower middle of the face.
    assert mass_near_mouth / total_mass > 0.5
    assert argmax_at_mouth >= 15


#: The maxima of the original evaluation's HRH maps of the real export, per image.
ORIGINAL_MAXIMA = {"27300": 32, "27398": 31, "27591": 17, "27611": 22, "27931": 26, "28113": 21,
                   "28125": 13, "28285": 12, "28355": 15, "28383": 6, "28583": 25, "28782": 26,
                   "28892": 25, "29058": 23, "29408": 33, "29527": 7, "29762": 26}


def _cv2_hrh(raw, img):
    """The original evaluation's rule, run with OpenCV itself, straight from the raw cells.

    Per participant: the coordinate columns of each polygon in header order, paired (x, y), pairs
    with an empty cell dropped, halved and truncated with int(); every non-empty polygon, also
    one of 1 or 2 vertices, filled with cv2.fillPoly(mask, [polygon], 1) into one uint8 mask;
    the masks summed over participants.
    """
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (test extra) is not installed")
    cols = collections.defaultdict(list)  # polygon index -> its coordinate columns, header order
    for col in raw[0]:
        parts = col.split("/")
        if col.startswith("ImageAnnotations") and parts[5].split("_")[0] == img and parts[7] == "points":
            cols[int(parts[6])].append(col)
    total = np.zeros((256, 256), np.int32)
    for row in raw:
        mask = np.zeros((256, 256), np.uint8)
        for poly in sorted(cols):
            v = [row[c] for c in cols[poly]]
            pts = [(int(float(x) / 2), int(float(y) / 2)) for x, y in zip(v[0::2], v[1::2]) if x and y]
            if pts:
                cv2.fillPoly(mask, [np.array(pts, np.int32)], 1)
        total += mask
    return total


def test_seed_maps_have_the_original_maxima(export):
    """All 17 HRH maps of the default rule reach the original evaluation's maximum; the
    "enclosed" rule (polygons of < 3 vertices left out) is one short on 27300."""
    assert sorted(export.annotation_images) == sorted(ORIGINAL_MAXIMA)
    got = {img: int(compute_hrh(export, img).max()) for img in export.annotation_images}
    assert got == ORIGINAL_MAXIMA
    assert int(compute_hrh(export, "27300", raster="enclosed").max()) == 31


def test_seed_maps_equal_opencv_fillpoly_by_the_original_rule(export, raw):
    """The default rule (pure numpy) equals cv2.fillPoly run by the original rule, pixel for pixel."""
    for img in export.annotation_images:
        ref = _cv2_hrh(raw, img)
        assert int(ref.max()) == ORIGINAL_MAXIMA[img], img  # the reference itself is the original's
        assert np.array_equal(compute_hrh(export, img), ref), img


def test_evalstudy_default_raster_matches_opencv_fillpoly(raw, tmp_path):
    """`python study/evalstudy.py` on the real export: HRH maps equal to OpenCV's fillPoly by the
    original rule, selection counts exact."""
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "study"
    subprocess.run([sys.executable, str(repo / "study" / "evalstudy.py"), "--export", str(EXPORT),
                    "--images", str(SHARED / "seed" / "celebahq" / "test_counterfactual"),
                    "--out", str(out), "--bootstrap", "20"], check=True, capture_output=True)
    summary = json.loads((out / "study_summary.json").read_text())
    assert summary["raster"] == "seed"
    assert "fillPoly" in (out / "report.md").read_text()
    images = summary["images"]["annotation"]
    assert len(images) == 17
    for img in images:
        h = np.load(out / "hrh" / f"{img}.npy")
        assert np.array_equal(h, _cv2_hrh(raw, img)), img
        assert int(h.max()) == ORIGINAL_MAXIMA[img], img
    cols = [c for c in raw[0] if c.startswith("ImageSelection/")]
    for c in cols:
        img = c.split("/")[1]
        want = collections.Counter(int(r[c]) for r in raw if r[c] != "")
        got = {int(k): v for k, v in summary["selection"][img]["counts"].items() if v}
        assert got == dict(want), img
    sel_fig = out / summary["selection"][images[0] if images[0] in summary["selection"]
                                         else next(iter(summary["selection"]))]["figure"]
    assert Image.open(sel_fig).size == (1720, 1014)
    assert Image.open(out / summary["hrh"][images[0]]["figure"]).size == (1280, 960)


def test_centre_raster_is_lighter_than_seed(export):
    for img in export.annotation_images[:4]:
        seed, centre = compute_hrh(export, img), compute_hrh(export, img, raster="centre")
        assert 0.02 < 1 - centre.sum() / seed.sum() < 0.09, img
