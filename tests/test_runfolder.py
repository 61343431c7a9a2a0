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


def test_a_resumed_run_must_be_made_the_same_way(tmp_path, monkeypatch):
    """Resuming into a folder made with another classifier, attribute or options is refused
    (naming what differs); an unchanged resume goes on, and the earlier summary is gone until
    the run finishes, so a run stopped midway never looks finished."""
    ldm = build_random_ldm(toy_vq_config(64), toy_unet_config(16), seed=1)
    problem = Problem(ldm, BrightnessClassifier(), 31)
    x = _images(2)
    items = [runner.Item(f"img{k}", (lambda k=k: x[k]), {"index": k}) for k in range(2)]
    opts = {"num_steps": 4, "t_start": 500, "retry_scales": ()}
    made = {"classifier": "a.ckpt", "attribute": "Smiling"}
    runner.run(items[:1], problem, tmp_path, method="guided", target=1, progress=False,
               options=opts, settings=made)
    assert (tmp_path / runfolder.SUMMARY).exists()
    with pytest.raises(ValueError, match=r"classifier=a.ckpt .*asks for classifier=b.ckpt"):
        runner.run(items, problem, tmp_path, method="guided", target=1, progress=False,
                   options=opts, settings={**made, "classifier": "b.ckpt"})
    with pytest.raises(ValueError, match=r"options=.*'t_start': 500.*'t_start': 300"):
        runner.run(items, problem, tmp_path, method="guided", target=1, progress=False,
                   options={**opts, "t_start": 300}, settings=made)
    # a sampler default changed since the run was made: its items record the defaults they ran
    # with, so the new default is refused instead of silently mixed into the run
    made_with = json.loads((tmp_path / "img0" / "result.json").read_text())["sampler_options"]
    assert made_with["margin"] == 3.0 and made_with["t_start"] == 500
    with monkeypatch.context() as m:
        m.setattr(runner, "sampler_defaults", lambda method: {**made_with, "margin": 1.0})
        with pytest.raises(ValueError, match=r"sampler_options=.*'margin': 3.0.*asks for "
                                             r".*sampler_options=.*'margin': 1.0"):
            runner.run(items, problem, tmp_path, method="guided", target=1, progress=False,
                       options=opts, settings=made)
    # sets of several counterfactuals record the keep-out rule's threshold: one begun with
    # another refuses to be finished with this one (made by hand: what the runner compares)
    several = runner.run_settings("guided", opts, made, num_cfs=3)
    assert several["keep_out_rel"] == runner.KEEP_OUT_REL and several["num_cfs"] == 3
    assert "keep_out_rel" not in runner.run_settings("guided", opts, made, num_cfs=1)
    # ... and the later rounds' options and the size cap of dvce.diverse
    assert several["later_options"] == {} and several["max_l1_ratio"] == runner.MAX_L1_RATIO
    assert runner.run_settings("adaptive", {}, made, num_cfs=3)["later_options"] == \
        {"region": False}
    with pytest.raises(ValueError, match=r"later_options=\{'region': True\}"):
        runner.check_same_run(tmp_path, several,
                              {"img9": {**several, "later_options": {"region": True}}})
    # a set made before the rule was recorded had no size cap: not finished with one
    older = {k: v for k, v in several.items() if k not in ("later_options", "max_l1_ratio")}
    with pytest.raises(ValueError, match=r"max_l1_ratio=none .*asks for .*max_l1_ratio=4.0"):
        runner.check_same_run(tmp_path, several, {"img9": older})
    with pytest.raises(ValueError, match=r"keep_out_rel=0.5 .*asks for keep_out_rel=0.7"):
        runner.check_same_run(tmp_path, several, {"img9": {**several, "keep_out_rel": 0.5}})
    with pytest.raises(ValueError, match="'img0' occur more than once"):
        runner.run(items + items[:1], problem, tmp_path, method="guided", progress=False,
                   options=opts, settings=made)

    calls = []

    def stop(*a, **k):  # the resumed run is killed in its first batch
        calls.append(1)
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(runner, "generate_batch", stop)
        with pytest.raises(KeyboardInterrupt):
            runner.run(items, problem, tmp_path, method="guided", target=1, progress=False,
                       options=opts, settings=made)
    assert calls and not (tmp_path / runfolder.SUMMARY).exists()
    assert runfolder.run_state(tmp_path) == {"finished": False, "broken": []}
    summary = runner.run(items, problem, tmp_path, method="guided", target=1, progress=False,
                         options=opts, settings=made)
    assert summary["n_generated"] == 2 and runfolder.run_state(tmp_path)["finished"]
    (tmp_path / "img1" / runfolder.RESULT).write_text('{"truncated": ')
    assert runfolder.run_state(tmp_path)["broken"] == ["img1"]


