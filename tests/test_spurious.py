"""The Clever Hans experiment (experiments/clever_hans/): scoring on hand-built data, and the
thresholds the experiment must reach on unseen faces."""

import numpy as np
import pytest

from dvce import metrics as M
from experiments.clever_hans import data as S, report as R, run as X, scoring as SC


def _masks(size=16):
    hat = np.zeros((size, size), bool)
    hat[:4, 2:14] = True
    mouth = np.zeros((size, size), bool)
    mouth[11:14, 5:11] = True
    return hat, mouth


def test_region_shares_and_rates_on_hand_built_changes():
    hat, mouth = _masks()
    on_hat = np.zeros((16, 16))
    on_hat[1:3, 4:12] = 1.0           # 16 px in the hat region …
    on_hat[12, 7] = 2.0               # … and a little in the mouth
    on_mouth = np.zeros((16, 16))
    on_mouth[11:13, 6:10] = 0.5       # all in the mouth …
    on_mouth[8, 0] = 1.0              # … plus a speck elsewhere
    h1, m1 = M.region_shares(on_hat, hat, mouth)
    assert (h1, m1) == pytest.approx((16 / 18, 2 / 18))
    h2, m2 = M.region_shares(on_mouth, hat, mouth)
    assert (h2, m2) == pytest.approx((0.0, 4 / 5))
    # masks at another resolution are resized to the change map
    big_hat = np.kron(hat, np.ones((4, 4), bool))
    big_mouth = np.kron(mouth, np.ones((4, 4), bool))
    assert M.region_shares(on_hat, big_hat, big_mouth) == pytest.approx((h1, m1))
    # nothing changed: NaN
    h0, m0 = M.region_shares(np.zeros((16, 16)), hat, mouth)
    assert np.isnan(h0) and np.isnan(m0)


def test_change_per_pixel_does_not_favour_the_larger_region():
    hat, mouth = _masks()                      # 48 hat pixels, 18 mouth pixels
    spread = np.ones((16, 16))                 # the same change everywhere
    hs, ms = M.region_shares(spread, hat, mouth)
    assert hs > 2 * ms                         # shares favour the larger hat region …
    assert M.region_densities(spread, hat, mouth) == pytest.approx((1.0, 1.0))  # … densities not
    on_hat = np.zeros((16, 16))
    on_hat[1:3, 4:12] = 1.0                    # 16 of the 48 hat pixels
    on_hat[12, 7] = 2.0                        # 1 of the 18 mouth pixels, twice as strong
    dh, dm = M.region_densities(on_hat, hat, mouth)
    assert (dh, dm) == pytest.approx((16 / 48, 2 / 18))
    on_mouth = np.zeros((16, 16))
    on_mouth[11:13, 6:10] = 0.5
    mh, mm = M.region_densities(on_mouth, hat, mouth)
    assert (mh, mm) == pytest.approx((0.0, 4 / 18))
    r = SC.change_rates([dh, mh, 0.0, 0.3], [dm, mm, 0.0, 0.3])
    # images: hat wins, mouth wins, unchanged (neither), tie (neither)
    assert r == {"hat_change_rate": 0.25, "mouth_change_rate": 0.25}


def test_oracle_flip_rates_count_each_attribute():
    before = -np.ones((4, 40))
    after = before.copy()
    after[0, 35] = after[1, 35] = after[2, 35] = 3.0   # hat appears on three faces
    after[3, 31] = 1.0                                  # a smile on one
    before[2, 5] = 2.0                                  # other attributes do not count
    r = M.decision_flip_rates(before, after, {"hat": 35, "smile": 31})
    assert r == {"hat": 0.75, "smile": 0.25}


def test_undo_region_restores_only_that_region():
    import torch
    hat, mouth = _masks()
    x = torch.zeros(3, 16, 16)
    cf = torch.ones(3, 16, 16)
    out = M.undo_region(x, cf, hat)
    assert float(out[:, hat].abs().sum()) == 0.0 and bool((out[:, ~hat] == 1).all())
    assert float(cf.sum()) == 3 * 256  # the input is left alone
    batch = M.undo_region(x.numpy()[None], cf.numpy()[None], mouth)
    assert batch.shape == (1, 3, 16, 16) and batch[0][:, mouth].sum() == 0
    assert batch[0][:, ~mouth].min() == 1


