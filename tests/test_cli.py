import subprocess
import sys

import pytest


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "ldvce.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("toy", "data", "train", "generate", "evaluate", "explain", "crp", "study", "demo",
                "bench"):
        assert cmd in out


def test_subcommand_help_shows_defaults():
    out = subprocess.run([sys.executable, "-m", "ldvce.cli", "generate", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--method" in out and "default: adaptive" in out and "--batch-size" in out


def test_generate_help_lists_typed_sampler_options():
    """One option group per sampler, generated from its signature and docstring."""
    out = subprocess.run([sys.executable, "-m", "ldvce.cli", "generate", "--help"],
                         capture_output=True, text=True, check=True).stdout
    text = " ".join(out.split())
    for flag in ("--guided.scale SCALE", "--seed.max_iter MAX_ITER", "--dime.scale SCALE",
                 "--guided.retry_scales"):
        assert flag in text
    assert "Guidance step on x̂0" in text and "(type: float, default: 0.3)" in text
    assert "--option" not in text and "--seed SEED" not in text  # gone: replaced / did nothing


def test_top_level_help_imports_no_torch():
    code = ("import sys\nfrom ldvce.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "generate" in r.stdout


def _parsed(*argv):
    from ldvce.cli import CLI, build_parser
    from ldvce.cliparse import parse
    return parse(CLI, build_parser(argv), list(argv))


def test_every_command_parses_into_its_function_signature():
    """Each command's parsed arguments bind to its function (names, positionals, defaults)."""
    import inspect
    from ldvce.cli import CLI
    samples = {
        ("toy", "make-data"): ["out", "--n", "3", "--spurious", "Smiling:Wearing_Hat:0.9"],
        ("toy", "train-ldm"): ["out", "--data", "d", "--vq-warmup-steps", "2"],
        ("toy", "sample"): ["--n", "4"],
        ("data", "build-lmdb"): ["imgs", "out.lmdb", "--size", "64"],
        ("classifier", "evaluate"): ["toy_resnet", "--data", "d", "--export-misclassified", "e"],
        ("generate",): ["--lmdb", "x.lmdb", "--indices", "1", "2", "--classifier", "c", "--out", "o",
                        "--batch-size", "2", "--target", "1"],
        ("distill-decoder",): ["--data", "d", "--out", "o", "--steps", "10", "--devices", "2"],
        ("evaluate",): ["run", "--oracle", "toy_oracle"],
        ("explain",): ["run", "--classifier", "c", "--start", "one"],
        ("crp",): ["local", "--classifier", "c", "--run", "r", "--out", "o", "--top", "2"],
        ("study", "eval"): ["--export", "e.csv", "--out", "o", "--no-figures"],
        ("study", "serve"): ["r1", "r2", "--db", "s.sqlite", "--port", "0"],
        ("study", "withdraw"): ["ID", "--db", "s.sqlite"],
        ("demo",): ["--quick"],
        ("shortcut",): ["--classifier", "c", "--cue", "Wearing_Hat", "--editor", "e", "--data", "d",
                        "--out", "o", "--options", '{"t_start": 800}'],
        ("xai", "compare"): ["--classifier", "c", "--out", "o", "--methods", "gradient", "--n", "4"],
        ("bench", "generate"): ["--n", "2", "--gpu"],
        ("bench", "ldm"): ["--n", "2"],
        ("bench", "lrp"): ["--composites", "lrp0", "--json", "j"],
    }
    leaves = {p for p, c in CLI.commands.items() if c.function is not None and not c.passthrough}
    assert leaves == set(samples)
    for path, argv in samples.items():
        command, kwargs = _parsed(*path, *argv)
        assert command.path == path
        inspect.signature(command.function).bind(**kwargs)  # raises when the wiring is off
    _, kw = _parsed("generate", *samples[("generate",)], "--guided.scale", "6")
    assert kw["indices"] == [1, 2] and kw["target"] == "1" and kw["batch_size"] == 2
    assert kw["guided"]["scale"] == 6.0 and kw["seed"]["max_iter"] == 20  # typed, defaults kept
    assert kw["method"] == "adaptive"  # the library's default method
    _, kw = _parsed("study", "eval", "--export", "e.csv", "--out", "o", "--no-figures")
    assert kw["no_figures"] is True and kw["bootstrap"] == 200
    _, kw = _parsed("study", "serve", "r1", "r2", "--db", "s.sqlite", "--port", "0")
    assert [str(r) for r in kw["runs"]] == ["r1", "r2"] and kw["port"] == 0 and kw["threads"] == 8


def test_generate_dtype_loads_the_ldm_and_classifier_in_that_precision():
    """``--dtype bf16`` puts both networks in bfloat16 (the samplers keep the DDIM arithmetic
    in float32); the default stays float32; anything else is refused by the parser."""
    import pytest
    import torch
    from ldvce.cli import _problem
    _, kw = _parsed("generate", "--images", "d", "--classifier", "c", "--out", "o", "--dtype", "bf16")
    assert kw["dtype"] == "bf16"
    assert _parsed("generate", "--images", "d", "--classifier", "c", "--out", "o")[1]["dtype"] == "fp32"
    with pytest.raises(SystemExit):
        _parsed("generate", "--images", "d", "--classifier", "c", "--out", "o", "--dtype", "fp16")
    p = _problem("toy", "toy_resnet", "Smiling", torch.device("cpu"), "bf16")
    assert p.ldm.dtype == torch.bfloat16
    assert next(p.classifier.parameters()).dtype == torch.bfloat16
    assert p.logit(torch.zeros(1, 3, 64, 64)).dtype == torch.float32
    assert _problem("toy", "toy_resnet", "Smiling", torch.device("cpu")).ldm.dtype == torch.float32


def test_generate_refuses_options_of_another_method():
    import pytest
    from ldvce.cli import _method_options
    from dvce.samplers import sampler_defaults
    groups = {m: sampler_defaults(m) for m in ("seed", "guided", "dime")}
    assert _method_options("seed", groups) == sampler_defaults("seed")
    groups["guided"] = {**groups["guided"], "scale": 6.0}
    assert _method_options("guided", groups)["scale"] == 6.0
    with pytest.raises(SystemExit, match="--guided.scale is an option of --method guided"):
        _method_options("seed", groups)


def test_train_passes_its_arguments_to_lightning():
    r = subprocess.run([sys.executable, "-m", "ldvce.cli", "train", "--help"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "--trainer.max_epochs" in r.stdout


def test_generate_names_a_missing_input_before_loading_models(tmp_path):
    from ldvce.cli import main
    (tmp_path / "one.png").write_bytes(b"x")
    with pytest.raises(SystemExit, match="--images must be a folder of images; .*one.png is a file"):
        main(["generate", "--images", str(tmp_path / "one.png"), "--classifier", "nothere.ckpt",
              "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--lmdb not found: .*nope.lmdb"):
        main(["generate", "--lmdb", str(tmp_path / "nope.lmdb"), "--classifier", "nothere.ckpt",
              "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="unknown attribute 'Smilng'"):
        main(["generate", "--images", str(tmp_path), "--classifier", "toy_resnet",
              "--attribute", "Smilng", "--ldm", "toy", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_converted_inputs_are_listed(tmp_path):
    import numpy as np
    from PIL import Image
    from ldvce.cli import _converted_inputs
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.zeros((37, 100, 3), np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "gray.png")
    (tmp_path / "text.png").write_text("not an image")
    paths = [str(tmp_path / n) for n in ("ok.png", "wide.png", "gray.png", "text.png")]
    assert _converted_inputs(paths, 64) == ["wide.png 100×37 RGB", "gray.png 64×64 L"]


def test_input_errors_are_one_line_unless_a_traceback_is_asked_for(tmp_path, monkeypatch):
    from ldvce.cli import main
    args = ["explain", str(tmp_path / "nothing"), "--classifier", "toy_resnet"]
    with pytest.raises(SystemExit, match="^ldvce explain: image folder not found: .*nothing"):
        main(args)
    monkeypatch.setenv("LDVCE_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        main(args)


def test_bf16_on_a_cpu_without_native_bfloat16_is_announced_as_slow(monkeypatch, capsys):
    """bf16 is emulated (several times slower) on CPUs without AMX or AVX512-BF16: ``ldvce
    generate --dtype bf16`` says so before it starts; fp32, or a CPU that has it, says nothing."""
    import torch
    import dvce.ldm
    from dvce.ldm import slow_precision_warning
    from ldvce.cli import _problem
    cpu = torch.device("cpu")
    assert slow_precision_warning("fp32", cpu) is None
    monkeypatch.setattr(dvce.ldm, "native_bf16_cpu", lambda: True)
    assert slow_precision_warning("bf16", cpu) is None
    monkeypatch.setattr(dvce.ldm, "native_bf16_cpu", lambda: False)
    assert "no native bfloat16" in slow_precision_warning("bf16", cpu)
    _problem("toy", "toy_resnet", "Smiling", cpu, "bf16")
    assert "warning: this CPU" in capsys.readouterr().out
    _problem("toy", "toy_resnet", "Smiling", cpu, "fp32")
    assert "warning" not in capsys.readouterr().out
    # --devices: loaded on the CPU, run by processes on GPUs (none here: nothing to warn about)
    _problem("toy", "toy_resnet", "Smiling", cpu, "bf16", runs_on=torch.device("cuda"))
    assert "warning" not in capsys.readouterr().out
