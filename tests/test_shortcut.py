"""The shortcut test (experiments/shortcut, ``ldvce shortcut``): the shift statistic and the
face selection on hand-built cases, the command line, and (integration) the toy world's answer."""

import numpy as np
import pytest
import torch

from experiments.shortcut import edit as E
from experiments.shortcut.stats import decision_shift


def test_decision_shift_on_hand_built_probabilities():
    before = [0.2, 0.3, 0.8, 0.6]
    after = [0.9, 0.4, 0.1, 0.7]   # flips: to positive, none, to negative, none
    s = decision_shift(before, after, n_bootstrap=500, seed=1)
    assert s["n"] == 4 and s["to_positive"] == 1 and s["to_negative"] == 1
    assert s["flip_rate"]["mean"] == pytest.approx(0.5)
    assert s["mean_delta_p"]["mean"] == pytest.approx((0.7 + 0.1 - 0.7 + 0.1) / 4)
    lo, hi = s["flip_rate"]["ci"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    # the same numbers again (seeded), no interval without resamples
    assert decision_shift(before, after, n_bootstrap=500, seed=1) == s
    assert decision_shift(before, after, n_bootstrap=0)["flip_rate"]["ci"] is None


def test_decision_shift_counts_a_flip_either_way_and_none_at_the_boundary():
    s = decision_shift([0.5, 0.51, 0.49], [0.5, 0.49, 0.51], n_bootstrap=0)
    assert s["flip_rate"]["mean"] == pytest.approx(2 / 3)   # 0.5 → 0.5 is no flip
    assert (s["to_positive"], s["to_negative"]) == (1, 1)
    empty = decision_shift([], [], n_bootstrap=100)
    assert empty["n"] == 0 and np.isnan(empty["flip_rate"]["mean"])
    with pytest.raises(ValueError, match="equal-length"):
        decision_shift([0.1, 0.2], [0.3])


def test_pick_faces_splits_by_the_editors_decision(monkeypatch):
    logits = torch.full((6, 40), -1.0)
    logits[[1, 4], 35] = 2.0                         # the editor sees a hat on rows 11 and 14
    monkeypatch.setattr(E, "dataset_for", lambda data, split: None)
    monkeypatch.setattr(E, "predict", lambda clf, ds, device, progress: (
        logits, None, torch.arange(10, 16)))
    assert E.pick_faces(None, "data", "Wearing_Hat", 2) == {"add": [10, 12], "remove": [11, 14]}
    assert E.pick_faces(None, "data", "Wearing_Hat", 9)["add"] == [10, 12, 13, 15]


def test_the_editor_must_not_be_the_explained_classifier(tmp_path):
    from ldvce.cli import main

    def shortcut(*extra, classifier="toy_biased_hat", cue="Wearing_Hat", editor="toy_resnet"):
        main(["shortcut", "--classifier", classifier, "--editor", editor, "--cue", cue,
              "--data", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
    with pytest.raises(SystemExit, match="editor must be another classifier"):
        shortcut(classifier="toy_resnet")
    with pytest.raises(SystemExit, match="editor must be another classifier"):
        shortcut(classifier="toy_resnet", editor="toy_resnet18, toy_resnet")
    from classifier.registry import resolve_classifier
    with pytest.raises(SystemExit, match="editor must be another classifier"):  # by its file
        shortcut(classifier=str(resolve_classifier("toy_resnet")), editor="toy_resnet18,toy_resnet")
    with pytest.raises(SystemExit, match="names no classifier"):
        shortcut(editor=" , ")
    with pytest.raises(SystemExit, match="--options is not JSON"):
        shortcut("--options", "{t_start: 800")
    with pytest.raises(SystemExit, match="cue must be another attribute than the target"):
        shortcut(cue="smiling")
    # another method's option (adaptive has levels, not t_start): named before any model loads
    with pytest.raises(SystemExit, match="no option 't_start'.*levels"):
        shortcut("--method", "adaptive", "--options", '{"t_start": 800}')

def test_a_committee_reads_as_the_mean_of_its_members_logits():
    from classifier.committee import Committee

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor(logits)

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    x = torch.zeros(3, 3, 8, 8)
    both = Committee([Fixed([4.0, -2.0]), Fixed([-1.0, -4.0])])
    assert torch.equal(both(x), torch.tensor([[1.5, -3.0]] * 3))
    # one member that reads the attribute strongly is not enough when the other reads it
    # against: the committee reads it only as much as both together do
    sure = Committee([Fixed([4.0, 6.0]), Fixed([-1.0, -4.0])])
    assert 0 < sure(x)[0, 1] < 6.0 and both(x)[0, 1] < 0
    with pytest.raises(ValueError, match="different numbers of attributes"):
        Committee([Fixed([1.0]), Fixed([1.0, 2.0])])(x)
    with pytest.raises(ValueError, match="at least one"):
        Committee([])


def test_edits_pass_the_margin_recurrence_and_cause_unless_the_options_set_them():
    from experiments.shortcut.run import (EDIT_CAUSE_FROM, EDIT_MARGIN, EDIT_RECURRENCE,
                                          edit_options)
    from dvce.samplers import sampler_defaults
    assert EDIT_RECURRENCE != sampler_defaults("adaptive")["recurrence"]  # a choice, not a copy
    assert EDIT_CAUSE_FROM != sampler_defaults("adaptive")["cause_from"]
    kept = {"recurrence": EDIT_RECURRENCE, "cause_from": EDIT_CAUSE_FROM}
    assert edit_options("adaptive", None) == {"margin": EDIT_MARGIN, **kept}
    assert edit_options("adaptive", {"margin": 2, "levels": [300], "recurrence": 3,
                                     "cause_from": 4}) == {
        "margin": 2, "levels": [300], "recurrence": 3, "cause_from": 4}
    assert edit_options("guided", {}, margin=7) == {"margin": 7.0}   # no recurrence to set
    assert edit_options("adaptive", {}, margin=None) == kept
    assert edit_options("dime", {}) == {}              # no margin to set


@pytest.mark.integration
def test_toy_world_adding_a_hat_flips_the_biased_classifier(tmp_path):
    """The issue's toy-world check on the unseen seed-7272 world (committee and margin chosen on
    seed 6161): hats added by the committee toy_resnet + toy_resnet18 flip the hat-biased
    classifier to smiling on >= 90 % of the oracle-confirmed additions, and removing them back,
    on 16 faces per direction (24 in docs/results.md: 0.95 and 0.96). The clean classifier's
    side (<= 10 %) needs a committee without the clean toy ResNet, toy_resnet18 + toy_linear,
    and toy_linear is not shipped (training it takes about ten minutes): measured in the docs on
    three seeds, not here."""
    from benchmarks.sampler_eval import unseen_world
    from experiments.shortcut.run import run_shortcut
    r = run_shortcut(classifier="toy_biased_hat", cue="Wearing_Hat",
                     editor="toy_resnet,toy_resnet18", data=unseen_world(7272), n=16,
                     out=tmp_path, control=None, oracle="toy_oracle", method="adaptive",
                     n_bootstrap=100, figure=False, progress=False)
    assert r["options"]["margin"] == 5.0
    hat = r["attributes"]["Wearing_Hat"]
    for direction in ("add", "remove"):      # the oracle confirms most edits, and they flip it
        assert hat[direction]["n_edited"] == 16 and hat[direction]["shift"]["n"] >= 12, direction
        assert hat[direction]["shift"]["flip_rate"]["mean"] >= 0.9, direction

def test_edits_record_their_editor_so_another_editor_never_resumes_them(tmp_path, monkeypatch):
    """The editor is the edits' classifier in the run folder: a second run into the same --out
    with another editor is refused by the runner instead of silently reusing the old edits."""
    from dvce import runner
    seen = {}
    monkeypatch.setattr(E.runner, "lmdb_items", lambda *a: [])
    monkeypatch.setattr(E, "dataset_files", lambda data: ("x.lmdb", "attr.txt"))
    monkeypatch.setattr(E.runner, "run", lambda items, problem, out, **kw: seen.update(kw))
    ldm = type("LDM", (), {"image_size": 64})()
    E.edit_faces(tmp_path, None, ldm, "data", [1], "Wearing_Hat", "add", "adaptive",
                 editor_name="toy_resnet,toy_resnet18")
    assert seen["settings"]["classifier"] == "toy_resnet,toy_resnet18"
    with pytest.raises(TypeError, match="editor_name"):   # no edits without naming the editor
        E.edit_faces(tmp_path, None, ldm, "data", [1], "Wearing_Hat", "add", "adaptive")
    # what the runner does with it: a folder holding one editor's edits refuses another's
    done = {"3": {"classifier": "toy_resnet", "method": "adaptive", "attribute": "Wearing_Hat"}}
    with pytest.raises(ValueError, match="classifier=toy_resnet.*classifier=toy_resnet,toy_r"):
        runner.check_same_run(tmp_path, {"classifier": "toy_resnet,toy_resnet18",
                                         "method": "adaptive", "attribute": "Wearing_Hat"}, done)


def test_run_shortcut_edits_with_the_committee_its_name_and_the_margin(tmp_path, monkeypatch):
    """What run_shortcut hands to the edits: a Committee of the editors given (each once), their
    joined names as the edits' classifier (the resume guard), and the options with margin 5 and
    recurrence 1 and cause_from 0 unless the options set them; shortcut.json records the same."""
    import json
    from classifier.committee import Committee
    from experiments.shortcut import run as R
    calls = []
    monkeypatch.setattr(R, "_load", lambda f, device: torch.nn.Identity())
    monkeypatch.setattr(R, "load_ldm", lambda ldm, device: None)
    monkeypatch.setattr(R, "pick_faces", lambda *a, **k: {"add": [1], "remove": [2]})
    monkeypatch.setattr(R, "edit_faces", lambda out, editor, *a, editor_name, **k: calls.append(
        (editor, a[-3], editor_name)))
    monkeypatch.setattr(R, "score_edits", lambda *a: {"used": [], "rows": [], "p_before": [],
                                                      "p_after": [], "editor_flipped": []})
    monkeypatch.setattr(R, "write_report", lambda out, result: None)
    r = R.run_shortcut(classifier="toy_biased_hat", cue="Wearing_Hat", control=None,
                       editor="toy_resnet, toy_resnet18,toy_resnet", data="d", n=1,
                       out=tmp_path, method="adaptive", figure=False, progress=False)
    assert len(calls) == 2 and all(isinstance(e, Committee) and len(e.members) == 2
                                   for e, _, _ in calls)
    assert {name for _, _, name in calls} == {"toy_resnet,toy_resnet18"}
    assert all(opts == {"margin": 5.0, "recurrence": 1, "cause_from": 0} for _, opts, _ in calls)
    saved = json.loads((tmp_path / "shortcut.json").read_text())
    assert saved["editor"] == r["editor"] == "toy_resnet,toy_resnet18"
    assert saved["editors"] == ["toy_resnet", "toy_resnet18"] and saved["options"]["margin"] == 5
    calls.clear()
    R.run_shortcut(classifier="toy_biased_hat", cue="Wearing_Hat", control=None,
                   editor="toy_resnet18", data="d", n=1, out=tmp_path / "one", method="adaptive",
                   options={"margin": 2}, figure=False, progress=False)
    assert not isinstance(calls[0][0], Committee) and calls[0][1] == {
        "margin": 2, "recurrence": 1, "cause_from": 0}
