"""`ldvce demo --quick` end to end on the cached toy world (the main job)."""
import json

import pytest


@pytest.mark.integration
def test_demo_quick_writes_the_three_files(tmp_path, toy_resnet_ckpt):
    from experiments.demo.run import run_demo
    out = tmp_path / "demo"
    summary = run_demo(out, quick=True)
    for name in ("overview.png", "report.html", "summary.json"):
        assert (out / name).exists() and (out / name).stat().st_size > 0
    saved = json.loads((out / "summary.json").read_text())
    for key in ("classifier_accuracy", "flip_rate", "l1", "localization", "mnac",
                "relevance_mass_accuracy", "study_agreement", "seconds"):
        assert key in saved and saved[key] == summary[key]
    assert saved["classifier_accuracy"] >= 0.95
    assert 0.0 <= saved["flip_rate"] <= 1.0 and saved["l1"] > 0
    metrics = json.loads((out / "counterfactuals" / "metrics.json").read_text())
    assert abs(metrics["flip_rate"] - saved["flip_rate"]) < 1e-9
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Summary" in html
