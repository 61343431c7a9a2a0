"""The notebooks execute on the toy world (parameters injected as papermill would)."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = REPO / "notebooks"


def run_notebook(name: str, params: dict, cwd: Path, timeout: int = 600):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    nb.cells.insert(nb.cells.index(cells[0]) + 1, injected)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def test_notebooks_are_stored_without_outputs():
    for p in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(p, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), p.name
        # nbformat 4.5 cells carry an id; one without is a warning now, an error later
        assert all(c.get("id") for c in nb.cells), f"{p.name}: a cell has no id"


@pytest.mark.integration
def test_study_notebook(tmp_path):
    from study import write_export
    from study.synthetic import random_study
    pids, sel, polys = random_study(seed=1)
    write_export(tmp_path / "export.csv", sel, polys, pids)
    run_notebook("study", {"export": str(tmp_path / "export.csv"), "images": None,
                           "out": str(tmp_path / "out")}, tmp_path)
    assert (tmp_path / "out" / "study_summary.json").exists()


@pytest.mark.integration
def test_counterfactual_and_crp_notebooks(tmp_path, toy_resnet_ckpt):
    from classifier.evaluate import pick_not_smiling
    from experiments.notebook import load_models, toy_test_lmdb
    lmdb, attr = toy_test_lmdb()
    clf, _ = load_models("toy_resnet", "toy", "cpu")
    rows = pick_not_smiling(clf, Path(lmdb).parent, 2)
    run = tmp_path / "cf"
    run_notebook("diffCounterfactuals", {
        "classifier": "toy_resnet", "ldm": "toy", "images": None, "lmdb": lmdb, "attr_file": attr,
        "indices": rows, "image_id": str(rows[0]), "out": str(run), "device": "cpu"}, tmp_path)
    assert (run / str(rows[0]) / "counterfactual.png").exists() and (run / "panel.png").exists()
    run_notebook("xai_crp", {
        "classifier": "toy_resnet", "run": str(run), "data": str(Path(lmdb).parent), "attr_file": None,
        "n_images": 64, "out": str(tmp_path / "crp"), "device": "cpu"}, tmp_path)
    assert list((tmp_path / "crp").rglob("*.png"))


@pytest.mark.integration
def test_clever_hans_notebook(tmp_path):
    """The spurious-cue notebook on a small setting (2 faces, CRP references from 32 faces)."""
    import json
    out = tmp_path / "clever_hans"
    run_notebook("clever_hans", {"n_images": 2, "n_reference": 32, "shortcut_n": 2,
                                 "num_cfs": 2, "out": str(out)}, tmp_path)
    summary = json.loads((out / "summary.json").read_text())["spurious"]
    for role in ("biased", "clean"):
        for key in ("hat_change_rate", "mouth_change_rate", "oracle_hat_flip_rate",
                    "oracle_smile_flip_rate", "lrp_hat_mass", "lrp_mouth_mass",
                    "accuracy_correlated", "accuracy_decorrelated"):
            assert 0.0 <= summary[role][key] <= 1.0, (role, key)
        assert summary[role]["crp"]["concepts"]
    assert (out / "overview.png").exists() and (out / "worlds.png").exists()
    shortcut = json.loads((out / "shortcut" / "shortcut.json").read_text())
    assert set(shortcut["attributes"]) == {"Wearing_Hat", "Eyeglasses"}
    several = json.loads((out / "several" / "summary.json").read_text())["spurious"]
    assert several["num_cfs"] == 2 and (out / "several" / "counterfactuals.png").exists()
    for role in ("biased", "clean"):
        assert several[role]["any_hat_change_rate"] >= several[role]["hat_change_rate"]


@pytest.mark.integration
def test_compare_heatmaps_notebook(tmp_path):
    """`ldvce xai compare` as a notebook: three methods on four faces of a small unseen world."""
    import json
    import toyfaces
    data = toyfaces.make_dataset(tmp_path / "toy", n=8, seed=4242, progress=False)
    out = tmp_path / "compare"
    run_notebook("compare_heatmaps", {"data": str(data), "n": 4, "bootstrap": 50,
                                      "methods": "epsilon_plus_flat,gradient,gradcam",
                                      "out": str(out)}, tmp_path)
    result = json.loads((out / "compare.json").read_text())
    assert set(result["methods"]) == {"epsilon_plus_flat", "gradient", "gradcam"}
    assert all(m["randomisation"] in ("pass", "fail") for m in result["methods"].values())
    assert (out / "grid.png").exists() and (out / "report.html").exists()
