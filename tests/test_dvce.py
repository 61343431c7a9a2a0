"""Sampler and runner mechanics on a tiny random-weight LDM (fast); quality is tested on the
trained toy LDM in tests/test_quality.py."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dvce import runfolder as rf
from dvce import runner
from dvce.ldm import build_random_ldm
from dvce.samplers import SAMPLERS, FrameRecorder, Problem, get_sampler, sampler_defaults
from toyfaces.ldm import toy_unet_config, toy_vq_config


class BrightnessClassifier(torch.nn.Module):
    """Attribute 31 = 'the image is bright'; NaN for a pure white image (a poisoned input)."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        logit = 20 * (m - 0.02)
        poisoned = (x.flatten(1) > 0.999).all(1)
        logit = torch.where(poisoned, torch.full_like(logit, float("nan")), logit)
        out = torch.zeros(len(x), 40, dtype=x.dtype)
        out[:, 31] = logit
        return out


@pytest.fixture(scope="module")
def problem():
    ldm = build_random_ldm(toy_vq_config(64), toy_unet_config(16), seed=1)
    return Problem(ldm, BrightnessClassifier(), 31)


def _images(n, seed=0, level=-0.2):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 64, 64, generator=g) * 0.4 + level).clamp(-1, 1)


QUICK = {"seed": dict(max_iter=2, num_steps=20, t_start=200),
         "guided": dict(num_steps=20, t_start=200, retry_scales=()),
         "dime": dict(num_steps=20, t_start=100, retry_scales=()),
         "adaptive": dict(num_steps=20, levels=(100, 200), pre_t=200, pre_steps=5, renoise_t=50)}


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_samplers_share_one_signature_and_are_deterministic(problem, method):
    x = _images(3)
    target = torch.ones(3)
    opts = QUICK[method]
    frames = FrameRecorder(3)
    a = get_sampler(method)(problem, x, target, callback=frames, **opts)
    b = get_sampler(method)(problem, x, target, **opts)
    assert a.counterfactual.shape == x.shape and a.reconstruction.shape == x.shape
    assert torch.equal(a.counterfactual, b.counterfactual)
    for i in range(3):
        assert torch.equal(frames.frames[i][0], x[i])  # frame 0 is the original
        assert len(frames.frames[i]) == len(frames.logits[i]) >= 3
        # the last frame is the counterfactual (the runner reports its logit as "after")
        assert torch.equal(frames.frames[i][-1], a.counterfactual[i])
    assert a.failed == [None] * 3


@pytest.mark.parametrize("method", sorted(SAMPLERS))
def test_every_sampler_option_is_documented(method):
    """The docstring entries are the `ldvce generate --<method>.<option>` help texts."""
    from ldvce.cliparse import parameter_help
    helps = parameter_help(get_sampler(method))
    assert set(sampler_defaults(method)) <= {k for k, v in helps.items() if v}


def test_frame_recorder_restarts_a_sequence_on_retry():
    rec = FrameRecorder(2)
    img = torch.zeros(2, 3, 4, 4)
    for i in range(4):
        rec({"i": i, "samples": torch.tensor([0, 1]), "img": img + i, "logit": torch.tensor([i, -i])})
    rec({"i": 2, "samples": torch.tensor([1]), "img": img[:1] + 9, "logit": torch.tensor([9.0])})
    assert rec.logits == [[0, 1, 2, 3], [0, -1, 9]]
    assert float(rec.frames[1][2].max()) == 9
    with pytest.raises(ValueError, match="frame 5"):
        rec({"i": 5, "samples": torch.tensor([0]), "img": img[:1], "logit": torch.tensor([0.0])})


def test_seed_stops_per_sample(problem):
    x = _images(2)
    opts = dict(num_steps=20, t_start=200, lr=0.5)
    first = FrameRecorder(2)
    SAMPLERS["seed"](problem, x, torch.ones(2), max_iter=0, callback=first, **opts)
    rec_logit = torch.tensor([l[1] for l in first.logits])
    # sample 0 asks for what its reconstruction already shows, sample 1 for the opposite
    target = torch.stack([(rec_logit[0] > 0).float(), (rec_logit[1] <= 0).float()])
    frames = FrameRecorder(2)
    res = SAMPLERS["seed"](problem, x, target, max_iter=3, callback=frames, **opts)
    assert res.iterations[0] == 0 and res.flipped[0] and len(frames.frames[0]) == 2
    assert res.iterations[1] >= 1 and len(frames.frames[1]) == 2 + int(res.iterations[1])


def test_unknown_method_lists_available():
    with pytest.raises(KeyError, match="seed"):
        get_sampler("nope")


def test_unknown_options_are_named_with_the_methods_own(tmp_path):
    from dvce import runner
    from dvce.samplers import check_options
    check_options("guided", {"t_start": 800, "mask": False})
    with pytest.raises(ValueError, match="no option 'mask', 't_start'; its options: levels"):
        check_options("adaptive", {"t_start": 800, "mask": False, "margin": 2.0})
    with pytest.raises(ValueError, match="'keep_out'"):  # not a command-line option
        check_options("adaptive", {"keep_out": None})
    with pytest.raises(ValueError, match="no option 'sclae'"):  # before the run folder is made
        runner.run([], None, tmp_path / "run", method="guided", options={"sclae": 0.3})
    assert not (tmp_path / "run").exists()