def test_evaluate_says_when_a_run_is_incomplete_or_an_item_unreadable(run_dir, tmp_path, capsys,
                                                                     toy_unseen):
    import shutil
    from ldvce.cli import main
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / runfolder.SUMMARY).unlink()
    (run / "img2" / runfolder.RESULT).write_text('{"cut')
    main(["evaluate", str(run)])
    out = capsys.readouterr().out
    m = json.loads((run / runfolder.METRICS).read_text())
    assert m["n"] == 2 and m["run"] == {"finished": False, "broken": ["img2"]}
    assert "no summary.json: the run stopped before its end" in out
    assert "left out: img2" in out
    (run / "img1" / "counterfactual.png").unlink()  # its result.json still says finished
    main(["evaluate", str(run)])
    m = json.loads((run / runfolder.METRICS).read_text())
    assert m["n"] == 1 and m["run"]["broken"] == ["img1", "img2"]
    for k in (0,):  # made from files, not from the masks' dataset rows
        r = json.loads((run / f"img{k}" / runfolder.RESULT).read_text())
        r["source"] = {"path": f"faces/img{k}.png"}
        (run / f"img{k}" / runfolder.RESULT).write_text(json.dumps(r))
    with pytest.raises(SystemExit, match="masks .* do not belong to this run's images"):
        main(["evaluate", str(run), "--masks", str(toy_unseen)])
    with pytest.raises(SystemExit, match="no finished counterfactuals"):
        main(["evaluate", str(tmp_path / "nothing")])


def test_evaluate_draws_the_flips_the_oracle_does_not_confirm(run_dir, tmp_path, capsys):
    import shutil
    from experiments.disagreements import disagreement_figure, disagreements
    from ldvce.cli import main
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    figure = run / runfolder.DISAGREEMENTS
    main(["evaluate", str(run), "--oracle", "toy_oracle"])
    m = json.loads((run / runfolder.METRICS).read_text())
    # whatever the oracle says of these random images, the figure shows exactly its refusals
    assert figure.is_file() == bool(disagreements(m))
    assert ("does not confirm" in capsys.readouterr().out) == bool(disagreements(m))
    per = m["per_image"]
    for k, image_id in enumerate(per):  # two flips the oracle refuses, one it confirms
        per[image_id].update(flipped=1.0, oracle_flipped=float(k == 2),
                             oracle_changed=["Mustache"] if k == 0 else [])
    assert disagreements(m) == ["img0", "img1"]
    assert disagreement_figure(run, m) == figure
    with Image.open(figure) as im:
        two = im.size
    per["img1"]["oracle_flipped"] = 1.0
    with Image.open(disagreement_figure(run, m)) as im:
        one = im.size
    assert one[1] < two[1]  # one row fewer
    (run / "img0" / "diff.png").write_bytes(b"not a png")  # drawn grey in its place
    with Image.open(disagreement_figure(run, m)) as im:
        assert im.size == one
    per["img1"]["oracle_flipped"] = 0.0  # two again, cut to the first row
    with Image.open(disagreement_figure(run, m, max_rows=1)) as im:
        assert im.size[1] == one[1]
    per["img1"]["oracle_flipped"] = 1.0
    per["img0"]["flipped"] = 0.0  # a counterfactual that did not flip is no disagreement
    assert disagreement_figure(run, m) is None and not figure.exists()
    disagreement_figure(run, {**m, "per_image": {"img0": {**per["img0"], "flipped": 1.0}}})
    assert figure.is_file()
    main(["evaluate", str(run)])  # metrics without an oracle: no figure they do not back
    assert not figure.exists()
