"""Study export: write → parse round trips, malformed entries reported by row and column."""

import csv
import io

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from study import ExportError, Polygon, compute_hrh, read_export, write_export
from study.synthetic import random_study


def reference_hrh(polys_by_participant, display_size, size):
    """Independent rasterisation: matplotlib's point-in-polygon test at pixel centres."""
    yy, xx = np.mgrid[0:size, 0:size]
    centres = np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5]
    total = np.zeros(size * size, int)
    for polys in polys_by_participant.values():
        cover = np.zeros(size * size, bool)
        for p in polys:
            pts = np.asarray(p.points, float) * (size / display_size)
            if len(pts) >= 3:
                cover |= MplPath(pts).contains_points(centres)
        total += cover
    return total.reshape(size, size)


def make_export(tmp_path, seed=0, **kw):
    pids, sel, polys = random_study(seed=seed, **kw)
    path = tmp_path / f"export{seed}.csv"
    write_export(path, sel, polys, pids)
    return path, pids, sel, polys


def test_header_layout_matches_real_scheme():
    buf = io.StringIO()
    header = write_export(buf, {"7": {"a": 2}}, {"7": {"a": [[(1, 2), (3, 4), (5, 6)]], "b": [[(1, 1)] * 2, [(0, 0)] * 3]}},
                          ["a", "b"], media_names={"7": "7_1.0_misclassified.abcd1234.png"})
    base = "ImageAnnotations//_next/static/media/7_1.0_misclassified.abcd1234.png"
    assert header == ["id", "createdAt", "updatedAt", "submittedAt", "ImageSelection/7/selection",
                      f"{base}/0/tool"] + [f"{base}/0/points/{k}/{a}" for k in range(3) for a in "xy"] + \
                     [f"{base}/1/tool"] + [f"{base}/1/points/{k}/{a}" for k in range(3) for a in "xy"]
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows[1][4:12] == ["2", "Add", "1", "2", "3", "4", "5", "6"]
    assert rows[2][4] == "" and rows[2][10:12] == ["", ""]  # b's first polygon has 2 of 3 points


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_and_hrh(tmp_path, seed):
    path, pids, sel, polys = make_export(tmp_path, seed, n_participants=7)
    ex = read_export(path)
    assert ex.participant_ids == pids
    assert ex.selections == sel
    assert {img: {p: list(v) for p, v in d.items()} for img, d in ex.polygons.items()} == polys
    # Only the expected degenerate-polygon notes, nothing else.
    assert all("degenerate" in i.reason for i in ex.issues)
    for img in ex.annotation_images:
        h = compute_hrh(ex, img)
        assert h.dtype == np.int32 and h.shape == (256, 256)
        assert np.array_equal(compute_hrh(ex, img, raster="centre"), reference_hrh(polys[img], 512, 256))
        assert h.max() <= len(polys[img])
    # Written again from the parsed object: byte-identical.
    again = tmp_path / "again.csv"
    ex.write(again)
    assert again.read_text() == path.read_text()


def test_display_and_analysis_size_options(tmp_path):
    pids, sel, polys = random_study(seed=5, display_size=300, n_participants=4)
    path = tmp_path / "e.csv"
    write_export(path, sel, polys, pids)
    ex = read_export(path, display_size=300, analysis_size=64)
    for img in ex.annotation_images:
        assert np.array_equal(compute_hrh(ex, img, raster="centre"), reference_hrh(polys[img], 300, 64))


