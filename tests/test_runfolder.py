"""The run-folder format (dvce/runfolder.py): one owner, every reader agrees, thumbnails appear."""
import json

import numpy as np
import pytest
from PIL import Image

from dvce import runfolder, runner
from dvce.ldm import build_random_ldm
from toyfaces.ldm import toy_unet_config, toy_vq_config
from dvce.samplers import Problem
from tests.test_dvce import BrightnessClassifier, _images

GREEN = (0, 255, 0)  # in no colormap of the figures: only a thumbnail can bring it


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real runner output (what `ldvce generate` writes) over 3 images, tiny random LDM."""
    ldm = build_random_ldm(toy_vq_config(64), toy_unet_config(16), seed=1)
    problem = Problem(ldm, BrightnessClassifier(), 31)
    x = _images(3)
    items = [runner.Item(f"img{k}", (lambda k=k: x[k]), {"index": k}) for k in range(3)]
    out = tmp_path_factory.mktemp("run")
    runner.run(items, problem, out, method="guided", target=1, batch_size=3, progress=False,
               options={"num_steps": 4, "t_start": 500, "retry_scales": ()})
    return out


def test_result_records_every_frame_path(run_dir):
    items = runfolder.list_items(run_dir)
    assert [it.image_id for it in items] == ["img0", "img1", "img2"]  # manifest (input) order
    for it in items:
        frames = it.result["frames"]
        assert [f["path"] for f in frames] == [f"sequence/{k:03d}.png" for k in range(len(frames))]
        assert it.frame_paths() == sorted((it.folder / "sequence").glob("*.png"))
        assert len(it.frame_paths()) == len(frames) >= 3


def test_every_reader_finds_the_same_items_and_frames(run_dir, tmp_path):
    from dvce.metrics import evaluate_run
    from experiments import notebook
    from study import evaluate_study, write_export
    from study.synthetic import random_study
    ids = [it.image_id for it in runfolder.list_items(run_dir)]
    frames = {it.image_id: it.frame_paths() for it in runfolder.list_items(run_dir)}
    assert list(evaluate_run(run_dir)["per_image"]) == ids
    assert runfolder.is_run(run_dir) and [runfolder.find_item(run_dir, i).image_id for i in ids] == ids
    fig = notebook.show_sequence(run_dir, "img1", max_frames=50)
    assert len(fig.axes) == len(frames["img1"])
    n_frames = len(frames["img0"])
    pids, sel, polys = random_study(seed=3, n_participants=5, selection_images=tuple(ids),
                                    annotation_images=tuple(ids), max_frame=n_frames - 1)
    write_export(tmp_path / "export.csv", sel, polys, pids)
    s = evaluate_study(tmp_path / "export.csv", out_dir=tmp_path / "study", runs_dir=run_dir,
                       n_bootstrap=0, figures=False)
    for i in ids:
        assert s["selection"][i]["run_dir"] == str(run_dir / i)
        assert s["selection"][i]["switch_frame"] == runfolder.get_item(run_dir, i).switch_frame
        assert list(s["selection"][i]["counts"])[-1] == str(len(frames[i]) - 1)  # reaches the last frame


def test_selection_histogram_shows_the_run_frames(run_dir, tmp_path):
    from study import evaluate_study, write_export
    it = runfolder.get_item(run_dir, "img2")
    marked = it.frame_paths()[2]
    original = marked.read_bytes()
    try:
        Image.new("RGB", Image.open(marked).size, GREEN).save(marked)
        sel = {"img2": {"p1": 2, "p2": 3, "p3": -1}}
        write_export(tmp_path / "export.csv", sel, {}, ["p1", "p2", "p3"])
        s = evaluate_study(tmp_path / "export.csv", out_dir=tmp_path / "study", runs_dir=run_dir,
                           n_bootstrap=0)
        fig = np.asarray(Image.open(tmp_path / "study" / s["selection"]["img2"]["figure"]).convert("RGB"))
    finally:
        marked.write_bytes(original)
    assert fig.shape[:2] == (1014, 1720)  # the original figures' size
    green = (fig == GREEN).all(-1).sum()
    assert green > 500, green  # the marked frame is drawn as a thumbnail above its bar


def test_writing_item_is_atomic(tmp_path):
    with pytest.raises(RuntimeError):
        with runfolder.writing_item(tmp_path, "a") as tmp:
            (tmp / "original.png").write_bytes(b"x")
            raise RuntimeError("killed mid-item")
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(RuntimeError, match="no result.json"):
        with runfolder.writing_item(tmp_path, "b"):
            pass
    assert runfolder.list_items(tmp_path) == []
    with runfolder.writing_item(tmp_path, "c") as tmp:
        runfolder.write_result(tmp, {"image": "c", "frames": []})
    assert [it.image_id for it in runfolder.list_items(tmp_path)] == ["c"]
    # a stale partial from a killed process is never an item, and is cleaned on the next run
    (tmp_path / ".d.partial").mkdir()
    (tmp_path / ".d.partial" / "result.json").write_text(json.dumps({"image": "d"}))
    assert [it.image_id for it in runfolder.list_items(tmp_path)] == ["c"]
    assert runfolder.clean_partials(tmp_path) == 1


def test_runfolder_needs_no_torch():
    import subprocess
    import sys
    code = ("import sys, dvce.runfolder, study.selection, study.hrh; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_natural_order_and_tokens(tmp_path):
    for name in ("900", "27300", "folder_IMG_27931"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(json.dumps({"image": name}))
    assert [it.image_id for it in runfolder.list_items(tmp_path)] == ["900", "27300", "folder_IMG_27931"]
    assert runfolder.find_item(tmp_path, "27931").folder.name == "folder_IMG_27931"
    assert runfolder.find_folder(tmp_path, "123") is None
