"""study/evalstudy.py end to end: on a generated export with heatmaps and runs, and on the real one."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study import compute_hrh, read_export, write_export
from study.evalstudy import build_parser, main
from study.synthetic import random_study

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EXPORT = SHARED / "seed" / "study" / "studyentries.csv"
IMAGES = SHARED / "seed" / "celebahq" / "test_counterfactual"


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(path)


@pytest.fixture
def generated(tmp_path):
    pids, sel, polys = random_study(seed=11, n_participants=6, selection_images=("100", "101"),
                                    annotation_images=("100", "101"), max_frame=4, p_skip=0.0)
    export = tmp_path / "export.csv"
    write_export(export, sel, polys, pids)
    ex = read_export(export)
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    heat = tmp_path / "explain"
    runs = tmp_path / "generate"
    for img in ("100", "101"):
        base = rng.random((64, 64, 3)) * 0.5
        _png(images / f"{img}_1.0_misclassified.png", base)
        # "perfect" heatmap = the HRH itself; a 64x64 blob at the mouth stands in for LRP
        (heat / img).mkdir(parents=True)
        np.save(heat / img / "heatmap_perfect_pre.npy", compute_hrh(ex, img).astype(np.float32))
        yy, xx = np.mgrid[0:64, 0:64]
        np.save(heat / img / "heatmap_epsilon_plus_flat_pre.npy", np.exp(-((yy - 46) ** 2 + (xx - 32) ** 2) / 40.0))
        cf = base.copy()
        cf[40:52, 24:40] += 0.4  # the counterfactual changes the mouth
        run = runs / (img if img == "100" else f"{img}_1.0_misclassified")  # second one found by token
        _png(run / "original.png", base)
        _png(run / "counterfactual.png", cf)
        for f in range(5):
            _png(run / "frames" / f"frame_{f}.png", base + 0.05 * f)
    (runs / "100" / "result.json").write_text(json.dumps({"switch_frame": 3}))
    (runs / "101_1.0_misclassified" / "result.json").write_text(
        json.dumps({"frames": [{"prob": p} for p in (0.1, 0.2, 0.4, 0.45, 0.7)]}))
    return dict(export=export, images=images, heat=heat, runs=runs, sel=sel, ex=ex)


def test_end_to_end_generated(generated, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--export", str(generated["export"]), "--images", str(generated["images"]), "--out", str(out),
               "--heatmaps", str(generated["heat"]), "--runs", str(generated["runs"]), "--bootstrap", "20",
               "--seed", "1"])
    assert rc == 0
    assert "6 participants" in capsys.readouterr().out
    s = json.loads((out / "study_summary.json").read_text())
    assert s["participants"] == 6
    for img in ("100", "101"):
        counts = s["selection"][img]["counts"]
        assert list(counts) == [str(k) for k in range(-1, 5)]  # the run has 5 frames: 0..4
        assert sum(counts.values()) == len(generated["sel"][img])
        hrh = np.load(out / "hrh" / f"{img}.npy")
        assert hrh.dtype.kind == "i" and hrh.shape == (256, 256)
        assert np.array_equal(hrh, compute_hrh(generated["ex"], img))
        assert (out / s["hrh"][img]["figure"]).is_file() and (out / s["selection"][img]["figure"]).is_file()
    assert s["selection"]["100"]["switch_frame"] == 3
    assert s["selection"]["101"]["switch_frame"] == 4  # first frame with prob > 0.5
    assert set(s["methods"]) == {"heatmap:perfect", "heatmap:epsilon_plus_flat", "cf_diff"}
    perfect = s["methods"]["heatmap:perfect"]
    assert perfect["consensus"]["ge1"]["mass_accuracy"]["mean"] == pytest.approx(1.0)
    assert perfect["consensus"]["spearman"]["mean"] == pytest.approx(1.0)
    ci = s["methods"]["heatmap:epsilon_plus_flat"]["consensus"]["ge50"]["auc"]["ci"]
    assert ci is not None and ci[0] <= ci[1]
    assert s["human_ceiling"]["mean"]["mass_accuracy"]["ci"] is not None
    assert "Human ceiling" in (out / "report.md").read_text()
    assert "<table>" in (out / "report.html").read_text()
    # Same seed, same intervals.
    s2 = json.loads(json.dumps(s))
    main(["--export", str(generated["export"]), "--out", str(tmp_path / "out2"), "--heatmaps", str(generated["heat"]),
          "--runs", str(generated["runs"]), "--bootstrap", "20", "--seed", "1", "--no-figures"])
    s3 = json.loads((tmp_path / "out2" / "study_summary.json").read_text())
    assert s3["methods"]["heatmap:epsilon_plus_flat"]["consensus"] == s2["methods"]["heatmap:epsilon_plus_flat"]["consensus"]


def test_missing_export_names_the_path(tmp_path, capsys):
    rc = main(["--export", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert str(tmp_path / "nope.csv") in capsys.readouterr().err


def test_parser_teaches():
    text = " ".join(build_parser().format_help().split())
    for word in ("--export", "--outlier-rule", "mean-zero", "--bootstrap", "human relevance heatmaps", "examples"):
        assert word in text


def test_runs_as_a_script_from_repo_root():
    r = subprocess.run([sys.executable, "study/evalstudy.py", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--export" in r.stdout


@pytest.mark.skipif(not EXPORT.is_file(), reason="real study export not available")
def test_end_to_end_real(tmp_path):
    out = tmp_path / "real"
    assert main(["--export", str(EXPORT), "--images", str(IMAGES), "--out", str(out), "--bootstrap", "20"]) == 0
    s = json.loads((out / "study_summary.json").read_text())
    assert s["participants"] == 38
    assert len(s["selection"]) == 17 and len(s["hrh"]) == 17
    assert s["selection"]["27300"]["counts"] == {"-1": 1, "0": 2, "1": 2, "2": 7, "3": 15, "4": 6, "5": 5}
    assert s["outliers"] == []
    assert len(list((out / "hrh").glob("*.npy"))) == 17
    assert len(list((out / "figures" / "hrh").glob("*_annot.png"))) == 17
    assert 0 < s["human_ceiling"]["mean"]["mass_accuracy"]["mean"] < 1
    assert s["n_issues"] == 7


def test_a_selection_beyond_the_runs_frames_is_reported_and_left_out(generated, tmp_path):
    """The app shows a run's frames, so a choice of frame 999 on a 5-frame run is corrupt: it is
    a parse issue naming the row and left out of the counts, the means and the outlier rule."""
    rows = list(csv.reader(generated["export"].open()))
    col = next(j for j, h in enumerate(rows[0]) if h.endswith("/selection") and "100" in h)
    rows[1][col] = "999"
    bad = tmp_path / "bad.csv"
    with bad.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "out"
    assert main(["--export", str(bad), "--out", str(out), "--runs", str(generated["runs"]),
                 "--bootstrap", "0"]) == 0
    s = json.loads((out / "study_summary.json").read_text())
    issue = next(i for i in s["issues"] if i["value"] == "999")
    assert issue["row"] == 2 and "beyond the run's last frame (5 frames, 0..4)" in issue["reason"]
    assert list(s["selection"]["100"]["counts"]) == [str(k) for k in range(-1, 5)]
    assert s["selection"]["100"]["n"] == len(generated["sel"]["100"]) - 1
    assert max(s["participant_means"].values()) <= 4