def test_nan_sample_fails_without_spoiling_the_batch(problem, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, x in enumerate(_images(3)):
        Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)).save(folder / f"img{i}.png")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(folder / "white.png")  # -> NaN logit
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "readme.txt").write_text("hello")
    out = tmp_path / "out"
    summary = runner.run(runner.folder_items(folder, 64), problem, out, method="guided",
                         batch_size=8, options=dict(num_steps=20, t_start=200, retry_scales=()),
                         progress=False)
    manifest = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    status = {e["image"]: e["status"] for e in manifest}
    assert status["white"] == "failed" and status["broken"] == "unreadable"
    assert status["readme"] == "unreadable"
    assert all(status[f"img{i}"] in ("ok", "not_flipped") for i in range(3))
    for i in range(3):
        r = json.loads((out / f"img{i}" / "result.json").read_text())
        assert np.isfinite(r["logit_after"]) and np.isfinite(r["l1"])
        assert (out / f"img{i}" / "sequence.gif").exists()
        assert len(list((out / f"img{i}" / "sequence").glob("*.png"))) == len(r["frames"])
    assert not (out / "white").exists()
    assert summary["n"] == 6 and summary["n_failed"] == 1 and summary["n_unreadable"] == 2

    # the rerun reads the unreadable inputs again (one was replaced), keeps the failed sample's
    # record without sampling it again, and leaves the finished folders alone
    Image.fromarray(((_images(1, seed=9)[0].permute(1, 2, 0).numpy() + 1) * 127.5)
                    .astype(np.uint8)).save(folder / "broken.png")
    before = {i: (out / f"img{i}" / "result.json").stat().st_mtime_ns for i in range(3)}
    again = runner.run(runner.folder_items(folder, 64), problem, out, method="guided",
                       batch_size=8, options=dict(num_steps=20, t_start=200, retry_scales=()),
                       progress=False)
    status = {e["image"]: e["status"] for e in rf.read_manifest(out).values()}
    assert status["broken"] in ("ok", "not_flipped") and (out / "broken" / "result.json").exists()
    assert status["white"] == "failed" and status["readme"] == "unreadable"
    assert again["n_generated"] == 4 and again["n_failed"] == 1 and again["n_unreadable"] == 1
    assert all((out / f"img{i}" / "result.json").stat().st_mtime_ns == before[i] for i in range(3))