def test_decision_mass_follows_the_sign_of_the_logit():
    from study.metrics import decision_relevance_mass  # what score_run's LRP masses use
    hat, mouth = _masks()
    heat = np.zeros((16, 16))
    heat[hat] = -1.0       # evidence against the class on the hat
    heat[mouth] = 3.0      # for the class on the mouth
    assert decision_relevance_mass(heat, +2.0, mouth) == pytest.approx(1.0)
    assert decision_relevance_mass(heat, +2.0, hat) == pytest.approx(0.0)
    # a negative decision: the evidence for it is the negative relevance
    assert decision_relevance_mass(heat, -2.0, hat) == pytest.approx(1.0)


def test_answer_key_gains_show_the_biased_classifier_takes_part_of_its_margin_from_the_smile(
        toy_unseen):
    """The renderer's answer key in logits, on faces no model saw: the biased classifier never
    calls a face smiling for its smile alone, yet the smile moves its logit by one or two units (it
    learnt the hat *with* the smile); the hat-reading control moves with the hat only and the
    clean classifier with the smile only. Measured on 24 faces of seeds 6161 / 7272 / 8383: biased
    +14.6 / +15.5 / +14.1 hat, +1.9 / +1.2 / +1.4 smile; control +14.4 / +14.3 / +14.3 hat,
    +0.0 / -0.2 / -0.1 smile."""
    from classifier.models import load_classifier
    models = {name: load_classifier(path).requires_grad_(False) for name, path in (
        ("biased", S.biased_classifier()), ("clean", S.clean_classifier()),
        ("control", S.hat_reader()))}
    rows = S.pick_faces(models, toy_unseen, 12)
    assert len(rows) >= 8
    key = SC.interventions(models, toy_unseen, rows)
    b, c, h = (key["rates"][k] for k in ("biased", "clean", "control"))
    assert b["smile"] <= 0.1 and b["hat"] >= 0.9
    assert b["hat_gain"] > 8 and 1.0 < b["smile_gain"] < b["hat_gain"] / 3
    assert h["hat_gain"] > 8 and abs(h["smile_gain"]) < 1.0 and h["smile"] == 0.0
    assert c["smile_gain"] > 8 and abs(c["hat_gain"]) < 1.0


def test_hat_reader_is_the_clean_classifier_with_its_hat_output_as_smiling():
    """Every weight is the clean classifier's but the Smiling output row, which is its
    Wearing_Hat row; so are the outputs."""
    import torch
    from classifier.attributes import attribute_index
    from classifier.models import load_classifier
    control = load_classifier(S.hat_reader())
    clean = load_classifier(S.clean_classifier())
    s, h = attribute_index("Smiling"), attribute_index("Wearing_Hat")
    a, c = control.state_dict(), clean.state_dict()
    assert a.keys() == c.keys()
    for k in a:
        if k in ("net.fc.weight", "net.fc.bias"):
            assert torch.equal(a[k][s], c[k][h])
            others = [i for i in range(len(a[k])) if i != s]
            assert torch.equal(a[k][others], c[k][others])
        else:
            assert torch.equal(a[k], c[k]), k
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(control(x)[:, s], clean(x)[:, h], atol=1e-5)


def test_report_section_names_every_number(tmp_path):
    role = {key: 0.5 for key, _ in R.ROWS}
    summary = {"spurious": {"target": "Smiling", "cue": "Wearing_Hat", "strength": 1.0,
                            "method": "guided", "images": 3, "data_seed": 7,
                            "biased": dict(role, hat_change_rate=1.0), "clean": role},
               "seconds": 1.0}
    import html
    page = R.write_report(tmp_path, summary).read_text()
    for _, label in R.ROWS:
        assert html.escape(label) in page
    assert "1.000" in page and "guided" in page
    assert "counterfactuals hide it" in R.reading(summary)   # hat rate 1.0, but oracle 0.5 : 0.5
    shows = dict(role, hat_change_rate=0.95, oracle_hat_flip_rate=0.9, oracle_smile_flip_rate=0.1)
    assert "counterfactuals show it: 95 %" in R.reading(
        {"spurious": dict(summary["spurious"], biased=shows)})
    control = dict(summary, spurious=dict(summary["spurious"], biased_given=True, classifiers={
        "biased": "/cache/models/toy_resnet_hat_reader.safetensors"}))
    page = R.write_report(tmp_path, control).read_text()
    assert "toy_resnet_hat_reader.safetensors" in page and "every smiling face" not in page
    gains = dict(role, intervention_hat_gain=14.0, intervention_smile_gain=1.5)
    assert "the hat moves its Smiling logit by a median of +14.0, the smile by +1.5" in R.reading(
        {"spurious": dict(summary["spurious"], biased=gains)})


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    """The experiment (the default sampler, adaptive, with its defaults) on 12 faces of a seed no
    model saw."""
    from tests.conftest import UNSEEN_SEED
    out = tmp_path_factory.mktemp("spurious")
    s = X.run_experiment(out, n_images=12, data_seed=UNSEEN_SEED, data_size=200, crp=False,
                         figure=False)["spurious"]
    print(R.summary_table({"spurious": s}))
    return s