def _random_polygons(rng, n_participants=12):
    """{participant: [Polygon]} with 1- and 2-vertex polygons, self-intersections, vertices on the
    display border (the study app accepts 0..512) and, for hand-built data, beyond it."""
    out = {}
    for i in range(n_participants):
        polys = []
        for _ in range(int(rng.integers(1, 4))):
            n = int(rng.choice([1, 2, 3, 4, 7, 15]))
            lo, hi = (-80, 600) if i % 3 == 0 else (0, 512)
            pts = rng.uniform(lo, hi, size=(n, 2))
            if i % 4 == 1:
                pts = np.clip(np.round(pts / 64) * 64, 0, 512)  # on the border and on shared pixel edges
            polys.append(Polygon(tuple((float(x), float(y)) for x, y in pts)))
        out[f"p{i}"] = polys
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_seed_raster_equals_opencv_fillpoly(tmp_path, seed):
    """Through a written and re-read export: the default HRH rule is OpenCV's fillPoly of every
    polygon (1 and 2 vertices included) on truncated, halved vertices, union per participant;
    "enclosed" is the same without the polygons of fewer than 3 vertices."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (test extra) is not installed")
    polys = _random_polygons(np.random.default_rng(seed))
    path = tmp_path / "e.csv"
    write_export(path, {}, {"7": polys}, list(polys))
    ex = read_export(path)
    want = {"seed": np.zeros((256, 256), np.int32), "enclosed": np.zeros((256, 256), np.int32)}
    for plist in ex.polygons["7"].values():
        for rule, keep in (("seed", 1), ("enclosed", 3)):
            mask = np.zeros((256, 256), np.uint8)
            for p in plist:
                if len(p.points) >= keep:
                    cv2.fillPoly(mask, [np.array([(int(x / 2), int(y / 2)) for x, y in p.points], np.int32)], 1)
            want[rule] += mask
    assert np.array_equal(compute_hrh(ex, "7"), want["seed"])
    assert np.array_equal(compute_hrh(ex, "7", raster="enclosed"), want["enclosed"])


def _corrupt(path):
    """A non-numeric coordinate, an x without y, a truncated row, a missing column."""
    rows = list(csv.reader(open(path, newline="")))
    header = rows[0]
    col_x = next(j for j, h in enumerate(header) if h.endswith("/0/points/1/x"))
    col_y_blank = next(j for j, h in enumerate(header) if h.endswith("/0/points/0/y"))
    # Row 2 (first participant): non-numeric x of vertex 1 of polygon 0 of the first image
    rows[1][col_x] = "12,5px"
    # Row 3: y removed while x stays
    victim_row = next(i for i in range(2, len(rows)) if rows[i][col_y_blank] and rows[i][col_y_blank - 1])
    rows[victim_row][col_y_blank] = ""
    # The last row is cut in the middle of the annotation columns
    cut = len(header) - 7
    rows[-1] = rows[-1][:cut]
    # A whole column disappears: the y of vertex 2 of polygon 0 of the last image
    gone = next(j for j in range(len(header) - 1, 0, -1) if header[j].endswith("/0/points/2/y"))
    gone_name = header[gone]
    for r in rows:
        if len(r) > gone:
            del r[gone]
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return dict(col_x=header[col_x], victim_row=victim_row + 1, col_y=header[col_y_blank], cut=cut,
                gone=gone_name, n_rows=len(rows))


def test_corrupted_export_reports_and_keeps_the_rest(tmp_path):
    path, pids, sel, polys = make_export(tmp_path, seed=3, n_participants=8, p_skip=0.0)
    info = _corrupt(path)
    ex = read_export(path)
    issues = [i for i in ex.issues if "degenerate" not in i.reason]
    by = {(i.row, i.column): i for i in issues}
    # 1. non-numeric coordinate: row 2 (header is row 1), its column, its value
    bad = by[(2, info["col_x"])]
    assert bad.value == "12,5px" and "not a finite number" in bad.reason
    # 2. x without y
    assert "no y" in by[(info["victim_row"], info["col_y"])].reason
    # 3. truncated row
    trunc = [i for i in issues if i.row == info["n_rows"] and "truncated" in i.reason]
    assert trunc
    # 4. missing column, reported on the header row
    assert (1, info["gone"]) in by and "missing column" in by[(1, info["gone"])].reason
    # Everything else is intact: all selections but the truncated row's cut ones
    assert ex.participant_ids == pids
    for img in sel:
        for p, v in sel[img].items():
            assert ex.selections[img][p] == v
    first_img = ex.annotation_images[0]
    last_img = ex.annotation_images[-1]
    for img in ex.annotation_images:
        for k, p in enumerate(pids[1:-1], start=1):
            if img == last_img or (img == first_img and k + 2 == info["victim_row"]):
                continue
            assert ex.polygons[img].get(p, []) == polys[img].get(p, []), (img, p)
    # The damaged polygon lost exactly one vertex
    got = ex.polygons[first_img][pids[0]][0].points
    want = polys[first_img][pids[0]][0].points
    assert got == want[:1] + want[2:]


def test_cell_level_problems(tmp_path):
    buf = io.StringIO()
    write_export(buf, {"1": {"a": 1, "b": 2, "c": 0}}, {"1": {"a": [Polygon(((1, 1), (9, 1), (9, 9)))]}}, ["a", "b", "c"])
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    rows[1][5] = "Erase"  # unknown tool
    rows[2][4] = "two"  # non-numeric selection
    rows[3][4] = "-3"  # impossible choice
    rows[3][0] = "a"  # duplicate id
    rows.append([""] * len(rows[0]))  # blank line: ignored silently
    rows[0].append("Surprise/column")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    ex = read_export(io.StringIO(out.getvalue()))
    reasons = {(i.row, i.column.split("/")[-1]): i.reason for i in ex.issues}
    assert "unknown tool" in reasons[(2, "tool")]
    assert "not a number" in reasons[(3, "selection")]
    assert "below -1" in reasons[(4, "selection")]
    assert "duplicate participant id" in reasons[(4, "id")]
    assert "unrecognised column" in reasons[(1, "column")]
    assert ex.polygons["1"] == {} and ex.selections["1"] == {"a": 1}
    assert len(ex.participants) == 3


def test_missing_and_empty_export(tmp_path):
    with pytest.raises(ExportError, match="nowhere.csv"):
        read_export(tmp_path / "nowhere.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ExportError, match="empty"):
        read_export(tmp_path / "empty.csv")


def test_not_a_study_export_and_vertices_off_the_canvas(tmp_path):
    """A CSV without study columns (another file, or ';'-separated) is refused; a vertex outside
    the display canvas is reported and left out, the rest of the polygon kept."""
    (tmp_path / "other.csv").write_text("id;name;Smiling\n1;a;0\n")
    with pytest.raises(ExportError, match="no selection or annotation column"):
        read_export(tmp_path / "other.csv")
    buf = io.StringIO()
    square = Polygon(((10, 10), (90, 10), (90, 90), (10, 90)))
    write_export(buf, {"1": {"a": 1}}, {"1": {"a": [square]}}, ["a"])
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    x_col = rows[0].index(next(h for h in rows[0] if h.endswith("/points/0/x")))
    rows[1][x_col] = "1e9"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    ex = read_export(io.StringIO(out.getvalue()))
    assert [i.reason for i in ex.issues] == [
        "vertex 0 lies outside the 512×512 display canvas; vertex skipped"]
    assert ex.polygons["1"]["a"][0].points == ((90, 10), (90, 90), (10, 90))


def test_evaluating_an_export_without_participants_is_refused(tmp_path):
    from study.evaluate import evaluate_study
    buf = io.StringIO()
    write_export(buf, {"1": {"a": 1}}, {}, ["a"])
    (tmp_path / "header.csv").write_text(buf.getvalue().splitlines()[0] + "\n")
    with pytest.raises(ExportError, match="no participant rows"):
        evaluate_study(tmp_path / "header.csv", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