def test_interrupted_run_resumes_to_exactly_one_complete_result(problem, tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, x in enumerate(_images(16, seed=3)):
        Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)).save(folder / f"{i:02d}.png")
    out = tmp_path / "out"
    opts = dict(num_steps=20, t_start=100, retry_scales=())
    items = runner.folder_items(folder, 64)

    # 1st run: Ctrl-C in the middle of writing the 3rd batch's second folder
    real_write, calls = runner.write_result_folder, {"n": 0}

    def flaky_write(out_, image_id, *a, **k):
        calls["n"] += 1
        if calls["n"] == 10:
            (out_ / f".{image_id}.partial").mkdir()
            (out_ / f".{image_id}.partial" / "original.png").write_bytes(b"half")
            raise KeyboardInterrupt
        return real_write(out_, image_id, *a, **k)

    monkeypatch.setattr(runner, "write_result_folder", flaky_write)
    with pytest.raises(KeyboardInterrupt):
        runner.run(items, problem, out, "guided", batch_size=4, options=opts, progress=False)
    monkeypatch.setattr(runner, "write_result_folder", real_write)
    done_first = {d.name for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")}
    assert len(done_first) == 9  # folders only appear complete
    assert all((out / d / "result.json").exists() for d in done_first)
    manifest_first = [json.loads(l)["image"] for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert set(manifest_first) <= done_first

    # 2nd run: same command; finished images are skipped, not regenerated
    mtimes = {d: (out / d / "result.json").stat().st_mtime_ns for d in done_first}
    summary = runner.run(items, problem, out, "guided", batch_size=4, options=opts, progress=False)
    folders = {d.name for d in out.iterdir() if d.is_dir()}
    assert folders == {f"{i:02d}" for i in range(16)}  # no .partial left behind
    assert all((out / d / "result.json").stat().st_mtime_ns == mtimes[d] for d in done_first)
    manifest = [json.loads(l) for l in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["image"] for e in manifest) == sorted(folders)
    for e in manifest:
        r = json.loads((out / e["image"] / "result.json").read_text())
        assert r["status"] == e["status"]
    assert summary["n"] == 16 and summary["n_generated"] == 16


def test_guided_runs_in_bfloat16(problem):
    """The GPU configuration's dtype path, checked for shape and finiteness on CPU."""
    ldm = build_random_ldm(toy_vq_config(64), toy_unet_config(16), seed=1).to(dtype=torch.bfloat16)
    p = Problem(ldm, BrightnessClassifier(), 31)
    res = SAMPLERS["guided"](p, _images(2).to(torch.bfloat16), torch.ones(2), num_steps=20,
                             t_start=100, retry_scales=())
    assert res.counterfactual.shape == (2, 3, 64, 64) and res.failed == [None, None]
    assert torch.isfinite(res.counterfactual.float()).all()


def test_gpu_benchmark_is_skipped_with_a_message_on_cpu(capsys):
    from benchmarks.generate import run_generate
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run for real")
    assert run_generate(n=2, gpu=True, device="cpu") is None
    assert "no CUDA GPU" in capsys.readouterr().out


@pytest.mark.integration
def test_bench_generate_toy_adds_bf16_rows_measured_against_the_same_seed_run():
    """``ldvce bench generate --dtype bf16``: every sampler also runs in bfloat16, its images
    judged by the float32 classifier, its speed-up against the one seed-faithful run."""
    from benchmarks.generate import bench_generate_toy, print_generate
    from dvce.samplers import DEFAULT_METHOD, SAMPLERS
    # one face: on a CPU without native bf16 (AVX2) its rows take 10-21x the fp32 time
    r = bench_generate_toy(n=1, seed_n=1, dtype="bf16")
    plain = [m for m in SAMPLERS if m != "seed"]
    assert set(r["methods"]) == set(plain) | {f"{m} bf16" for m in plain}
    assert r["default_method"] == DEFAULT_METHOD
    for m, row in r["methods"].items():
        assert row["images"] == 1 and 0 <= row["flip_rate"] <= 1 and row["mean_l1"] > 0
        assert r["speedup"][m] == pytest.approx(row["images_per_s"]
                                                / r["seed_faithful"]["images_per_s"])
        assert (row.get("dtype") == "bf16") == m.endswith(" bf16")
    from dvce.ldm import native_bf16_cpu
    assert (r["precision_warning"] is None) == native_bf16_cpu()
    print_generate(r)


def test_guided_margin_retries_until_the_logit_is_past_it(problem):
    """A sample that flips but stays below the margin is retried with the next scale; the
    margin never changes what `flipped` means."""
    x = _images(2)
    t = torch.ones(2)
    opts = dict(num_steps=4, t_start=500, scale=0.3, retry_scales=(0.6, 1.2))
    plain = get_sampler("guided")(problem, x, t, **opts)
    rec = FrameRecorder(2)
    strict = get_sampler("guided")(problem, x, t, margin=50.0, callback=rec, **opts)
    assert strict.info["scale"] == pytest.approx([1.2, 1.2])  # a 50-logit margin is never met: every scale tried
    assert plain.info["scale"][0] <= strict.info["scale"][0]
    logit = problem.logit(strict.counterfactual)
    # a try that flipped below the margin is kept when the last try does not flip, and the
    # sequence ends with the image kept
    assert strict.flipped.tolist() == (logit > 0).tolist()
    for k in range(2):
        assert torch.equal(rec.frames[k][-1], strict.counterfactual[k].cpu())
        assert rec.logits[k][-1] == pytest.approx(float(logit[k]), abs=1e-4)


def test_guided_views_are_fixed_transforms():
    from dvce.samplers import VIEWS, _view
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert torch.equal(_view(img, False, 0, 0), img)
    assert torch.equal(_view(img, True, 0, 0), img.flip(-1))
    shifted = _view(img, False, 2, 0)  # content moves right by 2, the left edge replicated
    assert torch.equal(shifted[..., 2:], img[..., :-2]) and torch.equal(shifted[..., 0], img[..., 0])
    assert len(set(VIEWS)) == len(VIEWS) and VIEWS[0] == (False, 0, 0)


def test_guided_views_change_the_guidance_and_stay_deterministic(problem):
    x, t = _images(2, seed=3), torch.ones(2)
    opts = dict(num_steps=4, t_start=500, retry_scales=(), views=4)
    a = get_sampler("guided")(problem, x, t, **opts)
    b = get_sampler("guided")(problem, x, t, **opts)
    one = get_sampler("guided")(problem, x, t, num_steps=4, t_start=500, retry_scales=(), views=1)
    assert torch.equal(a.counterfactual, b.counterfactual)
    assert not torch.equal(a.counterfactual, one.counterfactual)
    with pytest.raises(ValueError, match="views"):
        get_sampler("guided")(problem, x, t, views=99)


def test_oracle_changes_name_the_attributes():
    from dvce.metrics import mnac, oracle_changes
    before = torch.full((2, 40), -1.0)
    after = before.clone()
    after[0, 22] = 1.0   # Mustache appears on image 0
    after[1, 31] = 1.0   # Smiling (the query) changes on image 1: not counted
    after[1, 5] = 1.0    # Bangs, outside the valid set
    valid = torch.zeros(40, dtype=torch.bool)
    valid[[22, 31]] = True
    assert oracle_changes(before, after, 31, valid) == [["Mustache"], []]
    assert mnac(before, after, 31, valid).tolist() == [1.0, 0.0]


def test_a_try_that_flipped_below_the_margin_is_kept_when_the_last_does_not_flip():
    from dvce.samplers import SampleState

    class Mean(torch.nn.Module):  # attribute 31 = the mean pixel value
        def forward(self, x):
            out = torch.zeros(len(x), 40)
            out[:, 31] = x.flatten(1).mean(1)
            return out

    ldm = build_random_ldm(toy_vq_config(64), toy_unet_config(16), seed=1)
    rec = FrameRecorder(1)
    state = SampleState(Problem(ldm, Mean(), 31), torch.full((1, 3, 64, 64), -0.5), torch.ones(1), rec)
    one = torch.tensor([0])
    flipped_try, worse_try = torch.full((1, 3, 64, 64), 0.1), torch.full((1, 3, 64, 64), -0.2)
    state.frame(1, one, flipped_try, torch.tensor([0.1]))
    state.settle(one, flipped_try, torch.tensor([0.1]), 1, last=False, margin=3.0)
    assert state.running.tolist() == [True]  # flipped, but not by the margin: retried
    state.frame(1, one, worse_try, torch.tensor([-0.2]))  # the retry restarts the sequence
    state.settle(one, worse_try, torch.tensor([-0.2]), 2, last=True, margin=3.0)
    assert state.flipped.tolist() == [True] and int(state.iterations[0]) == 1
    assert torch.equal(state.counterfactual[0], flipped_try[0])
    assert rec.logits[0][-1] == pytest.approx(0.1) and torch.equal(rec.frames[0][-1], flipped_try[0])


def test_adaptive_starts_low_raises_the_noise_only_for_faces_that_need_it(problem):
    """Attempts run at rising noise levels for the samples not yet robustly flipped, and the
    per-sample attempts, noise level, region and robustness are reported."""
    x = torch.cat([_images(1, seed=5, level=-0.3), _images(1, seed=6, level=-0.9)])
    t = torch.ones(2)
    opts = dict(num_steps=20, levels=(100, 150, 200), pre_t=200, pre_steps=5, renoise_t=50)
    r = get_sampler("adaptive")(problem, x, t, **opts)
    assert set(r.info) >= {"attempts", "t_start", "region_fraction", "robust", "mask",
                           "region_part"}
    levels = opts["levels"]
    for k in range(2):  # a robust result comes from the attempt that ran last, at its level
        assert 1 <= r.info["attempts"][k] <= 3 and r.info["t_start"][k] in levels
        if r.info["robust"][k]:
            assert r.info["t_start"][k] == levels[r.info["attempts"][k] - 1]
    assert all(0 < f <= 1 for f in r.info["region_fraction"])
    # a check nothing passes (an unreachable margin) runs every attempt
    strict = get_sampler("adaptive")(problem, x, t, margin=1e6, **opts)
    assert strict.info["attempts"] == [3, 3] and strict.info["robust"] == [False, False]
    # a repeated level is one more attempt there (the default tries 900 twice)
    again = get_sampler("adaptive")(problem, x, t, margin=1e6,
                                    **{**opts, "levels": (100, 200, 200)})
    assert again.info["attempts"] == [3, 3] and again.info["t_start"] == [200, 200]
    with pytest.raises(ValueError, match="evidence_from"):
        get_sampler("adaptive")(problem, x, t, evidence_from="nope", **opts)
    # split attempts from the first: every face reports which region it kept; without a region
    # (no evidence) nothing is split
    split = get_sampler("adaptive")(problem, x, t, split_from=1, **opts)
    assert all(p in (0, 1, 2) for p in split.info["region_part"])
    plain = get_sampler("adaptive")(problem, x, t, split_from=1, region=False, **opts)
    assert plain.info["region_part"] == [0, 0]
    # the cause attempt from the first attempt on: parts reported, one frame per step still,
    # and no passes is no cause attempt
    frames = FrameRecorder(2)
    cause = get_sampler("adaptive")(problem, x, t, cause_from=1, callback=frames, **opts)
    assert all(p in (0, 1, 2) for p in cause.info["region_part"])
    assert all(torch.equal(f[-1], c) for f, c in zip(frames.frames, cause.counterfactual))
    none = get_sampler("adaptive")(problem, x, t, cause_from=1, cause_passes=0, **opts)
    off = get_sampler("adaptive")(problem, x, t, cause_from=0, **opts)
    assert torch.equal(none.counterfactual, off.counterfactual)
    with pytest.raises(ValueError, match="cause_from must be at least 0"):
        get_sampler("adaptive")(problem, x, t, cause_from=-1, **opts)


def test_adaptive_late_attempts_run_on_the_fine_grid(problem, monkeypatch):
    """From attempt ``fine_from`` on, the attempt, its re-noising check and the reported grid are
    on ``fine_steps``; the earlier attempts stay on ``num_steps``. A level off the fine grid is
    refused before any work."""
    import dvce.samplers as S
    grids = []
    real = S.schedule
    monkeypatch.setattr(S, "schedule", lambda t, n=100, *a: grids.append((t, n)) or real(t, n, *a))
    x = _images(2, seed=3)
    opts = dict(num_steps=20, levels=(100, 150, 200), pre_t=200, pre_steps=5, renoise_t=50,
                margin=1e6)  # nothing passes: every face runs every attempt
    r = get_sampler("adaptive")(problem, x, torch.ones(2), fine_from=2, fine_steps=40, **opts)
    assert r.info["attempts"] == [3, 3] and r.info["grid_steps"] == [40, 40]
    used = set(grids)
    assert {(100, 20), (150, 40), (200, 40)} <= used
    assert not {(150, 20), (200, 20)} & used
    plain = get_sampler("adaptive")(problem, x, torch.ones(2), **opts)
    assert plain.info["grid_steps"] == [20, 20]
    def no_work(*a, **k):
        raise AssertionError("the pre-explanation ran before the grid was checked")
    monkeypatch.setattr(S, "_pre_explanation", no_work)
    with pytest.raises(ValueError, match="not on the 30-step grid"):
        get_sampler("adaptive")(problem, x, torch.ones(2), fine_from=2, fine_steps=30, **opts)
    with pytest.raises(ValueError, match="fine_steps must be at least 1"):
        get_sampler("adaptive")(problem, x, torch.ones(2), fine_from=2, fine_steps=0, **opts)


def test_adaptive_self_recurrence_repeats_only_the_fine_steps_and_repeats_exactly(problem,
                                                                                   monkeypatch):
    """``recurrence`` re-noises and retakes every guided step but the last of the attempts on
    the fine grid, and no other step; each step still gives one frame, in order (split attempts
    included); the seeded noise makes two runs identical; 0 is refused."""
    import dvce.samplers as S
    from dvce.samplers import FrameRecorder
    levels = []
    real = S.renoise_step
    monkeypatch.setattr(S, "renoise_step",
                        lambda ldm, z, ts, i, noise=None: levels.append(ts[i]) or
                        real(ldm, z, ts, i, noise))
    x = _images(2, seed=3)
    opts = dict(num_steps=20, levels=(100, 150, 200), pre_t=200, pre_steps=5, renoise_t=50,
                margin=1e6, fine_from=2, fine_steps=40, split_from=3)  # every attempt runs
    frames = FrameRecorder(2)
    r = get_sampler("adaptive")(problem, x, torch.ones(2), recurrence=3, callback=frames, **opts)
    # 40-step grid (25 apart): t = 150 has 6 steps above 0, t = 200 has 8, each retaken twice;
    # the attempt at t = 200 is a split attempt, one batched pass per candidate (3)
    assert sorted(levels) == sorted([t for t in range(25, 151, 25)] * 2
                                    + [t for t in range(25, 201, 25)] * 2 * 3)
    # frames 0-1 (original, round trip), one per timestep of the t = 200 attempt (9), its final
    assert all(len(f) == 2 + 9 + 1 for f in frames.frames)
    again = get_sampler("adaptive")(problem, x, torch.ones(2), recurrence=3, **opts)
    assert torch.equal(r.counterfactual, again.counterfactual)
    levels.clear()
    once = get_sampler("adaptive")(problem, x, torch.ones(2), recurrence=1, **opts)
    assert levels == [] and not torch.equal(once.counterfactual, r.counterfactual)
    with pytest.raises(ValueError, match="recurrence must be at least 1"):
        get_sampler("adaptive")(problem, x, torch.ones(2), recurrence=0, **opts)


class LeftBrightness(torch.nn.Module):
    """Smiling (index 31) from the brightness of the image's left half only."""

    def forward(self, x):
        out = torch.zeros(len(x), 40)
        out[:, 31] = 20 * x[..., :32].mean((1, 2, 3))
        return out


def test_adaptive_cause_attempt_edits_the_cluster_the_flip_needs_alone(problem, monkeypatch):
    """A flip made by brightening both halves of the face, for a classifier that reads the left
    half only: the cause attempt undoes each evidence cluster in turn, finds that the flip
    needs the left one, and guides again in it alone; the result replaces the whole-region one
    (its pass made robust here), with the original everywhere outside the left cluster."""
    import dvce.samplers as S
    from dvce.diffusion import schedule
    rows, ts = torch.arange(2), schedule(100, 20)
    region = torch.ones(2, 1, 16, 16)                # the whole latent
    weight = torch.zeros(2, 1, 16, 16)
    weight[..., 2], weight[..., 13] = 1.0, 1.0       # evidence in two columns: two clusters
    opts = S.Guidance(0.3, 1.0, True, 0.0, 1, 0, 0)
    x = torch.full((2, 3, 64, 64), -0.3)
    edited = x + 0.6                                 # both halves: the logit goes -6 -> +6

    def cause(classifier):
        problem_ = S.Problem(problem.ldm, classifier, 31)
        state = S.SampleState(problem_, x, torch.ones(2))
        z_T, traj = S._invert(state, ts)
        out = S.PassResult(edited, problem_.logit(edited), torch.ones(2, 1, 64, 64))
        return S._cause_attempt(state, rows, rows, z_T, traj, ts, opts, region, weight, region,
                                out, torch.ones(2, dtype=torch.bool),
                                torch.zeros(2, dtype=torch.long), 3.0, 1, 0, 20, 2, 2.0)

    calls = []
    monkeypatch.setattr(S, "_robust", lambda st, todo, res, *a: calls.append(res) or
                        torch.ones(len(todo), dtype=torch.bool))
    res, accept, kept, part, ran = cause(LeftBrightness())
    assert ran == 1 and len(calls) == 1 and accept.all()
    assert (kept[..., :8] == 1).all() and (kept[..., 8:] == 0).all()   # the left cluster alone
    assert set(part.tolist()) <= {1, 2} and not torch.equal(res.img, edited)
    outside = (S._pixel_mask(kept, (64, 64)) == 0).expand_as(x)
    assert outside[..., 40:].all() and torch.equal(res.img[outside], x[outside])
    # a flip that needs both clusters alike leaves nothing to choose: no pass runs
    res, accept, kept, part, ran = cause(BrightnessClassifier())
    assert ran == 0 and torch.equal(res.img, edited) and part.tolist() == [0, 0]


def test_adaptive_edits_only_inside_a_given_edit_region(problem):
    """``edit_region`` replaces the pre-explanation's region: every pixel outside it is the
    original's, the same region is reported for every attempt, and a wrong shape is refused."""
    x = _images(2, seed=3)
    region = torch.zeros(2, 1, 64, 64)
    region[0, :, 16:40, 8:56] = 1.0
    region[1, :, 40:60, 20:44] = 1.0
    r = get_sampler("adaptive")(problem, x, torch.ones(2), edit_region=region, **QUICK["adaptive"])
    outside = (r.info["mask"] == 0).expand_as(x)
    assert outside.any() and torch.equal(r.counterfactual[outside], x[outside])
    assert not torch.equal(r.counterfactual, x)   # it did edit, inside
    core = r.info["mask"] > 0.5                   # the composited mask has a blurred edge
    assert float((core == (region > 0)).float().mean()) > 0.97
    with pytest.raises(ValueError, match="edit_region"):
        get_sampler("adaptive")(problem, x, torch.ones(2), edit_region=region[:, :, :32],
                                **QUICK["adaptive"])


def test_adaptive_region_follows_the_evidence_and_its_parts_are_found():
    from dvce.samplers import _components, _evidence_region
    delta = torch.zeros(2, 1, 64, 64)
    delta[0, :, 40:48, 24:40] = 1.0           # one compact change
    delta[1, :, 4:20, 8:56] = 1.0             # a large one …
    delta[1, :, 40:48, 24:40] = 0.8           # … and a second part
    m = _evidence_region(delta, (16, 16), 0.5)
    assert 0 < m[0].mean() < m[1].mean()      # the region's size follows the change
    parts = _components(m[1])
    assert len(parts) == 2 and torch.equal(sum(parts), m[1])
    assert len(_components(m[0])) == 1


class TopBandClassifier(torch.nn.Module):
    """Attribute 31 = 'the top quarter of the image is bright': nothing else matters."""

    def forward(self, x):
        out = torch.zeros(len(x), 40, dtype=x.dtype)
        out[:, 31] = 10 * x[:, :, :16].mean((1, 2, 3))
        return out


def test_prune_grid_cuts_one_grown_region_and_keeps_only_the_pieces_the_flip_needs(problem):
    """A region grown into one piece (the whole image) loses nothing with whole-part pruning,
    but cut by a lattice it keeps only the top band the classifier reads: the rest of the image
    is the original's again, and the flip keeps its margin. A hand-built case of the rule."""
    from dvce.samplers import PassResult, SampleState, _cells, _prune
    part = torch.zeros(1, 16, 16)
    part[0, 2:14, 1:15] = 1.0
    pieces = _cells(part, 4)
    assert len(pieces) == 16 and torch.equal(sum(pieces), part)
    assert all(float(p.sum()) <= 16 for p in pieces) and _cells(part, 0) == [part]
    clf = Problem(problem.ldm, TopBandClassifier(), 31)
    x = torch.full((1, 3, 64, 64), -0.5)
    edited = torch.full((1, 3, 64, 64), 0.5)
    state = SampleState(clf, x, torch.ones(1))
    out = PassResult(edited, clf.logit(edited), torch.ones(1, 1, 64, 64))
    region, evidence = torch.ones(1, 1, 16, 16), torch.ones(1, 1, 64, 64)
    args = (state, torch.arange(1), out, region, evidence, torch.tensor([True]), 3.0, 1, 0, 10, 2)
    whole = _prune(*args, grid=0)
    assert torch.equal(whole.img, edited)                  # one part: nothing to drop
    cut = _prune(*args, grid=4)
    assert torch.equal(cut.img[..., 32:, :], x[..., 32:, :])   # the lower half is the original
    assert torch.equal(cut.img[..., :12, :], edited[..., :12, :])  # the band the flip needs stays
    assert float(clf.logit(cut.img)) >= 3.0 and float(cut.logit) >= 3.0
    assert float(cut.mask.mean()) < 0.45


def test_clusters_cut_one_region_between_its_two_evidence_peaks():
    """One connected region over two separate concentrations of evidence is cut between them;
    the parts cover the region (or the larger one it is assigned over) without overlap."""
    from dvce.samplers import _clusters
    region = torch.zeros(1, 1, 16, 16)
    region[0, 0, 1:15, 6:10] = 1.0                 # one piece from top to bottom
    weight = torch.full((1, 1, 16, 16), 0.1)
    weight[0, 0, 1:4, 6:10], weight[0, 0, 12:15, 6:10] = 1.0, 0.8
    parts = _clusters(region, weight)
    assert torch.equal(parts.sum(1, keepdim=True), region)
    top, bottom = parts[0, 0], parts[0, 1]         # the first part holds the peak
    assert top[1:4, 6:10].all() and not top[12:15].any() and bottom[12:15, 6:10].all()
    wider = region.clone()
    wider[0, 0, 0:3, 2:14] = 1.0
    assigned = _clusters(region, weight, assign=wider)
    assert torch.equal(assigned.sum(1, keepdim=True), wider) and assigned[0, 0, 0:3, 2:14].all()
    single = torch.zeros(1, 1, 16, 16)
    single[0, 0, 5, 5] = 1.0
    one = _clusters(single, weight)
    assert torch.equal(one[:, :1], single) and not one[:, 1].any()


def test_split_attempt_keeps_the_smallest_robust_edit_among_the_region_and_its_parts(problem,
                                                                                       monkeypatch):
    """A region joining what the classifier reads (the top band) and what it does not (the
    bottom): the whole region and the top part both flip, the bottom part does not; the top
    part's result is kept (less L1), the bottom half stays the original, and its frames are the
    ones the callback ends with. The candidates run as one batch, in chunks of the sampler's
    batch size."""
    import dvce.samplers as S
    clf = Problem(problem.ldm, TopBandClassifier(), 31)
    x = torch.full((1, 3, 64, 64), -0.5)
    calls = []

    def fake_pass(state, idx, z, traj, ts, g, region=None, frame0=2):  # bright inside the region
        calls.append(idx.tolist())
        pm = S._pixel_mask(region, x.shape[-2:]).round()
        img = pm * 0.5 + (1 - pm) * state.x[idx]
        for f in range(1, frame0 + len(ts) + 1):
            state.frame(f, idx, img, clf.logit(img))
        return S.PassResult(img, clf.logit(img), pm)

    monkeypatch.setattr(S, "_guided_pass", fake_pass)
    frames = FrameRecorder(1)
    state = S.SampleState(clf, x, torch.ones(1), frames)
    region = torch.ones(1, 1, 16, 16)            # grown into one piece: the whole image
    evidence = torch.zeros(1, 1, 16, 16)
    evidence[0, 0, 0:4], evidence[0, 0, 12:16] = 1.0, 0.6
    idx = torch.arange(1)
    z = torch.zeros(1, 3, 16, 16)
    whole = fake_pass(state, idx, None, None, [0, 1], None, region=region)
    calls.clear()
    out, accept, kept, which, passes = S._split_attempt(state, idx, z, [], [0, 1], None, region,
                                                        evidence, region, 3.0, 1, 0, 10)
    assert passes == 2 and calls == [[0], [0], [0]]   # batch size 1: three chunks of one
    assert float(whole.logit[0]) >= 3.0 and bool(accept[0]) and float(out.logit[0]) >= 3.0
    assert torch.equal(out.img[..., 40:, :], x[..., 40:, :])        # the bottom is the original
    assert float((out.img - x).abs().mean()) < float((whole.img - x).abs().mean())
    assert kept[0, 0, :4].any() and not kept[0, 0, 12:].any() and which.tolist() == [1]
    assert torch.equal(frames.frames[0][-1], out.img[0])
    # two faces: one whose evidence has no second concentration keeps nothing smaller (a
    # one-position region offers no part), the other keeps its top part; the whole regions and
    # the second face's parts run as one batch (the sampler's batch is 2: chunks of two)
    frames2 = FrameRecorder(2)
    state2 = S.SampleState(clf, x.expand(2, -1, -1, -1), torch.ones(2), frames2)
    regions = torch.cat([torch.zeros(1, 1, 16, 16), region])
    regions[0, 0, 0, 0] = 1.0                       # a one-position region: nothing to split
    idx2 = torch.arange(2)
    calls.clear()
    out2, acc2, _, which2 = S._split_attempt(state2, idx2, torch.zeros(2, 3, 16, 16), [], [0, 1],
                                             None, regions, evidence.expand(2, -1, -1, -1),
                                             regions, 3.0, 1, 0, 10)[:4]
    assert calls == [[0, 1], [1, 1]] and which2.tolist() == [0, 1]
    assert not bool(acc2[0]) and float(out2.logit[0]) < 3.0   # the one-position edit is kept
    assert float((out2.img[0] - x[0]).abs().sum()) > 0
    assert torch.equal(frames2.frames[1][-1], out2.img[1])
    assert torch.equal(frames2.frames[0][-1], out2.img[0])
    # nothing robust among the parts: the whole region's result stays
    none = S._split_attempt(state, idx, z, [], [0, 1], None, region, evidence, region,
                            1e6, 1, 0, 10)
    assert torch.equal(none[0].img, whole.img) and not bool(none[1][0])
    assert none[3].tolist() == [0]


def test_preserve_penalty_is_a_hinge_on_the_other_decisions_coming_near_their_boundary():
    """Hand-computed: a confident decision may drift down to the margin for free, a
    low-confidence one may not lose what it had, a flipped one costs its whole way, and the
    target attribute itself is never penalised."""
    from dvce.samplers import _preserve_penalty
    out0 = torch.tensor([[5.0, -0.5, -3.0, -4.0]])
    out = torch.tensor([[2.5, 0.0, 1.0, 9.0]])
    # attr 0: 5 -> 2.5, still past the margin 2: 0; attr 1: -0.5 -> 0: 0.5;
    # attr 2: -3 -> 1 (flipped): 2 + 1 = 3; attr 3 is the target: ignored
    assert float(_preserve_penalty(out, out0, attribute=3)) == pytest.approx(3.5)
    assert float(_preserve_penalty(out0, out0, attribute=3)) == 0.0
    # margin 6, above every confidence: each keeps what it had (2.5 + 0.5 + 4)
    assert float(_preserve_penalty(out, out0, attribute=3, margin=6.0)) == pytest.approx(7.0)


class TwoSidesClassifier(torch.nn.Module):
    """Attribute 31 rises with the brightness of either half of the image; attribute 5 says
    'the right half is dark': brightening the right half flips it, brightening the left does not."""

    def forward(self, x):
        left, right = x[..., :32].mean((1, 2, 3)), x[..., 32:].mean((1, 2, 3))
        out = torch.zeros(len(x), 40, dtype=x.dtype)
        out[:, 31] = 10 * (left + right)
        out[:, 5] = -10 * (right - x.new_tensor(-0.1))
        return out


def test_preserve_turns_the_guidance_away_from_edits_that_flip_another_decision(problem):
    """The guidance loss with ``preserve``: its gradient still brightens the left half (the
    target rises, attribute 5 does not care) but no longer the right half, whose brightening
    would flip attribute 5. In ``adaptive`` the weight reaches only the first
    ``preserve_levels`` attempts: with none, the result is the one without ``preserve``."""
    from dvce.samplers import _classifier_loss
    clf = Problem(problem.ldm, TwoSidesClassifier(), 31)
    x = _images(2, seed=11, level=-0.4)
    out0 = clf.outputs(x)
    assert bool((out0[:, 5] > 0).all()) and bool((out0[:, 31] < 0).all())

    def grad(w):  # on the way: both halves a little brighter, attribute 5 a little lower
        img = (x + 0.05).requires_grad_(True)
        loss, _ = _classifier_loss(clf, img, x, torch.ones(2), 0.0, preserve=w, outputs0=out0)
        g, = torch.autograd.grad(loss.sum(), img)
        return -g[..., :32].sum(), -g[..., 32:].sum()   # descent direction: + = brighten
    left0, right0 = grad(0.0)
    left5, right5 = grad(5.0)
    assert left0 > 0 and right0 > 0 and left5 == pytest.approx(float(left0))
    assert right5 < 0 < right0
    sampler = get_sampler("adaptive")
    base = sampler(clf, x, torch.ones(2), preserve=0.0, **QUICK["adaptive"])
    gated = sampler(clf, x, torch.ones(2), preserve=5.0, preserve_levels=0, **QUICK["adaptive"])
    used = sampler(clf, x, torch.ones(2), preserve=5.0, **QUICK["adaptive"])
    assert torch.equal(gated.counterfactual, base.counterfactual)
    assert not torch.equal(used.counterfactual, base.counterfactual)


def test_run_folder_records_the_sampler_choices_per_image(problem, tmp_path):
    """CFBatch.info's per-sample values go to result.json (``sampler_info``) and their counts to
    summary.json and metrics.json."""
    from dvce.metrics import evaluate_run
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, x in enumerate(_images(2)):
        Image.fromarray(((x.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)).save(folder / f"img{i}.png")
    out = tmp_path / "out"
    summary = runner.run(runner.folder_items(folder, 64), problem, out, method="adaptive",
                         batch_size=2, options=QUICK["adaptive"], progress=False)
    r = json.loads((out / "img0" / "result.json").read_text())
    assert set(r["sampler_info"]) >= {"attempts", "t_start", "robust", "num_steps"}
    dist = summary["sampler_info"]
    assert sum(dist["attempts"].values()) == 2 and set(dist["t_start"]) <= {"100", "200"}
    assert evaluate_run(out)["sampler_info"]["attempts"] == dist["attempts"]


def test_sampler_profile_times_the_stages_and_restores_them():
    """benchmarks/sampler_profile.py: the stages of one adaptive call on 2 bench faces, nested
    stages no longer than their parent, and the sampler module left as it was."""
    from benchmarks import sampler_profile
    from dvce import samplers
    before = samplers._guided_pass
    r = sampler_profile.profile(2, "adaptive", {"levels": (300,)})
    assert samplers._guided_pass is before
    st = r["stages"]
    assert st["_pre_explanation"]["calls"] == 1 and st["_guided_pass"]["calls"] == 2
    assert st["_invert"]["seconds"] <= st["_pre_explanation"]["seconds"] <= r["total"]
    assert st.get("_renoised", {"seconds": 0.0})["seconds"] <= st["_robust"]["seconds"]
    assert r["n"] == 2


def test_mnac_floor_reads_a_toy_run_and_counts_against_the_margin(toy_unseen, tmp_path):
    """benchmarks/mnac_floor.py on a hand-made run folder of 6 faces of an unseen toy world:
    it finds the faces through result.json, counts the open mouths from the renderer's factors,
    and its below-margin count follows the margin."""
    import toyfaces
    from benchmarks.mnac_floor import mnac_floor
    rows = [0, 1, 2, 3, 4, 5]
    lmdb = next(toy_unseen.glob("*.lmdb"))
    for r in rows:
        (tmp_path / str(r)).mkdir()
        (tmp_path / str(r) / "result.json").write_text(
            json.dumps({"source": {"lmdb": str(lmdb), "index": r}}))
    (tmp_path / "manifest.jsonl").write_text("".join(
        json.dumps({"image": str(r), "status": "ok"}) + "\n" for r in rows))
    (tmp_path / "metrics.json").write_text(json.dumps({"mnac": 0.5, "oracle_changed": {}}))
    opened = int((toyfaces.load_factors(toy_unseen).mouth_open[rows] > 0.5).sum())
    low = mnac_floor(tmp_path, margin=-1e9)
    high = mnac_floor(tmp_path, margin=1e9)
    assert low["n"] == 6 and low["open_mouths"] == opened == high["open_mouths"]
    assert low["answer_key_below_margin"] == 0 and high["answer_key_below_margin"] == 6
    assert high["open_below_margin"] == opened and 0 <= low["answer_key_mnac"] <= 10
    assert low["run_mnac"] == 0.5


def test_adaptive_refuses_options_off_their_range(problem):
    x = _images(1)
    for opts, says in (({"scale": -1.0}, "scale must be above 0, got -1.0"),
                       ({"region_threshold": 2.0}, r"region_threshold must be in \(0, 1\]"),
                       ({"scale_grow": 0.5}, "scale_grow must be at least 1"),
                       ({"levels": (1500,)}, "t_start .* must be in 0..999")):
        with pytest.raises(ValueError, match=says):
            get_sampler("adaptive")(problem, x, torch.ones(1), **opts)


def test_smile_boundary_sweeps_the_answer_key_and_finds_each_classifiers_boundary(toy_unseen):
    """benchmarks/smile_boundary.py on 16 faces of an unseen toy world: the oracle calls clear
    frowns not smiling and clear smiles smiling, so its boundary lies between them; a margin no
    logit reaches is reported as not reached."""
    from benchmarks.smile_boundary import format_table, smile_boundary
    r = smile_boundary(toy_unseen, n=16, classifiers=["toy_oracle"], grid=(-0.4, -0.2, 0.0, 0.2, 0.4))
    o = r["classifiers"]["toy_oracle"]
    assert r["n"] == 16 and len(o["called_smiling"]) == 5
    assert o["called_smiling"][0] <= 0.1 and o["called_smiling"][-1] >= 0.9
    assert -0.2 < o["boundary"] < 0.2 and o["frowns_called_smiling"] <= 0.1
    assert o["median_logit"] == sorted(o["median_logit"])  # a drawn smile raises the logit
    assert smile_boundary(toy_unseen, n=4, classifiers=["toy_oracle"], grid=(-0.4, 0.4),
                          margin=1e6)["classifiers"]["toy_oracle"]["margin_reached_at"] is None
    assert "boundary (half called smiling)" in format_table(r)