@pytest.mark.integration
def test_unseen_faces_answer_key_clean_counterfactuals_and_lrp(unseen):
    """What holds with margin: the answer key (re-rendered faces) says the biased classifier
    reads the hat and the clean one the mouth; the clean classifier's counterfactuals change the
    mouth and the oracle sees the smile; LRP of the counterfactuals puts the biased decision on
    the hat region (several times the clean one's) and the clean one on the mouth."""
    b, c = unseen["biased"], unseen["clean"]
    assert unseen["images"] == 12 and unseen["oracle_sees_rendered_hats"] >= 0.9
    assert b["intervention_hat_rate"] >= 0.9 and b["intervention_smile_rate"] <= 0.1
    assert c["intervention_smile_rate"] >= 0.9 and c["intervention_hat_rate"] <= 0.1
    assert b["accuracy_conflicting"] <= 0.1 and c["accuracy_conflicting"] >= 0.9
    assert c["flip_rate"] >= 0.9
    assert c["hat_change_rate"] <= 0.1 and c["mouth_change_rate"] >= 0.9
    assert c["oracle_smile_flip_rate"] >= 0.75 and c["oracle_hat_flip_rate"] <= 0.1
    # LRP of the counterfactuals: the biased decision rests on the hat region far more than
    # the clean one's (seed 4242: 0.27 vs 0.04; its mouth gets 0.24, too close to assert an
    # order), the clean one's on the mouth (0.71)
    assert b["lrp_hat_mass_post"] > max(3 * c["lrp_hat_mass_post"], 0.15)
    assert c["lrp_mouth_mass_post"] > max(0.5, 10 * c["lrp_hat_mass_post"])


@pytest.mark.integration
def test_default_sampler_shows_the_hat_of_a_classifier_that_reads_only_the_hat(
        unseen, tmp_path_factory):
    """The control of the target below: the same experiment and faces' seed with the hat
    reader (:func:`~experiments.clever_hans.data.hat_reader`) as the biased classifier, whose
    smile moves its logit by nothing. Its counterfactuals change the hat most on most faces
    (seed 4242: 10 of 12; 12 of 12 before the cause attempt; 24 faces of 9494: 24; of 6161 /
    7272 / 8383, measured before it: 0.958 / 0.875 / 0.958). So the sampler shows a cue that is the
    whole decision. The shipped biased classifier, which takes part of its margin from the
    smile, got 7 of 12 here before the cause attempt and gets 9 now: the gap the cause attempt
    closed is no longer asserted. The oracle's hat target is missed on both (partial caps)."""
    from tests.conftest import UNSEEN_SEED
    out = tmp_path_factory.mktemp("spurious_control")
    s = X.run_experiment(out, n_images=12, data_seed=UNSEEN_SEED, data_size=200, crp=False,
                         figure=False, biased=S.hat_reader())["spurious"]
    print(R.summary_table({"spurious": s}))
    h = s["biased"]
    assert s["rows"] == unseen["rows"]  # the same faces as the shipped biased classifier's
    assert h["intervention_smile_gain"] < 1.0 < unseen["biased"]["intervention_smile_gain"]
    assert h["flip_rate"] >= 0.95 and h["hat_change_rate"] >= 0.8
    assert h["lrp_hat_mass_post"] > 10 * h["lrp_mouth_mass_post"]


@pytest.mark.integration
@pytest.mark.xfail(strict=True, reason="measured: the default adaptive sampler flips every biased "
                   "face and, with its split attempts, its late attempts on a 50-step grid with "
                   "each step retaken (recurrence 3) and its cause attempt (a flip made again in "
                   "the evidence cluster it needs most, cause_from 3), changes the hat more than "
                   "the mouth on 0.67-0.92 of them on five seeds (9 of 12 here), short of 0.90. "
                   "The rest paint hat colours where no hat goes (over the mouth, beside the "
                   "head), which the biased classifier reads as a hat and the oracle does not; "
                   "the oracle sees a hat on 38-67 % (5 of 12 here); told the true hat region, "
                   "on 58-75 %, 75-83 % with a margin of 8 (docs/results_adaptive.md, "
                   "benchmarks/hat_ceiling.py)")
def test_biased_counterfactuals_put_most_change_on_the_hat(unseen):
    """The issue's target: the biased classifier's counterfactuals change the hat in >= 90 %
    of faces and the oracle sees the hat. Strict xfail: passing would mean a sampler now shows
    the cue, and this test must then become a plain one."""
    b = unseen["biased"]
    assert b["hat_change_rate"] >= 0.9
    assert b["oracle_hat_flip_rate"] > b["oracle_smile_flip_rate"]


def test_demo_has_a_spurious_flag():
    from ldvce.cli import CLI, build_parser
    from ldvce.cliparse import parse
    argv = ["demo", "--spurious", "--quick"]
    command, kw = parse(CLI, build_parser(argv), argv)
    assert command.path == ("demo",) and kw["spurious"] and kw["quick"] and kw["out"] is None
    _, kw = parse(CLI, build_parser(["demo"]), ["demo"])
    assert not kw["spurious"]
    argv = ["demo", "--spurious", "--data-seed", "7272", "--n", "24"]
    _, kw = parse(CLI, build_parser(argv), argv)
    assert kw["data_seed"] == 7272 and kw["n"] == 24 and not kw["hat_reader"]
    argv = ["demo", "--spurious", "--hat-reader"]
    _, kw = parse(CLI, build_parser(argv), argv)
    assert kw["hat_reader"] and kw["spurious"]
    from ldvce.cli import demo
    with pytest.raises(SystemExit, match="--hat-reader goes with --spurious"):
        demo(hat_reader=True)
    with pytest.raises(SystemExit, match="exclude each other"):
        demo(spurious=True, hat_reader=True, retrain=True)


def test_biased_classifier_is_shipped_and_retrains_with_the_toy_recipe(tmp_path, monkeypatch):
    """The shipped biased weights come back by default and hold the clean toy ResNet's
    architecture (same recipe); ``retrain=True`` trains that recipe on the hat world (faked
    training here: the real loop is tested in test_classifier.py) without rendering clean faces
    in its place, and caches the checkpoint."""
    import classifier.train
    from classifier import load_classifier
    from toyfaces.world import shipped_classifier
    path = S.biased_classifier()
    assert path == shipped_classifier("toy_resnet_wearing_hat_1") and path.suffix == ".safetensors"
    biased, clean = load_classifier(path), load_classifier(S.clean_classifier())
    assert dict(biased.hparams) == dict(clean.hparams)
    monkeypatch.setenv("LDVCE_CACHE", str(tmp_path))
    data = tmp_path / "hat-world"
    monkeypatch.setattr(S, "spurious_data", lambda strength=1.0, progress=True: data)
    calls = []

    def fake_train(args):
        calls.append(args)
        (tmp_path / "best.ckpt").write_bytes(b"trained")
        return None, None, tmp_path / "best.ckpt"

    monkeypatch.setattr(classifier.train, "main", fake_train)
    ckpt = S.biased_classifier(retrain=True)
    assert ckpt == tmp_path / "models" / "toy_resnet_wearing_hat_1.ckpt"
    assert ckpt.read_bytes() == b"trained"
    args = calls[0]
    assert args[args.index("--config") + 1].endswith("toy_resnet.yaml")
    assert args[args.index("--data.data_path") + 1] == str(data)
    assert args[args.index("--data.make_with") + 1] == "null"
    # another strength is not shipped: trained once, then taken from the cache
    assert S.biased_classifier(0.5) == tmp_path / "models" / "toy_resnet_wearing_hat_0.5.ckpt"
    assert len(calls) == 2 and S.biased_classifier(0.5) and len(calls) == 2


@pytest.mark.integration
def test_hat_ceiling_edits_only_where_it_is_told_and_reports_the_answer_key(tmp_path):
    """benchmarks/hat_ceiling.py on 2 faces of an unseen world: a mouth-region edit never
    changes the hat more than the mouth, and the answer key is passed through both DDIM grids."""
    import json
    from benchmarks import hat_ceiling
    out = tmp_path / "ceiling.json"
    assert hat_ceiling.main(["--seed", "4242", "--n", "2", "--configs", "mouth region",
                             "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert list(r["configs"]) == ["mouth region"] and r["n"] == 2
    assert r["configs"]["mouth region"]["hat_most"] == 0.0
    assert set(r["answer_key"]) == {"rendered", "VQ round trip", "DDIM 900 and back, 9 steps",
                                    "DDIM 900 and back, 45 steps"}
    assert r["answer_key"]["rendered"]["oracle_hat"] == 1.0
    with pytest.raises(SystemExit):
        hat_ceiling.main(["--configs", "no such row"])
